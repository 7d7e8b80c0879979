#!/usr/bin/env python3
"""Training-step benchmark: Transformers 5.17 in its best configuration beside moeforge, same shapes,
same machine lease, on one GPU or (--gpus N) on N GPUs of one machine.

Runs on the GPU machine (Python with torch + transformers; the moeforge-train-bench binary built
from this tree). Each measurement runs in its own process so peak memory is its own.

  python3 bench/train_bench.py --moeforge-bench build/cuda-release/bench/moeforge-train-bench \
      --out results.json [--config bench/configs/moonlight-16b-a3b.json] [--layers 4 8] [--shapes 1x1 4x4] \
      [--impls moeforge transformers ...] [--append]

Transformers: the config's model (default bench/configs/qwen3-30b-a3b.json; AutoModelForCausalLM) with
num_hidden_layers overridden, random weights in bf16, attn_implementation="sdpa" ("eager" where
Transformers has none: GPT-OSS), experts_implementation="grouped_mm",
torch.optim.AdamW(fused=True) on the bf16 parameters (its moments are bf16: 8 B/param, moeforge's
bf16-state), clip_grad_norm_(1.0) as the Trainer does; with and without torch.compile.
moeforge: full steps (forward, backward, clipping, AdamW) in bf16-state, plus the other precision
modes at the largest shape. Labels = input ids; the first warm-up steps are not timed.

Several GPUs (--gpus N; micro-batch and sequence are per GPU): moeforge under mpirun ($MOEFORGE_MPIRUN
or mpirun), the routed experts split over the N processes and everything else data-parallel with the
optimizer state sharded (--zero-stages 1 2: the gradients too); Transformers under torchrun with
FSDP2 (fully_shard on each decoder layer and on the model: parameters, gradients and optimizer state
sharded, gradients averaged over the GPUs), each GPU its own random rows. Tokens/s is reported for
the run and per GPU, TFLOP/s per GPU, peak memory of the fullest GPU.

LoRA (--lora-r R --lora-targets attention attention+experts): both sides train rank-R adapters
(alpha 2R) with the base frozen: Transformers through PEFT (target_modules q/k/v/o_proj; the experts
through target_parameters mlp.experts.gate_up_proj/down_proj, PEFT's ParamWrapper), AdamW over the
adapters only; moeforge with the same targets in bf16-state. --hf-gradient-checkpointing adds
Transformers runs with gradient checkpointing (what fits the full model's expert adapters).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "qwen3-30b-a3b.json")
CHIP_BF16_TFLOPS = 790.0  # dense bf16 GEMM measured on this H200 (issue 6)


def flops_per_token(model, cfg, seq):
    """moeforge's count (training_flops_per_token): 6 x the active parameters (embeddings and norms
    left out, routed experts scaled by k/E, the output projection once even when tied) + causal
    attention, 3 x (query/key + value head sizes) x seq per head and layer (scores and outputs, 2
    FLOPs a multiply-add, forward and backward, halved by the mask). Multi-head latent attention's
    query/key heads are qk_nope + qk_rope wide, its value heads v_head_dim. Only attention layers
    count attention (Nemotron-H's layers_block_type says which); each Mamba-2 layer adds its scan,
    3 x 4 x (heads x head_dim) x state (the state update and the read-out, a multiply-add each per
    state entry and token, forward and backward)."""
    experts = cfg.get("num_experts") or cfg.get("n_routed_experts") or cfg.get("num_local_experts")
    active = 0.0
    for name, p in model.named_parameters():
        if "embed_tokens" in name or "embeddings" in name or "norm" in name:
            continue
        share = cfg["num_experts_per_tok"] / experts if ".experts." in name else 1.0
        active += p.numel() * share
    if cfg.get("tie_word_embeddings"):
        active += cfg["vocab_size"] * cfg["hidden_size"]
    qk = cfg.get("qk_nope_head_dim", 0) + cfg.get("qk_rope_head_dim", 0) or cfg["head_dim"]
    v = cfg.get("v_head_dim") or cfg["head_dim"]
    kinds = getattr(model.config, "layers_block_type", None)
    attention_layers = kinds.count("full_attention") if kinds else cfg["num_hidden_layers"]
    mamba_layers = kinds.count("linear_attention") if kinds else 0
    scan = 4.0 * cfg.get("mamba_num_heads", 0) * cfg.get("mamba_head_dim", 0) * cfg.get("ssm_state_size", 0)
    return 6 * active + 3.0 * attention_layers * cfg["num_attention_heads"] * (qk + v) * seq + 3.0 * mamba_layers * scan


def transformers_config(config_path, layers):
    """The config cut to `layers` layers, as a Transformers config and as a dict."""
    from transformers import AutoConfig

    with open(config_path) as f:
        raw = json.load(f)
    raw["num_hidden_layers"] = layers
    if isinstance(raw.get("layer_types"), list):  # a per-layer list (GPT-OSS) keeps its first layers
        raw["layer_types"] = raw["layer_types"][:layers]
    if isinstance(raw.get("hybrid_override_pattern"), str):  # and so does a pattern (Nemotron-H)
        raw["hybrid_override_pattern"] = raw["hybrid_override_pattern"][:layers]
    raw.pop("architectures", None)
    cfg = AutoConfig.for_model(raw.pop("model_type"), **raw)
    raw["model_type"] = cfg.model_type
    cfg._attn_implementation = "sdpa"
    cfg._experts_implementation = "grouped_mm"
    return cfg, raw


def build_model(cfg, device):
    from transformers import AutoModelForCausalLM
    import torch

    with torch.device(device):
        try:
            return AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
        except ValueError:  # no SDPA path in Transformers for this family (GPT-OSS's sinks): eager
            cfg._attn_implementation = "eager"
            return AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)


def shard_with_fsdp2(model, config_path, cfg):
    """A model built without memory (meta): each decoder layer and then the whole model sharded with
    FSDP2 over the torchrun world, and only then given memory on this GPU: random weights (normal, std
    0.02) and the buffers (RoPE's inverse frequencies) of a one-layer copy built on the CPU."""
    import torch
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(model, model.base_model_prefix).layers:
        fully_shard(layer)
    fully_shard(model)
    model.to_empty(device="cuda")
    small_cfg, _ = transformers_config(config_path, 1)
    small_cfg._attn_implementation = cfg._attn_implementation
    small = dict(build_model(small_cfg, "cpu").named_buffers())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        for name, buf in model.named_buffers():
            same = small.get(re.sub(r"\.layers\.\d+\.", ".layers.0.", name))
            if same is None:
                print(f"warning: buffer {name} has no counterpart in the one-layer model; left uninitialised",
                      file=sys.stderr)
            else:
                buf.copy_(same.to(buf.dtype))
    return model


def transformers_child(config_path, layers, seq, mb, ga, compile_model, steps, warmup, document_length, lora_r=0,
                       lora_targets="attention", gradient_checkpointing=False, fsdp=False, padded_tail=0):
    import torch

    cfg, raw = transformers_config(config_path, layers)
    torch.manual_seed(1)
    rank, gpus = 0, 1
    if fsdp:  # under torchrun: one process per GPU
        import torch.distributed as dist
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
        rank, gpus = dist.get_rank(), dist.get_world_size()
        model = build_model(cfg, "meta")
        fpt = flops_per_token(model, raw, document_length)
        model = shard_with_fsdp2(model, config_path, cfg)
    else:
        model = build_model(cfg, "cuda")
        fpt = flops_per_token(model, raw, document_length)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_r:
        from peft import LoraConfig, get_peft_model
        experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] if lora_targets == "attention+experts" else None
        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 target_parameters=experts))
        if gradient_checkpointing:
            model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0, fused=True)
    fwd = torch.compile(model) if compile_model else model
    g = torch.Generator(device="cuda").manual_seed(7 + rank)  # each GPU its own rows
    batches = [torch.randint(0, cfg.vocab_size, (mb, seq), device="cuda", generator=g) for _ in range(ga)]
    n_label = ga * mb * (seq - padded_tail - 1)
    # Packed documents: position_ids restart at each one, which Transformers turns into a mask
    # that keeps attention inside each document.
    positions = None
    if document_length < seq:
        positions = (torch.arange(seq, device="cuda") % document_length).expand(mb, seq)
    # A padded tail: attention_mask 0 and labels -100 on the last padded_tail tokens of each row.
    mask = None
    if padded_tail:
        mask = torch.ones(mb, seq, dtype=torch.long, device="cuda")
        mask[:, seq - padded_tail:] = 0

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for ids in batches:
            labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
            out = fwd(input_ids=ids, labels=labels, position_ids=positions, attention_mask=mask)
            # The Trainer scales each micro-batch loss so the window is a mean over its tokens.
            loss = out.loss * (mb * (seq - padded_tail - 1)) / n_label
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return float(total)

    for _ in range(warmup):
        loss = step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    tokens = ga * mb * seq  # per GPU
    peak = torch.cuda.max_memory_allocated()
    if fsdp:  # the fullest GPU's peak
        peak_t = torch.tensor([peak], device="cuda")
        dist.all_reduce(peak_t, op=dist.ReduceOp.MAX)
        peak = int(peak_t.item())
        dist.destroy_process_group()
    return {
        "impl": "transformers" + (" + fsdp2" if fsdp else "") + (" + peft" if lora_r else "")
                + (" + compile" if compile_model else "") + (" + grad ckpt" if gradient_checkpointing else ""),
        "gpus": gpus, "rank": rank,
        "lora": f"r={lora_r} {lora_targets}" if lora_r else None,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "layers": layers, "seq": seq, "document_length": document_length, "padded_tail": padded_tail,
        "micro_batch": mb, "grad_accum": ga, "precision": "bf16-state",
        "ms_per_step": ms, "ms_all": times, "tokens_per_s": tokens * gpus / (ms * 1e-3),
        "tokens_per_s_per_gpu": tokens / (ms * 1e-3),
        "tflops": tokens * fpt / (ms * 1e-3) / 1e12, "gflop_per_token": fpt / 1e9,
        "peak_memory_bytes": peak, "loss": loss,
    }


def child(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--layers", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--mb", type=int)
    p.add_argument("--ga", type=int)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--document-length", type=int, default=0)
    p.add_argument("--padded-tail", type=int, default=0)
    p.add_argument("--lora-r", type=int, default=0)
    p.add_argument("--lora-targets", default="attention")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 over its processes")
    a = p.parse_args(argv)
    r = transformers_child(a.config, a.layers, a.seq, a.mb, a.ga, a.compile, a.steps, a.warmup,
                           a.document_length or a.seq, a.lora_r, a.lora_targets, a.gradient_checkpointing, a.fsdp,
                           a.padded_tail)
    if r.pop("rank") == 0:
        print("RESULT " + json.dumps(r), flush=True)


def run(cmd, log):
    t0 = time.time()
    # Open MPI refuses root unless told (the GPU machine runs as root).
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n[{time.time() - t0:.1f} s, rc {proc.returncode}]\n")
    log.flush()
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
        if line.startswith("{"):
            r = json.loads(line)
            r["impl"] = "moeforge"
            return r
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail), "cmd": " ".join(cmd)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moeforge-bench", required=True)
    p.add_argument("--out", required=True, help="JSON results")
    p.add_argument("--log", default=None)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the model's config.json (any family both sides train)")
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    p.add_argument("--shapes", nargs="+", default=["1x1", "4x4"], help="micro-batch x accumulation")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--impls", nargs="+", default=["moeforge", "transformers", "transformers-compile"],
                   choices=["moeforge", "transformers", "transformers-compile"])
    p.add_argument("--append", action="store_true", help="add to the results already in --out")
    p.add_argument("--gpus", type=int, default=1,
                   help="GPUs of this machine: moeforge under mpirun with the experts split over them, "
                        "Transformers under torchrun with FSDP2")
    p.add_argument("--zero-stages", type=int, nargs="+", default=[1], choices=[1, 2],
                   help="moeforge's --zero-stage runs with several GPUs")
    p.add_argument("--recompute", nargs="*", default=[], choices=["selective", "full"],
                   help="further moeforge runs with activation recomputation, at the largest shape")
    p.add_argument("--modes", nargs="*", default=["fp32-master", "bf16-weights"],
                   help="further moeforge precision modes, at the largest shape")
    p.add_argument("--document-lengths", type=int, nargs="*", default=[],
                   help="further runs (moeforge, and Transformers when asked for) at the largest shape "
                        "with rows packed with documents of this many tokens (as the trainer packs: "
                        "position_ids restart)")
    p.add_argument("--padded-tails", type=int, nargs="*", default=[],
                   help="further runs (moeforge, and Transformers when asked for) at the largest shape whose "
                        "rows end in this many padding tokens (attention_mask 0, labels -100)")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    p.add_argument("--lora-targets", nargs="+", default=["attention"], choices=["attention", "attention+experts"])
    p.add_argument("--hf-gradient-checkpointing", action="store_true",
                   help="LoRA: also run Transformers with gradient checkpointing")
    p.add_argument("--loss-chunk-tokens", type=int, default=0,
                   help="moeforge: token rows per chunk of the loss (0: its default, 1 GiB of logits)")
    a = p.parse_args()
    if a.lora_r:
        return lora_main(a)
    log = open(a.log or os.path.splitext(a.out)[0] + ".log", "a" if a.append else "w")
    results = json.load(open(a.out)) if a.append and os.path.exists(a.out) else []
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes]
    for layers in a.layers:
        for mb, ga in shapes:
            common = ["--steps", str(a.steps), "--warmup", str(a.warmup)]
            launcher = [os.environ.get("MOEFORGE_MPIRUN", "mpirun"), "-np", str(a.gpus), "--bind-to", "none"]
            mf = (launcher if a.gpus > 1 else []) + [
                a.moeforge_bench, "--config", a.config, "--layers", str(layers), "--seq", str(a.seq),
                "--micro-batch", str(mb), "--grad-accum", str(ga)] + common + moeforge_loss_chunk(a)
            if "moeforge" in a.impls:
                for stage in (a.zero_stages if a.gpus > 1 else [1]):
                    results.append(run(mf + ["--precision", "bf16-state"] + (["--zero-stage", str(stage)] if stage > 1 else []), log))
                if layers == max(a.layers) and (mb, ga) == shapes[-1]:
                    for mode in a.modes:
                        results.append(run(mf + ["--precision", mode], log))
                    for policy in a.recompute:
                        results.append(run(mf + ["--precision", "bf16-state", "--recompute", policy], log))
                    for length in a.document_lengths:
                        results.append(run(mf + ["--precision", "bf16-state", "--document-length", str(length)], log))
                    for tail in a.padded_tails:
                        results.append(run(mf + ["--precision", "bf16-state", "--padded-tail", str(tail)], log))
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.gpus)]
            hf = (torchrun if a.gpus > 1 else [sys.executable]) + [
                os.path.abspath(__file__), "--child", "--config", a.config, "--layers", str(layers),
                "--seq", str(a.seq), "--mb", str(mb), "--ga", str(ga)] + common + (["--fsdp"] if a.gpus > 1 else [])
            if "transformers" in a.impls:
                results.append(run(hf, log))
                if layers == max(a.layers) and (mb, ga) == shapes[-1]:
                    for length in a.document_lengths:
                        results.append(run(hf + ["--document-length", str(length)], log))
                    for tail in a.padded_tails:
                        results.append(run(hf + ["--padded-tail", str(tail)], log))
            if "transformers-compile" in a.impls:
                results.append(run(hf + ["--compile"], log))
            with open(a.out, "w") as f:
                json.dump(results, f, indent=1)
            print_table(results)
    print_table(results)


def moeforge_loss_chunk(a):
    """moeforge's --loss-chunk-tokens, where the run names one (Transformers has no such chunking)."""
    return ["--loss-chunk-tokens", str(a.loss_chunk_tokens)] if a.loss_chunk_tokens else []


def lora_main(a):
    """LoRA runs: for each layer count, shape and target set, moeforge (bf16-state, and each --recompute
    policy) beside Transformers + PEFT (with and without gradient checkpointing when asked)."""
    log = open(a.log or os.path.splitext(a.out)[0] + ".log", "a" if a.append else "w")
    results = json.load(open(a.out)) if a.append and os.path.exists(a.out) else []
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup)]
    for layers in a.layers:
        for mb, ga in [tuple(int(x) for x in s.split("x")) for s in a.shapes]:
            for targets in a.lora_targets:
                lora = ["--lora-r", str(a.lora_r), "--lora-targets", targets]
                if "moeforge" in a.impls:
                    mf = [a.moeforge_bench, "--config", a.config, "--layers", str(layers), "--seq", str(a.seq),
                          "--micro-batch", str(mb), "--grad-accum", str(ga), "--precision", "bf16-state"] + common + lora
                    mf += moeforge_loss_chunk(a)
                    for policy in ["none"] + a.recompute:
                        results.append(run(mf + ["--recompute", policy], log))
                if "transformers" in a.impls:
                    hf = [sys.executable, os.path.abspath(__file__), "--child", "--config", a.config,
                          "--layers", str(layers), "--seq", str(a.seq), "--mb", str(mb), "--ga", str(ga)] + common + lora
                    results.append(run(hf, log))
                    if a.hf_gradient_checkpointing:
                        results.append(run(hf + ["--gradient-checkpointing"], log))
                with open(a.out, "w") as f:
                    json.dump(results, f, indent=1)
                print_table(results)


def print_table(results):
    print("| impl | gpus | zero | lora | layers | mb x ga | precision | recompute | documents | ms/step | tokens/s | "
          "tokens/s/GPU | peak GiB | TFLOP/s/GPU | of 790 | host syncs | dispatch/combine ms (GB/s) | "
          "data-parallel ms (exposed at most) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| error | | | | | | | | | {r['error'][:120]} | | | | | | | | |")
            continue
        gpus = r.get("gpus", 1)
        print(f"| {r['impl']} | {gpus} | {r.get('zero_stage', '')} | {r.get('lora') or ''} | {r['layers']} | "
              f"{r['micro_batch']}x{r['grad_accum']} | {r['precision']} | "
              f"{r.get('recompute', 'none')} | {r.get('document_length', r['seq'])}"
              f"{' + pad ' + str(r['padded_tail']) if r.get('padded_tail') else ''} | "
              f"{r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / gpus:,.0f} | "
              f"{r['peak_memory_bytes'] / 2**30:.1f} | "
              f"{r['tflops']:.0f} | {r['tflops'] / CHIP_BF16_TFLOPS:.0%} | {r.get('host_syncs_per_step', '')} | "
              + (f"{r['dispatch_combine_ms']:.1f} ({r['dispatch_combine_gb_per_s']:.0f}) | "
                 f"{r['data_parallel_ms']:.1f} ({r['data_parallel_exposed_ms_at_most']:.1f}) |"
                 if "dispatch_combine_ms" in r else " | |"))
    # The expert products of each moeforge run's profiled step (train_step_bench.cpp: expert_product_rates).
    for r in results:
        products = r.get("expert_products")
        if products:
            print(f"\n{r['impl']} {r['micro_batch']}x{r['grad_accum']} {r['precision']} {r.get('recompute', 'none')}: "
                  "expert products " + ", ".join(f"{name} {p['ms']:.1f} ms in {p['calls']} calls, {p['tflops']:.0f} TFLOP/s"
                                                 for name, p in products.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
