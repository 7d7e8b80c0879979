#!/usr/bin/env python3
"""Compares two fixture trees (e.g. the committed tests/data/lora and the same script's output on
another machine) tensor by tensor: every *.safetensors file under A must exist under B with the same
tensor names and shapes; prints the largest relative L2 difference per file and fails above 1e-6.
    python3 python/oracle/compare_fixtures.py A B
"""
import os
import sys

import torch
from safetensors.torch import load_file


def main(a, b):
    worst = 0.0
    for root, _, files in os.walk(a):
        for name in sorted(files):
            if not name.endswith(".safetensors"):
                continue
            rel = os.path.relpath(os.path.join(root, name), a)
            x, y = load_file(os.path.join(a, rel)), load_file(os.path.join(b, rel))
            assert set(x) == set(y), f"{rel}: tensor names differ: {sorted(set(x) ^ set(y))}"
            err = 0.0
            for k in x:
                assert x[k].shape == y[k].shape, f"{rel}: {k} shape {tuple(x[k].shape)} vs {tuple(y[k].shape)}"
                d, n = (x[k].double() - y[k].double()).norm(), x[k].double().norm()
                err = max(err, (d / n).item() if n > 0 else d.item())
            print(f"{rel}: {len(x)} tensors, largest relative L2 difference {err:.2e}")
            worst = max(worst, err)
    print(f"largest difference {worst:.2e}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
