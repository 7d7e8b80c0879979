"""Golden tests of `moeforge chat-template` against Transformers' own apply_chat_template.

Real templates: the tokenizer folders in ../shared/assets/tokenizers, through
AutoTokenizer.from_pretrained(folder).apply_chat_template. Syntax suite and common-family templates
(tests/data/chat/templates): rendered by transformers.utils.chat_template_utils.render_jinja_template,
the function apply_chat_template calls, with the special tokens it would pass. Every case compares the
exact bytes; where Transformers raises, moeforge must fail too (non-zero exit, message on stderr).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

SOURCE = Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY = os.environ.get("MOEFORGE_BINARY", str(SOURCE / "build" / "chat" / "tools" / "cli" / "moeforge"))
DATA = SOURCE / "tests" / "data" / "chat"
ASSETS = SOURCE.parent / "shared" / "assets" / "tokenizers"
CONVERSATIONS = sorted(p.stem for p in (DATA / "conversations").glob("*.json"))
SUITE = sorted(p.stem for p in (DATA / "templates").glob("*.jinja"))
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def load_conversation(name):
    with open(DATA / "conversations" / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


def run_cli(folder, conversation_path, add_generation_prompt, assistant_mask=False):
    args = [BINARY, "chat-template", "--tokenizer", str(folder), "--messages", str(conversation_path)]
    if add_generation_prompt:
        args.append("--add-generation-prompt")
    if assistant_mask:
        args.append("--assistant-mask")
    return subprocess.run(args, capture_output=True)


def check_same(expected, result, label):
    """expected: the rendered string, or the exception Transformers raised."""
    if isinstance(expected, Exception):
        assert result.returncode != 0, f"{label}: Transformers raised {expected!r}, moeforge printed {result.stdout!r}"
        assert result.stderr, f"{label}: moeforge failed without a message"
        return
    assert result.returncode == 0, f"{label}: moeforge failed: {result.stderr.decode(errors='replace')}"
    got = result.stdout.decode("utf-8")
    assert got == expected, f"{label}: rendering differs\n--- transformers\n{expected!r}\n--- moeforge\n{got!r}"


def template_folder(tmp_path, template, extra_config=None):
    """A tokenizer folder holding only tokenizer_config.json with this template and special tokens."""
    folder = tmp_path / "tok"
    folder.mkdir(exist_ok=True)
    config = {"chat_template": template, **SPECIAL_TOKENS, **(extra_config or {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def render_reference(template, conversation, add_generation_prompt):
    try:
        rendered, _ = render_jinja_template(
            conversations=[conversation["messages"]],
            tools=conversation.get("tools"),
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **SPECIAL_TOKENS,
        )
        return rendered[0]
    except Exception as e:  # the template raised: moeforge must fail as well
        return e


@pytest.mark.parametrize("template_name", SUITE)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_syntax_suite(tmp_path, template_name, add_generation_prompt):
    template = (DATA / "templates" / f"{template_name}.jinja").read_bytes().decode("utf-8")
    folder = template_folder(tmp_path, template)
    for conversation_name in CONVERSATIONS:
        conversation = load_conversation(conversation_name)
        expected = render_reference(template, conversation, add_generation_prompt)
        result = run_cli(folder, DATA / "conversations" / f"{conversation_name}.json", add_generation_prompt)
        check_same(expected, result, f"{template_name} x {conversation_name} (agp={add_generation_prompt})")


REAL = ["qwen3", "deepseek_v3", "gptoss"]


@pytest.mark.parametrize("model", REAL)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_real_templates(model, add_generation_prompt):
    folder = ASSETS / model
    if not folder.is_dir():
        pytest.skip(f"missing {folder}")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.chat_template is None:
        # No template in the folder: moeforge must say so rather than render anything.
        result = run_cli(folder, DATA / "conversations" / "basic.json", add_generation_prompt)
        assert result.returncode != 0 and b"no chat template" in result.stderr
        return
    for conversation_name in CONVERSATIONS:
        conversation = load_conversation(conversation_name)
        try:
            expected = tokenizer.apply_chat_template(
                conversation["messages"], tools=conversation.get("tools"), tokenize=False,
                add_generation_prompt=add_generation_prompt)
        except Exception as e:
            expected = e
        result = run_cli(folder, DATA / "conversations" / f"{conversation_name}.json", add_generation_prompt)
        check_same(expected, result, f"{model} x {conversation_name} (agp={add_generation_prompt})")


def test_chat_template_jinja_file_wins(tmp_path):
    """chat_template.jinja beside tokenizer_config.json replaces the config's template, as in Transformers."""
    folder = ASSETS / "qwen3"
    if not folder.is_dir():
        pytest.skip(f"missing {folder}")
    local = tmp_path / "qwen3_jinja"
    local.mkdir()
    shutil.copy(folder / "tokenizer.json", local / "tokenizer.json")
    shutil.copy(folder / "tokenizer_config.json", local / "tokenizer_config.json")
    (local / "chat_template.jinja").write_bytes((DATA / "templates" / "family_chatml.jinja").read_bytes())
    tokenizer = AutoTokenizer.from_pretrained(str(local))
    conversation = load_conversation("multi_turn")
    expected = tokenizer.apply_chat_template(conversation["messages"], tokenize=False, add_generation_prompt=True)
    check_same(expected, run_cli(local, DATA / "conversations" / "multi_turn.json", True), "chat_template.jinja")


def test_named_templates_pick_tool_use(tmp_path):
    """A list of named templates: 'tool_use' with tools, 'default' without (Transformers' get_chat_template)."""
    folder = tmp_path / "named"
    folder.mkdir()
    templates = [{"name": "default", "template": "default:{{ messages | length }}"},
                 {"name": "tool_use", "template": "tools:{{ tools | length }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}), encoding="utf-8")
    assert run_cli(folder, DATA / "conversations" / "basic.json", False).stdout == b"default:3"
    assert run_cli(folder, DATA / "conversations" / "tool_calls.json", False).stdout == b"tools:2"


def test_assistant_mask_matches_transformers(tmp_path):
    """{% generation %} spans -> token mask, against apply_chat_template(return_assistant_tokens_mask=True)."""
    folder = ASSETS / "qwen3"
    if not folder.is_dir():
        pytest.skip(f"missing {folder}")
    local = tmp_path / "qwen3_generation"
    local.mkdir()
    shutil.copy(folder / "tokenizer.json", local / "tokenizer.json")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = (DATA / "templates" / "generation.jinja").read_text(encoding="utf-8")
    (local / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(local))
    for conversation_name in ["basic", "multi_turn", "unicode", "reasoning"]:
        conversation = load_conversation(conversation_name)
        for add_generation_prompt in [False, True]:
            out = tokenizer.apply_chat_template(
                conversation["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                add_generation_prompt=add_generation_prompt)
            result = run_cli(local, DATA / "conversations" / f"{conversation_name}.json", add_generation_prompt,
                             assistant_mask=True)
            assert result.returncode == 0, result.stderr.decode(errors="replace")
            got = json.loads(result.stdout)
            assert got["ids"] == list(out["input_ids"]), conversation_name
            assert got["assistant_mask"] == list(out["assistant_masks"]), conversation_name
            assert any(got["assistant_mask"]), conversation_name


def test_syntax_error_names_position(tmp_path):
    folder = template_folder(tmp_path, "line one\n{% for m in messages %}\n{{ m.role }\n{% endfor %}")
    result = run_cli(folder, DATA / "conversations" / "basic.json", False)
    assert result.returncode == 2
    assert b"tokenizer_config.json chat_template:3:" in result.stderr, result.stderr


def prefix_rule_reference(tokenizer, raw_tokenizer, conversation):
    """src/chat/assistant_mask.h's prefix rule, computed with Transformers' renderings and the tokenizers
    library's ids and offsets for tokenizer.json (moeforge's tokenizer contract: for DeepSeek-V3,
    Transformers 5.17's LlamaTokenizer swaps in a Metaspace pre-tokenizer and tokenizes differently);
    None where the template is not prefix-stable for this conversation."""
    messages, tools = conversation["messages"], conversation.get("tools")

    def render(ms, add_generation_prompt):
        return tokenizer.apply_chat_template(ms, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    full = render(messages, False)
    ranges = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], True) if i else ""
        through = render(messages[: i + 1], False)
        if not (full.startswith(before) and full.startswith(through) and len(before) <= len(through)):
            return None
        ranges.append((len(before), len(through)))
    encoding = raw_tokenizer.encode(full, add_special_tokens=False)
    mask = [int(any(b < re and rb < e for rb, re in ranges)) for b, e in encoding.offsets]
    return list(encoding.ids), mask


@pytest.mark.parametrize("model,template", [("deepseek_v3", None), ("qwen3", None), ("qwen3", "family_chatml")])
def test_prefix_mask_rule(tmp_path, model, template):
    folder = ASSETS / model
    if not folder.is_dir():
        pytest.skip(f"missing {folder}")
    if template is not None:
        local = tmp_path / f"{model}_{template}"
        local.mkdir()
        shutil.copy(folder / "tokenizer.json", local / "tokenizer.json")
        shutil.copy(folder / "tokenizer_config.json", local / "tokenizer_config.json")
        (local / "chat_template.jinja").write_bytes((DATA / "templates" / f"{template}.jinja").read_bytes())
        folder = local
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    raw_tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    checked = 0
    for conversation_name in ["basic", "multi_turn", "unicode", "tool_calls_string_args", "reasoning"]:
        conversation = load_conversation(conversation_name)
        try:
            expected = prefix_rule_reference(tokenizer, raw_tokenizer, conversation)
        except Exception:  # the template itself rejects this conversation
            continue
        args = [BINARY, "chat-template", "--tokenizer", str(folder), "--messages",
                str(DATA / "conversations" / f"{conversation_name}.json"), "--assistant-mask", "--mask-rule", "prefix"]
        result = subprocess.run(args, capture_output=True)
        label = f"{model}/{template} x {conversation_name}"
        if expected is None:
            assert result.returncode != 0 and b"prefix rule" in result.stderr, label
            continue
        assert result.returncode == 0, f"{label}: {result.stderr.decode(errors='replace')}"
        got = json.loads(result.stdout)
        assert got["ids"] == expected[0], label
        assert got["assistant_mask"] == expected[1], label
        checked += 1
    assert checked > 0
