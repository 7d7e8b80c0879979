#!/usr/bin/env python3
"""Transformers' bf16 arithmetic alone: its bf16 training step on a golden fixture against its own
float32 step on the same bf16-rounded weights, per checkpoint gradient, beside the error against
the float32 golden (what bf16_baseline.py records) and the weights' rounding alone. The bf16 step
runs --runs times, to show whether it varies between runs. moeforge's GPU model test prints the same
comparison for its CUDA step (ERR_SAME_WEIGHTS), so the two engines' arithmetic can be set side by side.

Runs on the GPU machine, from the repository root:
    python3 python/oracle/bf16_arithmetic.py --golden tests/data/golden --out bf16_arithmetic.json \\
        --runs 8 --cases nemotron_h_all_kinds_pad nemotron_h_packed_docs
Writes {case: {tensor: {"golden": [per run, sorted], "same_weights": [...], "rounding_alone": x}}}.
"""
import argparse
import json
import os

import torch
from safetensors.torch import load_file

from bf16_baseline import bf16_model, float32_model, rel_l2
from golden_fixtures import checkpoint_grads, documents_batch


def bf16_grads(folder, batch_cpu):
    """One bf16 training step's checkpoint gradients (as bf16_baseline.py runs it), and the model."""
    model = bf16_model(folder)
    model(**{k: v.cuda() for k, v in batch_cpu.items()}).loss.backward()
    return {n: g.float().cpu() for n, g in checkpoint_grads(model).items()}, model


def rounded_float32_grads(folder, batch_cpu, bf16):
    """The float32 step on the CPU with the bf16 model's weights (its fp32 buffers as it keeps them)."""
    ref = float32_model(folder)
    ref.load_state_dict({k: v.float().cpu() for k, v in bf16.state_dict().items()})
    ref.train()
    ref(**batch_cpu).loss.backward()
    return {n: g.float() for n, g in checkpoint_grads(ref).items()}


def run(folder, runs):
    batch_cpu, _ = documents_batch(load_file(os.path.join(folder, "batch.safetensors")))
    expected = load_file(os.path.join(folder, "expected.safetensors"))
    steps = []
    for i in range(runs):
        grads, model = bf16_grads(folder, batch_cpu)
        steps.append(grads)
        if i == 0:
            rounded = rounded_float32_grads(folder, batch_cpu, model)
    return {name: {"golden": sorted(rel_l2(s[name], expected["grad." + name]) for s in steps),
                   "same_weights": sorted(rel_l2(s[name], rounded[name]) for s in steps),
                   "rounding_alone": rel_l2(rounded[name], expected["grad." + name])}
            for name in steps[0]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--golden", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--cases", nargs="+", required=True)
    a = p.parse_args()
    results = {case: run(os.path.join(a.golden, case), a.runs) for case in a.cases}
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    for case, tensors in results.items():
        for name, r in tensors.items():
            spread = f"{r['golden'][0]:.3e}..{r['golden'][-1]:.3e}"
            print(f"{case} {name}: golden {spread}, same weights {r['same_weights'][0]:.3e}, "
                  f"rounding alone {r['rounding_alone']:.3e}")


if __name__ == "__main__":
    main()
