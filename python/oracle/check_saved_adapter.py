#!/usr/bin/env python3
"""Checks that a LoRA adapter saved by moeforge loads in Hugging Face PEFT unchanged.

The twin of check_saved_model.py for adapters. For each CASE directory (made by a moeforge test's export,
or by hand):
  CASE/base/           the base model folder the adapter belongs to
  CASE/adapter/        the folder moeforge wrote (adapter_config.json, adapter_model.safetensors)
  CASE/batch.safetensors, CASE/moeforge.safetensors   a batch, and moeforge's logits on it with the adapter
                       (`logits`; `merged_logits`, optional: those of its merged folder)
  CASE/merged/         optional: the base model with the adapter merged in, as moeforge wrote it
it asserts: PeftModel.from_pretrained(base, adapter) (float32, eager attention and experts) puts every
tensor of adapter_model.safetensors into the adapter and leaves none of its tensors out: the file's keys
equal get_peft_model_state_dict's (the keys PEFT itself would save), with equal shapes and values, and
load_adapter reports no missing adapter keys and no unexpected keys; the base folder loads with no missing,
unexpected or mismatched keys; PEFT's logits equal moeforge's within relative L2 error 1e-4; and where
merged/ is, Transformers loads it with no missing, unexpected or mismatched keys and its logits equal
PEFT's (and moeforge's merged_logits) within 1e-4.
Runs where PyTorch, Transformers 5.17 and PEFT 0.21 are installed:
    python3 python/oracle/check_saved_adapter.py CASE...
"""
import os
import sys

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def load_model(folder):
    """AutoModelForCausalLM in float32 with eager attention and experts; returns it and the loading problems."""
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True,
                                                       attn_implementation="eager")
    # The default grouped_mm experts need 16-byte aligned strides, which the tiny odd sizes lack.
    model.config._experts_implementation = "eager"
    return model, {k: v for k, v in info.items() if v}


def load_adapter_model(base_dir, adapter_dir):
    """PeftModel.from_pretrained(base, adapter) in eval mode; returns it and the problems: the base folder's
    loading report, load_adapter's missing adapter keys and unexpected keys, and the adapter file's keys,
    shapes or values that differ from those of the loaded adapter."""
    base, problems = load_model(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir)
    # from_pretrained only warns about missing keys and keeps load_adapter's report to itself. Loading the
    # same file into the same adapter again changes nothing and returns the report: missing_keys already
    # filtered to the adapter's own (lora_, adapter name) keys, unexpected_keys everything of the file that
    # matched no parameter. The Transformers 4 -> 5 key conversion (transformers_weight_conversion) runs
    # before, so the key comparison below is the one that holds the file to PEFT's own naming.
    report = model.load_adapter(adapter_dir, adapter_name="default")
    problems.update({f"adapter {k}": v for k, v in report._asdict().items() if v})
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    if set(saved) != set(loaded):
        problems["adapter keys only in the file"] = sorted(set(saved) - set(loaded))
        problems["adapter keys only in the model"] = sorted(set(loaded) - set(saved))
    differ = [k for k in sorted(set(saved) & set(loaded))
              if saved[k].shape != loaded[k].shape or not torch.equal(saved[k].float(), loaded[k].float())]
    if differ:
        problems["adapter tensors that differ from the file once loaded"] = differ
    model.eval()
    return model, {k: v for k, v in problems.items() if v}


def check(case):
    model, problems = load_adapter_model(os.path.join(case, "base"), os.path.join(case, "adapter"))
    assert not problems, f"{case}: loading the adapter reported {problems}"
    batch = load_file(os.path.join(case, "batch.safetensors"))
    batch.pop("labels", None)
    ours = load_file(os.path.join(case, "moeforge.safetensors"))
    with torch.no_grad():
        logits = model(**batch).logits.float()
    # moeforge routes no padding (src/model/blocks/routed_rows.h): its logits are compared where the mask keeps.
    kept = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones(logits.shape[:2], dtype=torch.bool)
    err = rel_err(ours["logits"].float()[kept], logits[kept])
    assert err <= 1e-4, f"{case}: logits differ from PEFT's, relative L2 error {err:.3e}"
    line = (f"{case}: {len(get_peft_model_state_dict(model))} adapter tensors load with no missing/unexpected keys "
            f"and equal the file; logits relative L2 error {err:.2e}")
    merged_dir = os.path.join(case, "merged")
    if os.path.isdir(merged_dir):
        merged, problems = load_model(merged_dir)
        assert not problems, f"{case}: loading merged/ reported {problems}"
        with torch.no_grad():
            merged_logits = merged(**batch).logits.float()
        merr = rel_err(merged_logits, logits)
        assert merr <= 1e-4, f"{case}: merged/'s logits differ from PEFT's, relative L2 error {merr:.3e}"
        line += f"; merged/ loads cleanly, logits vs PEFT's {merr:.2e}"
        if "merged_logits" in ours:
            oerr = rel_err(ours["merged_logits"].float()[kept], merged_logits[kept])
            assert oerr <= 1e-4, f"{case}: moeforge's merged_logits differ, relative L2 error {oerr:.3e}"
            line += f", moeforge's merged_logits {oerr:.2e}"
    elif "merged_logits" in ours:
        raise AssertionError(f"{case}: moeforge.safetensors has merged_logits but there is no merged/")
    print(line)


if __name__ == "__main__":
    for case in sys.argv[1:]:
        check(case)
