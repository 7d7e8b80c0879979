"""Shared fixtures of the Python tests: the moeforge binary under test and the source tree.

ctest sets MOEFORGE_BINARY and MOEFORGE_SOURCE_DIR; run by hand, point them at a build:
    MOEFORGE_BINARY=build/cpu-release/tools/cli/moeforge .venv/bin/python -m pytest tests/python
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file


def rel_l2(have, want):
    """Relative L2 error ||have - want|| / ||want||, the tolerance measure of DESIGN.md section 5."""
    have, want = np.asarray(have, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(have - want) / max(np.linalg.norm(want), 1e-30))


def real_token_logits(logits, folder):
    """Logits [B, T, V] at the positions the attention mask of folder's batch.safetensors keeps: the MoE
    blocks do not route padding (src/model/blocks/routed_rows.h), so padded positions' logits are not
    Transformers' and are not compared."""
    batch = load_file(str(Path(folder) / "batch.safetensors"))
    return np.asarray(logits)[batch["attention_mask"] != 0] if "attention_mask" in batch else np.asarray(logits)


# A tiny Qwen3-MoE that trains in seconds on the CPU (with the demo tokenizer: tiny_model).
TINY_MOE_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 300, "hidden_size": 32,
    "intermediate_size": 48, "moe_intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True,
    "output_router_logits": True, "router_aux_loss_coef": 0.01, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "max_position_embeddings": 256, "initializer_range": 0.05, "tie_word_embeddings": False, "torch_dtype": "float32",
}


@pytest.fixture(scope="session")
def source_dir() -> Path:
    return Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))


@pytest.fixture(scope="session")
def moeforge_binary() -> Path:
    binary = os.environ.get("MOEFORGE_BINARY")
    if not binary:
        pytest.skip("MOEFORGE_BINARY is not set (ctest sets it to the built moeforge)")
    if not Path(binary).is_file():
        pytest.fail(f"MOEFORGE_BINARY={binary} does not exist")
    return Path(binary)


@pytest.fixture(scope="session")
def run_moeforge(moeforge_binary):
    """Runs `moeforge *args`; returns the CompletedProcess (text mode, stdout/stderr captured)."""

    def run(*args, check=True, **kwargs):
        result = subprocess.run([str(moeforge_binary), *map(str, args)], capture_output=True,
                                text=True, errors="replace", **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"moeforge {' '.join(map(str, args))} exited {result.returncode}:\n"
                                 f"{result.stderr}")
        return result

    return run


@pytest.fixture(scope="session")
def demo_data(moeforge_binary, tmp_path_factory):
    """The demo's tiny Qwen3-MoE (8 experts, top 2) and its training data (`moeforge demo`)."""
    demo = tmp_path_factory.mktemp("demo") / "demo"
    subprocess.run([str(moeforge_binary), "demo", "--output_dir", str(demo), "--max_steps", "1", "--eval_questions", "4"],
                   check=True, capture_output=True)
    return demo


@pytest.fixture(scope="session")
def tiny_model(source_dir, tmp_path_factory):
    """A model folder of TINY_MOE_CONFIG with the demo tokenizer and random weights from moeforge's own
    from_config (needs the Python module: use it from test modules that skip without it)."""
    import moeforge

    folder = tmp_path_factory.mktemp("tiny") / "model"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source_dir / "demo" / "tokenizer" / name, folder / name)
    (folder / "config.json").write_text(json.dumps(TINY_MOE_CONFIG))
    moeforge.AutoModelForCausalLM.from_config(folder, seed=7).save_pretrained(folder)
    return folder
