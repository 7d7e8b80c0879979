"""SFTConfig and SFTTrainer under TRL's names and meanings (TRL 1.x), over moeforge's Trainer.

    from moeforge import SFTConfig, SFTTrainer      # was: from trl import SFTConfig, SFTTrainer

Datasets take TRL's forms: {"text"} (or the `dataset_text_field` column), {"messages"},
{"prompt", "completion"}, and also Alpaca and ShareGPT rows (src/data/example_encoder.h). What moeforge
does differently: a row is at most `max_length` tokens (longer examples lose their tail, as TRL's
"keep_start"), and rows are padded to `max_length` rather than to the longest of the batch, which
changes the work done, not the loss.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional, Union

from .modeling import AutoModelForCausalLM
from .trainer import Trainer, TrainingArguments


@dataclass
class SFTConfig(TrainingArguments):
    """TRL's SFTConfig fields with TRL's defaults, where they differ from TrainingArguments' too:
    learning_rate 2e-5 and gradient_checkpointing on. `packing=True` packs several examples into each
    row of `max_length` tokens without attention across them (in shuffled order, each row filled until
    the next example does not fit, where TRL's default packing_strategy is best-fit decreasing); `assistant_only_loss` trains
    conversations on their assistant turns only; `completion_only_loss` (None: true for prompt+completion
    data) trains on the completion only."""

    learning_rate: float = 2e-5
    gradient_checkpointing: Union[bool, str] = True
    dataset_text_field: str = "text"
    max_length: Optional[int] = 1024
    packing: bool = False
    assistant_only_loss: bool = False
    completion_only_loss: Optional[bool] = None
    _PYTHON_ONLY_FIELDS: ClassVar[tuple] = TrainingArguments._PYTHON_ONLY_FIELDS + (
        "dataset_text_field", "max_length", "packing", "assistant_only_loss", "completion_only_loss")

    def __post_init__(self):
        if self.max_seq_length != TrainingArguments.max_seq_length:
            raise ValueError("SFTConfig names the sequence length max_length (TRL's name), not max_seq_length")
        if self.max_length is None:
            raise ValueError("SFTConfig.max_length=None (no truncation) is not supported: moeforge's rows have a "
                             "fixed length; give the longest example's length")
        if not isinstance(self.dataset_text_field, str) or not self.dataset_text_field:
            raise ValueError(f"SFTConfig.dataset_text_field={self.dataset_text_field!r}: expected a column name")
        self.max_seq_length = self.max_length
        super().__post_init__()

    def _data_options(self):
        return dict(max_seq_length=self.max_length, packing=bool(self.packing),
                    dataset_text_field=self.dataset_text_field, assistant_only_loss=bool(self.assistant_only_loss),
                    completion_only_loss=self.completion_only_loss is not False)


class SFTTrainer(Trainer):
    """TRL's SFTTrainer(model, args, data_collator, train_dataset, eval_dataset, processing_class, ...,
    peft_config): `model` a moeforge model or a model folder / cached id (loaded as TRL loads it, with
    AutoModelForCausalLM.from_pretrained), `args` an SFTConfig (a TrainingArguments is taken as TRL
    takes it: with SFTConfig's defaults for the SFT fields)."""

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, **kwargs):
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model)
        if args is None:
            args = SFTConfig(output_dir="trainer_output")
        elif type(args) is TrainingArguments:
            # As TRL: a TrainingArguments becomes an SFTConfig with SFT's defaults (max_length 1024 unless
            # the moeforge max_seq_length says otherwise).
            fields = {k: v for k, v in vars(args).items() if k != "max_seq_length"}
            length = {"max_length": args.max_seq_length} if args.max_seq_length is not None else {}
            args = SFTConfig(**fields, **length)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, peft_config=peft_config,
                         **kwargs)
