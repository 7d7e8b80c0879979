#!/usr/bin/env python3
"""How far Transformers' own bf16 training step is from its float32 one on the golden fixtures:
the floor a bf16 engine is measured against (moeforge's CUDA tests compare bf16 to the same float32
goldens, tests/gpu/gpu_model_test.cpp).

For each fixture (every case of golden_fixtures.CASES, or --cases): the saved model in bf16 on CUDA,
attn_implementation="sdpa" (or "eager" where Transformers has no SDPA path: GPT-OSS), experts "eager" (torch's grouped_mm needs 16-byte strides, which the
fixtures' odd sizes lack), the fixture's batch; relative L2 error of the logits and of every
checkpoint gradient against the float32 expected.safetensors, of the loss after one bf16 AdamW step,
and whether its top-k choices equal the float32 CPU model's. Runs on the GPU machine:
    python3 python/oracle/bf16_baseline.py --golden tests/data/golden --out bf16_baseline.json [--cases NAME...]
"""
import argparse
import json
import os

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from golden_fixtures import ADAMW, CASES, checkpoint_grads, documents_batch


def rel_l2(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    den = b.norm()
    return float((a - b).norm() / den) if den > 0 else float((a - b).norm())


def routing(model, batch):
    """Top-k expert sets per MoE layer, from forward hooks on the routers. In Transformers 5.17 every
    family here (Qwen3-MoE, Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V3) has its router at layers.L.mlp.gate
    at run time (Mixtral's checkpoint name block_sparse_moe is renamed on load), GPT-OSS at
    layers.L.mlp.router, and it returns (logits, top-k weights or scores, top-k indices); the sets are taken from the softmax of the logits, as before, but for
    DeepSeek-V3's group router, whose choices are its own top-k indices."""
    chosen = []

    def hook(module, inputs, output):
        if hasattr(module, "e_score_correction_bias"):
            # DeepSeek-V3's sigmoid group router: its own choices (output[2]), not a softmax's.
            chosen.append(output[2].sort(-1).values.cpu())
            return
        logits = output[0] if isinstance(output, tuple) else output
        k = model.config.num_experts_per_tok
        chosen.append(torch.topk(torch.softmax(logits.float(), -1), k, dim=-1).indices.sort(-1).values.cpu())

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules()
               if n.endswith("mlp.gate") or n.endswith("mlp.router")]
    if not handles:
        raise RuntimeError(f"no router (a module named *.mlp.gate or *.mlp.router) in {type(model).__name__}")
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    return chosen


def load_dense(folder, dtype, attn_implementation):
    """The fixture's model; a block-FP8 or MXFP4 checkpoint dequantised on load, as on the CPU that
    made the float32 goldens (with a GPU present Transformers would keep quantised layers, which need
    the `kernels` package and are not what a bf16 fine-tune trains)."""
    config = AutoConfig.from_pretrained(folder)
    if (getattr(config, "quantization_config", None) or {}).get("quant_method") in ("fp8", "mxfp4"):
        config.quantization_config["dequantize"] = True
    return AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype,
                                                attn_implementation=attn_implementation)


def eager_experts(model):
    if hasattr(model.config, "_experts_implementation"):
        model.config._experts_implementation = "eager"
    return model


def float32_model(folder):
    """The fixture's model as the golden ran it: float32 on the CPU, eager attention and experts."""
    return eager_experts(load_dense(folder, torch.float32, "eager"))


def bf16_model(folder):
    """The fixture's model for Transformers' bf16 training step: bf16 on CUDA, in train mode."""
    try:
        model = load_dense(folder, torch.bfloat16, "sdpa").cuda()
    except ValueError:  # no SDPA path in Transformers for this family (GPT-OSS's sinks): its eager one
        model = load_dense(folder, torch.bfloat16, "eager").cuda()
    eager_experts(model).train()
    return model


def run(folder):
    # Packed documents run a document a row, as the golden was made (golden_fixtures.documents_batch).
    batch_cpu, packed = documents_batch(load_file(os.path.join(folder, "batch.safetensors")))
    expected = load_file(os.path.join(folder, "expected.safetensors"))
    ref = float32_model(folder)
    model = bf16_model(folder)
    batch = {k: v.cuda() for k, v in batch_cpu.items()}
    out = model(**batch)
    out.loss.backward()
    errors = {"logits": rel_l2(packed(out.logits.float()), expected["logits"]),
              "loss": abs(out.loss.item() - expected["loss"].item()) / abs(expected["loss"].item())}
    for name, g in checkpoint_grads(model).items():
        errors["grad." + name] = rel_l2(g.float(), expected["grad." + name])
    agree = None
    if getattr(model.config, "num_experts_per_tok", None):
        try:
            want = routing(ref, batch_cpu)
            have = routing(model, batch)
            same = sum(int((a == b).all(-1).sum()) for a, b in zip(have, want))
            total = sum(a.shape[0] for a in want)
            agree = same / total if total else None
        except RuntimeError:
            # Transformers 5.17's GPT-OSS forward under no_grad fails in its eager experts (hidden
            # states and expert weights of different dtypes); its training step above runs.
            agree = None
    # The loss after one AdamW step as the golden took it (golden_fixtures.ADAMW), in bf16; the
    # forward runs with gradients enabled, as GPT-OSS's bf16 forward fails under no_grad.
    torch.optim.AdamW(model.parameters(), **ADAMW).step()
    after = model(**batch).loss.detach().float().item()
    errors["loss_after_step"] = abs(after - expected["loss_after_step"].item()) / abs(expected["loss_after_step"].item())
    return {"errors": errors, "routing_agreement": agree, "max_error": max(errors.values()),
            "worst": max(errors, key=errors.get)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--golden", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cases", nargs="*", default=list(CASES), help="default: every case of golden_fixtures.CASES")
    a = p.parse_args()
    missing = [c for c in a.cases if not os.path.isdir(os.path.join(a.golden, c))]
    if missing:
        p.error(f"no fixture folder in {a.golden} for {missing}: make them with golden_fixtures.py")
    results = {case: run(os.path.join(a.golden, case)) for case in a.cases}
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    for case, r in results.items():
        above = {k: round(v, 4) for k, v in r["errors"].items() if v > 2e-2}
        print(f"{case}: max {r['max_error']:.4f} ({r['worst']}), routing agreement {r['routing_agreement']}, "
              f"{len(above)} tensors above 2e-2: {above}")


if __name__ == "__main__":
    main()
