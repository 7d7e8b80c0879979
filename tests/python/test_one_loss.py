"""One loss, named once with Transformers' meanings (issue 21): `loss` is what is optimised, the
language-modelling loss plus router_aux_loss_coef x the aux loss (as Transformers' MoE models return it);
`lm_loss` and `aux_loss` its parts; `eval_loss` that loss on held-out data. The progress line, metrics.jsonl,
the report, the reload check and Python's TrainOutput (training_loss: the mean over the run's steps, as
Transformers' Trainer) all say the same numbers."""
import json
import math
import os
import random
import re

import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402
from conftest import TINY_MOE_CONFIG  # noqa: E402

NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan)"
STEP_LINE = re.compile(rf"step (\d+)/\d+ \| loss {NUMBER} \(lm_loss {NUMBER}, aux_loss {NUMBER}\)")


def write_chats(path, n, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            s = "".join(rng.choice("ABCDEFGH") for _ in range(5))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Reverse: {s}"},
                                             {"role": "assistant", "content": s[::-1]}]}) + "\n")


def read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_every_output_names_the_same_losses(tiny_model, run_moeforge, tmp_path):
    write_chats(tmp_path / "chats.jsonl", 40)
    out = tmp_path / "out"
    result = run_moeforge("train", "--model", tiny_model, "--train_file", tmp_path / "chats.jsonl", "--output_dir",
                          out, "--max_steps", 4, "--logging_steps", 1, "--eval_ratio", 0.2, "--eval_steps", 2,
                          "--max_seq_length", 64, "--per_device_train_batch_size", 2, "--save_steps", 0)
    records = read_metrics(out)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    coef = TINY_MOE_CONFIG["router_aux_loss_coef"]
    for r in steps:  # loss is the optimised loss: its parts add up
        assert r["aux_loss"] > 0
        assert r["loss"] == pytest.approx(r["lm_loss"] + coef * r["aux_loss"], rel=1e-12)

    printed = {int(m[1]): tuple(map(float, m.groups()[1:])) for m in STEP_LINE.finditer(result.stderr)}
    assert sorted(printed) == [1, 2, 3, 4], result.stderr
    for r in steps:  # the progress line prints the record's numbers under the record's names
        assert printed[r["step"]] == pytest.approx((r["loss"], r["lm_loss"], r["aux_loss"]), rel=1e-5)

    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2  # steps 2 and 4; step 4's is also the final evaluation, not made again
    final = float(re.search(rf"final eval_loss {NUMBER}", result.stderr)[1])
    assert final == pytest.approx(evals[-1], rel=1e-5)
    reload = re.search(rf"reload check: .*; its eval_loss {NUMBER} \(the trained model's: {NUMBER}\)", result.stderr)
    assert reload, result.stderr
    assert float(reload[1]) == pytest.approx(evals[-1], rel=1e-5)  # float32 weights reload exactly
    assert float(reload[2]) == pytest.approx(evals[-1], rel=1e-5)
    assert "held-out" not in result.stderr

    html = (out / "report.html").read_text()
    for name in ("loss", "eval_loss", "aux_loss"):
        assert f">{name}<" in html, f"the report has no series named {name}"


def test_reload_check_without_held_out_data_says_what_it_measured(tiny_model, run_moeforge, tmp_path):
    write_chats(tmp_path / "chats.jsonl", 12)
    result = run_moeforge("train", "--model", tiny_model, "--train_file", tmp_path / "chats.jsonl", "--output_dir",
                          tmp_path / "out", "--max_steps", 1, "--save_steps", 0)
    assert "held-out" not in result.stderr and "eval_loss" not in result.stderr
    assert re.search(rf"reload check: .*; its loss on a training batch {NUMBER}", result.stderr), result.stderr


def test_training_loss_is_the_mean_of_the_steps_loss(tiny_model, tmp_path):
    write_chats(tmp_path / "chats.jsonl", 40)
    rows = [json.loads(line) for line in (tmp_path / "chats.jsonl").read_text().splitlines()]
    model = moeforge.AutoModelForCausalLM.from_pretrained(tiny_model)
    args = moeforge.TrainingArguments(output_dir=str(tmp_path / "py"), max_steps=5, logging_steps=1, save_steps=0,
                                      per_device_train_batch_size=2, max_seq_length=64, report_to="none")
    result = moeforge.Trainer(model=model, args=args, train_dataset=rows).train()
    losses = [r["loss"] for r in read_metrics(tmp_path / "py") if "loss" in r]
    assert len(losses) == 5 and len(set(losses)) > 1
    assert result.training_loss == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert result.metrics["train_loss"] == result.training_loss
    assert math.isfinite(result.training_loss)
