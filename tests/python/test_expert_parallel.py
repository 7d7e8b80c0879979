"""Expert parallelism on the CPU backend: `moeforge step` under mpirun with 2 and 4 processes (each
holding a part of the routed experts and computing its rows of the batch, tokens travelling to
their experts over MPI) reproduces the single process: loss, logits, every gradient and the loss
after one AdamW step, on a tiny model of each family that trains; and on the Transformers golden
batches directly. A rank that fails ends every rank, naming itself."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import real_token_logits, rel_l2

# Every golden fixture of tests/data/golden with routed experts: seven families (GPT-OSS's experts are
# one tensor per layer, split by rows; its MXFP4 release is dequantised as it loads; Nemotron-H's
# Mamba-2 layers scan each rank's own rows).
FIXTURES = ["gpt_oss_sinks_windows_aux_pad", "gpt_oss_mxfp4_tied", "moe_untied_norm", "moe_tied_dense_aux_pad", "moe_sparse_step_top1", "moe_yarn_rope",
            "mixtral_tied_top3", "mixtral_top2_aux_pad", "olmoe_qknorm_aux_pad", "qwen2_moe_shared_dense_aux_pad",
            "qwen2_moe_sparse_step_norm_tied", "deepseek_v3_q_lora_yarn_groups", "deepseek_v3_no_q_lora_tied",
            "deepseek_v3_fp8_blocks", "nemotron_h_all_kinds_pad", "nemotron_h_tied_clamped_dt",
            "nemotron_h_latent_moe", "nemotron_h_packed_docs"]
STEP_FLAGS = ["--learning_rate", "1e-3", "--weight_decay", "0.01"]
# Nemotron-H's A_log gradients are sums whose terms cancel (two rows' shares of 2.5e-5 and -1.2e-5 give
# 3.9e-6 on the golden batch, and tokens cancel within rows), so float32 order differences upstream
# (a token's expert outputs summed on several ranks) reach 1.4e-5 there: the golden tolerance instead.
EP_TOLERANCE = {"nemotron_h_all_kinds_pad": 1e-4, "nemotron_h_tied_clamped_dt": 1e-4, "nemotron_h_latent_moe": 1e-4,
                "nemotron_h_packed_docs": 1e-4}

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found (scripts/bootstrap installs openmpi-bin)")


def mpi_env():
    env = dict(os.environ)
    # Open MPI refuses root unless told (CI containers run as root).
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    return env


def step(binary, ranks, model, batch, out, *extra, check=True):
    cmd = [str(binary), "step", "--model", str(model), "--batch", str(batch), "--out", str(out), *STEP_FLAGS, *extra]
    if ranks > 1:
        cmd = ["mpirun", "-np", str(ranks), *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=300)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}"
    return result


def four_row_batch(golden, path):
    """The golden batch's rows and, after them, the same rows with other token ids: 4 rows or more,
    so that 4 ranks each compute at least one."""
    batch = load_file(str(golden / "batch.safetensors"))
    vocab = json.loads((golden / "config.json").read_text())["vocab_size"]
    rows = batch["input_ids"].shape[0]
    copies = -(-4 // rows)
    out = {}
    for name, t in batch.items():
        parts = [t]
        for c in range(1, copies):
            parts.append((t + 7 * c) % vocab if name in ("input_ids", "labels") else t)
        out[name] = np.concatenate(parts)
    # Shifted labels keep the golden's ignored positions.
    if "labels" in batch:
        out["labels"] = np.where(np.concatenate([batch["labels"]] * copies) == -100, -100, out["labels"])
    save_file(out, str(path))
    return path


def compare(have, want, tol):
    assert set(have) == set(want), sorted(set(have) ^ set(want))
    for name in want:
        if name.startswith("loss") or name == "aux_loss":
            assert abs(float(have[name]) - float(want[name])) <= 1e-5 * max(1.0, abs(float(want[name]))), name
        else:
            assert rel_l2(have[name], want[name]) <= tol, (name, rel_l2(have[name], want[name]))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_two_and_four_ranks_reproduce_one(fixture, source_dir, moeforge_binary, tmp_path):
    golden = source_dir / "tests" / "data" / "golden" / fixture
    batch = four_row_batch(golden, tmp_path / "batch.safetensors")
    step(moeforge_binary, 1, golden, batch, tmp_path / "ep1.safetensors")
    one = load_file(str(tmp_path / "ep1.safetensors"))
    for ranks in (2, 4):
        # ZeRO-2: each rank holds only its slice of the replicated gradients through the backward pass.
        for zero_stage in ("1", "2"):
            out = tmp_path / f"ep{ranks}_zero{zero_stage}.safetensors"
            step(moeforge_binary, ranks, golden, batch, out, "--zero_stage", zero_stage)
            # Only the order of float32 sums differs (a token's expert outputs add up on several ranks).
            compare(load_file(str(out)), one, EP_TOLERANCE.get(fixture, 1e-5))


@pytest.mark.parametrize("fixture", ["moe_tied_dense_aux_pad", "deepseek_v3_q_lora_yarn_groups", "nemotron_h_all_kinds_pad",
                                     "nemotron_h_packed_docs"])
def test_two_ranks_match_transformers(fixture, source_dir, moeforge_binary, tmp_path):
    golden = source_dir / "tests" / "data" / "golden" / fixture
    out = tmp_path / "ep2.safetensors"
    result = subprocess.run(["mpirun", "-np", "2", str(moeforge_binary), "step", "--model", str(golden), "--batch",
                             str(golden / "batch.safetensors"), "--out", str(out)],
                            capture_output=True, text=True, env=mpi_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    have, want = load_file(str(out)), load_file(str(golden / "expected.safetensors"))
    assert abs(float(have["loss"]) - float(want["loss"])) <= 1e-5
    assert rel_l2(real_token_logits(have["logits"], golden), real_token_logits(want["logits"], golden)) <= 1e-4
    grads = [name for name in want if name.startswith("grad.")]
    assert grads
    for name in grads:
        assert rel_l2(have[name], want[name]) <= 1e-4, name


# The PEFT LoRA fixtures with adapters on the routed experts (tests/data/lora): split with them.
LORA_EXPERT_FIXTURES = ["lora_attn_experts", "lora_all_linear", "lora_converted_mlp_names", "lora_deepseek_v3_mla",
                        "lora_gpt_oss", "lora_nemotron_h", "lora_nemotron_h_latent"]


@pytest.mark.parametrize("fixture", LORA_EXPERT_FIXTURES)
def test_lora_on_split_experts_matches_peft(fixture, source_dir, moeforge_binary, tmp_path):
    lora = source_dir / "tests" / "data" / "lora" / fixture
    want = load_file(str(lora / "expected.safetensors"))
    from safetensors import safe_open
    with safe_open(str(lora / "expected.safetensors"), "numpy") as f:
        meta = f.metadata()
    flags = ["--adapter", str(lora / "adapter"), "--learning_rate", meta["lr"], "--adam_beta1", meta["adam_beta1"],
             "--adam_beta2", meta["adam_beta2"], "--adam_epsilon", meta["adam_epsilon"], "--weight_decay", meta["weight_decay"]]

    def lora_step(ranks, batch, out, *extra):
        cmd = [str(moeforge_binary), "step", "--model", str(lora), "--batch", str(batch), "--out", str(out), *flags, *extra]
        if ranks > 1:
            cmd = ["mpirun", "-np", str(ranks), *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=300)
        assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}"
        return load_file(str(out))

    # Two ranks, each holding half of the experts and of their adapters, on PEFT's batch: PEFT's loss,
    # logits, adapter gradients (gathered under their file keys) and loss after one AdamW step.
    have = lora_step(2, lora / "batch.safetensors", tmp_path / "ep2.safetensors", "--save_pretrained", str(tmp_path / "ep2"))
    assert abs(float(have["loss"]) - float(want["loss"])) <= 1e-5 * abs(float(want["loss"]))
    assert abs(float(have["loss_after_step"]) - float(want["loss_1"])) <= 1e-5 * abs(float(want["loss_1"]))
    assert rel_l2(real_token_logits(have["logits"], lora), real_token_logits(want["logits"], lora)) <= 1e-4
    grads = sorted(name for name in want if name.startswith("grad."))
    assert sorted(name for name in have if name.startswith("grad.")) == grads
    for name in grads:
        assert rel_l2(have[name], want[name]) <= 1e-4, name
    # The stepped adapter the two ranks saved is one process's.
    lora_step(1, lora / "batch.safetensors", tmp_path / "ep1.safetensors", "--save_pretrained", str(tmp_path / "ep1"))
    saved, reference = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ep2", "ep1"))
    assert set(saved) == set(reference)
    for key in reference:
        assert rel_l2(saved[key], reference[key]) <= 1e-5, key
    # Four ranks reproduce one on a batch of four rows or more, with the adapters' gradients sharded too.
    batch = four_row_batch(lora, tmp_path / "batch4.safetensors")
    reference = lora_step(1, batch, tmp_path / "one4.safetensors")
    for zero_stage in ("1", "2"):
        compare(lora_step(4, batch, tmp_path / f"ep4_zero{zero_stage}.safetensors", "--zero_stage", zero_stage),
                reference, 1e-4 if "nemotron" in fixture else 1e-5)


def test_lora_training_on_split_experts_follows_one_process(demo_data, moeforge_binary, tmp_path):
    # Adapters on the attention and on the routed experts; each rank trains its experts' adapters.
    lora = ["--lora_r", "4", "--lora_target_parameters", "mlp.experts.gate_up_proj,mlp.experts.down_proj"]
    train(moeforge_binary, 1, demo_data, tmp_path / "one", *lora)
    one = metrics(tmp_path / "one")
    reference = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    for ranks in (2, 4):
        out = tmp_path / f"ep{ranks}"
        train(moeforge_binary, ranks, demo_data, out, *lora)
        for h, w in zip(metrics(out), one):
            for key in ("loss", "grad_norm"):
                assert abs(h[key] - w[key]) <= 1e-6 * abs(w[key]), (ranks, h["step"], key, h[key], w[key])
        saved = load_file(str(out / "adapter_model.safetensors"))
        assert set(saved) == set(reference) and any(".experts." in key for key in saved)
        for key in reference:
            assert rel_l2(saved[key], reference[key]) <= 1e-5, key
    # Killed after its step-2 checkpoint, two ranks resume where it left.
    resumed = tmp_path / "resumed"
    assert train(moeforge_binary, 2, demo_data, resumed, *lora, fault="kill@step:3", check=False).returncode != 0
    train(moeforge_binary, 2, demo_data, resumed, *lora, "--resume_from_checkpoint", "latest")
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in metrics(tmp_path / "ep2")]


def test_a_failing_rank_ends_every_rank(source_dir, moeforge_binary, tmp_path):
    # Rank 1 reads a batch file that does not exist while rank 0 goes on into the step's collectives.
    golden = source_dir / "tests" / "data" / "golden" / "moe_untied_norm"
    common = ["step", "--model", str(golden), "--out", str(tmp_path / "out.safetensors")]
    cmd = ["mpirun", "-np", "1", str(moeforge_binary), *common, "--batch", str(golden / "batch.safetensors"), ":",
           "-np", "1", str(moeforge_binary), *common, "--batch", str(tmp_path / "missing.safetensors")]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    assert "rank 1 of 2: error:" in result.stderr and "missing.safetensors" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_a_killed_rank_ends_every_rank(source_dir, moeforge_binary, tmp_path):
    # Rank 1 dies by SIGKILL (as the OOM killer would) while rank 0 waits for it.
    golden = source_dir / "tests" / "data" / "golden" / "moe_untied_norm"
    cmd = ["mpirun", "-np", "1", str(moeforge_binary), "step", "--model", str(golden), "--out",
           str(tmp_path / "out.safetensors"), "--batch", str(golden / "batch.safetensors"), ":",
           "-np", "1", "sh", "-c", "kill -9 $$"]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out.safetensors").exists()


def load_folder(folder):
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


@pytest.mark.parametrize("fixture", ["moe_tied_dense_aux_pad", "gpt_oss_sinks_windows_aux_pad"])
def test_a_checkpoint_saved_by_four_ranks_loads_at_one_and_two(fixture, source_dir, moeforge_binary, tmp_path):
    golden = source_dir / "tests" / "data" / "golden" / fixture
    batch = four_row_batch(golden, tmp_path / "batch.safetensors")
    # Saved with no step: each rank wrote its experts, rank 0 the rest and the index; the folder
    # holds the source's tensors bit for bit, and one process computes Transformers' logits from it.
    saved = tmp_path / "ep4_as_loaded"
    result = subprocess.run(["mpirun", "-np", "4", str(moeforge_binary), "step", "--model", str(golden), "--batch", str(batch),
                             "--out", str(tmp_path / "unused.safetensors"), "--save_pretrained", str(saved)],
                            capture_output=True, text=True, env=mpi_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    # Per-expert tensors: a shard per rank and the index; GPT-OSS's fused experts are joined on rank 0.
    sharded = (saved / "model.safetensors.index.json").exists()
    assert sharded != fixture.startswith("gpt_oss") and sharded != (saved / "model.safetensors").exists()
    source, written = load_file(str(golden / "model.safetensors")), load_folder(saved)
    assert set(written) == set(source)
    for name, t in source.items():
        assert np.array_equal(written[name], t), name
    step(moeforge_binary, 1, saved, golden / "batch.safetensors", tmp_path / "ep1.safetensors")
    have, want = load_file(str(tmp_path / "ep1.safetensors")), load_file(str(golden / "expected.safetensors"))
    assert rel_l2(real_token_logits(have["logits"], golden), real_token_logits(want["logits"], golden)) <= 1e-4
    assert abs(float(have["loss"]) - float(want["loss"])) <= 1e-5

    # Trained one AdamW step at EP=4 and saved: the same folder as one process makes, and it loads at
    # EP=1 and EP=2 to the same results.
    for ranks in (4, 1):
        cmd = [str(moeforge_binary), "step", "--model", str(golden), "--batch", str(batch), "--out",
               str(tmp_path / f"step{ranks}.safetensors"), "--save_pretrained", str(tmp_path / f"trained{ranks}"), *STEP_FLAGS]
        result = subprocess.run((["mpirun", "-np", str(ranks)] if ranks > 1 else []) + cmd, capture_output=True,
                                text=True, env=mpi_env(), timeout=300)
        assert result.returncode == 0, result.stderr
    four, one = load_folder(tmp_path / "trained4"), load_folder(tmp_path / "trained1")
    assert set(four) == set(one)
    for name in one:
        assert rel_l2(four[name], one[name]) <= 1e-5, name
    for ranks in (1, 2):
        step(moeforge_binary, ranks, tmp_path / "trained4", batch, tmp_path / f"reloaded{ranks}.safetensors")
    compare(load_file(str(tmp_path / "reloaded2.safetensors")), load_file(str(tmp_path / "reloaded1.safetensors")), 1e-5)


def test_gpt_oss_saved_as_mxfp4_by_two_ranks_is_one_process_folder(source_dir, moeforge_binary, tmp_path):
    """--save_quantization mxfp4 under expert parallelism: rank 0 quantises the experts the ranks joined, the
    others plan their shards with its tensors' sizes; the folder is one process's, byte for byte, and it
    computes Transformers' logits again (the release's weights survive the round trip exactly)."""
    golden = source_dir / "tests" / "data" / "golden" / "gpt_oss_mxfp4_tied"
    batch = four_row_batch(golden, tmp_path / "batch.safetensors")
    for ranks in (2, 1):
        cmd = [str(moeforge_binary), "step", "--model", str(golden), "--batch", str(batch), "--out",
               str(tmp_path / "unused.safetensors"), "--save_pretrained", str(tmp_path / f"mxfp4_{ranks}"),
               "--save_quantization", "mxfp4"]
        result = subprocess.run((["mpirun", "-np", str(ranks)] if ranks > 1 else []) + cmd, capture_output=True,
                                text=True, env=mpi_env(), timeout=300)
        assert result.returncode == 0, result.stderr
    two, one = load_folder(tmp_path / "mxfp4_2"), load_folder(tmp_path / "mxfp4_1")
    assert set(two) == set(one) == set(load_file(str(golden / "model.safetensors")))
    for name in one:
        assert two[name].dtype == one[name].dtype and np.array_equal(two[name], one[name]), name
    config = json.loads((tmp_path / "mxfp4_2" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    step(moeforge_binary, 1, tmp_path / "mxfp4_2", golden / "batch.safetensors", tmp_path / "reloaded.safetensors")
    have, want = load_file(str(tmp_path / "reloaded.safetensors")), load_file(str(golden / "expected.safetensors"))
    assert rel_l2(real_token_logits(have["logits"], golden), real_token_logits(want["logits"], golden)) <= 1e-4


def train(binary, ranks, demo, out, *extra, fault=None, check=True, nproc_per_node=False):
    """`moeforge train` on the demo data: 4 rows per optimizer step in every case (per device: 4 / ranks),
    the processes started by mpirun, or by moeforge itself with `nproc_per_node`."""
    cmd = [str(binary), "train", "--model", str(demo / "base-model"), "--train_file", str(demo / "train.jsonl"),
           "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", str(4 // ranks),
           "--max_seq_length", "64", "--logging_steps", "1", "--save_steps", "2", *extra]
    if nproc_per_node:
        cmd += ["--nproc_per_node", str(ranks)]
    elif ranks > 1:
        cmd = ["mpirun", "-np", str(ranks), *cmd]
    env = mpi_env()
    if fault:
        env["MOEFORGE_FAULT"] = fault
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}"
    return result


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def joined_optimizer_state(checkpoint):
    """A checkpoint's optimizer state, each key flat and joined from the files holding its elements (the
    ranges in their metadata), and how many elements each file holds; no element may come twice."""
    from safetensors import safe_open
    state, held = {}, []
    for path in sorted(checkpoint.glob("optimizer*.safetensors")):
        with safe_open(str(path), "numpy") as f:
            ranges = json.loads(f.metadata()["moeforge.optimizer_shards"])["parameters"]
            count = 0
            for key in f.keys():
                r = ranges[key.rsplit(".", 1)[0]]
                begin, end = r["elements"]
                flat = state.setdefault(key, np.full(r["of"], np.nan, dtype=np.float32))
                assert np.isnan(flat[begin:end]).all(), f"{path.name}: {key} elements [{begin}, {end}) are in another file too"
                flat[begin:end] = f.get_tensor(key).reshape(-1)
                count += end - begin
            held.append(count)
    return state, held


def test_training_at_two_and_four_ranks_follows_one(demo_data, moeforge_binary, tmp_path):
    train(moeforge_binary, 1, demo_data, tmp_path / "one")
    one = metrics(tmp_path / "one")
    reference_state, _ = joined_optimizer_state(tmp_path / "one" / "checkpoint-4")
    for ranks in (2, 4):
        out = tmp_path / f"ep{ranks}"
        train(moeforge_binary, ranks, demo_data, out)
        have = metrics(out)
        assert [r["step"] for r in have] == [r["step"] for r in one] == [1, 2, 3, 4]
        for h, w in zip(have, one):
            for key in ("loss", "lm_loss", "aux_loss", "grad_norm"):
                assert abs(h[key] - w[key]) <= 1e-6 * abs(w[key]), (ranks, h["step"], key, h[key], w[key])
            assert h["expert_load"] == w["expert_load"]
        trained, reference = load_folder(out), load_folder(tmp_path / "one")
        assert set(trained) == set(reference)
        for name in reference:
            assert rel_l2(trained[name], reference[name]) <= 1e-5, name
        # One optimizer-state file per rank in each checkpoint, each holding its share of the state
        # (sharded: the replicated parameters' split over the ranks, not copied), together one process's.
        assert sorted(p.name for p in (out / "checkpoint-4").glob("optimizer*")) == \
            [f"optimizer-{r:05d}-of-{ranks:05d}.safetensors" for r in range(1, ranks + 1)]
        state, held = joined_optimizer_state(out / "checkpoint-4")
        assert set(state) == set(reference_state)
        for key, want in reference_state.items():
            assert not np.isnan(state[key]).any(), f"{key}: elements no rank saved"
            assert rel_l2(state[key], want) <= 1e-5, (key, rel_l2(state[key], want))
        assert max(held) <= 1.1 * sum(held) / ranks, held
    # --nproc_per_node 2 starts the same two processes itself.
    train(moeforge_binary, 2, demo_data, tmp_path / "nproc", nproc_per_node=True)
    assert [r["loss"] for r in metrics(tmp_path / "nproc")] == [r["loss"] for r in metrics(tmp_path / "ep2")]


def test_sharded_gradients_train_as_one_process(demo_data, moeforge_binary, tmp_path):
    """zero_stage 2 over 2 micro-batches: 2 processes (experts split, replicated gradients sharded), and 4
    as 2 expert groups of 2 (the experts' gradients sharded over their copies too, each layer recomputed
    whole in its backward), train as one."""
    accumulate = ["--gradient_accumulation_steps", "2"]
    train(moeforge_binary, 1, demo_data, tmp_path / "one", *accumulate)
    one = metrics(tmp_path / "one")
    for ranks, ep, recompute in ((2, 2, "none"), (4, 2, "full")):
        out = tmp_path / f"zero2_{ranks}x{ep}"
        result = train(moeforge_binary, ranks, demo_data, out, *accumulate, "--zero_stage", "2",
                       "--expert_parallel_size", str(ep), "--gradient_checkpointing", recompute)
        assert "zero_stage 2" in result.stderr + result.stdout
        have = metrics(out)
        assert [r["step"] for r in have] == [r["step"] for r in one] == [1, 2, 3, 4]
        for h, w in zip(have, one):
            for key in ("loss", "grad_norm"):
                assert abs(h[key] - w[key]) <= 1e-6 * abs(w[key]), (ranks, ep, h["step"], key, h[key], w[key])
        trained, reference = load_folder(out), load_folder(tmp_path / "one")
        for name in reference:
            assert rel_l2(trained[name], reference[name]) <= 1e-5, name
    # The whole gradient buffer is gone, not only unused: rank 0's peak is lower than at zero_stage 1.
    train(moeforge_binary, 2, demo_data, tmp_path / "zero1_2x2", *accumulate)
    peak = {stage: max(r["peak_memory_bytes"] for r in metrics(tmp_path / f"zero{stage}_2x2")) for stage in (1, 2)}
    assert peak[2] < peak[1], peak
    # A zero_stage 2 checkpoint resumes at zero_stage 1 (the optimizer state is the same either way).
    resumed = tmp_path / "resumed"
    assert train(moeforge_binary, 2, demo_data, resumed, *accumulate, "--zero_stage", "2", fault="kill@step:3",
                 check=False).returncode != 0
    train(moeforge_binary, 2, demo_data, resumed, *accumulate, "--resume_from_checkpoint", "latest")
    for h, w in zip(metrics(resumed), one):
        assert abs(h["loss"] - w["loss"]) <= 1e-6 * abs(w["loss"]), (h["step"], h["loss"], w["loss"])


def test_a_batch_sized_to_small_data_trains_the_same_steps_at_two_and_four_ranks(demo_data, moeforge_binary,
                                                                                   tmp_path):
    """Without a batch size, one process's batch holds the epoch's sequences (three examples, one sequence
    each); two and four processes take the same sequences in the same global batch, its last rows empty
    (at four, all of the last rank's), and train the same steps (those rows were the next epoch's before);
    a checkpoint of two resumes at one."""
    examples = (demo_data / "train.jsonl").read_text().splitlines()[:3]
    (tmp_path / "three.jsonl").write_text("\n".join(examples) + "\n")

    def run(ranks, out, *extra, fault=None):
        cmd = [str(moeforge_binary), "train", "--model", str(demo_data / "base-model"), "--train_file",
               str(tmp_path / "three.jsonl"), "--output_dir", str(out), "--packing=false", "--max_steps", "3",
               "--logging_steps", "1", *extra]
        env = mpi_env()
        if fault:
            env["MOEFORGE_FAULT"] = fault
        result = subprocess.run(["mpirun", "-np", str(ranks), *cmd] if ranks > 1 else cmd, capture_output=True,
                                text=True, env=env, timeout=300)
        assert (result.returncode != 0) == bool(fault), result.stderr
        return result.stderr

    sized = re.search(r"per_device_train_batch_size (\d+): sized to the data", run(1, tmp_path / "one"))
    sequences = int(sized[1])
    one = metrics(tmp_path / "one")
    assert [r["step"] for r in one] == [1, 2, 3]
    for ranks in (2, 4):
        rows = -(-sequences // ranks)
        assert ranks * rows > sequences, f"the epoch's sequences should not fill {ranks} processes' rows"
        said = rf"per_device_train_batch_size {rows}: sized to the data \(one epoch packs {sequences} sequences " \
               rf"of \d+ tokens; each global batch holds them, its last {ranks * rows - sequences} of {ranks * rows} " \
               r"rows empty\)"
        out = tmp_path / f"ep{ranks}"
        assert re.search(said, run(ranks, out))
        have = metrics(out)
        assert [r["step"] for r in have] == [1, 2, 3]
        for h, w in zip(have, one):
            for key in ("loss", "lm_loss", "aux_loss", "grad_norm"):
                assert abs(h[key] - w[key]) <= 1e-6 * abs(w[key]), (ranks, h["step"], key, h[key], w[key])
            assert h["expert_load"] == w["expert_load"]
        trained, reference = load_folder(out), load_folder(tmp_path / "one")
        for name in reference:
            assert rel_l2(trained[name], reference[name]) <= 1e-5, (ranks, name)
    resumed = tmp_path / "resumed"
    run(2, resumed, "--save_steps", "2", fault="kill@step:3")
    run(1, resumed, "--save_steps", "2", "--resume_from_checkpoint", "latest")
    assert abs(metrics(resumed)[-1]["loss"] - one[-1]["loss"]) <= 1e-6 * abs(one[-1]["loss"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_killed_run_resumes_where_its_checkpoint_left(demo_data, moeforge_binary, tmp_path, dtype):
    # A bfloat16 model saves rounded weights: the exact float32 ones it trains travel in each rank's
    # slice of the optimizer state, and reach the other ranks' copies before the first resumed step.
    if dtype != "float32":
        import ml_dtypes
        data = tmp_path / "data"
        shutil.copytree(demo_data, data)
        config = json.loads((data / "base-model" / "config.json").read_text())
        config["dtype" if "dtype" in config else "torch_dtype"] = dtype
        (data / "base-model" / "config.json").write_text(json.dumps(config))
        weights = data / "base-model" / "model.safetensors"
        save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
        demo_data = data
    train(moeforge_binary, 2, demo_data, tmp_path / "whole")
    killed = train(moeforge_binary, 2, demo_data, tmp_path / "resumed", fault="kill@step:3", check=False)
    assert killed.returncode != 0
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir() and not (tmp_path / "resumed" / "checkpoint-4").exists()
    train(moeforge_binary, 2, demo_data, tmp_path / "resumed", "--resume_from_checkpoint", "latest")
    assert [r["loss"] for r in metrics(tmp_path / "resumed")] == [r["loss"] for r in metrics(tmp_path / "whole")]
    whole, resumed = load_folder(tmp_path / "whole"), load_folder(tmp_path / "resumed")
    for name in whole:
        assert np.array_equal(whole[name], resumed[name]), name


def test_every_rank_must_see_the_output_dir(demo_data, moeforge_binary, tmp_path):
    # Rank 1 is given another path, as a node whose output_dir is not on the shared file system would see it.
    common = ["train", "--model", str(demo_data / "base-model"), "--train_file", str(demo_data / "train.jsonl"),
              "--max_steps", "1", "--max_seq_length", "64"]
    cmd = ["mpirun", "-np", "1", str(moeforge_binary), *common, "--output_dir", str(tmp_path / "shared"), ":",
           "-np", "1", str(moeforge_binary), *common, "--output_dir", str(tmp_path / "elsewhere")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=120)
    assert result.returncode != 0
    assert "rank 1 of 2: error: output_dir" in result.stderr
    assert "is not the folder the run's first process claimed" in result.stderr


@pytest.mark.parametrize("ranks", [1, 4])
def test_a_checkpoint_of_two_ranks_resumes_at_another_size(demo_data, moeforge_binary, tmp_path, ranks):
    train(moeforge_binary, 1, demo_data, tmp_path / "whole")
    out = tmp_path / "resumed"
    assert train(moeforge_binary, 2, demo_data, out, fault="kill@step:3", check=False).returncode != 0
    train(moeforge_binary, ranks, demo_data, out, "--resume_from_checkpoint", "latest")
    whole, resumed = metrics(tmp_path / "whole"), metrics(out)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for h, w in zip(resumed, whole):
        assert abs(h["loss"] - w["loss"]) <= 1e-6 * abs(w["loss"]), (h["step"], h["loss"], w["loss"])
    trained, reference = load_folder(out), load_folder(tmp_path / "whole")
    for name in reference:
        assert rel_l2(trained[name], reference[name]) <= 1e-5, name


PYTHON_RANK_SCRIPT = """
import os, sys
import numpy as np
from safetensors.numpy import load_file, save_file
import moeforge
golden, out = sys.argv[1], sys.argv[2]
rank, ranks = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
model = moeforge.AutoModelForCausalLM.from_pretrained(golden, expert_parallel_size=ranks)
batch = load_file(os.path.join(golden, "batch.safetensors"))
rows = slice(rank * len(batch["input_ids"]) // ranks, (rank + 1) * len(batch["input_ids"]) // ranks)
result = model(input_ids=batch["input_ids"][rows], labels=batch["labels"][rows],
               attention_mask=batch["attention_mask"][rows] if "attention_mask" in batch else None)
if rank == 0:
    save_file({"loss": np.array(result.loss, dtype=np.float32)}, out)
"""


def test_python_models_split_over_ranks(source_dir, moeforge_binary, tmp_path):
    pytest.importorskip("moeforge")
    golden = source_dir / "tests" / "data" / "golden" / "moe_tied_dense_aux_pad"
    script = tmp_path / "rank.py"
    script.write_text(PYTHON_RANK_SCRIPT)
    out = tmp_path / "loss.safetensors"
    result = subprocess.run(["mpirun", "-np", "2", sys.executable, str(script), str(golden), str(out)],
                            capture_output=True, text=True, env=mpi_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    # The two ranks' rows together are Transformers' batch: its loss, aux loss included.
    want = load_file(str(golden / "expected.safetensors"))
    assert abs(float(load_file(str(out))["loss"]) - float(want["loss"])) <= 1e-5


PYTHON_TRAINER_SCRIPT = """
import json, os, sys
import moeforge
base, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
ranks = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
model = moeforge.AutoModelForCausalLM.from_pretrained(base, expert_parallel_size=int(sys.argv[4]))
if sys.argv[5] == "lora":  # adapters on the attention and on the routed experts each rank holds
    model = moeforge.get_peft_model(model, moeforge.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
examples = [json.loads(line) for line in open(data)][:400]
args = moeforge.TrainingArguments(output_dir=out, max_steps=3, per_device_train_batch_size=4 // ranks,
                                  max_seq_length=64, logging_steps=1, save_steps=0, report_to="none",
                                  zero_stage=int(sys.argv[6]))
moeforge.Trainer(model=model, args=args, train_dataset=examples).train()
"""


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_the_python_trainer_splits_over_ranks(demo_data, tmp_path, tuning):
    pytest.importorskip("moeforge")
    script = tmp_path / "train.py"
    script.write_text(PYTHON_TRAINER_SCRIPT)
    runs = {}
    # One process; two splitting the experts; four as two groups of two, their gradients sharded (ZeRO-2).
    for ranks, ep, zero_stage in ((1, 1, 1), (2, 2, 1), (4, 2, 2)):
        out = tmp_path / f"{ranks}x{ep}"
        cmd = [sys.executable, str(script), str(demo_data / "base-model"), str(demo_data / "train.jsonl"), str(out),
               str(ep), tuning, str(zero_stage)]
        result = subprocess.run((["mpirun", "-np", str(ranks)] if ranks > 1 else []) + cmd, capture_output=True,
                                text=True, env=mpi_env(), timeout=300)
        assert result.returncode == 0, result.stderr
        runs[ranks] = metrics(out)
    for ranks in (2, 4):
        assert [r["step"] for r in runs[ranks]] == [1, 2, 3]
        for h, w in zip(runs[ranks], runs[1]):
            assert abs(h["loss"] - w["loss"]) <= 1e-6 * abs(w["loss"]), (ranks, h["step"], h["loss"], w["loss"])


PYTHON_SMALL_DATA_SCRIPT = """
import json, sys
import moeforge
base, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
model = moeforge.AutoModelForCausalLM.from_pretrained(base)  # under mpirun: data parallelism alone
examples = [json.loads(line) for line in open(data)][:3]
args = moeforge.TrainingArguments(output_dir=out, max_steps=3, logging_steps=1, save_steps=0, report_to="none")
moeforge.Trainer(model=model, args=args, train_dataset=examples).train()
"""


def test_the_python_trainer_sizes_a_small_dataset_the_same_at_two_ranks(demo_data, tmp_path):
    # No batch size and three examples: the batch is sized to the data (Transformers' default 8 rows
    # would hold the dataset). Two processes, each holding every expert (expert_parallel_size's default
    # 1 under mpirun is data parallelism alone), take the same sequences per step as one, and train alike.
    pytest.importorskip("moeforge")
    script = tmp_path / "train.py"
    script.write_text(PYTHON_SMALL_DATA_SCRIPT)
    runs = {}
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        cmd = [sys.executable, str(script), str(demo_data / "base-model"), str(demo_data / "train.jsonl"), str(out)]
        result = subprocess.run((["mpirun", "-np", str(ranks)] if ranks > 1 else []) + cmd, capture_output=True,
                                text=True, env=mpi_env(), timeout=300)
        assert result.returncode == 0, result.stderr
        runs[ranks] = metrics(out)
    assert [r["step"] for r in runs[2]] == [r["step"] for r in runs[1]] == [1, 2, 3]
    for h, w in zip(runs[2], runs[1]):
        for key in ("loss", "grad_norm"):
            assert abs(h[key] - w[key]) <= 1e-6 * abs(w[key]), (h["step"], key, h[key], w[key])


def test_a_hanging_rank_ends_the_job(demo_data, moeforge_binary, tmp_path):
    # Rank 1 stops making progress after its first step without dying; rank 0 waits in the next
    # collective until MOEFORGE_COLLECTIVE_TIMEOUT, then ends, and mpirun ends rank 1.
    common = ["train", "--model", str(demo_data / "base-model"), "--train_file", str(demo_data / "train.jsonl"),
              "--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--per_device_train_batch_size", "2",
              "--max_seq_length", "64", "--save_steps", "0"]
    cmd = ["mpirun", "-np", "1", str(moeforge_binary), *common, ":",
           "-np", "1", "env", "MOEFORGE_FAULT=hang@step:1", str(moeforge_binary), *common]
    env = mpi_env()
    env["MOEFORGE_COLLECTIVE_TIMEOUT"] = "3"
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    assert "rank 0 of 2: error:" in result.stderr and "waited 3 s for the other ranks" in result.stderr, result.stderr


def test_expert_groups_smaller_than_the_run(demo_data, moeforge_binary, tmp_path):
    # 4 processes as 2 expert groups of 2 (each holding every expert once), and as 4 copies of every
    # expert (data parallelism alone): both follow one process; the checkpoint holds one copy of the
    # optimizer state, a quarter from each process (the experts' sharded over their copies too).
    train(moeforge_binary, 1, demo_data, tmp_path / "one")
    one = metrics(tmp_path / "one")
    reference_state, _ = joined_optimizer_state(tmp_path / "one" / "checkpoint-4")
    for ep in (2, 1):
        out = tmp_path / f"ep{ep}x{4 // ep}"
        train(moeforge_binary, 4, demo_data, out, "--expert_parallel_size", str(ep))
        for h, w in zip(metrics(out), one):
            for key in ("loss", "grad_norm"):
                assert abs(h[key] - w[key]) <= 1e-6 * abs(w[key]), (ep, h["step"], key, h[key], w[key])
        trained, reference = load_folder(out), load_folder(tmp_path / "one")
        for name in reference:
            assert rel_l2(trained[name], reference[name]) <= 1e-5, name
        assert sorted(p.name for p in (out / "checkpoint-4").glob("optimizer*")) == \
            [f"optimizer-{r:05d}-of-00004.safetensors" for r in range(1, 5)]
        state, held = joined_optimizer_state(out / "checkpoint-4")
        assert set(state) == set(reference_state)
        for key, want in reference_state.items():
            assert not np.isnan(state[key]).any() and rel_l2(state[key], want) <= 1e-5, key
        assert max(held) <= 1.1 * sum(held) / 4, held
    # A checkpoint of 2 x 2 resumes with the experts over all 4.
    resumed = tmp_path / "resumed"
    assert train(moeforge_binary, 4, demo_data, resumed, "--expert_parallel_size", "2", fault="kill@step:3",
                 check=False).returncode != 0
    train(moeforge_binary, 4, demo_data, resumed, "--resume_from_checkpoint", "latest")
    for h, w in zip(metrics(resumed), one):
        assert abs(h["loss"] - w["loss"]) <= 1e-6 * abs(w["loss"]), (h["step"], h["loss"], w["loss"])
    bad = train(moeforge_binary, 4, demo_data, tmp_path / "bad", "--expert_parallel_size", "3", check=False)
    assert bad.returncode == 2 and "expert_parallel_size 3 does not divide the 4 processes" in bad.stderr


def test_a_torchrun_world_on_the_cpu_says_what_to_run(source_dir, moeforge_binary, tmp_path):
    """torchrun-style worlds have no MPI: NCCL on CUDA only (tcp_rendezvous.h); on the CPU the error names mpirun."""
    golden = source_dir / "tests" / "data" / "golden" / "moe_untied_norm"
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    result = subprocess.run([str(moeforge_binary), "step", "--model", str(golden), "--batch",
                             str(golden / "batch.safetensors"), "--out", str(tmp_path / "out.safetensors")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "torchrun-style launch (WORLD_SIZE=2) on the CPU" in result.stderr and "mpirun -np 2" in result.stderr, result.stderr
    assert not (tmp_path / "out.safetensors").exists()
