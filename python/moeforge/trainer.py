"""Trainer and TrainingArguments under Hugging Face's names, over the engine's training loop.

Datasets are any iterable of dicts (a list, a generator, a `datasets.Dataset`), each example one of:
  {"input_ids": [...], "labels": [...]}   pre-tokenized; labels optional (default: train on every
                                           token), each equal to its input id or -100; an
                                           "attention_mask" drops the positions it marks 0
  {"text": "..."}                          tokenized, EOS appended, trained on every token
  {"messages": [...]} (+ "tools")          the chat template; trained on the assistant turns
  {"prompt": ..., "completion": ...}       trained on the completion
Text and messages go through the model folder's tokenizer (or `processing_class`). Examples are
packed into sequences of `max_seq_length` tokens without attention across documents, so no data
collator is needed.
"""
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, List, NamedTuple, Optional, Union

import numpy as np

from ._native import native
from .modeling import PreTrainedModel
from .peft import LoraConfig, PeftModel, _add_adapter
from .tokenization import AutoTokenizer, PreTrainedTokenizer

_DEFAULTS = native.TrainingArguments()  # the engine's defaults (src/train/training_arguments.h)
_ADAMW_NAMES = ("adamw_torch", "adamw_torch_fused")  # Transformers' optim values that are moeforge's AdamW


def _default(name):
    value = getattr(_DEFAULTS, name)
    return field(default_factory=lambda: list(value)) if isinstance(value, list) else field(default=value)


@dataclass
class TrainingArguments:
    """Hugging Face TrainingArguments' names and, where moeforge has the same notion, their meaning.
    `max_seq_length` (as TRL's SFTConfig) is the length examples are packed to; None, as `moeforge train`
    leaves it, the longest training example (at most 2048). A batch holds at most the sequences one epoch
    of the training data fills, as a Transformers DataLoader's batch holds at most the dataset."""

    output_dir: str = _default("output_dir")
    overwrite_output_dir: bool = _default("overwrite_output_dir")
    learning_rate: float = _default("learning_rate")
    per_device_train_batch_size: int = _default("per_device_train_batch_size")
    per_device_eval_batch_size: int = _default("per_device_eval_batch_size")
    gradient_accumulation_steps: int = _default("gradient_accumulation_steps")
    max_steps: int = _default("max_steps")
    num_train_epochs: float = _default("num_train_epochs")
    warmup_steps: int = _default("warmup_steps")
    warmup_ratio: float = _default("warmup_ratio")
    lr_scheduler_type: str = _default("lr_scheduler_type")
    weight_decay: float = _default("weight_decay")
    adam_beta1: float = _default("adam_beta1")
    adam_beta2: float = _default("adam_beta2")
    adam_epsilon: float = _default("adam_epsilon")
    max_grad_norm: float = _default("max_grad_norm")
    logging_steps: int = _default("logging_steps")
    eval_steps: int = _default("eval_steps")
    eval_strategy: Optional[str] = None  # no | steps | epoch; None: eval_steps as given ("steps"; 0: at the end)
    save_steps: int = _default("save_steps")
    save_total_limit: Optional[int] = _default("save_total_limit")
    seed: int = _default("seed")
    gradient_checkpointing: Union[bool, str] = False
    recompute_full_layers: int = _default("recompute_full_layers")
    activation_offload_layers: int = _default("activation_offload_layers")
    zero_stage: int = _default("zero_stage")  # DeepSpeed's stage under mpirun: 2 shards gradients too
    resume_from_checkpoint: Optional[str] = None
    report_to: Union[str, List[str], None] = _default("report_to")
    optimizer_precision: str = _default("optimizer_precision")
    nan_policy: str = _default("nan_policy")
    save_quantization: str = _default("save_quantization")  # none | mxfp4 (GPT-OSS's release layout), for save_model
    freeze: List[str] = _default("freeze")
    router_bias_update_rate: float = _default("router_bias_update_rate")
    max_seq_length: Optional[int] = None
    # Transformers' names that the engine's arguments do not carry, checked and translated here.
    bf16: bool = False  # the CUDA backend computes in bfloat16 whatever this says; the CPU in float32
    fp16: bool = False
    optim: str = "adamw_torch_fused"
    # Transformers' sharding options, as far as they ask for what zero_stage does (_translate_sharding).
    fsdp: Union[str, List[str], bool, None] = None
    deepspeed: Union[str, dict, None] = None
    # Fields the engine's TrainingArguments does not carry (the data pipeline's: _data_options, and
    # the Transformers names above).
    _PYTHON_ONLY_FIELDS: ClassVar[tuple] = ("max_seq_length", "bf16", "fp16", "optim", "fsdp", "deepspeed")

    def __post_init__(self):
        ints = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "max_steps", "warmup_steps", "logging_steps", "eval_steps", "save_steps", "seed", "max_seq_length",
                "recompute_full_layers", "activation_offload_layers", "zero_stage"]
        for name in ints:
            value = getattr(self, name)
            if name == "max_seq_length" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"TrainingArguments.{name} must be an int, got {value!r}")
        floats = ["learning_rate", "num_train_epochs", "warmup_ratio", "weight_decay", "adam_beta1", "adam_beta2",
                  "adam_epsilon", "max_grad_norm", "router_bias_update_rate"]
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise TypeError(f"TrainingArguments.{name} must be a number, got {value!r}")
        if self.gradient_checkpointing not in (False, True, "none", "selective", "full"):
            raise ValueError(f"TrainingArguments.gradient_checkpointing={self.gradient_checkpointing!r}: expected a "
                             "bool or one of 'none', 'selective', 'full'")
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        elif self.report_to is None:
            self.report_to = []
        self.output_dir = os.fspath(self.output_dir)
        # The engine's ranges (src/train/training_arguments.cpp), the same as the command line's: seed
        # and max_seq_length here because the native struct cannot hold a negative seed and does not
        # carry max_seq_length; _to_native() checks the rest.
        for name in ("seed", "max_seq_length"):
            if getattr(self, name) is not None:
                native.TrainingArguments.check_range(name, getattr(self, name))
        self._check_transformers_options()
        self._to_native()

    def _check_transformers_options(self):
        for name in ("bf16", "fp16"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"TrainingArguments.{name} must be a bool, got {getattr(self, name)!r}")
        if self.fp16:
            raise ValueError("fp16=True: moeforge computes in bfloat16 on CUDA (bf16=True says the same) and in float32 "
                             "on the CPU; it has no float16 mode")
        optim = getattr(self.optim, "value", self.optim)  # Transformers' OptimizerNames enum, or its value
        if optim not in _ADAMW_NAMES:
            raise ValueError(f"optim={optim!r}: moeforge trains with AdamW alone (optim='adamw_torch' or "
                             "'adamw_torch_fused': the same update); for less optimizer memory, "
                             "optimizer_precision='bf16-state' keeps 8 bytes per parameter")
        self._translate_sharding()
        # IntervalStrategy, or its value; "no" and "epoch" ignore eval_steps, as Transformers does.
        self.eval_strategy = getattr(self.eval_strategy, "value", self.eval_strategy)
        if self.eval_strategy == "steps":
            self.eval_steps = self.eval_steps or self.logging_steps  # Transformers' default for eval_steps

    def _translate_sharding(self):
        """fsdp and deepspeed where they ask for what moeforge does under mpirun: FSDP's shard_grad_op and
        DeepSpeed's ZeRO stage 2 shard gradients and optimizer state (zero_stage=2); no_shard and stages 0
        and 1 keep the gradients whole (zero_stage=1, whose sharded optimizer state computes the same).
        What moeforge does not do is refused by name: sharded parameters (full_shard, hybrid_shard, ZeRO-3)
        and offloading. FSDP's auto_wrap and DeepSpeed's other keys (Transformers' "auto" values, its own
        bucket and overlap tuning) have nothing to set here."""
        asked = {}
        fsdp = ["full_shard"] if self.fsdp is True else self.fsdp or []  # Transformers reads True as full_shard
        options = fsdp.split() if isinstance(fsdp, str) else list(fsdp)
        for option in (getattr(o, "value", o) for o in options):  # FSDPOption enums, or their values
            if option in ("shard_grad_op", "no_shard"):
                asked["fsdp"] = 2 if option == "shard_grad_op" else 1
            elif option != "auto_wrap":
                raise ValueError(f"fsdp={self.fsdp!r}: '{option}' is not what moeforge does: each process keeps "
                                 "its parameters whole (the routed experts split over the processes) in GPU memory; "
                                 "fsdp='shard_grad_op' (zero_stage=2) shards gradients and optimizer state")
        if self.deepspeed:
            config = self.deepspeed
            if not isinstance(config, dict):
                try:
                    with open(config) as f:
                        config = json.load(f)
                except (OSError, ValueError) as e:
                    raise ValueError(f"deepspeed={self.deepspeed!r}: cannot read the DeepSpeed config: {e}") from None
            zero = config.get("zero_optimization") or {}
            stage = zero.get("stage", 0)
            if stage not in (0, 1, 2):
                raise ValueError(f"deepspeed: zero_optimization.stage {stage!r}: moeforge keeps each process's "
                                 "parameters whole (ZeRO-3 shards them); stage 2 shards gradients and optimizer state")
            for key in ("offload_optimizer", "offload_param"):
                device = (zero.get(key) or {}).get("device", "none")
                if device != "none":
                    raise ValueError(f"deepspeed: zero_optimization.{key}.device {device!r}: moeforge keeps "
                                     "optimizer state and parameters in GPU memory (activation_offload_layers "
                                     "moves activations to the host)")
            asked["deepspeed"] = 2 if stage == 2 else 1
        if not asked:
            return
        said = ", ".join(f"{name} asks for zero_stage={stage}" for name, stage in asked.items())
        if len(set(asked.values())) > 1 or (self.zero_stage != _DEFAULTS.zero_stage
                                            and self.zero_stage not in asked.values()):
            raise ValueError(f"zero_stage={self.zero_stage}, and {said}: choose one")
        self.zero_stage = next(iter(asked.values()))

    def _to_native(self):
        args = native.TrainingArguments()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._PYTHON_ONLY_FIELDS:
                continue
            if f.name == "gradient_checkpointing":
                # True recomputes whole layers, as Transformers' gradient checkpointing does.
                value = {False: "none", True: "full"}.get(value, value)
            elif f.name in ("resume_from_checkpoint",):
                value = value or ""
            elif f.name == "eval_strategy":
                value = value or "steps"
            elif f.name == "save_total_limit":
                value = value or 0
            try:
                setattr(args, f.name, value)
            except TypeError:
                if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                    raise ValueError(f"TrainingArguments.{f.name}={value} is outside the 64-bit integer range") from None
                raise TypeError(f"TrainingArguments.{f.name}: unexpected {type(value).__name__} {value!r}") from None
        args.validate()
        return args

    def _data_options(self):
        """How examples become rows: moeforge's way (packed, conversations trained on the assistant turns
        and prompt+completion on the completion); SFTConfig gives TRL's options instead."""
        return dict(max_seq_length=self.max_seq_length or 0, packing=True, dataset_text_field="text",
                    assistant_only_loss=True, completion_only_loss=True)


class TrainOutput(NamedTuple):
    """As Transformers' TrainOutput: training_loss is the mean of the steps' loss over the run (the loss
    optimised: the language-modelling loss plus the scaled router aux loss, as metrics.jsonl's `loss`)."""

    global_step: int
    training_loss: float
    metrics: dict


# The keys of the example forms (src/data/example_encoder.h) besides the text field.
_EXAMPLE_KEYS = ("messages", "tools", "prompt", "completion", "instruction", "input", "output", "conversations")


@dataclass
class TrainerState:
    """What `trainer.state` gives (Transformers' TrainerState names)."""

    global_step: int = 0
    max_steps: int = 0
    log_history: List[dict] = field(default_factory=list)


def _int_list(value, where):
    array = np.asarray(value)
    if array.ndim == 1 and array.size == 0:
        return []
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"{where} must be a 1-D sequence of ints")
    return array.astype(np.int64).tolist()


def _build_dataset(examples, name, tokenizer, options):
    if isinstance(examples, (str, bytes, dict)) or not hasattr(examples, "__iter__"):
        raise TypeError(f"{name} must be an iterable of dicts (a list, a generator, a datasets.Dataset)")
    text_field = options["dataset_text_field"]
    dataset = native.TokenizedDataset(tokenizer._tok if tokenizer is not None else None, text_field,
                                      options["assistant_only_loss"], options["completion_only_loss"])
    keys = (text_field,) + _EXAMPLE_KEYS
    for i, example in enumerate(examples):
        where = f"{name}[{i}]"
        if not isinstance(example, dict):
            raise TypeError(f"{where} must be a dict, got {type(example).__name__}")
        if "input_ids" in example:
            ids = _int_list(example["input_ids"], f"{where}['input_ids']")
            labels = _int_list(example["labels"], f"{where}['labels']") if example.get("labels") is not None else []
            if example.get("attention_mask") is not None:
                keep = _int_list(example["attention_mask"], f"{where}['attention_mask']")
                if len(keep) != len(ids):
                    raise ValueError(f"{where}: attention_mask has {len(keep)} entries, input_ids {len(ids)}")
                labels = [l for l, k in zip(labels, keep) if k] if labels else []
                ids = [t for t, k in zip(ids, keep) if k]
            dataset.add_tokens(ids, labels, where)
        else:
            known = {k: example[k] for k in keys if k in example}
            # A row in none of the forms still sends its column names (not their values, which need not
            # be JSON), so the error can name them.
            dataset.add_example(json.dumps(known or dict.fromkeys(map(str, example))), where)
    return dataset


class Trainer:
    """Hugging Face's Trainer over moeforge's training loop. `peft_config=LoraConfig(...)` (as TRL's
    SFTTrainer) trains LoRA adapters: the model goes through get_peft_model first (adapters drawn with
    args.seed) and `trainer.model` is the PeftModel; a model that already holds trainable adapters
    (get_peft_model, PeftModel.from_pretrained(..., is_trainable=True)) trains them as it is."""

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, tokenizer=None, peft_config=None, compute_metrics=None, callbacks=None,
                 **kwargs):
        if kwargs:
            raise TypeError(f"Trainer.__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if compute_metrics is not None:
            raise ValueError("compute_metrics: moeforge's evaluation computes eval_loss alone and gathers no "
                             "predictions; compute other metrics from model.generate(...) or model(...) after training")
        if callbacks:
            raise ValueError("callbacks: moeforge runs no Python code while it trains; each logged step goes to "
                             "output_dir/metrics.jsonl (trainer.state.log_history), report.html and, with "
                             "report_to='tensorboard', TensorBoard")
        if not isinstance(model, PreTrainedModel):
            raise TypeError(f"model must be a moeforge model (AutoModelForCausalLM.from_pretrained), got "
                            f"{type(model).__name__}")
        if args is None:
            args = TrainingArguments(output_dir="trainer_output")
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be a moeforge TrainingArguments, got {type(args).__name__}")
        if peft_config is not None:
            if model._adapter is not None:
                raise ValueError(f"peft_config: the model already holds the adapter {model._adapter.name!r}; pass "
                                 "the model alone to train it, or unload it first")
            if not isinstance(peft_config, LoraConfig):
                raise TypeError(f"peft_config must be a moeforge LoraConfig, got {type(peft_config).__name__}")
            _add_adapter(model, peft_config, "default", args.seed)
            model = model if isinstance(model, PeftModel) else PeftModel._wrap(model)
        elif model._adapter is not None and not model._adapter.trainable:
            raise ValueError(f"the model's adapter {model._adapter.name!r} was loaded frozen (is_trainable=False, "
                             "PEFT's default) and nothing else trains: load it with is_trainable=True")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        if data_collator is not None:
            warnings.warn("moeforge packs examples itself: data_collator is not used", stacklevel=2)
        tokenizer = processing_class if processing_class is not None else tokenizer
        if tokenizer is None and model._model.folder and os.path.exists(os.path.join(model._model.folder,
                                                                                      "tokenizer.json")):
            tokenizer = AutoTokenizer.from_pretrained(model._model.folder)
        if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizer):
            raise TypeError(f"processing_class must be a moeforge tokenizer, got {type(tokenizer).__name__}")
        self.model = model
        self.args = args
        self.processing_class = tokenizer
        data = args._data_options()
        self._train = _build_dataset(train_dataset, "train_dataset", tokenizer, data)
        self._eval = _build_dataset(eval_dataset, "eval_dataset", tokenizer, data) if eval_dataset is not None else None
        self._trainer = native.DatasetTrainer(model._model, args._to_native(), data["max_seq_length"], self._train,
                                              self._eval, tokenizer._tok if tokenizer is not None else None,
                                              packing=data["packing"])

    def train(self, resume_from_checkpoint=None):
        if resume_from_checkpoint not in (None, False):
            # As Transformers: True continues output_dir's last checkpoint; a path, that checkpoint.
            self._trainer.set_resume_from_checkpoint(
                "latest" if resume_from_checkpoint is True else os.fspath(resume_from_checkpoint))
        result = self._trainer.train()
        metrics = {"train_loss": result.training_loss}
        if result.final_eval_loss >= 0:
            metrics["eval_loss"] = result.final_eval_loss
        return TrainOutput(global_step=result.steps, training_loss=result.training_loss, metrics=metrics)

    @property
    def state(self):
        """Transformers' TrainerState, as far as moeforge keeps one: global_step, max_steps and
        log_history, the records of output_dir/metrics.jsonl (moeforge's names: loss, lr, grad_norm, ...)."""
        history = []
        metrics = os.path.join(self.args.output_dir, "metrics.jsonl")
        if self._trainer.global_step > 0 and os.path.exists(metrics):
            with open(metrics, encoding="utf-8") as f:
                history = [json.loads(line) for line in f if line.strip()]
        return TrainerState(global_step=self._trainer.global_step, max_steps=self.args.max_steps, log_history=history)

    def evaluate(self, eval_dataset=None):
        if eval_dataset is not None:
            raise ValueError("pass eval_dataset to Trainer(...)")
        return {"eval_loss": self._trainer.evaluate()}

    def save_model(self, output_dir=None):
        """The model as Transformers' Trainer saves it (args.output_dir by default), with the model folder's
        tokenizer files: a model folder, or for a model with a LoRA adapter the PEFT adapter folder
        (adapter_config.json, adapter_model.safetensors in float32), which PEFT and
        AutoModelForCausalLM.from_pretrained load; an adapter named other than "default" goes to
        output_dir/<name>, as PeftModel.save_pretrained puts it. The checkpoints of save_steps are the
        same folders (with the optimizer state)."""
        folder = os.fspath(output_dir) if output_dir is not None else self.args.output_dir
        if self.model._adapter is not None and self.model._adapter.name != "default":
            folder = os.path.join(folder, self.model._adapter.name)
        self._trainer.save_model(folder)
