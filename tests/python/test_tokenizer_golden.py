"""`moeforge tokenize` against the Python `tokenizers` library, the oracle, run side by side.

Real files: the Qwen3, DeepSeek-V3 and GPT-OSS tokenizer.json of ../shared/assets/tokenizers over
the corpus tests/data/tokenizer/corpus.jsonl and a few thousand random strings (fixed seed); ids
must be identical, and decoding must give what the library's decode gives (hence
decode(encode(x)) == x wherever the library has that property).
Built here: small tokenizers trained with the library on the corpus, each exercising normalizers,
pre-tokenizers, models flags, post-processors and decoders that the three real files do not.
"""
import ctypes
import ctypes.util
import json
import random
import unicodedata
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

REAL = ["qwen3", "deepseek_v3", "gptoss"]


@pytest.fixture(scope="module")
def corpus(source_dir):
    lines = (source_dir / "tests/data/tokenizer/corpus.jsonl").read_text(encoding="utf-8").split("\n")
    return [json.loads(line)["text"] for line in lines if line]


def real_tokenizer_path(source_dir, name):
    path = source_dir.parent / "shared/assets/tokenizers" / name / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"missing {path}")
    return path


def encode_with_moeforge(run_moeforge, tokenizer_path, texts, tmp_path, add_special_tokens=True):
    data = tmp_path / "texts.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    args = ["tokenize", "--tokenizer", tokenizer_path, "--input", data]
    if not add_special_tokens:
        args.append("--no-special-tokens")
    out = run_moeforge(*args).stdout
    assert out.endswith("\n") or not texts
    lines = out.split("\n")[:-1]
    assert len(lines) == len(texts)
    return [json.loads(line)["ids"] for line in lines]


def decode_with_moeforge(run_moeforge, tokenizer_path, id_lists, tmp_path):
    data = tmp_path / "ids.jsonl"
    with open(data, "w") as f:
        for ids in id_lists:
            f.write(json.dumps({"ids": ids}) + "\n")
    out = run_moeforge("tokenize", "--tokenizer", tokenizer_path, "--decode", "--input", data).stdout
    lines = out.split("\n")[:-1]
    assert len(lines) == len(id_lists)
    return [json.loads(line)["text"] for line in lines]


def check_against_library(run_moeforge, tokenizer_path, texts, tmp_path, modes=(True, False)):
    oracle = Tokenizer.from_file(str(tokenizer_path))
    for add_special_tokens in modes:
        got = encode_with_moeforge(run_moeforge, tokenizer_path, texts, tmp_path, add_special_tokens)
        want = [e.ids for e in oracle.encode_batch(texts, add_special_tokens=add_special_tokens)]
        mismatches = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
        assert not mismatches, (f"{len(mismatches)} of {len(texts)} texts differ "
                                f"(add_special_tokens={add_special_tokens}); first: {mismatches[0]!r}")
    ids = [e.ids for e in oracle.encode_batch(texts, add_special_tokens=True)]
    decoded = decode_with_moeforge(run_moeforge, tokenizer_path, ids, tmp_path)
    want = oracle.decode_batch(ids, skip_special_tokens=False)
    mismatches = [(t, w, g) for t, w, g in zip(texts, want, decoded) if w != g]
    assert not mismatches, f"{len(mismatches)} decodes differ; first: {mismatches[0]!r}"
    return sum(d == t for d, t in zip(decoded, texts))


# A mixed alphabet for random strings: scripts, digits, whitespace of all kinds, controls, combining
# marks, emoji pieces (ZWJ, variation selectors, skin tones, regional indicators) and special tokens.
ATOMS = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" \t\n\r\x0b\x0c  \u00a0\u2009\u3000\u200b")
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "\r\n", "  ", "    ", "\n\n", "1234", "3.14"]
    + list("\x00\x01\x1b\x7f\x85")
    + list("éèêëàâäçñøåœßÉÀÇÑØÅŒİıĞğŞş")
    + list("αβγδεζηθΣσςΩάέ") + list("абвгдежзийклмнопрстуфхцчшщъыьэюяЖЩЯ")
    + list("中文字测试你好世界東京日本語") + list("ひらがなカタカナー") + list("한국어안녕하세요")
    + list("مرحبابالعالم") + list("שלוםעולם") + list("नमस्तेदुनियाक्ष") + list("สวัสดีชาวโลก่้")
    + list("\u0300\u0301\u0302\u0303\u0308\u0327\u030a\u0323")
    + list("\ufb01\uff21\uff41\uff11\u212b\u2126\u00b2\u2082\u00bd\u2167")
    + ["😀", "👍", "🏽", "\u200d", "\ufe0f", "👨", "👩", "👧", "❤", "🇺", "🇸", "🇫", "🇷", "🚀", "🎉", "⃣"]
    + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<｜begin▁of▁sentence｜>", "<|start|>", "<|message|>",
       "<think>", "</think>", "<|", "|>", "<｜", "▁"]
)


@pytest.fixture(scope="module")
def random_texts():
    rng = random.Random(20261128)
    texts = []
    for _ in range(3000):
        n = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40, 80])
        texts.append("".join(rng.choice(ATOMS) for _ in range(n)))
    return texts


@pytest.mark.parametrize("name", REAL)
def test_real_tokenizer_corpus(run_moeforge, source_dir, corpus, tmp_path, name):
    path = real_tokenizer_path(source_dir, name)
    roundtrips = check_against_library(run_moeforge, path, corpus, tmp_path)
    assert roundtrips > len(corpus) // 2  # byte-level BPE decodes back to the text


@pytest.mark.parametrize("name", REAL)
def test_real_tokenizer_random(run_moeforge, source_dir, random_texts, tmp_path, name):
    path = real_tokenizer_path(source_dir, name)
    check_against_library(run_moeforge, path, random_texts, tmp_path, modes=(True,))


@pytest.mark.parametrize("name", REAL)
def test_real_tokenizer_folder_path(run_moeforge, source_dir, tmp_path, name):
    path = real_tokenizer_path(source_dir, name)
    text = "Hello <|endoftext|> world"
    assert (encode_with_moeforge(run_moeforge, path.parent, [text], tmp_path)
            == [Tokenizer.from_file(str(path)).encode(text).ids])


# --- Tokenizers built here with the library -------------------------------------------------------

def train(corpus, model, trainer_kwargs, **parts):
    tok = Tokenizer(model)
    for key, value in parts.items():
        setattr(tok, key, value)
    tok.train_from_iterator(corpus * 3, BpeTrainer(vocab_size=600, show_progress=False, **trainer_kwargs))
    return tok


def with_byte_fallback(tok):
    """The same tokenizer with <0x00>..<0xFF> in the vocabulary and byte_fallback on."""
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["model"]["unk_token"] = None
    return Tokenizer.from_str(json.dumps(spec))


def built_tokenizers(corpus):
    specials = ["[UNK]", "[BOS]", "[EOS]", "<mask>"]
    built = {}

    tok = train(corpus, models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"),
                dict(special_tokens=specials, continuing_subword_prefix="##", end_of_word_suffix="</w>"),
                normalizer=normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]),
                pre_tokenizer=pre_tokenizers.Whitespace(),
                decoder=decoders.BPEDecoder(suffix="</w>"))
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", tok.token_to_id("[BOS]")),
                                                 ("[EOS]", tok.token_to_id("[EOS]"))])
    built["nfkc_lowercase_whitespace_template"] = tok

    tok = train(corpus, models.BPE(unk_token="[UNK]", fuse_unk=True), dict(special_tokens=specials),
                normalizer=normalizers.Sequence([normalizers.Replace(" ", "▁"), normalizers.Prepend("▁"),
                                                 normalizers.NFC()]),
                pre_tokenizer=None,
                decoder=decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)]))
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A",
                                                       special_tokens=[("[BOS]", tok.token_to_id("[BOS]"))])
    built["llama_style_byte_fallback"] = with_byte_fallback(tok)

    for scheme in ["always", "first", "never"]:
        tok = train(corpus, models.BPE(unk_token="[UNK]"), dict(special_tokens=specials),
                    normalizer=normalizers.NFD(),
                    pre_tokenizer=pre_tokenizers.Metaspace(prepend_scheme=scheme),
                    decoder=decoders.Metaspace(prepend_scheme=scheme))
        tok.add_special_tokens(["<|im_start|>"])
        built[f"metaspace_{scheme}"] = tok

    tok = train(corpus, models.BPE(unk_token="[UNK]"), dict(special_tokens=specials),
                normalizer=normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(),
                                                 normalizers.Strip(left=True, right=True),
                                                 normalizers.Replace(Regex(r"\s+"), " ")]),
                pre_tokenizer=pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.Punctuation()]))
    tok.post_processor = processors.BertProcessing(("[EOS]", tok.token_to_id("[EOS]")),
                                                   ("[BOS]", tok.token_to_id("[BOS]")))
    tok.add_tokens([AddedToken("hello world", single_word=True), AddedToken("<mask>", lstrip=True, rstrip=True),
                    AddedToken("Straße", normalized=True), AddedToken("ÉTÉ", normalized=False)])
    built["digits_punctuation_added_flags"] = tok

    tok = train(corpus, models.BPE(), dict(special_tokens=specials,
                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
                pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
                decoder=decoders.ByteLevel())
    tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=True),
                                              processors.RobertaProcessing(("[EOS]", tok.token_to_id("[EOS]")),
                                                                           ("[BOS]", tok.token_to_id("[BOS]")))])
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    built["gpt2_style_bytelevel"] = tok

    behaviours = ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]
    for behaviour in behaviours:
        for invert in (False, True):
            tok = train(corpus, models.BPE(), dict(initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
                        pre_tokenizer=pre_tokenizers.Sequence([
                            pre_tokenizers.Split(Regex(r"\d+|[,.;]"), behaviour, invert=invert),
                            pre_tokenizers.Split(" ", "merged_with_next"),
                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                        decoder=decoders.ByteLevel())
            built[f"split_{behaviour}{'_inverted' if invert else ''}"] = tok
    return built


@pytest.fixture(scope="module")
def built(corpus):
    return built_tokenizers(corpus)


BUILT_NAMES = (["nfkc_lowercase_whitespace_template", "llama_style_byte_fallback", "metaspace_always",
                "metaspace_first", "metaspace_never", "digits_punctuation_added_flags", "gpt2_style_bytelevel"]
               + [f"split_{b}{s}" for b in ["removed", "isolated", "merged_with_previous", "merged_with_next",
                                             "contiguous"] for s in ["", "_inverted"]])

TRIMS_OFFSETS = {"gpt2_style_bytelevel"}

EXTRA = ["hello world and hellohello world", "a <mask> b  <mask>  c<mask>d", "STRASSE Straße straße ÉTÉ été",
         "<|im_start|>user hi<|im_end|>", "[BOS] already [EOS]", "x  <|im_start|>  y", "1,2;3.4 56,,78"]


@pytest.mark.parametrize("name", BUILT_NAMES)
def test_built_tokenizer(run_moeforge, built, corpus, random_texts, tmp_path, name):
    path = tmp_path / "tokenizer.json"
    built[name].save(str(path))
    texts = corpus + EXTRA + random_texts[:500]
    check_against_library(run_moeforge, path, texts, tmp_path)
    if name in TRIMS_OFFSETS:
        # The library trims character offsets, we trim byte offsets (as its Rust encode does): the
        # two agree where characters are bytes.
        texts = [t for t in texts if t.isascii()]
    check_offsets(run_moeforge, path, texts, tmp_path)


@pytest.mark.parametrize("name", REAL)
def test_real_tokenizer_decode_incomplete_bytes(run_moeforge, source_dir, tmp_path, name):
    """Every prefix and suffix of the ids of multi-byte text: cut byte sequences become U+FFFD as
    the library makes them; ids outside the vocabulary are skipped as the library skips them."""
    path = real_tokenizer_path(source_dir, name)
    oracle = Tokenizer.from_file(str(path))
    id_lists = [[9, 10 ** 9, 11]]
    for text in ["😀👨‍👩‍👧‍👦 中文 🇫🇷", "नमस्ते दुनिया", "<|im_start|>é<|endoftext|>ü"]:
        ids = oracle.encode(text).ids
        id_lists += [ids[:k] for k in range(1, len(ids) + 1)] + [ids[k:] for k in range(1, len(ids))]
    want = oracle.decode_batch(id_lists, skip_special_tokens=False)
    assert any("\ufffd" in w for w in want)
    assert decode_with_moeforge(run_moeforge, path, id_lists, tmp_path) == want


def offsets_with_moeforge(run_moeforge, tokenizer_path, texts, tmp_path):
    data = tmp_path / "texts.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    out = run_moeforge("tokenize", "--tokenizer", tokenizer_path, "--input", data, "--offsets").stdout
    return [json.loads(line)["offsets"] for line in out.split("\n")[:-1]]


def as_char_offsets(text, byte_offsets):
    """moeforge's byte offsets as the library's character offsets (None off a character boundary)."""
    char_at, position = {}, 0
    for index, ch in enumerate(text):
        char_at[position] = index
        position += len(ch.encode())
    char_at[position] = len(text)
    return [(char_at.get(b), char_at.get(e)) for b, e in byte_offsets]


def check_offsets(run_moeforge, path, texts, tmp_path):
    oracle = Tokenizer.from_file(str(path))
    got = offsets_with_moeforge(run_moeforge, path, texts, tmp_path)
    mismatches = []
    for text, offsets, encoding in zip(texts, got, oracle.encode_batch(texts)):
        if as_char_offsets(text, offsets) != [tuple(o) for o in encoding.offsets]:
            mismatches.append((text, as_char_offsets(text, offsets), encoding.offsets))
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ; first: {mismatches[0]!r}"


@pytest.mark.parametrize("name", REAL)
def test_real_tokenizer_offsets(run_moeforge, source_dir, corpus, random_texts, tmp_path, name):
    check_offsets(run_moeforge, real_tokenizer_path(source_dir, name), corpus + random_texts[:300], tmp_path)


# --- Code points newer than the library's Unicode tables -------------------------------------------
# The library normalizes with the tables of unicode-normalization-alignments 0.1.12 (Unicode 9.0,
# also StripAccents' marks) and takes punctuation from unicode_categories 0.1.1 (Unicode 8.0). ICU,
# which moeforge uses, knows later versions; what it assigned later is unassigned to the library (no
# decomposition, combining class 0, no category), so a newer mark must not be reordered or composed.
NORMALIZATION_UNICODE = (9, 0)
CATEGORIES_UNICODE = (8, 0)


class Icu:
    """The few ICU4C functions the probes need, from the libicuuc that moeforge links."""

    def __init__(self):
        name = ctypes.util.find_library("icuuc")
        if not name or ".so." not in name:
            pytest.skip("ICU's libicuuc.so.N not found (moeforge links it; the probes take its Unicode data)")
        lib = ctypes.CDLL(name)
        suffix = "_" + name.rsplit(".so.", 1)[1].split(".")[0]  # ICU's symbols carry its major version
        self.char_age = getattr(lib, "u_charAge" + suffix)
        self.char_age.argtypes = [ctypes.c_int32, ctypes.c_uint8 * 4]
        self.char_age.restype = None
        self.char_type = getattr(lib, "u_charType" + suffix)
        self.char_type.argtypes = [ctypes.c_int32]
        self.char_type.restype = ctypes.c_int8
        self.combining_class = getattr(lib, "u_getCombiningClass" + suffix)
        self.combining_class.argtypes = [ctypes.c_int32]
        self.combining_class.restype = ctypes.c_uint8
        error = ctypes.c_int(0)
        nfkd = getattr(lib, "unorm2_getNFKDInstance" + suffix)
        nfkd.restype = ctypes.c_void_p
        self.nfkd = ctypes.c_void_p(nfkd(ctypes.byref(error)))
        assert error.value <= 0, f"unorm2_getNFKDInstance: ICU error {error.value}"
        self.get_decomposition = getattr(lib, "unorm2_getDecomposition" + suffix)
        self.get_decomposition.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                                           ctypes.POINTER(ctypes.c_int)]
        self.get_decomposition.restype = ctypes.c_int32

    def age(self, c):
        version = (ctypes.c_uint8 * 4)()
        self.char_age(c, version)
        return version[0], version[1]  # (0, 0): unassigned

    def decomposes(self, c):
        error = ctypes.c_int(0)
        return self.get_decomposition(self.nfkd, c, None, 0, ctypes.byref(error)) >= 0  # -1: none


MARK_TYPES = {6, 7, 8}  # ICU's UCharCategory: Mn, Me, Mc
PUNCTUATION_TYPES = {19, 20, 21, 22, 23, 28, 29}  # Pd, Ps, Pe, Pc, Po, Pi, Pf


def newer_code_points():
    """ICU's marks, combining characters and decomposable characters newer than the library's
    normalization, and its punctuation newer than the library's categories."""
    icu = Icu()
    marks, punctuation = [], []
    for c in range(0x80, 0x110000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        age = icu.age(c)
        if age == (0, 0) or age <= CATEGORIES_UNICODE:
            continue
        kind = icu.char_type(c)
        if age > NORMALIZATION_UNICODE and (kind in MARK_TYPES or icu.combining_class(c) or icu.decomposes(c)):
            marks.append(c)
        if kind in PUNCTUATION_TYPES:
            punctuation.append(c)
    return marks, punctuation


@pytest.fixture(scope="module")
def newer_unicode_texts():
    marks, punctuation = newer_code_points()
    # Among them the ranges of the reliability issue: U+07FD, U+0898-089F, U+08CA-08D3, U+1ABF.
    assert {0x7FD, 0x898, 0x89F, 0x8CA, 0x8D3, 0x1ABF} <= set(marks)
    texts = ["a\u0898\u0316\u0301"]  # the example
    for c in marks:
        # Around marks of combining class 220 and 230 (and 1 after): reordering past c, or composing
        # a + U+0301 across it, would show in the ids.
        texts += ["a" + chr(c) + "\u0316\u0301", "\u0301" + chr(c) + "\u0334", "e" + chr(c)]
    texts += ["a" + chr(c) + "b" for c in punctuation]
    return texts


# Those with a normalizer (NFC, NFKC, NFD, NFKD with StripAccents) or a punctuation split.
UNICODE_TOKENIZERS = ["qwen3", "llama_style_byte_fallback", "nfkc_lowercase_whitespace_template", "metaspace_always",
                      "digits_punctuation_added_flags"]


@pytest.mark.parametrize("name", UNICODE_TOKENIZERS)
def test_unicode_newer_than_library(run_moeforge, source_dir, built, newer_unicode_texts, tmp_path, name):
    if name in REAL:
        path = real_tokenizer_path(source_dir, name)
    else:
        path = tmp_path / "tokenizer.json"
        built[name].save(str(path))
    check_against_library(run_moeforge, path, newer_unicode_texts, tmp_path, modes=(True,))


# --- Regex classes of Unicode newer than Debian's Oniguruma ----------------------------------------
# The library's Oniguruma (6.9.10's sources, vendored by onig_sys 69.9.3) has Unicode 16.0 property
# tables; moeforge links Debian 12's libonig 6.9.8 (Unicode 14.0) and spells \p{..}, \w and \d out
# from tables of 16.0 (src/tokenizer/regex_unicode.inc). The probes are the code points whose class
# the library sees otherwise than Python's unicodedata does (Unicode 14.0 in Python 3.11, Debian's
# libonig's version): all those assigned in 15.0, 15.1 and 16.0; plus, as a check that nothing
# older moved, those assigned in 14.0.
LIBONIG_UNICODE = "14.0.0"

# A code point's class as the regex sees it: the five letter categories, then the other majors,
# with Nd (\d) apart from the other numbers. Planes 0-3 and 14 hold every assigned code point that
# is not private use (Unicode's roadmap; plane 15 and 16 are private use).
REGEX_CLASSES = ["Lu", "Ll", "Lt", "Lm", "Lo", "M", "Nd", "N", "P", "S", "Z"]
SWEPT = [c for c in list(range(0x40000)) + list(range(0xE0000, 0xE1000)) if not 0xD800 <= c <= 0xDFFF]


def regex_class_by_python(c):
    category = unicodedata.category(chr(c))
    return category if category[0] == "L" or category == "Nd" else category[0]


def regex_class_by_library():
    """The class each swept code point is in for the library's Oniguruma (C: none of them)."""
    text = "".join(map(chr, SWEPT))
    found = {}
    for name in reversed(REGEX_CLASSES):  # Nd is overwritten after N
        split = pre_tokenizers.Split(Regex(r"\p{" + name + "}"), "removed", invert=True)
        for _, (begin, end) in split.pre_tokenize_str(text):
            for i in range(begin, end):
                found[SWEPT[i]] = name
    return found


@pytest.fixture(scope="module")
def regex_probe_code_points():
    assert unicodedata.unidata_version == LIBONIG_UNICODE, "the probes need Python's Unicode to be libonig's"
    by_library = regex_class_by_library()
    newer = [c for c in SWEPT if by_library.get(c, "C") != regex_class_by_python(c)]
    # 15.0 (U+1123F KHOJKI LETTER QA, the example), 15.1 (U+2EBF0 CJK ideograph
    # extension I), 16.0 (U+10D50 GARAY CAPITAL LETTER A, U+16D40 KIRAT RAI SIGN ANUSVARA, U+1CCF0
    # OUTLINED DIGIT ZERO).
    assert {0x1123F, 0x2EBF0, 0x10D50, 0x16D40, 0x1CCF0} <= set(newer)
    icu = Icu()
    of_14 = [c for c in SWEPT if icu.age(c) == (14, 0) and regex_class_by_python(c) != "C"]
    return newer + of_14


@pytest.fixture(scope="module")
def regex_probe_texts(regex_probe_code_points):
    texts = ["\U0001123f's"]  # the example
    for c in map(chr, regex_probe_code_points):
        # Letters and marks run on from a letter (and take a contraction), numbers split from it,
        # punctuation and symbols run with punctuation, anything follows a space.
        texts += ["a" + c + "'s", " " + c + "1" + c, "!" + c + c + "\n"]
    return texts


@pytest.mark.parametrize("name", REAL)
def test_regex_unicode_newer_than_libonig(run_moeforge, source_dir, regex_probe_texts, tmp_path, name):
    check_against_library(run_moeforge, real_tokenizer_path(source_dir, name), regex_probe_texts, tmp_path,
                          modes=(True,))


# Each class inside and outside brackets, negated (\P, \p{^..}, [^..]), under (?i) (which folds a
# bracket's classes but not a bare \p), by long and loose names, and in set operations. Not under
# (?i) in a bracket: Lu and Ll, whose folding would take libonig's case pairs, of Unicode 14.0
# (16.0's new pairs, e.g. U+1C89/U+1C8A and Garay's, fold in the library only).
REGEX_PATTERNS = [
    r"\p{L}+|\P{L}",
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"[\P{N}\p{Lu}]+|\p{^L}",
    r"\p{Mn}+|\p{Mc}\p{Me}?|[\p{M}\p{Nl}]",
    r"(?i)\p{Lu}|(?i:[\p{Lt}\p{Lo}])+|(?i:\P{Ll})",
    r"(?i)[^\p{Lo}\p{Lm}]+|\P{^Lo}",
    r"\w+|\W",
    r"(?i)[\d\p{Nl}]+|[\D&&\W]",
    r"\p{Letter}\p{decimal_number}*|\p{ other_number }|\p{punct}|\p{Symbol}+|\p{Z}|\p{Cased-Letter}",
    r"[\w&&\P{Nd}]+|[\p{L}&&[^\p{Lu}]]",
    r"[\p{P}\p{S}]+|[[\p{Cn}][\p{Co}]]|\p{C}",
]


@pytest.fixture(scope="module")
def byte_bpe():
    """A BPE over the 256 byte-level characters and no merges: its ids are the bytes of the text
    with U+0120 before each pre-token (ByteLevel's add_prefix_space), so they show every split."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return models.BPE({ch: i for i, ch in enumerate(alphabet)}, [])


@pytest.mark.parametrize("pattern", REGEX_PATTERNS)
def test_regex_classes_newer_than_libonig(run_moeforge, byte_bpe, regex_probe_texts, tmp_path, pattern):
    tok = Tokenizer(byte_bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    check_against_library(run_moeforge, path, regex_probe_texts, tmp_path, modes=(True,))
