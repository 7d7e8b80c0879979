"""report_to: tensorboard writes event files that TensorBoard's own reader loads, with the metrics of
metrics.jsonl under the Hugging Face Trainer's tag names."""
import json
import os
import subprocess
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SOURCE = Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY = os.environ.get("MOEFORGE_BINARY", str(SOURCE / "build/cpu-release/tools/cli/moeforge"))


def test_tensorboard_events_match_metrics(tmp_path):
    demo = tmp_path / "demo"
    subprocess.run([BINARY, "demo", "--output_dir", str(demo), "--max_steps", "2", "--eval_questions", "1"],
                   check=True, capture_output=True)
    out = tmp_path / "run"
    subprocess.run([BINARY, "train", "--model", str(demo / "model"), "--train_file", str(demo / "train.jsonl"),
                    "--output_dir", str(out), "--max_steps", "5", "--per_device_train_batch_size", "2",
                    "--max_seq_length", "64", "--logging_steps", "1", "--save_steps", "0",
                    "--report_to", "tensorboard"], check=True, capture_output=True)
    acc = EventAccumulator(str(out / "runs"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert tag in tags, f"{tag} missing from {tags}"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(losses) == [r["step"] for r in records if "loss" in r]
    for r in records:
        if "loss" in r:
            assert abs(losses[r["step"]] - r["loss"]) <= 1e-6 * max(1.0, abs(r["loss"]))
