#!/usr/bin/env python3
"""Golden fixtures for the Qwen3 / Qwen3-MoE CPU tests, computed by Hugging Face Transformers.

Builds tiny random models (odd sizes; tied and untied embeddings; with and without norm_topk_prob;
a dense layer among MoE layers; the auxiliary loss on and off; padding), saves each with
save_pretrained, and records in float32 on the CPU: the batch, logits, loss, aux_loss, the gradient of
every checkpoint tensor (under its checkpoint name) and the loss after one torch.optim.AdamW step.

Runs where PyTorch and Transformers 5.17 are installed (the GPU machine); needs no network:
    python3 python/oracle/qwen3_fixtures.py --out tests/data/golden
Each case becomes OUT/<case>/{config.json, model.safetensors, batch.safetensors, expected.safetensors};
expected.safetensors' metadata holds the AdamW hyperparameters and the library versions.
"""
import argparse
import json
import os
import re

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

CASES = {
    # Untied, renormalised top-k, no aux loss, every layer MoE.
    "moe_untied_norm": dict(
        model_type="qwen3_moe", vocab_size=131, hidden_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, moe_intermediate_size=20,
        intermediate_size=36, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
        tie_word_embeddings=False, output_router_logits=False, rope_theta=10000.0,
        batch=(2, 9), pad_right=0, ignore=2),
    # Tied embeddings, no renormalisation, a dense layer among MoE layers, aux loss on, padding.
    "moe_tied_dense_aux_pad": dict(
        model_type="qwen3_moe", vocab_size=97, hidden_size=36, num_hidden_layers=3,
        num_attention_heads=3, num_key_value_heads=1, head_dim=10, moe_intermediate_size=14,
        intermediate_size=30, num_experts=5, num_experts_per_tok=3, norm_topk_prob=False,
        mlp_only_layers=[1], tie_word_embeddings=True, output_router_logits=True,
        router_aux_loss_coef=0.05, rope_theta=1000000.0, batch=(2, 11), pad_right=3, ignore=1),
    # decoder_sparse_step 2 (layers 0 and 2 dense), aux on, renormalised, 8 experts top-1.
    "moe_sparse_step_top1": dict(
        model_type="qwen3_moe", vocab_size=113, hidden_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, head_dim=8, moe_intermediate_size=12,
        intermediate_size=24, num_experts=8, num_experts_per_tok=1, norm_topk_prob=True,
        decoder_sparse_step=2, tie_word_embeddings=False, output_router_logits=True,
        router_aux_loss_coef=0.01, rope_theta=500.0, batch=(3, 7), pad_right=0, ignore=0),
    # Dense Qwen3, the fallback path.
    "dense_qwen3": dict(
        model_type="qwen3", vocab_size=89, hidden_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=6, intermediate_size=44,
        tie_word_embeddings=True, rope_theta=10000.0, batch=(2, 8), pad_right=2, ignore=1),
}


def checkpoint_grads(model):
    """Gradients under checkpoint names: Transformers 5 fuses the experts at load time
    (mlp.experts.gate_up_proj [E, 2I, H] with gate rows first, mlp.experts.down_proj [E, H, I]);
    checkpoints and save_pretrained use per-expert gate_proj/up_proj/down_proj."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        m = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
        if m is None:
            out[name] = g
            continue
        prefix, kind = m.groups()
        for e in range(g.shape[0]):
            if kind == "gate_up_proj":
                gate, up = g[e].chunk(2, dim=0)
                out[f"{prefix}.{e}.gate_proj.weight"] = gate
                out[f"{prefix}.{e}.up_proj.weight"] = up
            else:
                out[f"{prefix}.{e}.down_proj.weight"] = g[e]
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def make_batch(spec, vocab, gen):
    b, t = spec["batch"]
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    labels = ids.clone()
    mask = torch.ones(b, t, dtype=torch.int64)
    if spec["pad_right"]:
        mask[0, t - spec["pad_right"]:] = 0  # right padding in the first row
        labels[0, t - spec["pad_right"]:] = -100
    for i in range(spec["ignore"]):  # a few ignored labels inside the sequences, like a prompt
        labels[(i + 1) % b, i + 1] = -100
    return ids, labels, mask


def run_case(name, spec, out_dir):
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(99)
    cfg_kwargs = {k: v for k, v in spec.items() if k not in ("model_type", "batch", "pad_right", "ignore")}
    config = AutoConfig.for_model(spec["model_type"], initializer_range=0.08, rms_norm_eps=1e-6,
                                  **cfg_kwargs)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if hasattr(model.config, "_experts_implementation"):
        model.config._experts_implementation = "eager"
    # RMSNorm weights start at 1; perturb them so their gradients and roles are visible.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.train()

    case_dir = os.path.join(out_dir, name)
    model.save_pretrained(case_dir, safe_serialization=True)

    ids, labels, mask = make_batch(spec, spec["vocab_size"], gen)
    batch = {"input_ids": ids, "labels": labels}
    if spec["pad_right"]:
        batch["attention_mask"] = mask
    save_file({k: v.contiguous() for k, v in batch.items()}, os.path.join(case_dir, "batch.safetensors"))

    out = model(**batch)
    out.loss.backward()
    expected = {"logits": out.logits.detach().float().contiguous(), "loss": out.loss.detach().float()}
    if getattr(out, "aux_loss", None) is not None and spec.get("output_router_logits"):
        expected["aux_loss"] = out.aux_loss.detach().float()
    for k, g in checkpoint_grads(model).items():
        expected["grad." + k] = g.detach().float().contiguous()

    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    opt.step()
    with torch.no_grad():
        expected["loss_after_step"] = model(**batch).loss.detach().float()

    meta = {"lr": str(ADAMW["lr"]), "adam_beta1": str(ADAMW["betas"][0]),
            "adam_beta2": str(ADAMW["betas"][1]), "adam_epsilon": str(ADAMW["eps"]),
            "weight_decay": str(ADAMW["weight_decay"]),
            "transformers": transformers.__version__, "torch": torch.__version__}
    save_file(expected, os.path.join(case_dir, "expected.safetensors"), metadata=meta)
    print(f"{name}: loss {out.loss.item():.6f} after step {expected['loss_after_step'].item():.6f} "
          f"grads {len(expected) - 3}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/golden")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    for name in args.cases:
        run_case(name, CASES[name], args.out)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("Generated by python/oracle/qwen3_fixtures.py with transformers "
                f"{transformers.__version__} and torch {torch.__version__} on the CPU in float32.\n"
                f"AdamW step: {json.dumps(ADAMW)}\n")


if __name__ == "__main__":
    main()
