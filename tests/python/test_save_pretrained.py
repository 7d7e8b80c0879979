"""save_pretrained writes what Hugging Face reads: per-expert tensor names, the source's dtypes and
config keys, and a model that reloads to the same numbers.

Each golden fixture is stepped once with AdamW and saved (`moeforge step --save-pretrained`); the
saved folder must have the source checkpoint's tensor names, dtypes and config.json keys, and
reloading it must give the loss the first run measured after its step. GPT-OSS's MXFP4 release is
also saved as MXFP4 (`--save_quantization mxfp4`): its experts are quantised again, so the reloaded loss
is not the trained one; Transformers' logits of the folder must equal moeforge's. With MOEFORGE_EXPORT_SAVED=DIR
the cases are also written to DIR for python/oracle/check_saved_model.py, which loads them in
Transformers on a machine with PyTorch."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

SOURCE = Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY = os.environ.get("MOEFORGE_BINARY", str(SOURCE / "build/cpu-release/tools/cli/moeforge"))
GOLDEN = SOURCE / "tests/data/golden"
CASES = ["moe_untied_norm", "moe_tied_dense_aux_pad", "moe_sparse_step_top1", "dense_qwen3", "gpt_oss_mxfp4_tied"]
# How each case saves beyond the default (dense, in the config's dtype).
SAVE_FLAGS = {"gpt_oss_mxfp4_tied": ["--save_quantization", "mxfp4"]}


def tensor_table(folder):
    table = {}
    for f in sorted(Path(folder).glob("model*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                table[k] = st.get_slice(k).get_dtype()
    return table


def step(model, batch, out, *extra):
    subprocess.run([BINARY, "step", "--model", str(model), "--batch", str(batch), "--out", str(out), *extra],
                   check=True, capture_output=True, text=True)
    return load_file(str(out))


@pytest.mark.parametrize("case", CASES)
def test_save_reload_round_trip(case, tmp_path):
    src = GOLDEN / case
    saved = tmp_path / "saved"
    flags = SAVE_FLAGS.get(case, [])
    first = step(src, src / "batch.safetensors", tmp_path / "first.safetensors", "--lr", "0.01",
                 "--save-pretrained", str(saved), *flags)
    assert tensor_table(saved) == tensor_table(src)
    src_cfg, saved_cfg = (json.loads((p / "config.json").read_text()) for p in (src, saved))
    assert set(saved_cfg) == set(src_cfg)
    assert (saved / "generation_config.json").exists()
    again = step(saved, src / "batch.safetensors", tmp_path / "again.safetensors")
    if flags:  # quantised again after the step: the folder holds other weights than the trained ones
        assert saved_cfg["quantization_config"]["quant_method"] == "mxfp4"
    else:
        np.testing.assert_allclose(again["loss"], first["loss_after_step"], rtol=1e-6)

    export = os.environ.get("MOEFORGE_EXPORT_SAVED")
    if export:
        dst = Path(export) / case
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(saved, dst / "saved")
        shutil.copytree(src, dst / "source")
        shutil.copy(src / "batch.safetensors", dst / "batch.safetensors")
        shutil.copy(tmp_path / "again.safetensors", dst / "moeforge.safetensors")
