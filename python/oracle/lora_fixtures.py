#!/usr/bin/env python3
"""Golden fixtures for LoRA fine-tuning of Qwen3-MoE, DeepSeek-V3, Nemotron-H and GPT-OSS, computed by Hugging Face PEFT and Transformers.

Builds tiny random qwen3_moe models as golden_fixtures.py does (odd sizes, perturbed norms; tied and
untied embeddings; with and without norm_topk_prob; a dense layer among MoE layers; the auxiliary loss
on and off; padding), saves each base model with save_pretrained, wraps it with PEFT LoRA
(init_lora_weights=False, so A and B are both random and both get gradients; lora_dropout 0, bias
"none") on the attention projections (lora.Linear), on the fused experts (target_parameters
mlp.experts.gate_up_proj / down_proj: nested ParamWrappers), and through target_modules
gate_proj/up_proj/down_proj, which PEFT rewrites for Transformers 5 into target_parameters with rank
and alpha doubled on gate_up_proj (peft/utils/transformers_weight_conversion.py, _convert_peft_config_moe;
the dense MLPs are then not adapted). Saves the initial adapter with save_pretrained and records in
float32 on the CPU: the batch, logits, loss, aux_loss and the gradient of every adapter tensor at step 0
(under its adapter_model.safetensors key: the keys must be those PEFT wrote, or the script stops);
the loss and gradients after one torch.optim.AdamW step over the adapter; the loss and every adapter
tensor after a second. Also checks that the base weights did not move, that PEFT's merge_and_unload of
the initial adapter reproduces the step-0 logits, and that the saved base + adapter folders reload
(check_saved_adapter.load_adapter_model) to the same logits.

Runs where PyTorch, Transformers 5.17 and PEFT 0.21 are installed; needs no network:
    python3 python/oracle/lora_fixtures.py --out tests/data/lora [--cases NAME...]
Each case becomes OUT/<case>/{config.json, generation_config.json, model.safetensors (the base model),
adapter/ (PEFT's save_pretrained of the initial adapter), merged/ (the base model with the initial adapter
merged by PEFT, saved with save_pretrained), batch.safetensors, expected.safetensors, adapter_keys.json
({"keys": {adapter key: shape}, "adapter_config": the adapter_config.json PEFT wrote})}. expected.safetensors
holds logits, loss, [aux_loss], grad.<key> (step 0), loss_1, grad1.<key> (step 1), loss_2 and weight2.<key>
(after two steps); its metadata holds the AdamW hyperparameters (golden_fixtures.ADAMW; weight decay on
every adapter tensor, as Trainer decays every non-bias, non-norm weight) and the library versions.
PEFT writes target_modules (a set) in hash order, so the script runs itself under PYTHONHASHSEED=0.
"""
import argparse
import copy
import json
import os
import sys

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_saved_adapter import load_adapter_model, rel_err  # noqa: E402
from golden_fixtures import (ADAMW, BATCH_KEYS, NEMOTRON_H_ALL_KINDS, check_checkpoint_names, make_batch,  # noqa: E402
                             perturb_weights)

LORA_DEFAULTS = dict(init_lora_weights=False, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]

CASES = {
    # Untied, renormalised top-2 of 6, no aux loss, every layer MoE; LoRA on the attention only.
    "lora_attn": dict(
        model_type="qwen3_moe", vocab_size=101, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=12,
        intermediate_size=28, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
        tie_word_embeddings=False, output_router_logits=False, rope_theta=10000.0,
        batch=(2, 9), pad_right=0, ignore=2,
        lora=dict(target_modules=ATTN, r=4, lora_alpha=8)),
    # Tied, top-2 of 5 not renormalised, aux loss on, right padding; LoRA on the attention and on the
    # fused experts (nested ParamWrappers), rsLoRA scaling alpha / sqrt(r).
    "lora_attn_experts": dict(
        model_type="qwen3_moe", vocab_size=97, hidden_size=36, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, head_dim=10, moe_intermediate_size=14,
        intermediate_size=30, num_experts=5, num_experts_per_tok=2, norm_topk_prob=False,
        tie_word_embeddings=True, output_router_logits=True, router_aux_loss_coef=0.05,
        rope_theta=1000000.0, batch=(2, 10), pad_right=3, ignore=1,
        lora=dict(target_modules=ATTN, target_parameters=EXPERTS, r=3, lora_alpha=5, use_rslora=True)),
    # A dense layer (mlp_only_layers=[1]); the Transformers 4 expert names, which PEFT converts:
    # gate_up_proj gets rank 2r and alpha 2 alpha, the dense MLP is left alone. PEFT then warns that the
    # rank/alpha_pattern '.*\.gate_up_proj' "did not match any targeted module and were ignored": the check
    # (tuners_utils.inject_adapter) looks at modules only; the patterns do apply to the parameter.
    "lora_converted_mlp_names": dict(
        model_type="qwen3_moe", vocab_size=89, hidden_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=6, moe_intermediate_size=10,
        intermediate_size=30, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
        mlp_only_layers=[1], tie_word_embeddings=False, output_router_logits=False,
        rope_theta=10000.0, batch=(2, 8), pad_right=0, ignore=1,
        lora=dict(target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], r=2,
                  lora_alpha=6)),
    # PEFT's "all-linear": the attention, the router (target parameter gate.weight, a ParamWrapper of
    # one matrix) and the experts under their Transformers 4 names (gate_up_proj at rank 2r); aux loss on
    # so the router adapter's gradient has both of its sources.
    "lora_all_linear": dict(
        model_type="qwen3_moe", vocab_size=83, hidden_size=28, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=12, moe_intermediate_size=10,
        intermediate_size=24, num_experts=6, num_experts_per_tok=3, norm_topk_prob=True,
        tie_word_embeddings=False, output_router_logits=True, router_aux_loss_coef=0.02,
        rope_theta=10000.0, batch=(2, 9), pad_right=2, ignore=1,
        lora=dict(target_modules="all-linear", r=2, lora_alpha=4)),
    # DeepSeek-V3: LoRA on every projection of the multi-head latent attention (q_a/q_b, the
    # compressed kv_a_proj_with_mqa and kv_b, o) and on the fused routed experts; a dense first
    # layer, shared expert, sigmoid routing in the best 1 of 2 groups, right padding.
    "lora_deepseek_v3_mla": dict(
        model_type="deepseek_v3", vocab_size=91, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=12, kv_lora_rank=10,
        qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=8, intermediate_size=24,
        moe_intermediate_size=10, n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_interleave=True, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        batch=(2, 8), pad_right=2, ignore=1,
        lora=dict(target_modules=["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
                  target_parameters=EXPERTS, r=2, lora_alpha=4)),
    # Nemotron-H: LoRA on the attention and the Mamba mixers' in_proj (PEFT refuses out_proj and
    # conv1d on Mamba models) and on the non-gated routed experts (mixer.experts.up_proj /
    # down_proj, nested ParamWrappers); all four layer kinds, right padding.
    "lora_nemotron_h": dict(
        NEMOTRON_H_ALL_KINDS, vocab_size=89, n_routed_experts=5, num_experts_per_tok=2, n_group=1, topk_group=1,
        batch=(2, 9), pad_right=2, ignore=1,
        lora=dict(target_modules=ATTN + ["in_proj"],
                  target_parameters=["mixer.experts.up_proj", "mixer.experts.down_proj"], r=2, lora_alpha=4)),
    # Nemotron-H with latent experts (moe_latent_size): LoRA on fc1_latent_proj / fc2_latent_proj
    # (plain lora.Linear modules around the routed experts, so lora_dropout would apply to them), on the
    # attention and in_proj, and on the latent-width routed experts; right padding.
    "lora_nemotron_h_latent": dict(
        NEMOTRON_H_ALL_KINDS, vocab_size=83, moe_latent_size=16, n_routed_experts=6, num_experts_per_tok=2,
        n_group=2, topk_group=1, batch=(2, 9), pad_right=2, ignore=1,
        lora=dict(target_modules=ATTN + ["in_proj", "fc1_latent_proj", "fc2_latent_proj"],
                  target_parameters=["mixer.experts.up_proj", "mixer.experts.down_proj"], r=2, lora_alpha=4)),
    # GPT-OSS: LoRA on the biased attention projections (both layer types, sinks) and on the fused
    # experts, which Transformers stores transposed ([E, in, out], is_transposed: PEFT keeps A [r * E, in]
    # and B [out, r * E]) with gate and up columns interleaved (gate_up_proj's lora_B rows alternate
    # gate and up); and on the router (target parameter mlp.router.weight, a ParamWrapper of one matrix;
    # its bias stays frozen); biased clamped-SwiGLU experts, aux loss on, right padding.
    "lora_gpt_oss": dict(
        model_type="gpt_oss", vocab_size=97, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=10,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64,
        tie_word_embeddings=False, output_router_logits=True, router_aux_loss_coef=0.05, expert_gain=12.0,
        rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0,
                             beta_slow=1.0, truncate=False, original_max_position_embeddings=16),
        batch=(2, 9), pad_right=2, ignore=1,
        lora=dict(target_modules=ATTN, target_parameters=EXPERTS + ["mlp.router.weight"], r=2, lora_alpha=4)),
}


def build_base_model(spec, gen):
    """The tiny random model, built as golden_fixtures.run_case builds its cases."""
    cfg_kwargs = {k: v for k, v in spec.items() if k not in BATCH_KEYS and k != "lora"}
    config = AutoConfig.for_model(spec["model_type"], initializer_range=0.08, rms_norm_eps=1e-6,
                                  **cfg_kwargs)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # The default grouped_mm experts need 16-byte aligned strides, which the tiny odd sizes lack.
    model.config._experts_implementation = "eager"
    perturb_weights(model, spec, gen)
    model.train()
    return model


def adapter_tensors(model, tensors):
    """{named_parameters name: tensor} -> {adapter_model.safetensors key: tensor}: PEFT's own renaming
    (get_peft_model_state_dict drops the adapter name, `.default`)."""
    return {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(model, state_dict=tensors).items()}


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def adapter_grads(model, keys, what):
    """Gradients of the adapter tensors under their saved keys; every trainable parameter must have one and
    map to exactly the saved keys."""
    params = trainable(model)
    missing = [n for n, p in params.items() if p.grad is None]
    if missing:
        raise RuntimeError(f"{what}: no gradient for {missing}")
    grads = adapter_tensors(model, {n: p.grad for n, p in params.items()})
    if set(grads) != keys or len(params) != len(keys):
        raise RuntimeError(f"{what}: {len(params)} trainable parameters map to keys other than the adapter's; only "
                           f"ours: {sorted(set(grads) - keys)}; only the file's: {sorted(keys - set(grads))}")
    return grads


def check_adapter_file(model, adapter_dir):
    """The renaming applied to the trainable parameters must give exactly the tensors PEFT saved: the same
    keys, shapes and values. Returns the file's tensors."""
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    mine = adapter_tensors(model, {n: p.detach() for n, p in trainable(model).items()})
    if set(mine) != set(saved) or len(trainable(model)) != len(saved):
        raise RuntimeError(f"{adapter_dir}: adapter keys differ from adapter_model.safetensors; only ours: "
                           f"{sorted(set(mine) - set(saved))}; only the file's: {sorted(set(saved) - set(mine))}")
    differ = [k for k in sorted(mine) if mine[k].shape != saved[k].shape or not torch.equal(mine[k], saved[k])]
    if differ:
        raise RuntimeError(f"{adapter_dir}: adapter tensors differ from adapter_model.safetensors: {differ}")
    return saved


def save_merged(model, batch, logits, merged_dir):
    """PEFT's merge of the initial adapter into (a copy of) the base model must give the step-0 logits; saves it."""
    merged = copy.deepcopy(model).merge_and_unload()
    with torch.no_grad():
        err = rel_err(merged(**batch).logits.float(), logits)
    if err > 1e-5:
        raise RuntimeError(f"{merged_dir}: merge_and_unload changes the logits, relative L2 error {err:.3e}")
    merged.save_pretrained(merged_dir, safe_serialization=True)
    check_checkpoint_names(merged, merged_dir)
    return err


def run_case(name, spec, out_dir):
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(99)
    model = build_base_model(spec, gen)

    case_dir = os.path.join(out_dir, name)
    model.save_pretrained(case_dir, safe_serialization=True)
    check_checkpoint_names(model, case_dir)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}

    model = get_peft_model(model, LoraConfig(**LORA_DEFAULTS, **spec["lora"]))
    adapter_dir = os.path.join(case_dir, "adapter")
    model.save_pretrained(adapter_dir, safe_serialization=True)
    saved = check_adapter_file(model, adapter_dir)
    keys = set(saved)
    adapter_config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    with open(os.path.join(case_dir, "adapter_keys.json"), "w") as f:
        json.dump({"keys": {k: list(t.shape) for k, t in saved.items()}, "adapter_config": adapter_config}, f,
                  indent=1, sort_keys=True)
        f.write("\n")

    ids, labels, mask = make_batch(spec, spec["vocab_size"], gen)
    batch = {"input_ids": ids, "labels": labels}
    if spec["pad_right"]:
        batch["attention_mask"] = mask
    save_file({k: v.contiguous() for k, v in batch.items()}, os.path.join(case_dir, "batch.safetensors"))

    out = model(**batch)
    out.loss.backward()
    expected = {"logits": out.logits.detach().float().contiguous(), "loss": out.loss.detach().float()}
    if spec.get("output_router_logits"):
        expected["aux_loss"] = out.aux_loss.detach().float()
    for k, g in adapter_grads(model, keys, f"{name} step 0").items():
        expected["grad." + k] = g
    merge_err = save_merged(model, batch, expected["logits"], os.path.join(case_dir, "merged"))
    reloaded, problems = load_adapter_model(case_dir, adapter_dir)
    if problems:
        raise RuntimeError(f"{name}: reloading the saved base and adapter reported {problems}")
    with torch.no_grad():
        reload_err = rel_err(reloaded(**batch).logits.float(), expected["logits"])
    if reload_err > 1e-5:
        raise RuntimeError(f"{name}: the saved base + adapter give other logits, relative L2 error {reload_err:.3e}")

    opt = torch.optim.AdamW(trainable(model).values(), **ADAMW)
    opt.step()
    opt.zero_grad()
    out = model(**batch)
    out.loss.backward()
    expected["loss_1"] = out.loss.detach().float()
    for k, g in adapter_grads(model, keys, f"{name} step 1").items():
        expected["grad1." + k] = g
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        expected["loss_2"] = model(**batch).loss.detach().float()
    for k, w in adapter_tensors(model, trainable(model)).items():
        expected["weight2." + k] = w
    # The base weights sit under .base_layer (lora.Linear, each nested ParamWrapper) and must not move.
    base_now = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters()
                if "lora_" not in n}
    moved = sorted(set(base) ^ set(base_now))
    moved += [n for n in base if n in base_now and not torch.equal(base_now[n], base[n])]
    if moved:
        raise RuntimeError(f"{name}: base weights changed: {moved}")

    meta = {"lr": str(ADAMW["lr"]), "adam_beta1": str(ADAMW["betas"][0]),
            "adam_beta2": str(ADAMW["betas"][1]), "adam_epsilon": str(ADAMW["eps"]),
            "weight_decay": str(ADAMW["weight_decay"]), "peft": peft.__version__,
            "transformers": transformers.__version__, "torch": torch.__version__}
    save_file(expected, os.path.join(case_dir, "expected.safetensors"), metadata=meta)
    print(f"{name}: loss {expected['loss'].item():.6f} loss_1 {expected['loss_1'].item():.6f} "
          f"loss_2 {expected['loss_2'].item():.6f} adapter tensors {len(keys)} "
          f"(merge rel err {merge_err:.1e}, reload rel err {reload_err:.1e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/lora")
    ap.add_argument("--cases", nargs="*", default=list(CASES), help="case names (default: all)")
    args = ap.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {list(CASES)}")
    if os.environ.get("PYTHONHASHSEED") != "0":  # PEFT writes target_modules, a set, in hash order
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    torch.use_deterministic_algorithms(True)
    for name in args.cases:
        run_case(name, CASES[name], args.out)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(f"Generated by python/oracle/lora_fixtures.py with peft {peft.__version__}, transformers "
                f"{transformers.__version__} and torch {torch.__version__} on the CPU in float32.\n"
                f"AdamW steps: {json.dumps(ADAMW)}\n")


if __name__ == "__main__":
    main()
