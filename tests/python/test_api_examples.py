"""examples/: the moeforge fine-tuning scripts run end to end on the CPU (tiny model, demo tokenizer),
and differ from their Hugging Face / TRL twins only in their docstrings and import lines."""
import json
import math
import os
import random
import shutil
import subprocess
import sys

import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402
from conftest import TINY_MOE_CONFIG  # noqa: E402


LIBRARY_IMPORTS = ("from transformers import", "from trl import", "from datasets import", "from moeforge import")


def code_lines(path):
    """The script without its docstring and imports of the libraries."""
    text = path.read_text()
    body = text.split('"""', 2)[2]
    return [line for line in body.splitlines() if not line.startswith(LIBRARY_IMPORTS)]


def test_scripts_differ_only_in_imports(source_dir):
    examples = source_dir / "examples"
    assert code_lines(examples / "finetune_hf.py") == code_lines(examples / "finetune_moeforge.py")
    assert "from moeforge import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments" in \
        (examples / "finetune_moeforge.py").read_text()


def test_sft_scripts_differ_only_in_imports(source_dir):
    examples = source_dir / "examples"
    assert code_lines(examples / "sft_trl.py") == code_lines(examples / "sft_moeforge.py")
    assert "from moeforge import AutoTokenizer, SFTConfig, SFTTrainer, load_dataset" in \
        (examples / "sft_moeforge.py").read_text()


@pytest.mark.parametrize("script", ["finetune_moeforge.py", "sft_moeforge.py"])
def test_example_runs_on_cpu(source_dir, tmp_path, script):
    """examples/`script` for 4 steps on a tiny Qwen3-MoE and 40 chats."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source_dir / "demo" / "tokenizer" / name, model / name)
    (model / "config.json").write_text(json.dumps(TINY_MOE_CONFIG))
    moeforge.AutoModelForCausalLM.from_config(model, seed=1).save_pretrained(model)
    rng = random.Random(0)
    with open(tmp_path / "chats.jsonl", "w") as f:
        for _ in range(40):
            s = "".join(rng.choice("ABCDEFGH") for _ in range(5))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Reverse: {s}"},
                                             {"role": "assistant", "content": s[::-1]}]}) + "\n")
    result = subprocess.run([sys.executable, str(source_dir / "examples" / script), "--model",
                             str(model), "--data", str(tmp_path / "chats.jsonl"), "--output_dir",
                             str(tmp_path / "out"), "--max_steps", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["eval_loss"])
    assert moeforge.AutoModelForCausalLM.from_pretrained(tmp_path / "out").config["model_type"] == "qwen3_moe"
