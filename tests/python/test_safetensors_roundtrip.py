"""moeforge's safetensors reader and writer against the Python safetensors library (the reference
implementation), in both directions, through `moeforge safetensors --check/--copy`.

Tensor bytes are compared by SHA-256 of their raw bytes; dtypes and shapes by their header names.
"""
import hashlib
import json

import ml_dtypes
import numpy as np
import pytest
from huggingface_hub.serialization import split_state_dict_into_shards_factory
from safetensors import deserialize
from safetensors.numpy import save_file

# Every moeforge DType, as the numpy (or ml_dtypes) type the Python library saves it from.
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "BF16": ml_dtypes.bfloat16,
    "F16": np.float16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def random_array(rng, dtype, shape):
    """Random bits of the dtype (so NaNs, infinities and subnormals are in the mix)."""
    if dtype is np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    itemsize = np.dtype(dtype).itemsize
    raw = rng.integers(0, 256, size=(int(np.prod(shape)) * itemsize,), dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def tensors_of_every_dtype(seed=0):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (name, dtype) in enumerate(DTYPES.items()):
        tensors[f"model.layers.{i}.{name.lower()}"] = random_array(rng, dtype, (3, 5))
        tensors[f"odd.{name.lower()}"] = random_array(rng, dtype, (7,))
    tensors["scalar"] = random_array(rng, np.float32, ())
    tensors["empty"] = random_array(rng, ml_dtypes.bfloat16, (0, 4))
    return tensors


def sha256(data) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def expected_listing(tensors):
    return {name: (dtype_name(a), list(a.shape), sha256(a.tobytes())) for name, a in tensors.items()}


def dtype_name(array) -> str:
    return next(n for n, t in DTYPES.items() if np.dtype(t) == array.dtype)


def moeforge_listing(run_moeforge, path):
    report = json.loads(run_moeforge("safetensors", "--check", path).stdout)
    return report, {t["name"]: (t["dtype"], t["shape"], t["sha256"]) for t in report["tensors"]}


def python_listing(path):
    """What the reference library parses out of a file: dtype, shape, SHA-256 of the bytes."""
    parsed = deserialize(path.read_bytes())
    return {name: (t["dtype"], list(t["shape"]), sha256(t["data"])) for name, t in parsed}


def python_metadata(path):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__", {})


def hub_split(tensors, max_shard_size):
    """huggingface_hub's sharding (what Transformers' save_pretrained uses), over numpy arrays."""
    return split_state_dict_into_shards_factory(tensors, get_storage_size=lambda a: a.nbytes,
                                                filename_pattern="model{suffix}.safetensors",
                                                max_shard_size=max_shard_size)


def save_sharded_like_transformers(tensors, folder, max_shard_size):
    """A checkpoint folder as Transformers 5.x save_pretrained writes it (shards, then the index)."""
    split = hub_split(tensors, max_shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: tensors[n] for n in names}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        total_parameters = sum(int(a.size) for a in tensors.values())
        index = {"metadata": {"total_parameters": total_parameters, **split.metadata},
                 "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return split


def test_reads_every_dtype_written_by_python(tmp_path, run_moeforge):
    tensors = tensors_of_every_dtype()
    path = tmp_path / "every_dtype.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "written_by": "safetensors.numpy"})
    report, listing = moeforge_listing(run_moeforge, path)
    assert listing == expected_listing(tensors)
    assert report["metadata"] == {"format": "pt", "written_by": "safetensors.numpy"}
    assert report["sharded"] is False


def test_reads_sharded_checkpoint_written_like_transformers(tmp_path, run_moeforge):
    tensors = tensors_of_every_dtype(seed=1)
    folder = tmp_path / "checkpoint"
    split = save_sharded_like_transformers(tensors, folder, max_shard_size=200)
    assert split.is_sharded and len(split.filename_to_tensors) > 2
    report, listing = moeforge_listing(run_moeforge, folder)
    assert report["sharded"] is True
    assert listing == expected_listing(tensors)
    assert {t["name"]: t["shard"] for t in report["tensors"]} == split.tensor_to_filename


def test_python_reads_every_dtype_written_by_moeforge(tmp_path, run_moeforge):
    tensors = tensors_of_every_dtype(seed=2)
    source = tmp_path / "source.safetensors"
    save_file(tensors, source, metadata={"format": "pt"})
    copy = tmp_path / "copy.safetensors"
    run_moeforge("safetensors", "--copy", source, "--out", copy)
    assert python_listing(copy) == expected_listing(tensors)
    assert python_metadata(copy) == {"format": "pt"}
    header_size = int.from_bytes(copy.read_bytes()[:8], "little")
    assert header_size % 8 == 0  # padded like the Python library's files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.safetensors", "source.safetensors"]


@pytest.mark.parametrize("max_shard_size", [1, 150, 400, 10**9])
def test_moeforge_shards_like_huggingface_hub(tmp_path, run_moeforge, max_shard_size):
    tensors = tensors_of_every_dtype(seed=3)
    source = tmp_path / "source.safetensors"
    save_file(tensors, source)
    out = tmp_path / "out"
    run_moeforge("safetensors", "--copy", source, "--out", out, "--max-shard-size", max_shard_size)

    # moeforge writes tensors in name order; the same order through huggingface_hub's split, and the
    # files Transformers would write from it, are the reference.
    ordered = {name: tensors[name] for name in sorted(tensors)}
    reference = tmp_path / "reference"
    split = save_sharded_like_transformers(ordered, reference, max_shard_size)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    if split.is_sharded:
        index_file = "model.safetensors.index.json"
        assert (out / index_file).read_text() == (reference / index_file).read_text()
    for filename, names in split.filename_to_tensors.items():
        assert python_listing(out / filename) == expected_listing({n: tensors[n] for n in names})


def test_copy_of_a_python_checkpoint_reads_back_in_python(tmp_path, run_moeforge):
    tensors = tensors_of_every_dtype(seed=4)
    source = tmp_path / "source"
    save_sharded_like_transformers(tensors, source, max_shard_size=300)
    out = tmp_path / "out"
    run_moeforge("safetensors", "--copy", source, "--out", out, "--max-shard-size", 300)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    seen = {}
    for shard in sorted(set(index["weight_map"].values())):
        for name, entry in python_listing(out / shard).items():
            assert index["weight_map"][name] == shard
            seen[name] = entry
    assert seen == expected_listing(tensors)


def test_malformed_corpus_is_rejected_by_both(source_dir, run_moeforge):
    corpus = source_dir / "tests" / "data" / "safetensors" / "malformed"
    cases = json.loads((corpus / "cases.json").read_text())
    assert len(cases) >= 16
    for name, expected in cases.items():
        path = corpus / name.rstrip("/")
        if not name.endswith("/"):
            # The corpus is only meaningful if the reference library rejects each file as well.
            with pytest.raises(Exception):
                deserialize(path.read_bytes())
        result = run_moeforge("safetensors", "--check", path, check=False)
        assert result.returncode == 2, (name, result.returncode, result.stderr)
        assert expected in result.stderr, (name, result.stderr)
        assert path.name in result.stderr, (name, result.stderr)
