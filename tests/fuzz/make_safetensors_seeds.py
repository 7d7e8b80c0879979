#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_safetensors (corpus/safetensors/): small valid files written by the
Python safetensors library, plus the single-file cases of the malformed corpus. Run once from the
repository root with the project venv; the outputs are committed:
    .venv/bin/python tests/fuzz/make_safetensors_seeds.py
"""
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
OUT = HERE / "corpus" / "safetensors"
MALFORMED = HERE.parent / "data" / "safetensors" / "malformed"


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    rng = np.random.default_rng(0)
    types = [np.float64, np.float32, ml_dtypes.bfloat16, np.float16, ml_dtypes.float8_e4m3fn,
             ml_dtypes.float8_e5m2, np.int64, np.int32, np.int16, np.int8, np.uint8]
    every = {f"t{i}": rng.integers(0, 256, size=3 * np.dtype(t).itemsize, dtype=np.uint8).view(t)
             for i, t in enumerate(types)}
    every["flags"] = np.array([True, False, True])
    save_file(every, OUT / "every_dtype.safetensors", metadata={"format": "pt"})
    save_file({"model.embed_tokens.weight": np.ones((4, 2), np.float32),
               "model.norm.weight": np.ones((2,), ml_dtypes.bfloat16)}, OUT / "small_model.safetensors")
    save_file({"scalar": np.array(1.5, np.float32), "empty": np.zeros((0, 3), np.float16)},
              OUT / "scalar_and_empty.safetensors")
    save_file({}, OUT / "no_tensors.safetensors", metadata={"note": "only metadata"})
    for case in sorted(MALFORMED.glob("*.safetensors")):
        shutil.copy(case, OUT / f"malformed_{case.name}")
    print(f"wrote {len(list(OUT.iterdir()))} seeds to {OUT}")


if __name__ == "__main__":
    main()
