#!/usr/bin/env python3
"""Writes the malformed safetensors corpus (tests/data/safetensors/malformed/) and cases.json, which
maps each case (a file, or a checkpoint folder ending in '/') to a substring its error must contain.

Run once from the repository root with the project venv; the outputs are committed:
    .venv/bin/python tests/data/safetensors/make_malformed.py
The valid shards inside the checkpoint cases are written by the safetensors library itself.
"""
import json
import shutil
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent / "malformed"


def raw(header: bytes, data: bytes = b"", header_len: int | None = None) -> bytes:
    """An 8-byte little-endian header length, the header bytes, then the data section."""
    n = len(header) if header_len is None else header_len
    return struct.pack("<Q", n) + header + data


def hdr(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def f32(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


W = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

FILES = {
    "empty.safetensors": (b"", "too short"),
    "too_short.safetensors": (b"\x05\x00\x00", "too short"),
    "header_too_large.safetensors": (raw(b"{}", header_len=1 << 40), "exceeds the limit"),
    "header_past_eof.safetensors": (raw(b'{"w":{}}', header_len=1000), "runs past the end of the file"),
    "not_json.safetensors": (raw(b"hello world!"), "invalid JSON"),
    "not_object.safetensors": (raw(b"[1,2,3]  "), "header must be a JSON object"),
    "bad_utf8.safetensors": (
        raw(b'{"w\xff\xfe":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', f32(2)),
        "UTF-8",
    ),
    "unknown_dtype.safetensors": (raw(hdr({"w": {**W, "dtype": "Q7"}}), f32(2)), "unknown dtype 'Q7'"),
    "negative_shape.safetensors": (
        raw(hdr({"w": {**W, "shape": [-1, 2]}}), f32(2)),
        "must hold non-negative integers",
    ),
    "fractional_shape.safetensors": (
        raw(hdr({"w": {**W, "shape": [2.5]}}), f32(2)),
        "must hold non-negative integers",
    ),
    "shape_not_list.safetensors": (raw(hdr({"w": {**W, "shape": "2"}}), f32(2)), "'shape' must be a list"),
    "shape_overflow.safetensors": (
        raw(hdr({"w": {**W, "shape": [1 << 62, 1 << 3]}}), f32(2)),
        "is too large (overflow",
    ),
    "size_mismatch.safetensors": (
        raw(hdr({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}), f32(3)),
        "need 16 bytes",
    ),
    "offsets_past_end.safetensors": (
        raw(hdr({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}), f32(2)),
        "run past the end of the data section",
    ),
    "offsets_reversed.safetensors": (
        raw(hdr({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}), f32(2)),
        "end before they begin",
    ),
    "offsets_not_pair.safetensors": (
        raw(hdr({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}), f32(2)),
        "'data_offsets' must be [begin, end]",
    ),
    "overlap.safetensors": (
        raw(hdr({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), f32(3)),
        "overlaps tensor 'a'",
    ),
    "gap.safetensors": (
        raw(hdr({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}), f32(3)),
        "gap of 4 bytes",
    ),
    "trailing_bytes.safetensors": (
        raw(hdr({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}), f32(2)),
        "4 trailing bytes",
    ),
    "metadata_not_string_map.safetensors": (
        raw(hdr({"__metadata__": {"format": 1}, "w": W}), f32(2)),
        "__metadata__ must be a map of strings to strings",
    ),
    "metadata_not_object.safetensors": (
        raw(hdr({"__metadata__": ["pt"], "w": W}), f32(2)),
        "__metadata__ must be a map of strings to strings",
    ),
    "entry_not_object.safetensors": (raw(hdr({"w": 5}), b""), "header entry must be an object"),
    "duplicate_key.safetensors": (
        raw(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(2)),
        "key 'w' appears twice",
    ),
    "missing_dtype.safetensors": (
        raw(hdr({"w": {"shape": [2], "data_offsets": [0, 8]}}), f32(2)),
        "missing 'dtype'",
    ),
    "missing_data_offsets.safetensors": (
        raw(hdr({"w": {"dtype": "F32", "shape": [2]}}), f32(2)),
        "missing 'data_offsets'",
    ),
}


def index(weight_map) -> str:
    return json.dumps({"metadata": {"total_size": 8}, "weight_map": weight_map}, indent=2) + "\n"


def two(name):
    return {name: np.arange(2, dtype=np.float32)}


def write_checkpoints():
    """Checkpoint folders: a valid first shard written by the safetensors library, a broken index."""
    cases = {}

    d = OUT / "index_missing_shard"
    d.mkdir()
    save_file(two("a"), d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(
        index({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}))
    cases["index_missing_shard/"] = "which does not exist"

    d = OUT / "index_tensor_not_in_shard"
    d.mkdir()
    save_file(two("a"), d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(
        index({"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}))
    cases["index_tensor_not_in_shard/"] = "tensor 'b' in model-00001-of-00001.safetensors, but that shard has no such tensor"

    d = OUT / "index_tensor_in_two_shards"
    d.mkdir()
    save_file({**two("a"), **two("b")}, d / "model-00001-of-00002.safetensors")
    save_file(two("b"), d / "model-00002-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(
        index({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}))
    cases["index_tensor_in_two_shards/"] = "tensor 'b' is stored in two shards"

    d = OUT / "index_shard_outside_folder"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text(index({"a": "../gap.safetensors"}))
    cases["index_shard_outside_folder/"] = "not a file name in the checkpoint folder"

    d = OUT / "index_not_json"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "x.safetensors",}}\n')
    cases["index_not_json/"] = "invalid JSON"

    d = OUT / "index_without_weight_map"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text('{"metadata": {"total_size": 0}}\n')
    cases["index_without_weight_map/"] = "missing key 'weight_map'"
    return cases


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    cases = {}
    for name, (content, expected) in FILES.items():
        (OUT / name).write_bytes(content)
        cases[name] = expected
    cases.update(write_checkpoints())
    (OUT / "cases.json").write_text(json.dumps(cases, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
