"""AutoModelForCausalLM: load, run, generate and save a causal language model, as in Transformers."""
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._arrays import as_array, like_input
from ._native import native


class PretrainedConfig(dict):
    """config.json as a dict whose keys also read as attributes: `config.hidden_size`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the config has no key {name!r}") from None

    def to_dict(self):
        return dict(self)


@dataclass
class CausalLMOutput:
    """The forward pass: `loss` (None without labels) and `logits` [batch, sequence, vocab]: a float and
    a NumPy array, or torch tensors on the inputs' device when input_ids was a torch tensor."""

    loss: Optional[float]
    logits: np.ndarray

    def __getitem__(self, key):
        return getattr(self, key)


def _dtype_name(dtype):
    """"auto", "float32", np.float32, torch.float32, ... as the engine's dtype name."""
    if dtype is None:
        return "auto"
    if isinstance(dtype, str):
        return dtype
    name = str(dtype)
    if name.startswith("torch."):
        return name[len("torch."):]
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"dtype must be 'auto', a dtype name or a dtype, got {dtype!r}") from None


def _check_int(value, name, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _not_torch_parameters(method):
    return NotImplementedError(
        f"{method}(): moeforge's parameters live in its engine, not in torch Parameters. Their values: "
        "model.state_dict(); their count: model.num_parameters(); to freeze some: TrainingArguments(freeze=[...]) "
        "or LoRA adapters (get_peft_model)")


class PreTrainedModel:
    """A causal LM run by the moeforge engine. Call it like a Transformers model:
    `model(input_ids=..., attention_mask=..., labels=...)` returns `.loss` and `.logits`."""

    def __init__(self, native_model):
        self._model = native_model
        self.config = PretrainedConfig(json.loads(native_model.config_json()))
        self._adapter = None  # the LoRA adapter this model holds (moeforge.peft), if any

    @property
    def name_or_path(self):
        return self._model.name_or_path

    def forward(self, input_ids=None, attention_mask=None, labels=None, position_ids=None, **kwargs):
        if kwargs:
            raise TypeError(f"forward() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if input_ids is None:
            raise ValueError("input_ids is required")
        loss, logits = self._model.forward(as_array(input_ids, "input_ids"), as_array(attention_mask, "attention_mask"),
                                           as_array(labels, "labels"), as_array(position_ids, "position_ids"))
        return CausalLMOutput(loss=like_input(loss, input_ids), logits=like_input(logits, input_ids))

    __call__ = forward

    def loss_and_gradients(self, input_ids=None, attention_mask=None, labels=None, position_ids=None):
        """(loss, {checkpoint tensor name: gradient}): what `model(...).loss.backward()` leaves in each
        parameter's `.grad` in PyTorch, as float32 NumPy arrays. The weights do not change."""
        if input_ids is None or labels is None:
            raise ValueError("loss_and_gradients needs input_ids and labels")
        loss, grads = self._model.loss_gradients(as_array(input_ids, "input_ids"),
                                                 as_array(attention_mask, "attention_mask"),
                                                 as_array(labels, "labels"), as_array(position_ids, "position_ids"))
        return loss, {name: like_input(g, input_ids) for name, g in grads.items()}

    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=20, do_sample=False, temperature=1.0,
                 top_k=0, top_p=1.0, eos_token_id=None, seed=0, pad_token_id=None, num_beams=1, **kwargs):
        """Greedy (or, with do_sample, sampled) continuation of each row of `input_ids`; returns
        [batch, prompt + new] with the prompts, as Transformers does. Rows that stop early (eos) are
        padded with `pad_token_id` (default: the model's pad token). Left padding is read from
        `attention_mask`."""
        if kwargs:
            raise TypeError(f"generate() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if input_ids is None:
            raise ValueError("input_ids is required")
        if _check_int(num_beams, "num_beams", 1) != 1:
            raise ValueError(f"num_beams={num_beams}: moeforge has no beam search; it decodes greedily, or samples "
                             "with do_sample=True (temperature, top_k, top_p)")
        config = native.GenerationConfig()
        config.max_new_tokens = _check_int(max_new_tokens, "max_new_tokens", 0)
        config.do_sample = bool(do_sample)
        config.temperature = float(temperature)
        config.top_k = _check_int(0 if top_k is None else top_k, "top_k", 0)
        config.top_p = float(1.0 if top_p is None else top_p)
        config.seed = _check_int(seed, "seed", 0)
        if eos_token_id is not None:
            config.eos_token_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if pad_token_id is not None:
            config.pad_token_id = _check_int(pad_token_id, "pad_token_id", 0)
        out = self._model.generate(as_array(input_ids, "input_ids"), as_array(attention_mask, "attention_mask"), config)
        return like_input(out, input_ids)

    def save_pretrained(self, save_directory, quantization="none", **kwargs):
        """A Hugging Face folder (config.json, safetensors shards, tokenizer files of the source folder);
        for a model holding a LoRA adapter, the PEFT adapter folder (adapter_config.json,
        adapter_model.safetensors), as Transformers saves a model with an adapter loaded.
        quantization="mxfp4" stores GPT-OSS's experts as its release does (MXFP4 blocks and scales,
        quantization_config quant_method mxfp4), to be served as the original is."""
        unknown = set(kwargs) - {"safe_serialization"}
        if unknown:
            raise TypeError(f"save_pretrained() got an unexpected keyword argument {unknown.pop()!r}")
        if kwargs.get("safe_serialization", True) is not True:
            raise ValueError("safe_serialization=False: moeforge writes safetensors only")
        if self._adapter is not None:
            if quantization != "none":
                raise ValueError(f"quantization={quantization!r}: a LoRA adapter saves as PEFT saves it; "
                                 "merge_and_unload() first to save the merged model quantised")
            self._model.save_adapter(os.fspath(save_directory))
        else:
            self._model.save_pretrained(os.fspath(save_directory), quantization)

    def num_parameters(self, only_trainable=False, exclude_embeddings=False):
        """As Transformers: every parameter (tied embeddings once, LoRA adapters included); with
        only_trainable, those that train: the adapters (unless loaded frozen) when the model has some."""
        if only_trainable and self._adapter is not None:
            return self._model.num_adapter_parameters() if self._adapter.trainable else 0
        return self._model.num_parameters(exclude_embeddings=exclude_embeddings)

    @property
    def device(self):
        """"cpu" or "cuda": where the engine placed the model when it loaded."""
        return self._model.device

    @property
    def dtype(self):
        """The compute dtype's name ("float32", "bfloat16")."""
        return self._model.dtype

    def to(self, *args, **kwargs):
        """As torch's Module.to where the model already is (its device and dtype): returns the model.
        moeforge places a model once, when it loads, so any other device or dtype is refused, saying so."""
        unknown = set(kwargs) - {"device", "dtype"}
        if unknown:
            raise TypeError(f"to() got an unexpected keyword argument {unknown.pop()!r}")
        for target in (*args, *kwargs.values()):
            text = str(target)
            if text.split(":")[0] in ("cpu", "cuda"):
                if text.split(":")[0] != self.device:
                    raise ValueError(f"to({text!r}): this model is on {self.device}, and moeforge places a model once, "
                                     f"when it loads: AutoModelForCausalLM.from_pretrained(path, device="
                                     f"{text.split(':')[0]!r})")
            elif _dtype_name(target) != self.dtype:
                raise ValueError(f"to({text}): this model computes in {self.dtype}, and moeforge picks the dtype when "
                                 f"it loads: AutoModelForCausalLM.from_pretrained(path, dtype={_dtype_name(target)!r})")
        return self

    def state_dict(self):
        """{checkpoint tensor name: float32 NumPy array}: a copy of every weight, under the names
        save_pretrained writes (experts one by one, as the checkpoint files name them)."""
        return self._model.state_dict()

    def named_parameters(self, *args, **kwargs):
        raise _not_torch_parameters("named_parameters")

    def parameters(self, *args, **kwargs):
        raise _not_torch_parameters("parameters")

    # ---- LoRA adapters, as Transformers' PEFT integration (add_adapter, load_adapter) ----
    def add_adapter(self, adapter_config, adapter_name=None):
        """Fresh trainable LoRA adapters (a moeforge LoraConfig), in place: moeforge.get_peft_model without
        the wrapper."""
        from .peft import _add_adapter, _seed

        _add_adapter(self, adapter_config, adapter_name or "default", _seed[0])

    def load_adapter(self, peft_model_id=None, adapter_name=None, is_trainable=False, **kwargs):
        """A PEFT adapter folder onto this model, in place; frozen unless is_trainable=True (as in
        Transformers). save_pretrained then writes the adapter folder."""
        if kwargs:
            raise TypeError(f"load_adapter() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if peft_model_id is None:
            raise ValueError("load_adapter needs peft_model_id: an adapter folder")
        from .peft import _load_adapter

        _load_adapter(self, peft_model_id, adapter_name or "default", is_trainable)

    @property
    def peft_config(self):
        """{adapter name: LoraConfig as resolved} while the model holds an adapter."""
        if self._adapter is None:
            raise AttributeError("the model has no adapter (peft_config)")
        return {self._adapter.name: self._adapter.config}

    def active_adapters(self):
        if self._adapter is None:
            raise ValueError("No adapter loaded. Please load an adapter first.")
        return [self._adapter.name]

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Rerun each layer's forward in its backward (less activation memory; the forward's expert
        choices are reused, never re-routed)."""
        self._model.set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self):
        self._model.set_gradient_checkpointing(False)

    def train(self, mode=True):
        # The forward is the same in both modes: LoRA's lora_dropout applies in passes that compute
        # gradients (training, loss_and_gradients), never in a plain forward or generate.
        return self

    def eval(self):
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.config.get('model_type')!r}, from {self.name_or_path!r})"


class AutoModelForCausalLM:
    """`AutoModelForCausalLM.from_pretrained(path_or_cached_model_id)`: a model folder, or a model id
    already in the local Hugging Face cache (no download). device="auto" (the default) is the GPU when
    this moeforge has the CUDA backend and sees one (where Transformers' Trainer would move the model),
    else the CPU; dtype="auto" is the checkpoint's dtype on the GPU and float32 on the CPU."""

    def __init__(self):
        raise EnvironmentError("AutoModelForCausalLM is a factory: use AutoModelForCausalLM.from_pretrained(...)")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, *, dtype="auto", device="auto", expert_parallel_size=1,
                        gradient_checkpointing=False, torch_dtype=None, device_map=None, trust_remote_code=False,
                        **kwargs):
        """A model folder (or cached model id); a PEFT adapter folder gives its base model
        (adapter_config.json's base_model_name_or_path) with the adapter loaded, as in Transformers.
        trust_remote_code is accepted and has no effect: moeforge runs its own implementation of each
        model_type and never a folder's Python code. Under mpirun or srun the processes train together,
        each on its rows of every batch: expert_parallel_size splits the routed experts over that many of
        them (a divisor of their number); 1 keeps every expert in each (data parallelism alone)."""
        if kwargs:
            raise TypeError(f"from_pretrained() got an unexpected keyword argument {next(iter(kwargs))!r}")
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError("pretrained_model_name_or_path must be a path or a model id, got "
                            f"{type(pretrained_model_name_or_path).__name__}")
        folder = os.fspath(pretrained_model_name_or_path)
        if (os.path.isfile(os.path.join(folder, "adapter_config.json"))
                and not os.path.isfile(os.path.join(folder, "config.json"))):
            # A PEFT adapter folder, as Transformers loads one: its base model, with the adapter.
            from .peft import _base_model_path

            model = AutoModelForCausalLM.from_pretrained(
                _base_model_path(folder), dtype=dtype, device=device, expert_parallel_size=expert_parallel_size,
                gradient_checkpointing=gradient_checkpointing, torch_dtype=torch_dtype, device_map=device_map)
            model.load_adapter(folder)
            return model
        options = native.PretrainedOptions()
        options.dtype = _dtype_name(torch_dtype if torch_dtype is not None else dtype)
        options.device = str(device_map if device_map is not None else device)
        options.expert_parallel_size = _check_int(expert_parallel_size, "expert_parallel_size", 1)
        if not isinstance(gradient_checkpointing, bool):
            raise TypeError(f"gradient_checkpointing must be a bool, got {type(gradient_checkpointing).__name__}")
        options.gradient_checkpointing = gradient_checkpointing
        return PreTrainedModel(native.model_from_pretrained(os.fspath(pretrained_model_name_or_path), options))

    @staticmethod
    def from_config(config_path, *, seed=0, dtype="auto", device="auto"):
        """Random weights (normal(0, initializer_range)) for a config.json or the folder holding one."""
        options = native.PretrainedOptions()
        options.dtype = _dtype_name(dtype)
        options.device = str(device)
        return PreTrainedModel(native.model_from_config(os.fspath(config_path), options, _check_int(seed, "seed", 0)))
