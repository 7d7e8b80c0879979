"""moeforge.TrainingArguments uses Transformers 5.17's field names and defaults, as `moeforge train` does
(tests/train/option_names_test.cpp): every field is one of TrainingArguments' (the oracle's list in
tests/data/training_arguments/fields.json) or one of moeforge's own, named here; shared numeric fields
keep Transformers' defaults except those listed."""
import dataclasses
import json
import os

import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402

# Not TrainingArguments fields in Transformers 5.17 (the reasons are in option_names_test.cpp).
MOEFORGE_OWN = {"overwrite_output_dir", "warmup_ratio", "optimizer_precision", "nan_policy", "freeze", "max_seq_length",
                "recompute_full_layers", "router_bias_update_rate", "activation_offload_layers", "zero_stage",
                "save_quantization"}
OTHER_DEFAULTS = {"logging_steps"}


def oracle(source_dir):
    with open(source_dir / "tests" / "data" / "training_arguments" / "fields.json") as f:
        return json.load(f)


def test_every_field_is_a_transformers_field_or_moeforges_own(source_dir):
    fields = oracle(source_dir)["fields"]
    for f in dataclasses.fields(moeforge.TrainingArguments):
        if f.name in MOEFORGE_OWN:
            assert f.name not in fields, f"{f.name} is a Transformers field"
        else:
            assert f.name in fields, f"{f.name} is not a Transformers 5.17 TrainingArguments field"


def test_shared_numeric_defaults_are_transformers(source_dir):
    fields = oracle(source_dir)["fields"]
    args = moeforge.TrainingArguments()
    compared = 0
    for f in dataclasses.fields(moeforge.TrainingArguments):
        theirs = fields.get(f.name)
        ours = getattr(args, f.name)
        if f.name in OTHER_DEFAULTS or isinstance(theirs, bool) or not isinstance(theirs, (int, float)):
            continue
        if isinstance(ours, bool) or not isinstance(ours, (int, float)):
            continue
        assert ours == theirs, f.name
        compared += 1
    assert compared >= 10
