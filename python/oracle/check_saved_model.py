#!/usr/bin/env python3
"""Checks that a model folder saved by moeforge loads in Hugging Face Transformers unchanged.

For each CASE directory (made by tests/python/test_save_pretrained.py's --export, or by hand):
  CASE/saved/          the folder `moeforge step --save-pretrained` wrote
  CASE/source/         the checkpoint it was loaded from
  CASE/batch.safetensors, CASE/moeforge.safetensors   a batch and moeforge's logits of `saved` on it
it asserts: AutoModelForCausalLM.from_pretrained(saved) reports no missing, unexpected or mismatched
keys; tensor names and dtypes of saved equal those of source; config.json keys are equal; and
Transformers' logits equal moeforge's within relative L2 error 1e-4 (float32). A folder saved as MXFP4
(GPT-OSS's release layout) loads with Mxfp4Config(dequantize=True), as Transformers trains it: its
logits are those of the dequantised weights, which moeforge computes from the same folder.
Runs where PyTorch is installed (the GPU machine): python3 python/oracle/check_saved_model.py CASE...
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Mxfp4Config


def tensor_table(folder):
    table = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("model") and name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                for key in f.keys():
                    table[key] = str(f.get_slice(key).get_dtype())
    return table


def check(case):
    saved, source = os.path.join(case, "saved"), os.path.join(case, "source")
    quantized = json.load(open(os.path.join(saved, "config.json"))).get("quantization_config", {})
    # Without the `kernels` package (the GPU machine has none) only the dequantised path runs.
    extra = {"quantization_config": Mxfp4Config(dequantize=True)} if quantized.get("quant_method") == "mxfp4" else {}
    model, info = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, output_loading_info=True,
                                                       attn_implementation="eager", **extra)
    # MXFP4 dequantises to bfloat16 whatever the dtype asked; E2M1 codes times a power of two are exact there.
    model.to(torch.float32)
    # The default grouped_mm experts need 16-byte aligned strides, which the tiny odd sizes lack.
    model.config._experts_implementation = "eager"
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"{case}: loading reported {problems}"
    assert tensor_table(saved) == tensor_table(source), f"{case}: tensor names/dtypes differ from the source"
    keys = lambda p: set(json.load(open(os.path.join(p, "config.json"))))
    assert keys(saved) == keys(source), f"{case}: config keys differ: {keys(saved) ^ keys(source)}"
    batch = load_file(os.path.join(case, "batch.safetensors"))
    batch.pop("labels", None)
    with torch.no_grad():
        logits = model(**batch).logits.float()
    ours = load_file(os.path.join(case, "moeforge.safetensors"))["logits"]
    # moeforge routes no padding (src/model/blocks/routed_rows.h): the positions the mask keeps are compared.
    if "attention_mask" in batch:
        kept = batch["attention_mask"].bool()
        logits, ours = logits[kept], ours[kept]
    err = ((logits - ours).norm() / logits.norm()).item()
    assert err <= 1e-4, f"{case}: logits differ, relative L2 error {err:.3e}"
    print(f"{case}: loads with no missing/unexpected keys; names, dtypes and config keys equal the source; "
          f"logits relative L2 error {err:.2e}")


if __name__ == "__main__":
    for case in sys.argv[1:]:
        check(case)
