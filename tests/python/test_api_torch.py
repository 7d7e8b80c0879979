"""PyTorch tensors in and out, CPU and CUDA (runs where torch is installed: the GPU machine; skipped
here when it is not). With torch inputs the outputs are torch tensors on the inputs' device."""
import numpy as np
import pytest
from conftest import rel_l2
from safetensors.numpy import load_file

import moeforge

torch = pytest.importorskip("torch")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and moeforge.cuda_available() else [])


@pytest.fixture(scope="module")
def golden(source_dir):
    return source_dir / "tests" / "data" / "golden"


@pytest.mark.parametrize("device", DEVICES)
def test_torch_in_torch_out(golden, device):
    folder = golden / "moe_untied_norm"
    batch = load_file(folder / "batch.safetensors")
    expected = load_file(folder / "expected.safetensors")
    dtype = "float32" if device == "cpu" else "bfloat16"
    model = moeforge.AutoModelForCausalLM.from_pretrained(str(folder), device=device, dtype=dtype)
    ids = torch.from_numpy(batch["input_ids"]).to(device)
    labels = torch.from_numpy(batch["labels"]).to(device)
    out = model(input_ids=ids, labels=labels)
    assert isinstance(out.logits, torch.Tensor) and out.logits.device.type == device
    assert isinstance(out.loss, torch.Tensor) and out.loss.device.type == device
    tolerance = 1e-4 if device == "cpu" else 2e-2
    assert rel_l2(out.logits.float().cpu().numpy(), expected["logits"]) <= tolerance
    assert abs(out.loss.item() - float(expected["loss"])) <= tolerance * abs(float(expected["loss"]))

    generated = model.generate(input_ids=ids[:1, :4], max_new_tokens=3)
    assert isinstance(generated, torch.Tensor) and generated.device.type == device
    assert generated.shape == (1, 7)
    torch.testing.assert_close(generated[:, :4], ids[:1, :4])

    loss, grads = model.loss_and_gradients(input_ids=ids, labels=labels)
    assert all(isinstance(g, torch.Tensor) and g.device.type == device for g in grads.values())


def test_tokenizer_returns_torch(golden):
    tok = moeforge.AutoTokenizer.from_pretrained(str(golden.parents[2] / "demo" / "tokenizer"))
    enc = tok(["ABC", "ABCDEF"], padding=True, return_tensors="pt")
    assert isinstance(enc["input_ids"], torch.Tensor) and enc["input_ids"].dtype == torch.int64
    np.testing.assert_array_equal(enc["input_ids"].numpy(), tok(["ABC", "ABCDEF"], padding=True, return_tensors="np")["input_ids"])
