#!/usr/bin/env python3
"""Golden fixtures for the model tests (Qwen3, Qwen3-MoE, Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V3, GPT-OSS, Nemotron-H), computed by Hugging Face Transformers.

Builds tiny random models (odd sizes; tied and untied embeddings; with and without norm_topk_prob;
dense layers among MoE layers; the auxiliary loss on and off; padding; packed documents, which
Transformers runs a document a row (documents_batch); and what sets each family
apart: Mixtral's block_sparse_moe / w1 w3 w2 checkpoint layout and always-renormalised top-k, OLMoE's
q/k RMSNorm over the whole projection and its pad_token_id embedding row, Qwen2-MoE's q/k/v biases
and sigmoid-gated shared expert, DeepSeek-V3's latent attention and group-limited sigmoid routing,
GPT-OSS's attention sinks, sliding windows, biased router and clamped-SwiGLU experts, Nemotron-H's
Mamba-2, attention, MoE and MLP layers in one pattern),
saves each with save_pretrained, and records in float32 on the
CPU: the batch, logits, loss, aux_loss, the gradient of every checkpoint tensor (under its
checkpoint name: the names must be those of the model.safetensors save_pretrained wrote, and the
renaming must reproduce its tensors exactly, or the script stops) and the loss after one
torch.optim.AdamW step.

Runs where PyTorch and Transformers 5.17 are installed (the GPU machine); needs no network:
    python3 python/oracle/golden_fixtures.py --out tests/data/golden [--cases NAME... | --families TYPE...]
Each case becomes OUT/<case>/{config.json, generation_config.json, model.safetensors, batch.safetensors,
expected.safetensors}; expected.safetensors' metadata holds the AdamW hyperparameters and the library
versions. The Qwen3 cases' specs, seeds and random draws are those of the former qwen3_fixtures.py.
"""
import argparse
import json
import os
import re

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, FineGrainedFP8Config, Mxfp4Config

ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

# A tiny Nemotron-H with every layer kind (M Mamba-2, E MoE, * attention, - MLP) and 4 Mamba heads
# in 2 groups of B/C, untied (the LoRA fixtures use it too).
NEMOTRON_H_ALL_KINDS = dict(
    model_type="nemotron_h", hidden_size=32, hybrid_override_pattern="ME*-ME", num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, intermediate_size=20, mamba_num_heads=4, mamba_head_dim=6, n_groups=2,
    ssm_state_size=8, conv_kernel=4, chunk_size=4, moe_intermediate_size=12, moe_shared_expert_intermediate_size=16,
    routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False)

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
    # YaRN rope (factor 2 over an original context of 16: frequencies blended by the ramp, cos and
    # sin scaled by 0.1 ln 2 + 1), every layer MoE, renormalised top-2 of 4.
    "moe_yarn_rope": dict(
        model_type="qwen3_moe", vocab_size=79, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, moe_intermediate_size=12,
        intermediate_size=24, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
        tie_word_embeddings=False, output_router_logits=False, max_position_embeddings=32,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=2.0,
                             original_max_position_embeddings=16),
        batch=(2, 12), pad_right=0, ignore=1),
    # Dense Qwen3, the fallback path.
    "dense_qwen3": dict(
        model_type="qwen3", vocab_size=89, hidden_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=6, intermediate_size=44,
        tie_word_embeddings=True, rope_theta=10000.0, batch=(2, 8), pad_right=2, ignore=1),
    # Mixtral: top-2 of 6 (Mixtral always renormalises), head_dim 10 given apart from hidden/heads,
    # aux loss on, right padding. Saved as block_sparse_moe.{gate, experts.E.w1/w2/w3}.
    "mixtral_top2_aux_pad": dict(
        model_type="mixtral", vocab_size=103, hidden_size=36, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=10, intermediate_size=22,
        num_local_experts=6, num_experts_per_tok=2, tie_word_embeddings=False,
        output_router_logits=True, router_aux_loss_coef=0.02, sliding_window=None,
        rope_theta=1000000.0, batch=(2, 10), pad_right=3, ignore=1),
    # Mixtral, tied embeddings, no aux loss, top-3 of 5, one KV head. (Not top-1: with the weights
    # renormalised and no aux loss, top-1's router gradient is rounding noise, as p/p = 1.)
    "mixtral_tied_top3": dict(
        model_type="mixtral", vocab_size=91, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, intermediate_size=18,
        num_local_experts=5, num_experts_per_tok=3, tie_word_embeddings=True,
        output_router_logits=False, sliding_window=None, rope_theta=10000.0,
        batch=(3, 6), pad_right=0, ignore=2),
    # OLMoE: q_norm over all query heads (hidden_size weights), k_norm over the KV heads
    # (kv_heads * head_dim), GQA, top-3 of 8 not renormalised, aux loss on, right padding;
    # pad_token_id 1 is the embedding's padding_idx (its row gets no gradient) and is in the batch.
    "olmoe_qknorm_aux_pad": dict(
        model_type="olmoe", vocab_size=101, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=12, num_experts=8,
        num_experts_per_tok=3, norm_topk_prob=False, clip_qkv=None, pad_token_id=1,
        eos_token_id=2, tie_word_embeddings=False, output_router_logits=True,
        router_aux_loss_coef=0.01, rope_theta=10000.0, batch=(2, 9), pad_right=2, ignore=1,
        pad_token_at=((1, 4), (0, 2))),
    # Qwen2-MoE: q/k/v biases, sigmoid-gated shared expert, a dense layer (mlp_only_layers=[1]),
    # top-2 of 7 not renormalised, aux loss on, right padding.
    "qwen2_moe_shared_dense_aux_pad": dict(
        model_type="qwen2_moe", vocab_size=107, hidden_size=40, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=26,
        moe_intermediate_size=10, shared_expert_intermediate_size=18, num_experts=7,
        num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[1], qkv_bias=True,
        use_sliding_window=False, tie_word_embeddings=False, output_router_logits=True,
        router_aux_loss_coef=0.03, rope_theta=1000000.0, batch=(2, 10), pad_right=2, ignore=1),
    # Qwen2-MoE: decoder_sparse_step 2 (layers 0 and 2 dense), renormalised top-2 of 4, tied, no aux.
    "qwen2_moe_sparse_step_norm_tied": dict(
        model_type="qwen2_moe", vocab_size=83, hidden_size=24, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, intermediate_size=34,
        moe_intermediate_size=8, shared_expert_intermediate_size=14, num_experts=4,
        num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=2, qkv_bias=True,
        use_sliding_window=False, tie_word_embeddings=True, output_router_logits=False,
        rope_theta=10000.0, batch=(2, 7), pad_right=0, ignore=2),
    # DeepSeek-V3: low-rank query (q_lora_rank), YaRN rope (its mscale changes the softmax scale),
    # interleaved rotary pairs, a dense first layer, sigmoid routing limited to the best 2 of 4
    # groups, renormalised top-3 of 8 scaled by 2.5, one shared expert, right padding. Query/key heads
    # (12 + 8) differ from value heads (10). e_score_correction_bias is perturbed to change choices.
    "deepseek_v3_q_lora_yarn_groups": dict(
        model_type="deepseek_v3", vocab_size=109, hidden_size=40, num_hidden_layers=3,
        num_attention_heads=3, num_key_value_heads=3, q_lora_rank=24, kv_lora_rank=20,
        qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10, intermediate_size=36,
        moe_intermediate_size=12, n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=3,
        n_shared_experts=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_interleave=True, max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=64, beta_fast=32, beta_slow=1,
                             mscale=1.0, mscale_all_dim=1.0),
        batch=(2, 9), pad_right=2, ignore=1),
    # DeepSeek-V3 without q_lora_rank (Moonlight's plain q_proj), default rope in the rotate_half
    # layout (rope_interleave false), no renormalisation, top-2 of 6 in the best 1 of 2 groups, two
    # shared experts, scaling 1.5, tied embeddings.
    "deepseek_v3_no_q_lora_tied": dict(
        model_type="deepseek_v3", vocab_size=97, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=12, intermediate_size=28,
        moe_intermediate_size=10, n_routed_experts=6, n_group=2, topk_group=1, num_experts_per_tok=2,
        n_shared_experts=2, first_k_dense_replace=1, norm_topk_prob=False, routed_scaling_factor=1.5,
        rope_interleave=False, max_position_embeddings=128, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        batch=(3, 7), pad_right=0, ignore=2),
    # DeepSeek-V3 stored in block FP8 as DeepSeek releases it (every attention and MLP projection
    # e4m3 with a float32 weight_scale_inv per 8 x 16 block; router, norms, embedding and head
    # dense), loaded by Transformers with FineGrainedFP8Config(dequantize=True): the expected values
    # are those of the dequantised model. Sizes are multiples of the blocks, as Transformers'
    # dequantisation requires.
    "deepseek_v3_fp8_blocks": dict(
        model_type="deepseek_v3", vocab_size=89, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, intermediate_size=32,
        moe_intermediate_size=16, n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        rope_interleave=True, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        fp8_block=(8, 16), batch=(2, 8), pad_right=1, ignore=1),
    # GPT-OSS: a learned sink logit per head, sliding-window layers (window 4, so a query of the
    # 10-token rows loses its oldest keys) around a full layer, q/k/v/o biases, YaRN rope without
    # truncation (factor 4 over an original context of 16), router with bias (top-2 of 5, softmax
    # over the two logits), biased clamped-SwiGLU experts with gate/up interleaved, aux loss on,
    # right padding. Expert biases start at zero in Transformers and are perturbed like the others;
    # gate_up_proj is scaled by 12 so that the clamps at +-7 cut part of the products.
    "gpt_oss_sinks_windows_aux_pad": dict(
        model_type="gpt_oss", vocab_size=103, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=12,
        num_local_experts=5, num_experts_per_tok=2, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=64, tie_word_embeddings=False, output_router_logits=True,
        router_aux_loss_coef=0.05, expert_gain=12.0,
        rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0,
                             beta_slow=1.0, truncate=False, original_max_position_embeddings=16),
        batch=(2, 10), pad_right=3, ignore=1),
    # GPT-OSS stored as OpenAI releases it: the experts' weights in MXFP4 (gate_up_proj_blocks uint8
    # [E, 2I, H/32, 16] with gate_up_proj_scales [E, 2I, H/32], down_proj likewise), loaded by
    # Transformers with Mxfp4Config(dequantize=True): the expected values are those of the
    # dequantised model. Default layer types and rope (YaRN factor 32 over 4096), window 3, tied
    # embeddings, no aux loss; sizes multiples of the 32-value blocks.
    "gpt_oss_mxfp4_tied": dict(
        model_type="gpt_oss", vocab_size=89, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=32,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=3, tie_word_embeddings=True,
        output_router_logits=False, mxfp4=True, batch=(2, 8), pad_right=0, ignore=1),
    # Nemotron-H: all four layer kinds (M Mamba-2, E MoE, * attention without RoPE, - relu2 MLP);
    # Mamba with 2 groups of B/C over 4 heads, chunk 4 so the 10-token rows span three chunks of
    # Transformers' chunked scan; relu2 experts, top-2 of 6 in the best 1 of 2 groups (sigmoid plus
    # e_score_correction_bias), renormalised, scaled by 2.5, a shared relu2 expert; right padding.
    "nemotron_h_all_kinds_pad": dict(
        NEMOTRON_H_ALL_KINDS, vocab_size=97, n_routed_experts=6, num_experts_per_tok=2, n_group=2, topk_group=1,
        batch=(2, 10), pad_right=3, ignore=1),
    # Nemotron-H with latent experts (moe_latent_size, as Nemotron 3 Super's LatentMoE): the routed
    # experts run on fc1_latent_proj(x) of width 16 and their sum goes back through fc2_latent_proj;
    # the router and the shared expert see x. Otherwise the all-kinds case, without padding.
    "nemotron_h_latent_moe": dict(
        NEMOTRON_H_ALL_KINDS, vocab_size=83, moe_latent_size=16, n_routed_experts=6, num_experts_per_tok=2, n_group=2,
        topk_group=1, batch=(2, 9), pad_right=0, ignore=2),
    # Nemotron-H: tied embeddings, no conv bias, top-3 of 5 not renormalised, one group, a single
    # group of B/C for 3 heads, state 16, chunk 3, and time steps clamped below at time_step_min 0.03
    # (initial steps in [0.03, 0.06], so many fall under it); two Mamba layers in a row; padding
    # inside a row (a hole at columns 3-4 of row 1, where the Mamba state only decays).
    "nemotron_h_tied_clamped_dt": dict(
        model_type="nemotron_h", vocab_size=89, hidden_size=24, hybrid_override_pattern="MM-E*E",
        num_attention_heads=2, num_key_value_heads=1, head_dim=12, intermediate_size=18,
        mamba_num_heads=3, mamba_head_dim=8, n_groups=1, ssm_state_size=16, conv_kernel=4, chunk_size=3,
        use_conv_bias=False, time_step_min=0.03, time_step_max=0.06, n_routed_experts=5,
        num_experts_per_tok=3, n_group=1, topk_group=1, moe_intermediate_size=10,
        moe_shared_expert_intermediate_size=14, routed_scaling_factor=1.0, norm_topk_prob=False,
        tie_word_embeddings=True, batch=(3, 8), pad_right=0, ignore=2, masked_at=((1, 3), (1, 4))),
    # Nemotron-H with packed documents, as the trainer packs rows: position_ids restart at each
    # document, whose first label is -100; row 1 ends in 3 padding tokens (their positions restart
    # too). Documents of 1 and 3 tokens are shorter than the convolution (kernel 4); the boundaries
    # fall inside the scan's 4-token chunks. Transformers' torch path carries the Mamba state across
    # a row, so it runs each document as a row of its own (documents_batch) and the logits go back
    # to their packed places: the loss counts the same targets, so every tensor is the packed step's.
    # Token 0, the config's pad_token_id, is drawn at row 0 column 8: Nemotron-H's embedding has no
    # padding_idx, so that row trains as any other.
    "nemotron_h_packed_docs": dict(
        NEMOTRON_H_ALL_KINDS, vocab_size=97, n_routed_experts=6, num_experts_per_tok=2, n_group=2, topk_group=1,
        batch=(2, 12), documents=((5, 7), (1, 3, 5)), pad_right=0, ignore=1),
}


# Keys of the case specs that are not config fields.
BATCH_KEYS = ("model_type", "batch", "pad_right", "ignore", "pad_token_at", "masked_at", "documents", "fp8_block",
              "mxfp4", "expert_gain")

# The checkpoint layout save_pretrained writes in Transformers 5.17. At load time Transformers fuses
# each MoE layer's experts (conversion_mapping._build_checkpoint_conversion_mapping: mlp.experts.gate_up_proj
# [E, 2I, H], gate rows first, and mlp.experts.down_proj [E, H, I]); save_pretrained reverts that
# (core_model_loading.revert_weight_conversion) to per-expert 2-D weights. qwen3_moe and olmoe use the
# qwen2_moe entry (gate_proj/up_proj/down_proj); mixtral's entry also renames the block: the runtime's
# `.mlp.` is `.block_sparse_moe.` on disk (the router too), and the experts are w1 (gate), w3 (up), w2 (down).
EXPERT_NAMES = {"mixtral": ("w1", "w3", "w2")}
DEFAULT_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")
BLOCK_NAMES = {"mixtral": ".block_sparse_moe."}
# GPT-OSS has no conversion entry: its checkpoint holds the fused experts as the runtime does.
FUSED_EXPERT_CHECKPOINTS = {"gpt_oss"}
# Nemotron-H's checkpoint root is `backbone.` (the runtime's `model.`), its experts non-gated:
# mixer.experts.up_proj [E, I, H] is mixer.experts.<e>.up_proj.weight on disk.
CHECKPOINT_ROOTS = {"nemotron_h": "backbone."}


def to_checkpoint_names(model, tensors):
    """{runtime parameter name: tensor} -> {checkpoint name: tensor}, laid out as save_pretrained writes
    the weights (a tied lm_head left out)."""
    model_type = model.config.model_type
    gate_name, up_name, down_name = EXPERT_NAMES.get(model_type, DEFAULT_EXPERT_NAMES)
    block = BLOCK_NAMES.get(model_type)
    root = CHECKPOINT_ROOTS.get(model_type)
    out = {}
    for name, t in tensors.items():
        if block is not None:
            name = name.replace(".mlp.", block)
        if root is not None and name.startswith("model."):
            name = root + name[len("model."):]
        m = re.fullmatch(r"(.*\.experts)\.(gate_up_proj|up_proj|down_proj)", name)
        if m is None or model_type in FUSED_EXPERT_CHECKPOINTS:
            out[name] = t
            continue
        prefix, kind = m.groups()
        for e in range(t.shape[0]):
            if kind == "gate_up_proj":
                gate, up = t[e].chunk(2, dim=0)
                out[f"{prefix}.{e}.{gate_name}.weight"] = gate
                out[f"{prefix}.{e}.{up_name}.weight"] = up
            elif kind == "up_proj":
                out[f"{prefix}.{e}.{up_name}.weight"] = t[e]
            else:
                out[f"{prefix}.{e}.{down_name}.weight"] = t[e]
    # Whether the model ties them, not the config: Nemotron-H keeps its own lm_head whatever
    # tie_word_embeddings says (NemotronHForCausalLM._tied_weights_keys is empty).
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        out.pop("lm_head.weight", None)
    return out


def checkpoint_grads(model):
    """Gradients under checkpoint names (zeros for a parameter that got none)."""
    return to_checkpoint_names(model, {n: p.grad if p.grad is not None else torch.zeros_like(p)
                                       for n, p in model.named_parameters()})


def persistent_buffer_names(model):
    """Saved tensors that are not trained (no gradient, no optimizer step), by checkpoint name."""
    parameters = {n for n, _ in model.named_parameters()}
    return list(to_checkpoint_names(model, {n: t for n, t in model.state_dict().items() if n not in parameters}))


def check_checkpoint_names(model, case_dir):
    """The renaming applied to the weights and persistent buffers (DeepSeek-V3's
    e_score_correction_bias) must give exactly the tensors save_pretrained wrote: the same names,
    shapes and values. Returns the names."""
    saved = load_file(os.path.join(case_dir, "model.safetensors"))
    mine = to_checkpoint_names(model, {n: t.detach() for n, t in model.state_dict().items()})
    if set(mine) != set(saved):
        raise RuntimeError(f"{case_dir}: checkpoint names differ from model.safetensors; only ours: "
                           f"{sorted(set(mine) - set(saved))}; only the file's: {sorted(set(saved) - set(mine))}")
    differ = [k for k in sorted(mine) if mine[k].shape != saved[k].shape or not torch.equal(mine[k], saved[k])]
    if differ:
        raise RuntimeError(f"{case_dir}: renamed weights differ from model.safetensors: {differ}")
    return set(saved)


def quantize_checkpoint(case_dir, pattern, quantize, quantization_config):
    """Rewrites case_dir's model.safetensors with each tensor whose name matches `pattern` replaced by
    quantize(name, tensor) (a dict of the tensors that store it), and writes quantization_config
    into its config.json, as a quantised release declares it."""
    path = os.path.join(case_dir, "model.safetensors")
    out = {}
    for name, t in load_file(path).items():
        out.update(quantize(name, t) if re.search(pattern, name) else {name: t})
    save_file(out, path, metadata={"format": "pt"})
    config_path = os.path.join(case_dir, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["quantization_config"] = quantization_config
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def store_block_fp8(case_dir, block):
    """Rewrites case_dir's checkpoint as DeepSeek releases its weights: each attention and MLP
    projection weight as float8_e4m3fn, scaled per block of block[0] rows x block[1] columns by the
    float32 `<name>_scale_inv` (the block's largest magnitude / 448: weight = fp8 * scale_inv), and
    the config's quantization_config saying so."""
    def quantize(name, t):
        rows, cols = t.shape
        assert rows % block[0] == 0 and cols % block[1] == 0, f"{name} {tuple(t.shape)} is not whole blocks"
        blocks = t.reshape(rows // block[0], block[0], cols // block[1], block[1])
        scale = blocks.abs().amax(dim=(1, 3)) / 448.0
        quantized = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
        return {name: quantized.reshape(rows, cols), name + "_scale_inv": scale.float().contiguous()}
    quantize_checkpoint(case_dir, r"\.(self_attn|mlp)\..*_proj(_with_mqa)?\.weight$", quantize,
                        {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                         "weight_block_size": list(block)})


# E2M1 values by their 4-bit code (sign bit 3), as Transformers' integrations/mxfp4.py FP4_VALUES.
FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def store_mxfp4(case_dir):
    """Rewrites case_dir's checkpoint as OpenAI releases GPT-OSS: each experts' gate_up_proj [E, H, 2I]
    and down_proj [E, I, H] as MXFP4, i.e. the transposed weight [E, out, in] cut along `in` into
    blocks of 32 values, each block one power-of-two scale (uint8 `<name>_scales` [E, out, in/32],
    exponent + 127, the smallest that brings the block's largest magnitude within 6) and 32 E2M1
    codes packed two a byte, the even element in the low nibble (uint8 `<name>_blocks`
    [E, out, in/32, 16]); the config's quantization_config saying so."""
    def quantize(name, t):
        w = t.transpose(1, 2).float()
        experts, rows, cols = w.shape
        assert cols % 32 == 0, f"{name} {tuple(t.shape)}: inputs are not whole blocks of 32"
        groups = w.reshape(experts, rows, cols // 32, 32)
        exponent = torch.ceil(torch.log2(groups.abs().amax(dim=-1) / 6.0)).clamp(min=-126)
        scaled = groups / torch.pow(2.0, exponent)[..., None]
        codes = (scaled[..., None] - FP4_VALUES).abs().argmin(dim=-1).to(torch.uint8)
        return {name + "_blocks": (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous(),
                name + "_scales": (exponent + 127).to(torch.uint8).contiguous()}
    quantize_checkpoint(case_dir, r"\.experts\.(gate_up_proj|down_proj)$", quantize, {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                   "lm_head"]})


def load_dequantized(case_dir, quantization_config):
    """A quantised checkpoint as Transformers loads it for training: dequantised (to float32)."""
    model = AutoModelForCausalLM.from_pretrained(case_dir, dtype=torch.float32, quantization_config=quantization_config)
    # MXFP4's dequantisation writes bfloat16 whatever the dtype asked; E2M1 codes times a power of
    # two are exact there, so the float32 copy is the same weights.
    model.to(torch.float32)
    model.config._attn_implementation = "eager"
    model.config._experts_implementation = "eager"
    model.train()
    return model


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
    for r, c in spec.get("masked_at", ()):  # padding inside a row
        mask[r, c] = 0
        labels[r, c] = -100
    return ids, labels, mask


def pack_documents(spec, labels, mask):
    """Position ids of the rows packed with spec["documents"] (lengths per row, the rest padding);
    sets the first label of each document, and the padding's labels and mask, in place."""
    positions = torch.zeros_like(labels)
    for r, lengths in enumerate(spec["documents"]):
        start = 0
        for n in lengths:
            positions[r, start:start + n] = torch.arange(n)
            labels[r, start] = -100  # not predicted from the previous document's last token
            start += n
        positions[r, start:] = torch.arange(labels.shape[1] - start)
        labels[r, start:] = -100
        mask[r, start:] = 0
    return positions


def documents_batch(batch):
    """The rows of a batch with position_ids as Transformers runs packed documents apart: one
    right-padded row per document (a position that does not continue the one before starts one;
    all-padding runs are left out), and a function that puts per-document logits back in the packed
    [B, T, V] places (zeros at the padding). A batch without position_ids is returned as it is."""
    if "position_ids" not in batch:
        return batch, lambda logits: logits
    ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    docs = []  # (row, start, length)
    for r in range(ids.shape[0]):
        starts = [t for t in range(ids.shape[1]) if t == 0 or positions[r, t] != positions[r, t - 1] + 1]
        for start, end in zip(starts, starts[1:] + [ids.shape[1]]):
            if mask[r, start:end].any():
                docs.append((r, start, end - start))
    width = max(n for _, _, n in docs)
    rows = {"input_ids": torch.zeros(len(docs), width, dtype=ids.dtype),
            "labels": torch.full((len(docs), width), -100, dtype=labels.dtype),
            "attention_mask": torch.zeros(len(docs), width, dtype=mask.dtype)}
    for i, (r, start, n) in enumerate(docs):
        rows["input_ids"][i, :n] = ids[r, start:start + n]
        rows["labels"][i, :n] = labels[r, start:start + n]
        rows["attention_mask"][i, :n] = mask[r, start:start + n]

    def packed(logits):
        out = torch.zeros(*ids.shape, logits.shape[-1], dtype=logits.dtype, device=logits.device)
        for i, (r, start, n) in enumerate(docs):
            out[r, start:start + n] = logits[i, :n]
        return out

    return rows, packed


def perturb_weights(model, spec, gen):
    """Moves the weights that Transformers initialises to regular values (ones, zeros, aranges) by random
    amounts drawn from gen, so their gradients and roles are visible."""
    # RMSNorm weights start at 1.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        # Linear biases start at zero, and the embedding's padding_idx row (config.pad_token_id) at
        # zero too; perturb them as well. The Qwen3 cases have neither, so these draw nothing from
        # gen there and their fixtures stay as they were.
        for n, p in model.named_parameters():
            if n.endswith(".bias") or n.endswith("_proj_bias"):  # GPT-OSS's experts: gate_up_proj_bias, down_proj_bias
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        pad = model.config.pad_token_id
        if pad is not None:
            emb = model.get_input_embeddings().weight
            emb[pad].add_(0.08 * torch.randn(emb.shape[1:], generator=gen))
        # GPT-OSS clamps the experts' gate above and up within +-7, which weights of std 0.08 never
        # reach; a gain on gate_up_proj makes part of the products cross the limits.
        for n, p in model.named_parameters():
            if spec.get("expert_gain") and n.endswith("experts.gate_up_proj"):
                p.mul_(spec["expert_gain"])
        # Mamba-2's A_log (log 1..heads) and D (ones) start regular; perturb them too.
        for n, p in model.named_parameters():
            if n.endswith(".A_log") or n.endswith(".D"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        # DeepSeek-V3's expert-choice bias starts at zero, where it would choose nothing.
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.add_(0.1 * torch.randn(b.shape, generator=gen))


def run_case(name, spec, out_dir):
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(99)
    cfg_kwargs = {k: v for k, v in spec.items() if k not in BATCH_KEYS}
    config = AutoConfig.for_model(spec["model_type"], initializer_range=0.08, rms_norm_eps=1e-6,
                                  **cfg_kwargs)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if hasattr(model.config, "_experts_implementation"):
        model.config._experts_implementation = "eager"
    perturb_weights(model, spec, gen)
    model.train()

    case_dir = os.path.join(out_dir, name)
    model.save_pretrained(case_dir, safe_serialization=True)
    saved_names = check_checkpoint_names(model, case_dir)
    if spec.get("fp8_block"):
        store_block_fp8(case_dir, spec["fp8_block"])
        model = load_dequantized(case_dir, FineGrainedFP8Config(dequantize=True))
    if spec.get("mxfp4"):
        store_mxfp4(case_dir)
        model = load_dequantized(case_dir, Mxfp4Config(dequantize=True))

    ids, labels, mask = make_batch(spec, spec["vocab_size"], gen)
    pad = model.config.pad_token_id
    for r, c in spec.get("pad_token_at", ()):  # the padding_idx token, whose embedding row gets no gradient
        ids[r, c] = pad
        if labels[r, c] != -100:
            labels[r, c] = pad
    batch = {"input_ids": ids, "labels": labels}
    if spec.get("documents"):
        batch["position_ids"] = pack_documents(spec, labels, mask)
    if spec["pad_right"] or spec.get("masked_at") or spec.get("documents"):
        batch["attention_mask"] = mask
    save_file({k: v.contiguous() for k, v in batch.items()}, os.path.join(case_dir, "batch.safetensors"))
    model_batch, packed = documents_batch(batch)

    out = model(**model_batch)
    out.loss.backward()
    expected = {"logits": packed(out.logits.detach().float()).contiguous(), "loss": out.loss.detach().float()}
    if getattr(out, "aux_loss", None) is not None and spec.get("output_router_logits"):
        expected["aux_loss"] = out.aux_loss.detach().float()
    grads = checkpoint_grads(model)
    trained_names = saved_names - set(persistent_buffer_names(model))
    if set(grads) != trained_names:
        raise RuntimeError(f"{name}: gradient names differ from model.safetensors' tensor names; only ours: "
                           f"{sorted(set(grads) - trained_names)}; only the file's: {sorted(trained_names - set(grads))}")
    for k, g in grads.items():
        expected["grad." + k] = g.detach().float().contiguous()
    note = ""
    if spec.get("pad_token_at"):
        row = grads[next(k for k in grads if k.endswith("embed_tokens.weight"))][pad]
        note = f", embedding row {pad} (padding_idx) gradient max |g| {row.abs().max().item():.3g}"

    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    opt.step()
    with torch.no_grad():
        expected["loss_after_step"] = model(**model_batch).loss.detach().float()

    meta = {"lr": str(ADAMW["lr"]), "adam_beta1": str(ADAMW["betas"][0]),
            "adam_beta2": str(ADAMW["betas"][1]), "adam_epsilon": str(ADAMW["eps"]),
            "weight_decay": str(ADAMW["weight_decay"]),
            "transformers": transformers.__version__, "torch": torch.__version__}
    save_file(expected, os.path.join(case_dir, "expected.safetensors"), metadata=meta)
    print(f"{name}: loss {out.loss.item():.6f} after step {expected['loss_after_step'].item():.6f} "
          f"grads {sum(k.startswith('grad.') for k in expected)}{note}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/golden")
    ap.add_argument("--cases", nargs="*", default=list(CASES), help="case names (default: all)")
    ap.add_argument("--families", nargs="*", help="keep only the cases of these model_types")
    args = ap.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {list(CASES)}")
    cases = [c for c in args.cases if args.families is None or CASES[c]["model_type"] in args.families]
    if not cases:
        ap.error(f"no case of {args.families}; model_types: {sorted({s['model_type'] for s in CASES.values()})}")
    torch.use_deterministic_algorithms(True)
    for name in cases:
        run_case(name, CASES[name], args.out)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("Generated by python/oracle/golden_fixtures.py with transformers "
                f"{transformers.__version__} and torch {torch.__version__} on the CPU in float32.\n"
                f"AdamW step: {json.dumps(ADAMW)}\n")


if __name__ == "__main__":
    main()
