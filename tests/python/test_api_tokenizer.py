"""moeforge.AutoTokenizer against the Hugging Face libraries on the demo tokenizer: ids and decoding
against `tokenizers`, __call__ with padding/truncation and apply_chat_template (text, ids, assistant
masks) against Transformers' AutoTokenizer."""
import os

import numpy as np
import pytest

if not os.environ.get("MOEFORGE_PYTHON_MODULE_DIR"):
    pytest.skip("the Python module is not built (configure with -DMOEFORGE_PYTHON=ON)", allow_module_level=True)

import moeforge  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "", "  spaces  and\ttabs\n",
         "Reverse the letters: ABC <|im_end|>", "naïve café 日本語"]
CONVERSATION = [
    {"role": "system", "content": "You reverse letters."},
    {"role": "user", "content": "Reverse the letters: ABC"},
    {"role": "assistant", "content": "CBA"},
    {"role": "user", "content": "Reverse the letters: XYZW"},
    {"role": "assistant", "content": "WZYX"},
]


@pytest.fixture(scope="module")
def demo(source_dir):
    return source_dir / "demo" / "tokenizer"


@pytest.fixture(scope="module")
def ours(demo):
    return moeforge.AutoTokenizer.from_pretrained(demo)


@pytest.fixture(scope="module")
def theirs(demo):
    return transformers.AutoTokenizer.from_pretrained(str(demo))


def test_encode_decode_match_tokenizers(demo, ours):
    reference = tokenizers.Tokenizer.from_file(str(demo / "tokenizer.json"))
    for text in TEXTS:
        for special in (True, False):
            want = reference.encode(text, add_special_tokens=special).ids
            assert ours.encode(text, add_special_tokens=special) == want
            assert ours.decode(want) == reference.decode(want, skip_special_tokens=False)
            assert ours.decode(np.array(want)) == reference.decode(want, skip_special_tokens=False)
            assert ours.decode(want, skip_special_tokens=True) == reference.decode(want, skip_special_tokens=True)
    batches = [reference.encode(t).ids for t in TEXTS]
    assert ours.batch_decode(batches) == reference.decode_batch(batches, skip_special_tokens=False)


def test_call_matches_transformers(ours, theirs):
    assert ours.eos_token == theirs.eos_token and ours.eos_token_id == theirs.eos_token_id
    assert ours.pad_token == theirs.pad_token and ours.pad_token_id == theirs.pad_token_id
    assert len(ours) == len(theirs)
    assert ours(TEXTS[0]) == dict(theirs(TEXTS[0]))
    assert ours(TEXTS) == dict(theirs(TEXTS))
    for kwargs in [dict(padding=True), dict(padding="longest", truncation=True, max_length=5),
                   dict(padding="max_length", max_length=40), dict(truncation=True, max_length=3, padding=True)]:
        have = ours(TEXTS, return_tensors="np", **kwargs)
        want = theirs(TEXTS, return_tensors="np", **kwargs)
        for key in ("input_ids", "attention_mask"):
            assert have[key].dtype == np.int64
            np.testing.assert_array_equal(have[key], want[key], err_msg=f"{key} {kwargs}")
    assert ours.encode(TEXTS[1], truncation=True, max_length=4) == theirs.encode(TEXTS[1], truncation=True,
                                                                                  max_length=4)


def test_apply_chat_template_matches_transformers(ours, theirs):
    for prompt in (False, True):
        assert ours.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=prompt) == \
            theirs.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=prompt)
    have = ours.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    want = theirs.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    assert have["input_ids"] == want["input_ids"]
    assert have["attention_mask"] == want["attention_mask"]
    assert have["assistant_masks"] == want["assistant_masks"]
    assert sum(have["assistant_masks"]) > 0
    assert ours.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_dict=False) == \
        theirs.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_dict=False)
    batch = [CONVERSATION[:3], CONVERSATION]
    have = ours.apply_chat_template(batch, padding=True, return_tensors="np")
    want = theirs.apply_chat_template(batch, padding=True, return_tensors="np")
    np.testing.assert_array_equal(have["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(have["attention_mask"], want["attention_mask"])


def test_tokenizer_errors(ours, demo, tmp_path):
    with pytest.raises(FileNotFoundError):
        moeforge.AutoTokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="padding"):
        ours(TEXTS, padding="sideways")
    with pytest.raises(ValueError, match="return_tensors"):
        ours(TEXTS, return_tensors="pt2")
    with pytest.raises(TypeError, match="text"):
        ours([1, 2])
    with pytest.raises(TypeError, match="paddin"):
        ours(TEXTS, paddin=True)
    no_template = tmp_path / "plain"
    no_template.mkdir()
    (no_template / "tokenizer.json").write_bytes((demo / "tokenizer.json").read_bytes())
    plain = moeforge.AutoTokenizer.from_pretrained(no_template)
    with pytest.raises(ValueError, match="chat template"):
        plain.apply_chat_template(CONVERSATION)
    with pytest.raises(ValueError, match="padding token"):
        plain(TEXTS, padding=True)


def test_setting_chat_template_matches_transformers(demo, theirs):
    # A template of our own with generation blocks around the assistant answers, set on both sides.
    source = ("{% for m in messages %}<|im_start|>{{ m.role }}\n"
              "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}"
              "{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}")
    ours = moeforge.AutoTokenizer.from_pretrained(demo)
    assert ours.chat_template == theirs.chat_template  # the folder's, before any change
    ours.chat_template = source
    theirs_copy = transformers.AutoTokenizer.from_pretrained(str(demo))
    theirs_copy.chat_template = source
    assert ours.chat_template == source
    assert ours.apply_chat_template(CONVERSATION, tokenize=False) == \
        theirs_copy.apply_chat_template(CONVERSATION, tokenize=False)
    have = ours.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    want = theirs_copy.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    assert list(have["input_ids"]) == list(want["input_ids"])
    assert list(have["assistant_masks"]) == list(want["assistant_masks"])
    with pytest.raises(TypeError, match="chat_template"):
        ours.chat_template = 3
    with pytest.raises(ValueError, match="chat_template"):
        ours.chat_template = "{% for m in messages %}"  # unclosed block
