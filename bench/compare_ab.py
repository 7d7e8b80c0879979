#!/usr/bin/env python3
"""The builds of an A/B side by side: dev/cuda/gpu_run.sh's `ab` stage runs each model of AB_MODELS with every
bundle in turn and writes N_MODEL_BUNDLE.json (train_bench.py's list of results) for each run; the committed
records in bench/results keep the same runs as one JSON object keyed N_MODEL_BUNDLE, or CALL/N_MODEL_BUNDLE where
one record holds several device calls (each call is compared on its own: another lease, maybe another card).
For each model this prints, per bundle, its runs' ms per step, peak memory, expert products' rates and losses (a
build that changes the arithmetic should keep its loss within the runs' own spread), then the ops whose time a
step differs from the first bundle's by at least --min-ms (means over a bundle's runs of that model), and the SM
clock and power of smi.csv when the folder has it.

    python3 bench/compare_ab.py AB_FOLDER_OR_JSON [--min-ms 0.5] [--baseline BUNDLE]
"""
import argparse
import csv
import glob
import json
import os
import statistics
import sys


def load_runs(path):
    """{call: [(order, model, bundle, result)] in run order} from an ab folder or a merged JSON object; the call is
    the key's CALL/ prefix, or "" without one."""
    named = {}  # N_MODEL_BUNDLE -> (the file it came from, its results)
    if os.path.isdir(path):
        for file in sorted(glob.glob(os.path.join(path, "*.json"))):
            with open(file) as f:
                named[os.path.splitext(os.path.basename(file))[0]] = (file, json.load(f))
    else:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError(f"{path}: expected an object keyed N_MODEL_BUNDLE (or an ab folder)")
        named = {name: (path, results) for name, results in record.items()}
    calls = {}
    for name, (source, results) in named.items():
        call, _, run = name.rpartition("/")
        parts = run.split("_", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            raise ValueError(f"{source}: '{name}' is not N_MODEL_BUNDLE or CALL/N_MODEL_BUNDLE")
        mine = [r for r in results if r.get("impl") == "moeforge"] if isinstance(results, list) else []
        if not mine:
            raise ValueError(f"{source}: '{name}' holds no moeforge result")
        calls.setdefault(call, []).append((int(parts[0]), parts[1], parts[2], mine[0]))
    return {call: sorted(runs, key=lambda run: run[0]) for call, runs in sorted(calls.items())}


def smi_summary(folder):
    """Median SM clock (MHz) and power (W) over smi.csv's samples, or None."""
    path = os.path.join(folder, "smi.csv")
    if not os.path.isfile(path):
        return None
    clocks, power = [], []
    with open(path) as f:
        for row in csv.reader(f):
            try:
                clocks.append(float(row[1].split()[0]))
                power.append(float(row[2].split()[0]))
            except (IndexError, ValueError):
                continue  # the header, or a sample the tool could not read
    if not clocks:
        return None
    return statistics.median(clocks), statistics.median(power), len(clocks)


def report(runs, min_ms, baseline=None):
    lines = []
    models = list(dict.fromkeys(model for _, model, _, _ in runs))
    for model in models:
        mine = [(bundle, r) for _, m, bundle, r in runs if m == model]
        bundles = list(dict.fromkeys(bundle for bundle, _ in mine))
        base = baseline if baseline in bundles else bundles[0]
        by_bundle = {b: [r for bundle, r in mine if bundle == b] for b in bundles}
        lines.append(f"## {model}\n")
        lines.append(f"| bundle | ms/step (each run) | mean | vs {base} | peak GiB | "
                     "expert fwd / dx / dw TFLOP/s | loss (each run) |")
        lines.append("|---|---|---|---|---|---|---|")
        base_ms = statistics.mean([r["ms_per_step"] for r in by_bundle[base]])
        for b in bundles:
            results = by_bundle[b]
            ms = [r["ms_per_step"] for r in results]
            products = results[-1].get("expert_products") or {}
            rates = " / ".join(f"{products[p]['tflops']:.0f}" for p in ("forward", "dx", "dw") if p in products)
            losses = ", ".join(f"{r['loss']:.6f}" for r in results if "loss" in r)
            lines.append(f"| {b} | {', '.join(f'{x:.1f}' for x in ms)} | {statistics.mean(ms):.1f} | "
                         f"{(statistics.mean(ms) / base_ms - 1) * 100:+.1f}% | "
                         f"{max(r['peak_memory_bytes'] for r in results) / 2**30:.1f} | {rates} | {losses} |")
        others = [b for b in bundles if b != base]
        if others:
            op_means = {b: {} for b in bundles}
            for b in bundles:
                ops = set().union(*(r.get("op_ms", {}).keys() for r in by_bundle[b]))
                for op in ops:
                    op_means[b][op] = statistics.mean([r.get("op_ms", {}).get(op, 0.0) for r in by_bundle[b]])
            all_ops = sorted(set().union(*(op_means[b].keys() for b in bundles)))
            moved = [op for op in all_ops
                     if any(abs(op_means[b].get(op, 0.0) - op_means[base].get(op, 0.0)) >= min_ms for b in others)]
            lines.append("")
            if moved:
                lines.append(f"ops a step (ms, means over runs) that move by at least {min_ms} ms against {base}:\n")
                lines.append("| op | " + " | ".join(bundles) + " |")
                lines.append("|---|" + "---|" * len(bundles))
                for op in moved:
                    delta = {b: op_means[b].get(op, 0.0) - op_means[base].get(op, 0.0) for b in others}
                    cells = [f"{op_means[base].get(op, 0.0):.2f}"] + [
                        f"{op_means[b].get(op, 0.0):.2f} ({delta[b]:+.2f})" for b in others]
                    lines.append(f"| {op} | " + " | ".join(cells) + " |")
            else:
                lines.append(f"no op moves by {min_ms} ms or more against {base}")
        lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", help="an ab folder (gpu_run.sh's ab.tgz unpacked) or a merged JSON in bench/results")
    p.add_argument("--min-ms", type=float, default=0.5, help="list the ops that move by at least this much a step")
    p.add_argument("--baseline", help="the bundle the others are compared with (default: each model's first)")
    a = p.parse_args()
    try:
        calls = load_runs(a.path)
    except (OSError, ValueError) as e:
        print(f"compare_ab: {e}", file=sys.stderr)
        return 2
    if not calls:
        print(f"compare_ab: {a.path}: no runs", file=sys.stderr)
        return 2
    for call, runs in calls.items():
        if call:
            print(f"# {call}\n")
        print(report(runs, a.min_ms, a.baseline))
    if os.path.isdir(a.path):
        smi = smi_summary(a.path)
        if smi:
            print(f"smi.csv: SM clock median {smi[0]:.0f} MHz, power median {smi[1]:.0f} W ({smi[2]} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
