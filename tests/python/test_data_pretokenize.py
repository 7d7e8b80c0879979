"""`moeforge pretokenize` against Hugging Face: the .mfbin file it writes, read back with numpy, holds
exactly the ids and loss masks that Transformers' AutoTokenizer gives under the rules of
src/data/example_encoder.h (text + EOS, apply_chat_template with return_assistant_tokens_mask or the
prefix rule, prompt/completion by offsets); and bad lines fail naming FILE:LINE."""
import importlib.util
import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

SOURCE = Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
DATASETS = SOURCE / "tests" / "data" / "datasets"
QWEN3 = SOURCE.parent / "shared" / "assets" / "tokenizers" / "qwen3"
DEEPSEEK = SOURCE.parent / "shared" / "assets" / "tokenizers" / "deepseek_v3"


def load_fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", DATASETS / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixtures = load_fixture_module()


def read_mfbin(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"MFTOKBIN"
    version, dtype = struct.unpack_from("<II", data, 8)
    assert (version, dtype) == (1, 1)
    n_docs, n_tokens, vocab, off_at, tok_at, bits_at, meta_at, meta_len = struct.unpack_from("<8Q", data, 16)
    offsets = np.frombuffer(data, "<u8", n_docs + 1, off_at)
    tokens = np.frombuffer(data, "<u4", n_tokens, tok_at)
    bits = np.unpackbits(np.frombuffer(data, np.uint8, (n_tokens + 7) // 8, bits_at), bitorder="little")[:n_tokens]
    meta = json.loads(data[meta_at : meta_at + meta_len])
    docs = [(tokens[offsets[d] : offsets[d + 1]].tolist(), bits[offsets[d] : offsets[d + 1]].tolist()) for d in range(n_docs)]
    return docs, vocab, meta


@pytest.fixture
def pretokenize(moeforge_binary):
    def run(tokenizer, input_path, output_path, *extra):
        return subprocess.run([str(moeforge_binary), "pretokenize", "--tokenizer", str(tokenizer), "--input", str(input_path),
                               "--output", str(output_path), *extra], capture_output=True, text=True)

    return run


def tokenizer_json_backed(folder):
    """Transformers' tokenizer over the folder's tokenizer.json as the tokenizers library reads it, with the
    special tokens and chat template of its tokenizer_config.json. Transformers 5's AutoTokenizer rebuilds
    DeepSeek-V3's tokenizer as a LlamaTokenizer with a Metaspace pre-tokenizer, whose ids differ from
    tokenizer.json's; moeforge gives tokenizer.json's (the ids of `tokenizers`), so that is the oracle."""
    from transformers import PreTrainedTokenizerFast

    config = json.loads((folder / "tokenizer_config.json").read_text())
    special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in config.items()
               if k in ("bos_token", "eos_token", "pad_token") and v is not None}
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), chat_template=config["chat_template"],
                                   **special)


def check_against_transformers(pretokenize, folder, examples, has_generation, tmp_path, hf=None):
    from transformers import AutoTokenizer

    hf = hf or AutoTokenizer.from_pretrained(str(folder))
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    out = tmp_path / "out.mfbin"
    result = pretokenize(folder, jsonl, out)
    assert result.returncode == 0, result.stderr
    docs, vocab, meta = read_mfbin(out)
    assert vocab == len(hf)
    assert len(docs) == len(examples)
    for i, (example, (ids, mask)) in enumerate(zip(examples, docs)):
        want_ids, want_mask = fixtures.expected(hf, example, has_generation)
        assert ids == list(want_ids), f"line {i + 1}: {example}"
        assert mask == list(want_mask), f"line {i + 1}: {example}"


@pytest.mark.parametrize("folder,has_generation", [("tiny_tokenizer", True), ("tiny_tokenizer_prefix", False)])
def test_tiny_tokenizer_matches_transformers(pretokenize, folder, has_generation, tmp_path):
    check_against_transformers(pretokenize, DATASETS / folder, fixtures.EXAMPLES, has_generation, tmp_path)


REAL_EXAMPLES = [
    {"text": "Hello, world! Unicode: caf\u00e9 \u65e5\u672c\u8a9e \U0001F600\n  indented\r\nend"},
    {"text": "ends with the special token<|im_end|>"},
    {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."},
                  {"role": "assistant", "content": "Blue."}]},
    {"prompt": "The capital of France is", "completion": " Paris."},
]


@pytest.mark.skipif(not QWEN3.exists(), reason="shared Qwen3 tokenizer assets not present")
def test_qwen3_matches_transformers(pretokenize, tmp_path):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    examples = REAL_EXAMPLES + [
        {"messages": [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": "", "tool_calls": [
                          {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}],
         "tools": tools},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]},
    ]
    check_against_transformers(pretokenize, QWEN3, examples, False, tmp_path)


@pytest.mark.skipif(not DEEPSEEK.exists(), reason="shared DeepSeek-V3 tokenizer assets not present")
def test_deepseek_v3_matches_transformers(pretokenize, tmp_path):
    check_against_transformers(pretokenize, DEEPSEEK, REAL_EXAMPLES, False, tmp_path, hf=tokenizer_json_backed(DEEPSEEK))


def test_bad_line_names_file_and_line(pretokenize, tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"messages": [{"role": "user"}]}\n')
    result = pretokenize(DATASETS / "tiny_tokenizer", jsonl, tmp_path / "bad.mfbin")
    assert result.returncode == 2
    assert f"{jsonl}:2: messages[0] (role 'user') has no 'content'" in result.stderr
    assert not (tmp_path / "bad.mfbin").exists()

    result = pretokenize(DATASETS / "tiny_tokenizer", jsonl, tmp_path / "skip.mfbin", "--skip-bad-lines")
    assert result.returncode == 0, result.stderr
    assert "1 bad lines skipped" in result.stderr
    docs, _, meta = read_mfbin(tmp_path / "skip.mfbin")
    assert len(docs) == 1
    assert meta["source"] == str(jsonl)


def test_trl_encoding_options_as_train_takes_them(pretokenize, tmp_path):
    """pretokenize takes train's TRL options: with assistant_only_loss and completion_only_loss false every
    token of a conversation or prompt+completion trains (TRL's meaning), the ids unchanged; text under
    another key (dataset_text_field) encodes as the same text under "text"."""
    from transformers import AutoTokenizer

    folder = DATASETS / "tiny_tokenizer"
    hf = AutoTokenizer.from_pretrained(str(folder))
    examples = [e for e in fixtures.EXAMPLES if "messages" in e or "prompt" in e]
    assert any("messages" in e for e in examples) and any("prompt" in e for e in examples)
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in examples))
    out = tmp_path / "all_tokens.mfbin"
    result = pretokenize(folder, jsonl, out, "--assistant_only_loss=false", "--completion_only_loss=false")
    assert result.returncode == 0, result.stderr
    docs, _, _ = read_mfbin(out)
    for example, (ids, mask) in zip(examples, docs):
        want_ids, want_mask = fixtures.expected(hf, example, True)
        assert ids == list(want_ids), example
        assert 0 in want_mask and mask == [1] * len(ids), example

    texts = [e["text"] for e in fixtures.EXAMPLES if "text" in e]
    plain, renamed = tmp_path / "text.jsonl", tmp_path / "content.jsonl"
    plain.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    renamed.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    assert pretokenize(folder, plain, tmp_path / "text.mfbin").returncode == 0
    result = pretokenize(folder, renamed, tmp_path / "content.mfbin", "--dataset_text_field", "content")
    assert result.returncode == 0, result.stderr
    assert read_mfbin(tmp_path / "content.mfbin")[0] == read_mfbin(tmp_path / "text.mfbin")[0]
