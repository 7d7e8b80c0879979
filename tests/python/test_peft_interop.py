"""Adapters trained by moeforge load in Hugging Face PEFT unchanged (python/oracle/check_saved_adapter.py).

For each LoRA fixture model of tests/data/lora (attention + experts with rsLoRA, and
target_modules="all-linear": attention, router and experts), a few steps of LoRA training through each
front end (`moeforge train --lora_*`, and Trainer(peft_config=...)) write an adapter folder, which
check_saved_adapter loads in PEFT 0.21 on the base folder: every tensor of the file goes into the
adapter with no missing or unexpected keys, and PEFT's logits on the fixture's batch equal moeforge's
(`moeforge step --adapter`, or the PeftModel's forward) within relative L2 1e-4; the merged model
(`moeforge merge`, or merge_and_unload().save_pretrained) loads in Transformers with the same logits.
Runs where torch, transformers and peft are installed (the GPU machine's `python` stage of
dev/cuda/gpu_run.sh); skipped elsewhere.
"""
import importlib.util
import json
import shutil
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
from safetensors.numpy import load_file, save_file  # noqa: E402

# The fixture model, and the LoRA settings trained on it: the command line's flags and PEFT's LoraConfig
# arguments for the same thing.
CASES = {
    "lora_attn_experts": (
        ["--lora_r", "3", "--lora_alpha", "5", "--use_rslora", "--lora_target_parameters",
         "mlp.experts.gate_up_proj,mlp.experts.down_proj"],
        dict(r=3, lora_alpha=5, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
             target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])),
    "lora_all_linear": (
        ["--lora_r", "2", "--lora_alpha", "4", "--lora_target_modules", "all-linear"],
        dict(r=2, lora_alpha=4, target_modules="all-linear")),
}
STEPS = 4


@pytest.fixture(scope="module")
def oracle(source_dir):
    spec = importlib.util.spec_from_file_location("check_saved_adapter",
                                                  source_dir / "python" / "oracle" / "check_saved_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documents(vocab_size, n=24, length=12, seed=0):
    """Token ids inside the fixture's small vocabulary (no tokenizer of its size exists)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab_size, size=length).tolist() for _ in range(n)]


def write_mfbin(path, docs):
    """A pre-tokenized dataset (src/data/token_corpus.h), every token trained on; vocab_size 0 (unknown),
    so the ids are checked against the tokenizer's vocabulary."""
    def align(n):
        return (n + 63) // 64 * 64

    tokens = np.concatenate([np.asarray(d, np.uint32) for d in docs])
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.uint64)
    bits = np.packbits(np.ones(len(tokens), np.uint8), bitorder="little")
    meta = json.dumps({"source": "test_peft_interop"}).encode()
    offsets_at = 128
    tokens_at = align(offsets_at + offsets.nbytes)
    bits_at = align(tokens_at + tokens.nbytes)
    meta_at = align(bits_at + bits.nbytes)
    out = bytearray(meta_at + len(meta))
    out[:8] = b"MFTOKBIN"
    struct.pack_into("<II8Q", out, 8, 1, 1, len(docs), len(tokens), 0, offsets_at, tokens_at, bits_at, meta_at,
                     len(meta))
    for at, array in ((offsets_at, offsets.astype("<u8")), (tokens_at, tokens.astype("<u4")), (bits_at, bits)):
        out[at:at + array.nbytes] = array.tobytes()
    out[meta_at:] = meta
    path.write_bytes(bytes(out))


def make_case(source_dir, case, tmp_path):
    """CASE/base (the fixture's model, with a tokenizer for `moeforge train`) and CASE/batch.safetensors."""
    fixture = source_dir / "tests" / "data" / "lora" / case
    folder = tmp_path / case
    (folder / "base").mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(fixture / name, folder / "base" / name)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source_dir / "demo" / "tokenizer" / name, folder / "base" / name)
    shutil.copy(fixture / "batch.safetensors", folder / "batch.safetensors")
    vocab_size = json.loads((fixture / "config.json").read_text())["vocab_size"]
    return folder, documents(vocab_size)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_adapter_loads_in_peft(case, source_dir, run_moeforge, oracle, tmp_path):
    folder, docs = make_case(source_dir, case, tmp_path)
    base, adapter, batch = folder / "base", folder / "adapter", folder / "batch.safetensors"
    write_mfbin(tmp_path / "train.mfbin", docs)
    run_moeforge("train", "--model", base, "--train_file", tmp_path / "train.mfbin", "--output_dir", adapter,
                 "--max_steps", STEPS, "--per_device_train_batch_size", 2, "--max_seq_length", 16,
                 "--learning_rate", "1e-2", "--logging_steps", 1, "--save_steps", 0, "--eval_ratio", 0,
                 *CASES[case][0])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    run_moeforge("step", "--model", base, "--adapter", adapter, "--batch", batch, "--out", tmp_path / "step.safetensors")
    run_moeforge("merge", "--model", base, "--adapter", adapter, "--output_dir", folder / "merged")
    run_moeforge("step", "--model", folder / "merged", "--batch", batch, "--out", tmp_path / "merged.safetensors")
    save_file({"logits": load_file(tmp_path / "step.safetensors")["logits"],
               "merged_logits": load_file(tmp_path / "merged.safetensors")["logits"]},
              str(folder / "moeforge.safetensors"))
    oracle.check(str(folder))


@pytest.mark.parametrize("case", sorted(CASES))
def test_python_adapter_loads_in_peft(case, source_dir, oracle, tmp_path):
    moeforge = pytest.importorskip("moeforge")
    folder, docs = make_case(source_dir, case, tmp_path)
    args = moeforge.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=STEPS, per_device_train_batch_size=2,
                                      max_seq_length=16, learning_rate=1e-2, logging_steps=1, save_steps=0,
                                      report_to="none")
    model = moeforge.AutoModelForCausalLM.from_pretrained(folder / "base", device="cpu", dtype="float32")
    trainer = moeforge.Trainer(model=model, args=args, train_dataset=[{"input_ids": d} for d in docs],
                               peft_config=moeforge.LoraConfig(**CASES[case][1]))
    trainer.train()
    trainer.save_model(folder / "adapter")
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(folder / "base")
    batch = load_file(folder / "batch.safetensors")
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = trainer.model(**inputs).logits
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(folder / "merged")
    save_file({"logits": logits, "merged_logits": merged(**inputs).logits}, str(folder / "moeforge.safetensors"))
    oracle.check(str(folder))
