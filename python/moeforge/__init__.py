"""moeforge: fine-tune Hugging Face mixture-of-experts models with a C++ engine, under Transformers' names.

    from moeforge import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

is the whole migration of a typical Transformers fine-tuning script. Arrays go in as NumPy arrays
(or any DLPack producer) and come out as NumPy arrays.
"""
from .modeling import AutoModelForCausalLM, CausalLMOutput, PretrainedConfig, PreTrainedModel
from .tokenization import AutoTokenizer, BatchEncoding, PreTrainedTokenizer
from .trainer import Trainer, TrainingArguments, TrainOutput

__all__ = [
    "AutoModelForCausalLM", "AutoTokenizer", "BatchEncoding", "CausalLMOutput", "PretrainedConfig",
    "PreTrainedModel", "PreTrainedTokenizer", "Trainer", "TrainingArguments", "TrainOutput",
]
__version__ = "0.1.0"
