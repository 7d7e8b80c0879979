"""moeforge.SFTConfig / SFTTrainer under TRL's names and meanings (issue 21). The defaults are TRL 1.16's
(trl/trainer/sft_config.py: learning_rate 2e-5, gradient_checkpointing on, dataset_text_field "text",
max_length 1024, packing off, assistant_only_loss off, completion_only_loss None)."""
import json
import math
import os

import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402
from moeforge import SFTConfig, SFTTrainer  # noqa: E402

CHATS = [{"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": w}]}
         for w in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")]


def test_defaults_are_trls():
    config = SFTConfig(output_dir="x")
    assert (config.learning_rate, config.gradient_checkpointing, config.dataset_text_field, config.max_length,
            config.packing, config.assistant_only_loss, config.completion_only_loss) == \
        (2e-5, True, "text", 1024, False, False, None)
    with pytest.raises(ValueError, match="max_length"):
        SFTConfig(output_dir="x", max_seq_length=64)


def sft(tiny_model, tmp_path, data, **config):
    args = SFTConfig(output_dir=str(tmp_path / "out"), save_steps=0, per_device_train_batch_size=2,
                     num_train_epochs=1, max_length=64, report_to="none", gradient_checkpointing=False, **config)
    return SFTTrainer(model=str(tiny_model), args=args, train_dataset=data).train()


def test_packing_off_puts_one_example_in_each_row(tiny_model, tmp_path):
    # One epoch of 12 examples in rows of 2: 6 steps unpacked; packed, the short chats share rows.
    assert sft(tiny_model, tmp_path / "a", CHATS).global_step == 6
    assert sft(tiny_model, tmp_path / "b", CHATS, packing=True).global_step < 6


def test_loss_masks_follow_the_options(tiny_model, tmp_path):
    # assistant_only_loss trains on fewer tokens of the same rows, so the loss differs; both are finite.
    every = sft(tiny_model, tmp_path / "a", CHATS).training_loss
    assistant = sft(tiny_model, tmp_path / "b", CHATS, assistant_only_loss=True).training_loss
    assert math.isfinite(every) and math.isfinite(assistant) and every != assistant
    pairs = [{"prompt": f"Say {m['messages'][0]['content']}:", "completion": f" {m['messages'][1]['content']}"}
             for m in CHATS]
    completion = sft(tiny_model, tmp_path / "c", pairs).training_loss
    whole = sft(tiny_model, tmp_path / "d", pairs, completion_only_loss=False).training_loss
    assert completion != whole


def test_dataset_text_field_names_the_column(tiny_model, tmp_path):
    rows = [{"body": f"document number {i}"} for i in range(4)]
    assert sft(tiny_model, tmp_path / "a", rows, dataset_text_field="body").global_step == 2
    with pytest.raises(Exception, match=r"train_dataset\[0\]: not a dataset line moeforge reads.*keys: 'body'"):
        sft(tiny_model, tmp_path / "b", rows)


def test_load_dataset_reads_json_lines_as_the_datasets_library(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": str(i)}) + "\n" for i in range(5)))
    assert moeforge.load_dataset("json", data_files=str(path), split="train[1:3]") == [{"text": "1"}, {"text": "2"}]
    assert moeforge.load_dataset("json", data_files=str(path)) == {"train": [{"text": str(i)} for i in range(5)]}
    with pytest.raises(ValueError, match="local JSON Lines"):
        moeforge.load_dataset("imdb")


def test_cli_eval_strategy_as_transformers(tiny_model, run_moeforge, tmp_path):
    # eval_strategy "steps" without eval_steps evaluates every logging_steps, as Transformers does.
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    common = ["train", "--model", tiny_model, "--train_file", tmp_path / "data.jsonl", "--max_steps", 4,
              "--save_steps", 0, "--eval_ratio", 0.25, "--logging_steps", 2]

    def eval_steps(name, *flags):
        run_moeforge(*common, "--output_dir", tmp_path / name, *flags)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in records if "eval_loss" in r]

    assert eval_steps("steps", "--eval_strategy", "steps") == [2, 4]  # step 4's is also the final evaluation
    assert eval_steps("no", "--eval_strategy", "no", "--eval_steps", 1) == [4]  # eval_steps ignored, as Transformers


def test_cli_eval_strategy_epoch_evaluates_at_the_end_of_each_epoch(tiny_model, run_moeforge, tmp_path):
    # As test_api_transformers_arguments.py's Python run: epoch e ends in the step taking its last batch.
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    common = ["train", "--model", tiny_model, "--train_file", tmp_path / "data.jsonl", "--save_steps", 0,
              "--eval_ratio", 0.25, "--packing=false", "--per_device_train_batch_size", 1]

    def records(name, *flags):
        run_moeforge(*common, "--output_dir", tmp_path / name, *flags)
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    per_epoch = max(r["step"] for r in records("one", "--num_train_epochs", 1))
    assert per_epoch % 2 == 1, "an epoch should end inside a step of two batches"
    two = records("two", "--num_train_epochs", 2, "--gradient_accumulation_steps", 2, "--eval_strategy", "epoch",
                  "--eval_steps", 1)
    epoch_ends = [math.ceil(e * per_epoch / 2) for e in (1, 2)]
    assert max(r["step"] for r in two) == epoch_ends[-1]
    assert [r["step"] for r in two if "eval_loss" in r] == epoch_ends  # the last is also the final evaluation


def test_alpaca_and_sharegpt_rows_train(tiny_model, tmp_path):
    alpaca = [{"instruction": "Repeat the word.", "input": w, "output": w} for w in ("one", "two", "three", "four")]
    sharegpt = [{"conversations": [{"from": "human", "value": w}, {"from": "gpt", "value": w}]}
                for w in ("one", "two", "three", "four")]
    assert sft(tiny_model, tmp_path / "a", alpaca).global_step == 2
    assert sft(tiny_model, tmp_path / "s", sharegpt).global_step == 2


def test_a_training_arguments_takes_sftconfigs_defaults(tiny_model, tmp_path):
    args = moeforge.TrainingArguments(output_dir=str(tmp_path / "out"), max_seq_length=48, learning_rate=1e-3)
    trainer = SFTTrainer(model=str(tiny_model), args=args, train_dataset=CHATS)
    assert isinstance(trainer.args, SFTConfig)
    assert (trainer.args.max_length, trainer.args.learning_rate, trainer.args.packing) == (48, 1e-3, False)
