#!/usr/bin/env python3
"""Golden assistant masks for moeforge's training chat templates (src/chat/training_templates/),
computed by Hugging Face Transformers.

For each shipped template FAMILY.jinja and the real tokenizer folder of that family, every
conversation of tests/data/chat/conversations is encoded as SFT encodes it:
    tokenizer.apply_chat_template(messages, tools=tools, chat_template=<the training template>,
                                  tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
and recorded with whether that rendering is the same text as the model's own template gives (the
training templates promise it for some conversations; see their header comments). Conversations
Transformers refuses are recorded with the error. Needs no network:
    python3 python/oracle/training_template_masks.py --assets ../shared/assets/tokenizers \
        --out tests/data/chat/training_templates
writes OUT/FAMILY.json for each family whose tokenizer folder is in ASSETS.
"""
import argparse
import hashlib
import json
from pathlib import Path

import transformers
from transformers import PreTrainedTokenizerFast

SOURCE = Path(__file__).resolve().parents[2]
TEMPLATES = SOURCE / "src" / "chat" / "training_templates"
CONVERSATIONS = SOURCE / "tests" / "data" / "chat" / "conversations"
# The shipped template of each family, and the tokenizer folder (under --assets) it is checked with.
FAMILIES = {"qwen3": "qwen3", "deepseek_v3": "deepseek_v3"}


def load_tokenizer(folder):
    """Transformers' tokenizer over the folder's tokenizer.json as the tokenizers library reads it,
    with the special tokens and chat template of its tokenizer_config.json. Transformers 5's
    AutoTokenizer rebuilds DeepSeek-V3's tokenizer as a LlamaTokenizer with a Metaspace
    pre-tokenizer, whose ids differ from tokenizer.json's; moeforge gives tokenizer.json's."""
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in config.items()
               if k in ("bos_token", "eos_token", "pad_token") and v is not None}
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                   chat_template=config["chat_template"], **special)


def encode(tokenizer, conversation, template):
    return tokenizer.apply_chat_template(
        conversation["messages"], tools=conversation.get("tools"), chat_template=template, tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True)


def family_cases(tokenizer, training_template):
    cases = []
    for path in sorted(CONVERSATIONS.glob("*.json")):
        conversation = json.loads(path.read_text(encoding="utf-8"))
        case = {"conversation": path.stem}
        try:
            out = encode(tokenizer, conversation, training_template)
        except Exception as e:  # the template raised: moeforge must refuse the line too
            case["error"] = f"{type(e).__name__}: {e}"
            cases.append(case)
            continue
        render = dict(tools=conversation.get("tools"), tokenize=False)
        training_text = tokenizer.apply_chat_template(conversation["messages"], chat_template=training_template, **render)
        model_text = tokenizer.apply_chat_template(conversation["messages"], **render)
        case["input_ids"] = list(out["input_ids"])
        case["assistant_masks"] = list(out["assistant_masks"])
        case["same_text_as_model_template"] = training_text == model_text
        cases.append(case)
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path, required=True, help="folder of tokenizer folders (../shared/assets/tokenizers)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for family, folder in FAMILIES.items():
        tokenizer = load_tokenizer(args.assets / folder)
        training_template = (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
        record = {
            "generated_by": f"python/oracle/training_template_masks.py, transformers {transformers.__version__}",
            "tokenizer": folder,
            "model_template_sha256": hashlib.sha256(tokenizer.chat_template.encode("utf-8")).hexdigest(),
            "training_template_sha256": hashlib.sha256(training_template.encode("utf-8")).hexdigest(),
            "cases": family_cases(tokenizer, training_template),
        }
        (args.out / f"{family}.json").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{family}: {len(record['cases'])} conversations -> {args.out / (family + '.json')}")


if __name__ == "__main__":
    main()
