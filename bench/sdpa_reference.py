#!/usr/bin/env python3
"""PyTorch's cuDNN attention alone, as the reference for moeforge's attention op times.

Times torch.nn.functional.scaled_dot_product_attention on the cuDNN backend, causal, forward and
backward (median of --calls after 3 warm-up calls, CUDA events), at one shape, in the layouts and
modes asked for:
  layout bshd  [B, T, H, D] memory viewed as (B, H, T, D) by strides (moeforge's), or bhsd (contiguous);
  kv     gqa   k/v with their own heads (enable_gqa), or repeated to the query heads;
  --gemm-between  an 8192^3 bf16 GEMM before each call, so that the clock is nearer to a training
                  step's under the power cap than to twenty attention calls back to back.
TFLOP/s counts the causal half: forward 4 B Hq T^2 D / 2, backward 2.5x that.

Runs on the GPU machine (PyTorch with cuDNN), e.g. at GPT-OSS's full attention:
  python3 bench/sdpa_reference.py --batch 4 --seq 4096 --heads 64 --kv-heads 8 --head-dim 64 \\
      --layouts bshd --kv gqa repeated
"""
import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, calls, before=None):
    times = []
    for i in range(calls + 3):
        if before is not None:
            before()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def tensor(args, heads, layout):
    b, t, d = args.batch, args.seq, args.head_dim
    if layout == "bshd":
        x = torch.randn(b, t, heads, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    else:
        x = torch.randn(b, heads, t, d, device="cuda", dtype=torch.bfloat16)
    return x.requires_grad_()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--layouts", nargs="+", default=["bshd", "bhsd"], choices=["bshd", "bhsd"])
    p.add_argument("--kv", nargs="+", default=["gqa"], choices=["gqa", "repeated"])
    p.add_argument("--gemm-between", action="store_true")
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()

    flops = 4 * args.batch * args.heads * args.seq * args.seq * args.head_dim / 2
    gemm = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) if args.gemm_between else None
    before = (lambda: gemm @ gemm) if gemm is not None else None
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for layout in args.layouts:
            for kv in args.kv:
                q, k, v = (tensor(args, args.heads, layout), tensor(args, args.kv_heads, layout),
                           tensor(args, args.kv_heads, layout))
                if kv == "repeated":
                    group = args.heads // args.kv_heads
                    k = k.detach().repeat_interleave(group, dim=1).requires_grad_()
                    v = v.detach().repeat_interleave(group, dim=1).requires_grad_()
                dout = torch.randn_like(tensor(args, args.heads, layout))

                def forward():
                    return torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, is_causal=True, enable_gqa=kv == "gqa")

                out = forward()
                forward_ms = median_ms(forward, args.calls, before)
                backward_ms = median_ms(
                    lambda: torch.autograd.grad(out, [q, k, v], dout, retain_graph=True), args.calls, before)
                print(f"{layout} {kv}: forward {forward_ms:.3f} ms ({flops / forward_ms / 1e9:.0f} TFLOP/s), "
                      f"backward {backward_ms:.3f} ms ({2.5 * flops / backward_ms / 1e9:.0f} TFLOP/s)", flush=True)


if __name__ == "__main__":
    main()
