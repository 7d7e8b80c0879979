"""moeforge.TrainingArguments refuses the values `moeforge train` refuses, with a ValueError naming the
field: both take their ranges from the engine (src/train/training_arguments.cpp)."""
import math
import os

import numpy as np
import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402

OUT_OF_RANGE = [
    ("learning_rate", -1.0, "learning_rate must be >= 0"),
    ("learning_rate", math.nan, "learning_rate must be >= 0, got nan"),
    ("learning_rate", math.inf, "learning_rate must be >= 0, got inf"),
    ("learning_rate", np.float64("-inf"), "learning_rate"),
    ("adam_beta1", 1.5, r"adam_beta1 must be in \[0, 1\)"),
    ("adam_beta2", 1.0, r"adam_beta2 must be in \[0, 1\)"),
    ("adam_epsilon", 0.0, "adam_epsilon must be > 0"),
    ("warmup_ratio", 5.0, r"warmup_ratio must be in \[0, 1\]"),
    ("num_train_epochs", -1.0, "num_train_epochs must be > 0"),
    ("max_grad_norm", -1.0, "max_grad_norm must be >= 0"),
    ("router_bias_update_rate", -0.001, "router_bias_update_rate must be >= 0"),
    ("weight_decay", -0.1, "weight_decay must be >= 0"),
    ("save_steps", -1, "save_steps must be >= 0"),
    ("eval_steps", -1, "eval_steps must be >= 0"),
    ("logging_steps", -1, "logging_steps must be >= 0"),
    ("save_total_limit", -1, "save_total_limit must be >= 0"),
    ("recompute_full_layers", -1, "recompute_full_layers must be >= 0"),
    ("activation_offload_layers", -1, "activation_offload_layers must be >= 0"),
    ("zero_stage", 3, r"zero_stage must be in \[1, 2\]"),
    ("warmup_steps", -1, "warmup_steps must be >= 0"),
    ("max_steps", -100, "max_steps must be -1 or >= 0"),
    ("max_steps", 10**23, "max_steps=.* outside the 64-bit integer range"),
    ("per_device_train_batch_size", 0, "per_device_train_batch_size must be >= 1"),
    ("per_device_eval_batch_size", 0, "per_device_eval_batch_size must be >= 1"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be >= 1"),
    ("max_seq_length", 1, "max_seq_length must be >= 2"),
    ("seed", -1, "seed must be >= 0"),
    ("nan_policy", "skpi", "nan_policy must be stop or skip"),
    ("save_quantization", "fp8", "save_quantization must be none or mxfp4"),
    ("optimizer_precision", "fp8", "fp8"),
]


@pytest.mark.parametrize("name,value,message", OUT_OF_RANGE, ids=[f"{n}={v}" for n, v, _ in OUT_OF_RANGE])
def test_out_of_range_is_a_value_error_naming_the_field(tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        moeforge.TrainingArguments(output_dir=str(tmp_path), **{name: value})


def test_edges_of_the_ranges_are_accepted(tmp_path):
    moeforge.TrainingArguments(output_dir=str(tmp_path), learning_rate=0, adam_beta1=0.0, warmup_ratio=1.0,
                               max_steps=1, save_steps=0, eval_steps=0, logging_steps=0, max_seq_length=2,
                               seed=0, num_train_epochs=0.5, nan_policy="skip", save_total_limit=None)
    moeforge.TrainingArguments(output_dir=str(tmp_path), max_steps=-1)


def test_a_field_changed_after_construction_is_checked_again(tmp_path):
    args = moeforge.TrainingArguments(output_dir=str(tmp_path))
    args.learning_rate = -1.0
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        args._to_native()  # what Trainer(...) hands the engine
