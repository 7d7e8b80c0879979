"""moeforge: fine-tune Hugging Face mixture-of-experts models with a C++ engine, under Transformers' names.

    from moeforge import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

is the whole migration of a typical Transformers fine-tuning script,
`from moeforge import LoraConfig, get_peft_model, PeftModel` that of a PEFT one (moeforge.peft), and
`from moeforge import SFTConfig, SFTTrainer, load_dataset` that of a TRL one (moeforge.sft). Arrays go in as NumPy arrays,
torch tensors or any DLPack producer; they come out as NumPy arrays, or as torch tensors on the
inputs' device when the inputs were torch tensors.
"""
from ._native import native as _native
from .modeling import AutoModelForCausalLM, CausalLMOutput, PretrainedConfig, PreTrainedModel
from .peft import (AutoPeftModelForCausalLM, LoraConfig, PeftModel, PeftModelForCausalLM, TaskType, get_peft_model,
                   set_seed)
from .tokenization import AutoTokenizer, BatchEncoding, PreTrainedTokenizer
from .trainer import Trainer, TrainingArguments, TrainOutput
from .sft import SFTConfig, SFTTrainer
from .dataset_files import load_dataset

__all__ = [
    "AutoModelForCausalLM", "AutoPeftModelForCausalLM", "AutoTokenizer", "BatchEncoding", "CausalLMOutput",
    "LoraConfig", "PeftModel", "PeftModelForCausalLM", "PretrainedConfig", "PreTrainedModel", "PreTrainedTokenizer",
    "SFTConfig", "SFTTrainer", "TaskType", "Trainer", "TrainingArguments", "TrainOutput", "cuda_available",
    "get_peft_model", "load_dataset", "set_seed",
]
__version__ = "0.1.0"


def cuda_available():
    """Whether this moeforge has the CUDA backend and sees a CUDA device."""
    return _native.cuda_is_available()
