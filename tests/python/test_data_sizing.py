"""Truncation is counted and the default batch fits the data (issue 21): examples longer than
max_seq_length are warned about and recorded with the tokens they lose, and a run that leaves
max_seq_length and per_device_train_batch_size to moeforge does not pad a small dataset up to
8 x 2048 tokens. Token counts come from the tokenizers library on the demo tokenizer, plus the EOS
that text examples end with."""
import json
import os
import re

import pytest
from tokenizers import Tokenizer

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)


def text_lengths(model, lines):
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    eos = tokenizer.token_to_id(json.loads((model / "tokenizer_config.json").read_text())["eos_token"])
    lengths = []
    for line in lines:
        ids = tokenizer.encode(line, add_special_tokens=True).ids
        lengths.append(len(ids) + (not ids or ids[-1] != eos))
    return lengths


def config_value(folder, key):
    match = re.search(rf'^{key}: "([^"]*)"', (folder / "moeforge_config.yaml").read_text(), re.M)
    return match and match[1]


def test_truncation_is_counted_and_recorded(tiny_model, run_moeforge, tmp_path):
    lines = ["short line", "a much longer line of text " * 6, "another fairly long line of words " * 4, "tiny"]
    (tmp_path / "data.txt").write_text("\n".join(lines) + "\n")
    lengths = text_lengths(tiny_model, lines)
    limit = 16
    examples = sum(n > limit for n in lengths)
    dropped = sum(n - limit for n in lengths if n > limit)
    assert examples == 2
    out = tmp_path / "out"
    result = run_moeforge("train", "--model", tiny_model, "--train_file", tmp_path / "data.txt", "--output_dir", out,
                          "--max_steps", 1, "--save_steps", 0, "--max_seq_length", limit)
    what = (f"{examples} of {len(lines)} training examples are longer than max_seq_length {limit} and truncated: "
            f"{dropped} of {sum(lengths)} tokens dropped")
    assert what in result.stderr
    assert f"# truncated: {what}" in (out / "moeforge_config.yaml").read_text()
    split = run_moeforge("train", "--model", tiny_model, "--train_file", tmp_path / "data.txt", "--output_dir",
                         tmp_path / "split", "--max_steps", 1, "--save_steps", 0, "--max_seq_length", limit,
                         "--packing_overflow", "split")
    assert "truncated" not in split.stderr


def test_default_sequence_and_batch_fit_a_small_dataset(tiny_model, run_moeforge, tmp_path):
    lines = ["the same example line"] * 3  # three documents of one length: one sequence each
    (tmp_path / "data.txt").write_text("\n".join(lines) + "\n")
    length = text_lengths(tiny_model, lines)[0]
    out = tmp_path / "out"
    result = run_moeforge("train", "--model", tiny_model, "--train_file", tmp_path / "data.txt", "--output_dir", out,
                          "--max_steps", 1, "--save_steps", 0)
    assert config_value(out, "max_seq_length") == str(length)
    assert config_value(out, "per_device_train_batch_size") == "3"
    assert f"micro-batches of 3 x {length} tokens" in result.stderr
    given = run_moeforge("train", "--model", tiny_model, "--train_file", tmp_path / "data.txt", "--output_dir",
                         tmp_path / "given", "--max_steps", 1, "--save_steps", 0, "--max_seq_length", 64,
                         "--per_device_train_batch_size", 4)
    assert "micro-batches of 4 x 64 tokens" in given.stderr  # what the user sets is kept


def test_python_trainer_sizes_sequence_and_batch_to_a_small_dataset(tiny_model, tmp_path, capfd):
    """The Python Trainer with Transformers' default batch (8) and max_seq_length left unset: sequences
    of the longest example, and a batch of the 3 sequences one epoch fills, not 8 (a Transformers
    DataLoader's batch holds at most the dataset)."""
    import moeforge

    lines = ["the same example line"] * 3
    length = text_lengths(tiny_model, lines)[0]
    model = moeforge.AutoModelForCausalLM.from_pretrained(str(tiny_model))
    tokenizer = moeforge.AutoTokenizer.from_pretrained(str(tiny_model))
    args = moeforge.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, save_steps=0, report_to="none")
    assert args.per_device_train_batch_size == 8 and args.max_seq_length is None
    moeforge.Trainer(model=model, args=args, train_dataset=[{"text": t} for t in lines], tokenizer=tokenizer).train()
    assert f"micro-batches of 3 x {length} tokens" in capfd.readouterr().err
