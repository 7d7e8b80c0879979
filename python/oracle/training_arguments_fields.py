#!/usr/bin/env python3
"""Oracle for moeforge's option names: the fields of Transformers' TrainingArguments and their defaults.

Writes {"transformers": version, "fields": {name: default}} (defaults as JSON; a default JSON cannot
hold is written as its repr) plus, for each name moeforge refuses as a Transformers 4.x spelling,
a check that the old name is no field any more and its replacement is. tests/train/option_names_test.cpp
compares moeforge's `train` option table with this file.

Run anywhere Transformers 5.17 is installed (the GPU machine, or the project venv), from the repo root:
    python3 python/oracle/training_arguments_fields.py --out tests/data/training_arguments/fields.json
"""

import argparse
import dataclasses
import json

import transformers

# Transformers 4.x names and the fields that replaced them (deprecated during 4.x, absent in 5.x).
FORMER_NAMES = {
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
}


def default_of(field):
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return None
    if hasattr(value, "value"):  # enums (IntervalStrategy, SchedulerType, ...)
        value = value.value
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    fields = {f.name: default_of(f) for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    for old, new in FORMER_NAMES.items():
        assert old not in fields, f"{old} is still a TrainingArguments field"
        assert new in fields, f"{new} is not a TrainingArguments field"
    with open(args.out, "w") as f:
        json.dump({"transformers": transformers.__version__, "fields": fields, "former_names": FORMER_NAMES},
                  f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
