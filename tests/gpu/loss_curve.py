#!/usr/bin/env python3
"""CPU float32 vs CUDA bf16 training curves of a small Qwen3-MoE (the demo's: 2 layers, 8 experts
top-2, aux loss on) fine-tuned 200 steps from the same float32 initialisation on the same data:

  text  `moeforge train` on this repository's own source and docs as plain text (packed, 8 x 256
        tokens a step): a smooth language-modelling curve. The 10-step moving averages must differ
        by at most 2% at every step.
  demo  `moeforge demo`'s letter-reversal chat task, reported beside it: its loss collapses by two
        orders of magnitude within a few dozen steps, so small timing differences show up as large
        relative ones in that stretch (reported, not held to the limit).

  python3 tests/gpu/loss_curve.py --moeforge build/cuda-release/tools/cli/moeforge --out DIR

Writes DIR/loss_curve.md (tables every 10 steps, the worst differences) and exits 1 when the text
curve exceeds the limit. Runs on the GPU machine.
"""
import argparse
import json
import os
import subprocess
import sys


def losses(folder):
    out = {}
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                out[r["step"]] = r["loss"]
    return [out[s] for s in sorted(out)]


def moving_average(xs, n=10):
    return [sum(xs[i - n + 1:i + 1]) / n for i in range(n - 1, len(xs))]


def corpus(path, chunk=2000):
    """This repository's tracked text files, in a fixed order, cut into JSONL text records."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    if not files:  # a copy of the tree without git metadata
        files = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
    files = sorted(f for f in files if f.endswith((".cpp", ".h", ".cu", ".md", ".py"))
                   and not any(part.startswith(".") or part == "build" for part in f.split(os.sep)))
    with open(path, "w") as out:
        for f in files:
            try:
                text = open(os.path.join(root, f), encoding="utf-8").read()
            except (OSError, UnicodeDecodeError):
                continue
            for i in range(0, len(text), chunk):
                out.write(json.dumps({"text": text[i:i + chunk]}) + "\n")


def compare(name, cpu_losses, cuda_losses):
    cpu, cuda = moving_average(cpu_losses), moving_average(cuda_losses)
    diffs = [abs(g - c) / abs(c) for c, g in zip(cpu, cuda)]
    worst = max(range(len(diffs)), key=lambda i: diffs[i])
    lines = [f"### {name}", "", "| step | CPU float32 (10-step mean) | CUDA bf16 (10-step mean) | difference |",
             "|---|---|---|---|"]
    for i in range(0, len(cpu), 10):
        lines.append(f"| {i + 10} | {cpu[i]:.4f} | {cuda[i]:.4f} | {100 * diffs[i]:.2f}% |")
    lines += ["", f"{name}: worst difference {100 * diffs[worst]:.2f}% at step {worst + 10}", ""]
    return diffs[worst], lines


def run(cmd, log_path):
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}; see {log_path}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--moeforge", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--limit", type=float, default=0.02)
    a = p.parse_args()
    # The demo's model, tokenizer and float32 initialisation, used by both curves.
    base_run = os.path.join(a.out, "init")
    run([a.moeforge, "demo", "--max-steps", "1", "--eval-questions", "1", "--output-dir", base_run],
        os.path.join(a.out, "init.log"))
    base = os.path.join(base_run, "base-model")
    text = os.path.join(a.out, "corpus.jsonl")
    corpus(text)
    runs = {"text": {}, "demo": {}}
    for device in ("cpu", "cuda"):
        folder = os.path.join(a.out, f"text-{device}")
        run([a.moeforge, "train", "--model", base, "--train-file", text, "--device", device,
             "--dtype", "bfloat16" if device == "cuda" else "float32", "--max-steps", str(a.steps),
             "--per-device-train-batch-size", "8", "--max-seq-length", "256", "--learning-rate", "2e-3",
             "--warmup-steps", "20", "--lr-scheduler-type", "cosine", "--weight-decay", "0.01",
             "--logging-steps", "50", "--seed", "1", "--output-dir", folder],
            os.path.join(a.out, f"text-{device}.log"))
        runs["text"][device] = losses(folder)
        folder = os.path.join(a.out, f"demo-{device}")
        run([a.moeforge, "demo", "--device", device, "--max-steps", str(a.steps), "--output-dir", folder],
            os.path.join(a.out, f"demo-{device}.log"))
        runs["demo"][device] = losses(os.path.join(folder, "model"))
    worst_text, lines = compare("text (held to the limit)", runs["text"]["cpu"], runs["text"]["cuda"])
    _, demo_lines = compare("demo task (reported)", runs["demo"]["cpu"], runs["demo"]["cuda"])
    verdict = "PASS" if worst_text <= a.limit else "FAIL"
    lines += demo_lines + [f"text curve within {100 * a.limit:.0f}%: {verdict}"]
    text_out = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "loss_curve.md"), "w") as f:
        f.write(text_out)
    print(text_out)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
