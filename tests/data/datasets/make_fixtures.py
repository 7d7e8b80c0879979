"""Builds the data-pipeline fixtures with the Hugging Face libraries (run from the project venv):

    .venv/bin/python tests/data/datasets/make_fixtures.py

- tiny_tokenizer/: a byte-level BPE trained here by `tokenizers` (its post-processor adds <s>), and a
  tokenizer_config.json whose ChatML template marks assistant turns with {% generation %} blocks.
- tiny_tokenizer_prefix/: the same tokenizer with the same template minus the generation blocks,
  so the data pipeline falls back to the prefix rule of src/chat/assistant_mask.h.
- examples.jsonl: one line of each dataset form (see src/data/example_encoder.h).
- expected_<folder>.jsonl: per example line, {"ids", "loss_mask"} computed from Transformers'
  AutoTokenizer (encode, offsets, apply_chat_template with return_assistant_tokens_mask) under the
  rules documented in src/data/example_encoder.h.
"""
import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 12345 67890 3.14159 and 2026-11-28.",
    "Unicode: caf\u00e9, na\u00efve, \u00fcber, \u65e5\u672c\u8a9e, emoji \U0001F600.",
    "What is the capital of France? The capital of France is Paris.",
    "Tell me a joke. Why did the chicken cross the road? To get to the other side.",
    "You are a helpful assistant. Answer briefly.",
    "get_weather(city) returns the weather for a city, in degrees.",
]

SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

GENERATION_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\nTools: ' + (tools | tojson) + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PREFIX_TEMPLATE = GENERATION_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")

EXAMPLES = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "Already ends with the end token</s>"},
    {"text": "Unicode: caf\u00e9 \u65e5\u672c\u8a9e \U0001F600\nand a second line\r\n", "source": "ignored key"},
    {"text": ""},
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is Paris."}]},
    {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "Tell me a joke."},
                  {"role": "assistant", "content": "Why did the chicken cross the road?"},
                  {"role": "user", "content": "Why?"},
                  {"role": "assistant", "content": "To get to the other side."}]},
    {"messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "get_weather(Paris)"}],
     "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]},
    {"prompt": "Question: 2 + 2 =", "completion": " 4"},
    {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
    {"prompt": [{"role": "user", "content": "Hello, world!"}],
     "completion": [{"role": "assistant", "content": "How are you today?"}]},
]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return tok


def write_folder(folder: Path, tok: Tokenizer, template: str):
    folder.mkdir(exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "add_bos_token": False, "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def add_eos(ids, mask, eos):
    if not ids or ids[-1] != eos:
        ids.append(eos)
        mask.append(1)


def expected(hf, example, has_generation):
    eos = hf.convert_tokens_to_ids(hf.eos_token)
    if "text" in example:
        ids = hf(example["text"], add_special_tokens=True)["input_ids"]
        mask = [1] * len(ids)
        add_eos(ids, mask, eos)
        return ids, mask
    if "messages" in example:
        tools = example.get("tools")
        if has_generation:
            out = hf.apply_chat_template(example["messages"], tools=tools, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True)
            return list(out["input_ids"]), list(out["assistant_masks"])
        # The prefix rule (src/chat/assistant_mask.h), evaluated on Transformers' renderings.
        msgs = example["messages"]
        full = hf.apply_chat_template(msgs, tools=tools, tokenize=False)
        ranges = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = hf.apply_chat_template(msgs[:i], tools=tools, tokenize=False, add_generation_prompt=True) if i else ""
            through = hf.apply_chat_template(msgs[: i + 1], tools=tools, tokenize=False)
            assert full.startswith(before) and full.startswith(through)
            ranges.append((len(before.encode()), len(through.encode())))
        enc = hf(full, add_special_tokens=False, return_offsets_mapping=True)
        offsets = byte_offsets(full, enc["offset_mapping"])
        mask = [int(any(b < re and rb < e for rb, re in ranges)) for b, e in offsets]
        return enc["input_ids"], mask
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, str):
        text = prompt + completion
        enc = hf(text, add_special_tokens=True, return_offsets_mapping=True)
        offsets = byte_offsets(text, enc["offset_mapping"])
        p = len(prompt.encode())
        mask, after_text = [], False
        for b, e in offsets:
            if (b, e) == (0, 0):
                mask.append(int(after_text and len(completion) > 0))
            else:
                after_text = True
                mask.append(int(e > p))
        ids = enc["input_ids"]
        add_eos(ids, mask, eos)
        return ids, mask
    prompt_text = hf.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = hf.apply_chat_template(prompt + completion, tokenize=False)
    assert full.startswith(prompt_text)
    enc = hf(full, add_special_tokens=False, return_offsets_mapping=True)
    offsets = byte_offsets(full, enc["offset_mapping"])
    p = len(prompt_text.encode())
    return enc["input_ids"], [int(e > p) for _, e in offsets]


def byte_offsets(text, char_offsets):
    """Character offsets (Transformers) to UTF-8 byte offsets (moeforge's Encoding)."""
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode()))
    return [(0, 0) if (b, e) == (0, 0) else (starts[b], starts[e]) for b, e in char_offsets]


def main():
    tok = build_tokenizer()
    folders = {"tiny_tokenizer": (GENERATION_TEMPLATE, True), "tiny_tokenizer_prefix": (PREFIX_TEMPLATE, False)}
    for name, (template, _) in folders.items():
        write_folder(HERE / name, tok, template)
    with open(HERE / "examples.jsonl", "w") as f:
        for ex in EXAMPLES:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    for name, (_, has_generation) in folders.items():
        hf = AutoTokenizer.from_pretrained(str(HERE / name))
        with open(HERE / f"expected_{name}.jsonl", "w") as f:
            for ex in EXAMPLES:
                ids, mask = expected(hf, ex, has_generation)
                assert len(ids) == len(mask)
                f.write(json.dumps({"ids": list(ids), "loss_mask": list(mask)}) + "\n")


if __name__ == "__main__":
    main()
