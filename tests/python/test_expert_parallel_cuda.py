"""Expert parallelism on the CUDA backend, on one GPU: `moeforge step --device cuda` under `mpirun -np 2`,
the two processes sharing the GPU and their collectives going through the host over MPI (src/dist), holds
each half of the routed experts on the device and must give what one process gives. Both are held to the
GPU golden test's rule against Transformers' float32 step (tests/gpu/gpu_model_test.cpp: each tensor within
max(2e-2, 2.5x Transformers' own bf16 error), routing reused from the float32 CPU run), and to each other.
Runs on the GPU machine (dev/cuda/gpu_run.sh ep); skipped where no GPU is visible."""
import json
import os
import shutil
import subprocess

import pytest
from safetensors.numpy import load_file

from conftest import real_token_logits, rel_l2

pytestmark = [
    pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no GPU here (nvidia-smi not found)"),
    pytest.mark.skipif(shutil.which(os.environ.get("MOEFORGE_MPIRUN", "mpirun")) is None, reason="mpirun not found"),
]

FIXTURES = ["moe_tied_dense_aux_pad", "moe_untied_norm", "qwen2_moe_shared_dense_aux_pad", "deepseek_v3_q_lora_yarn_groups",
            "gpt_oss_sinks_windows_aux_pad", "nemotron_h_all_kinds_pad"]


def optimizer_flags(expected_file):
    with open(expected_file, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header["__metadata__"]
    return ["--lr", meta["lr"], "--adam-beta1", meta["adam_beta1"], "--adam-beta2", meta["adam_beta2"],
            "--adam-eps", meta["adam_epsilon"], "--weight-decay", meta["weight_decay"]]


def step(binary, ranks, golden, out):
    cmd = [str(binary), "step", "--model", str(golden), "--batch", str(golden / "batch.safetensors"), "--out", str(out),
           "--device", "cuda", "--dtype", "bfloat16", "--reuse-cpu-routing",
           *optimizer_flags(golden / "expected.safetensors")]
    run(cmd, ranks)
    return load_file(str(out))


def run(cmd, ranks):
    """`cmd` alone, or under mpirun with `ranks` processes sharing the GPU."""
    if ranks > 1:
        cmd = [os.environ.get("MOEFORGE_MPIRUN", "mpirun"), "-np", str(ranks), *cmd]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-4000:]}"


def errors(have, want, golden):
    assert set(have) == set(want), sorted(set(have) ^ set(want))
    out = {}
    for name in want:
        h, w = have[name], want[name]
        if name == "logits":
            h, w = real_token_logits(h, golden), real_token_logits(w, golden)
        out[name] = rel_l2(h, w)
    return out


@pytest.mark.parametrize("fixture", FIXTURES)
def test_two_processes_on_one_gpu_reproduce_one(fixture, source_dir, moeforge_binary, tmp_path):
    golden = source_dir / "tests" / "data" / "golden" / fixture
    theirs = json.loads((source_dir / "tests" / "data" / "golden" / "bf16_baseline.json").read_text())[fixture]["errors"]
    expected = load_file(str(golden / "expected.safetensors"))
    one = step(moeforge_binary, 1, golden, tmp_path / "ep1.safetensors")
    two = step(moeforge_binary, 2, golden, tmp_path / "ep2.safetensors")
    err_one, err_two, between = errors(one, expected, golden), errors(two, expected, golden), errors(two, one, golden)
    for name in sorted(expected):
        limit = max(2e-2, 2.5 * theirs.get(name, 0.0))
        print(f"EP_CUDA {fixture}/{name}: EP=1 {err_one[name]:.3e}, EP=2 {err_two[name]:.3e}, "
              f"EP=2 vs EP=1 {between[name]:.3e} (limit {limit:.3e})")
        # Where one process already misses the rule (GpuGolden names it), expert parallelism is held to
        # reproducing that process.
        if err_one[name] <= limit:
            assert err_two[name] <= limit, (name, err_two[name], limit)
        assert between[name] <= limit, (name, between[name], limit)


def train(binary, ranks, demo, out, *extra):
    """`moeforge train` on CUDA: 4 rows per optimizer step at every process count, a checkpoint at step 2."""
    cmd = [str(binary), "train", "--model", str(demo / "base-model"), "--train_file", str(demo / "train.jsonl"),
           "--output_dir", str(out), "--device", "cuda", "--max_steps", "4", "--per_device_train_batch_size",
           str(4 // ranks), "--max_seq_length", "64", "--logging_steps", "1", "--save_steps", "2", *extra]
    run(cmd, ranks)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("zero_stage", ["1", "2"])
def test_training_on_one_gpu_at_two_processes_follows_one(demo_data, moeforge_binary, tmp_path, zero_stage):
    """The trainer's whole path on CUDA under expert parallelism: accumulation, clipping, the optimizer's
    sharded step (at zero_stage 2 with the gradients sharded as each layer's backward completes them),
    the checkpoints each rank writes; the saved model is one process's, within bf16's rule."""
    one = train(moeforge_binary, 1, demo_data, tmp_path / "one")
    two = train(moeforge_binary, 2, demo_data, tmp_path / "two", "--zero_stage", zero_stage)
    assert [r["step"] for r in two if "loss" in r] == [r["step"] for r in one if "loss" in r] == [1, 2, 3, 4]
    for h, w in zip([r for r in two if "loss" in r], [r for r in one if "loss" in r]):
        print(f"EP_CUDA_TRAIN zero_stage {zero_stage} step {w['step']}: loss {w['loss']:.6f} at 1 process, "
              f"{h['loss']:.6f} at 2")
        assert abs(h["loss"] - w["loss"]) <= 2e-2 * abs(w["loss"]), (h["step"], h["loss"], w["loss"])
    trained, reference = float32_weights(tmp_path / "two"), float32_weights(tmp_path / "one")
    assert set(trained) == set(reference)
    for name in reference:
        assert rel_l2(trained[name], reference[name]) <= 2e-2, name


def float32_weights(folder):
    # Through torch: numpy has no bfloat16 (the GPU machine has torch).
    from safetensors.torch import load_file as load_torch
    weights = {}
    for path in sorted(folder.glob("model*.safetensors")):
        weights.update({k: v.float().numpy() for k, v in load_torch(str(path)).items()})
    return weights
