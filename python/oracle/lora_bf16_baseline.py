#!/usr/bin/env python3
"""How far PEFT + Transformers' own bf16 LoRA steps are from their float32 ones on the LoRA fixtures:
the floor moeforge's bf16 CUDA LoRA test is measured against (tests/gpu/gpu_lora_test.cpp), as
bf16_baseline.py is for the full-model goldens.

For each fixture of tests/data/lora (lora_fixtures.CASES, or --cases): the base model in bf16 on CUDA
(sdpa attention, eager experts: the fixtures' odd sizes lack grouped_mm's 16-byte strides), the
fixture's initial adapter loaded trainable with PEFT's defaults, the fixture's two AdamW steps; relative
L2 error of the logits, the losses and every adapter gradient at steps 0 and 1 against the float32
expected.safetensors. Runs on the GPU machine:
    python3 python/oracle/lora_bf16_baseline.py --lora tests/data/lora --out bf16_baseline.json
"""
import argparse
import json
import os

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bf16_baseline import rel_l2
from golden_fixtures import ADAMW
from lora_fixtures import CASES, adapter_grads, trainable


def run(folder):
    batch = {k: v.cuda() for k, v in load_file(os.path.join(folder, "batch.safetensors")).items()}
    expected = load_file(os.path.join(folder, "expected.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    base.config._experts_implementation = "eager"
    model = PeftModel.from_pretrained(base, os.path.join(folder, "adapter"), is_trainable=True)
    model.train()
    keys = {k[len("grad."):] for k in expected if k.startswith("grad.")}
    scalar = lambda have, name: abs(have - expected[name].item()) / abs(expected[name].item())

    out = model(**batch)
    out.loss.backward()
    errors = {"logits": rel_l2(out.logits.float(), expected["logits"]), "loss": scalar(out.loss.item(), "loss")}
    for k, g in adapter_grads(model, keys, "step 0").items():
        errors["grad." + k] = rel_l2(g, expected["grad." + k])
    opt = torch.optim.AdamW(trainable(model).values(), **ADAMW)
    opt.step()
    opt.zero_grad()
    out = model(**batch)
    out.loss.backward()
    errors["loss_1"] = scalar(out.loss.item(), "loss_1")
    for k, g in adapter_grads(model, keys, "step 1").items():
        errors["grad1." + k] = rel_l2(g, expected["grad1." + k])
    opt.step()
    with torch.no_grad():
        errors["loss_2"] = scalar(model(**batch).loss.item(), "loss_2")
    return {"errors": errors, "max_error": max(errors.values()), "worst": max(errors, key=errors.get)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lora", default="tests/data/lora")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    a = p.parse_args()
    results = {case: run(os.path.join(a.lora, case)) for case in a.cases}
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
    for case, r in results.items():
        above = sum(v > 2e-2 for v in r["errors"].values())
        print(f"{case}: max {r['max_error']:.4f} ({r['worst']}), {above} of {len(r['errors'])} above 2e-2")


if __name__ == "__main__":
    main()
