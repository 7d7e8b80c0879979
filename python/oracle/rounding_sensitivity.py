#!/usr/bin/env python3
"""Which weights' bf16 rounding moves a gradient: moeforge's float32 CPU step on copies of a golden
fixture in which one module's weights at a time are rounded to bf16, each gradient's error against
the fixture's float32 golden. A tensor that fails the GPU model test's bf16 limit by a little is
either sensitive to one op (a place to keep in higher precision) or to every input alike (bf16 noise
that no single op removes); this tells the two apart without a GPU.

Runs on the development machine, from the repository root, with a built moeforge binary:
    python3 python/oracle/rounding_sensitivity.py --moeforge build/cuda-release/tools/cli/moeforge \\
        --fixture tests/data/golden/nemotron_h_all_kinds_pad --tensor grad.backbone.layers.0.mixer.dt_bias
Prints, for each module (a weight name without its last part) and for every weight at once, the
relative L2 error of each --tensor, and its error per element where it has at most 16.
"""
import argparse
import os
import shutil
import subprocess
import tempfile

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def bf16_rounded(a):
    return a.astype(ml_dtypes.bfloat16).astype(np.float32) if a.dtype == np.float32 else a


def step(moeforge, model_dir, fixture, adamw, out):
    """moeforge's float32 CPU step of the model in model_dir on the fixture's batch, written to out."""
    args = [moeforge, "step", "--model", model_dir, "--batch", os.path.join(fixture, "batch.safetensors"),
            "--out", out, "--device", "cpu", "--dtype", "float32"]
    for flag, key in (("--lr", "lr"), ("--adam-beta1", "adam_beta1"), ("--adam-beta2", "adam_beta2"),
                      ("--adam-eps", "adam_epsilon"), ("--weight-decay", "weight_decay")):
        args += [flag, adamw[key]]
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"moeforge step on {model_dir} failed ({run.returncode}): {run.stderr.strip()}")
    return load_file(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--moeforge", required=True, help="the moeforge binary")
    p.add_argument("--fixture", required=True, help="a golden fixture folder (config, model, batch, expected)")
    p.add_argument("--tensor", nargs="+", required=True, help="names in expected.safetensors, e.g. grad.<weight>")
    a = p.parse_args()

    model_path = os.path.join(a.fixture, "model.safetensors")
    weights = load_file(model_path)
    metadata = safe_open(model_path, "np").metadata()
    expected_path = os.path.join(a.fixture, "expected.safetensors")
    adamw = safe_open(expected_path, "np").metadata()
    expected = load_file(expected_path)
    missing = [t for t in a.tensor if t not in expected]
    if missing:
        p.error(f"{expected_path} has no tensor {missing}")

    modules = sorted({name.rsplit(".", 1)[0] for name in weights})
    groups = [(m, lambda name, m=m: name.rsplit(".", 1)[0] == m) for m in modules]
    groups.append(("every weight", lambda name: True))
    wants = {t: expected[t].astype(np.float64) for t in a.tensor}
    results = {t: [] for t in a.tensor}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(a.fixture, "config.json"), tmp)
        for label, chosen in groups:
            rounded = {n: bf16_rounded(w) if chosen(n) else w for n, w in weights.items()}
            save_file(rounded, os.path.join(tmp, "model.safetensors"), metadata=metadata)
            have = step(a.moeforge, tmp, a.fixture, adamw, os.path.join(tmp, "out.safetensors"))
            for t, want in wants.items():
                relative = (have[t].astype(np.float64) - want) / np.linalg.norm(want)
                results[t].append((np.linalg.norm(relative), label, relative))
    for t, rows in results.items():
        print(f"{t}: golden {np.array2string(expected[t], precision=3)}")
        for err, label, per_element in sorted(rows, key=lambda r: -r[0]):
            detail = np.array2string(per_element, precision=4) if per_element.size <= 16 else ""
            print(f"  {err:.3e}  {label}  {detail}")


if __name__ == "__main__":
    main()
