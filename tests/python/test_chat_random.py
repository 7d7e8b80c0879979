"""Randomised differential tests of the template engine against Transformers' own renderer.

Two generators with fixed seeds: whitespace-control soups (text, newlines, tabs, tags with -/+
markers, comments, nested blocks) that probe trim_blocks/lstrip_blocks byte for byte, and random
expressions (literals, arithmetic, comparisons, filters, string methods, slicing) that probe Python
semantics and number formatting. Each template is rendered by
transformers.utils.chat_template_utils.render_jinja_template and by `moeforge chat-template`; the bytes
must match, and where Transformers raises, moeforge must fail too.
"""

import copy
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

SOURCE = Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY = os.environ.get("MOEFORGE_BINARY", str(SOURCE / "build" / "chat" / "tools" / "cli" / "moeforge"))
CONVERSATION = SOURCE / "tests" / "data" / "chat" / "conversations" / "tool_calls.json"


def reference(template, conversation):
    try:
        return render_jinja_template(conversations=[conversation["messages"]], tools=conversation.get("tools"),
                                     chat_template=template, add_generation_prompt=True, bos_token="<s>")[0][0]
    except Exception as e:
        return e


def compare(tmp_path, templates):
    conversation = json.loads(CONVERSATION.read_text(encoding="utf-8"))
    folder = tmp_path / "tok"
    folder.mkdir()
    mismatches = []
    for template in templates:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<s>"}),
                                                      encoding="utf-8")
        # A fresh copy each time: Jinja2's indent filter appends to a list it is given, in place.
        expected = reference(template, copy.deepcopy(conversation))
        result = subprocess.run([BINARY, "chat-template", "--tokenizer", str(folder), "--messages", str(CONVERSATION),
                                 "--add-generation-prompt"], capture_output=True)
        if isinstance(expected, Exception):
            if result.returncode == 0:
                mismatches.append((template, f"Transformers raised {expected!r}", result.stdout))
        elif result.returncode != 0 or result.stdout.decode("utf-8") != expected:
            mismatches.append((template, expected, result.stdout + result.stderr))
    assert not mismatches, "\n\n".join(f"template: {t!r}\nexpected: {e!r}\nmoeforge: {g!r}" for t, e, g in mismatches[:12])


WS_PIECES = ["", " ", "  ", "\t", "\n", "\n\n", " \n ", "x", "text", "\r\n"]
OPEN_TAGS = ["{% if true %}", "{%- if true %}", "{% if true -%}", "{%- if true -%}", "{%+ if true %}",
             "{% for i in [1, 2] %}", "{%- for i in [1] -%}", "{% generation %}"]
CLOSERS = {"if": ["{% endif %}", "{%- endif %}", "{% endif -%}", "{%+ endif %}", "{% endif +%}"],
           "for": ["{% endfor %}", "{%- endfor %}", "{% endfor -%}", "{%- endfor -%}"],
           "generation": ["{% endgeneration %}", "{%- endgeneration -%}"]}
LEAVES = ["{{ 'v' }}", "{{- 'v' }}", "{{ 'v' -}}", "{{- 'v' -}}", "{# c #}", "{#- c #}", "{# c -#}",
          "{% set a = 1 %}", "{%- set a = 2 -%}", "{{ i }}", "{% raw %} {{ raw }} {% endraw %}"]


def whitespace_soup(rng, depth=0):
    parts = []
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.45:
            parts.append(rng.choice(WS_PIECES))
        elif choice < 0.75 or depth >= 3:
            parts.append(rng.choice(LEAVES))
        else:
            tag = rng.choice(OPEN_TAGS)
            kind = tag.split()[1]
            parts.append(tag + whitespace_soup(rng, depth + 1) + rng.choice(CLOSERS[kind]))
    return "".join(parts)


def test_random_whitespace_control(tmp_path):
    rng = random.Random(20261128)
    templates = [whitespace_soup(rng) + rng.choice(["", "\n", "\n\n", " "]) for _ in range(150)]
    compare(tmp_path, templates)


LITERALS = ["0", "1", "-3", "7", "2.5", "0.1", "1e3", "1.5e-7", "'ab'", "'héllo wörld'", "''", "' x '", "none",
            "true", "false", "[1, 2, 3]", "['b', 'a']", "[]", "{'k': 1, 'j': [2]}", "(1, 'x')", "messages",
            "messages[0]", "tools[0].function", "missing", "'A-b c'", "'a,b,,c'", "3.0", "10", "-0.5"]
BINARY_OPS = ["+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", ">=", "in", "not in", "and", "or"]
FILTERS = ["length", "upper", "lower", "title", "capitalize", "trim", "string", "int", "float", "abs", "first",
           "last", "list", "reverse | list", "sort", "unique | list", "join(',')", "tojson", "round", "round(1)",
           "default('d')", "sum", "max", "min", "items | list", "count", "wordcount", "replace('a', 'Z')",
           "indent(2)", "center(7)"]
# Jinja2 constant-folds expressions made only of literals, and a fold that fails leaves an undefined
# value where the same expression over variables raises (e.g. slicing a number). Templates slice
# variables, so slices here apply to sequences and to the conversation.
SLICEABLE = ["messages", "tools", "'héllo wörld'", "'a,b,,c'", "[1, 2, 3]", "['b', 'a']", "(1, 'x')", "''",
             "messages[0].content", "(messages | map(attribute='role') | list)"]
METHODS = ["upper()", "lower()", "strip()", "split()", "split(',')", "startswith('a')", "endswith('c')",
           "replace('a', '_')", "find('b')", "count('a')", "title()", "items()", "keys()", "values()",
           "get('k')", "get('zz', 5)", "lstrip('a ')", "rsplit(',', 1)"]
TESTS = ["defined", "none", "string", "number", "mapping", "sequence", "odd", "even", "integer", "float",
         "iterable", "boolean", "true", "false", "lower"]


def random_expression(rng, depth=0):
    if depth >= 3:
        return rng.choice(LITERALS)
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(LITERALS)
    if roll < 0.5:
        return f"({random_expression(rng, depth + 1)} {rng.choice(BINARY_OPS)} {random_expression(rng, depth + 1)})"
    if roll < 0.65:
        return f"{random_expression(rng, depth + 1)} | {rng.choice(FILTERS)}"
    if roll < 0.75:
        return f"({random_expression(rng, depth + 1)}).{rng.choice(METHODS)}"
    if roll < 0.85:
        start, stop, step = (rng.choice(["", "1", "-2", "0", "5"]) for _ in range(3))
        return f"({rng.choice(SLICEABLE)})[{start}:{stop}{':' + step if step and step != '0' else ''}]"
    if roll < 0.93:
        negation = rng.choice(["", "not "])
        return f"({random_expression(rng, depth + 1)} is {negation}{rng.choice(TESTS)})"
    return (f"({random_expression(rng, depth + 1)} if {random_expression(rng, depth + 1)} "
            f"else {random_expression(rng, depth + 1)})")


def test_random_expressions(tmp_path):
    rng = random.Random(4)
    templates = ["{{ " + random_expression(rng) + " }}" for _ in range(300)]
    compare(tmp_path, templates)
