"""One-thread encoding throughput: moeforge tokenize vs the Python tokenizers library, same text.

The text is tests/data/tokenizer/corpus.jsonl repeated to about --megabytes MB, one JSONL line per
corpus line. The library runs encode_batch with RAYON_NUM_THREADS=1 (set before it is imported);
moeforge runs `tokenize --threads 1 --benchmark`, which reports the encoding time alone (file
reading and tokenizer loading excluded, as for the library). Best of --repeats runs each; the ids
are checked to be identical. With --write, a row goes into bench/RESULTS.md.

    .venv/bin/python bench/tokenizer/bench_tokenize.py --moeforge build/cpu-release/tools/cli/moeforge
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer  # noqa: E402  (after RAYON_NUM_THREADS)

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moeforge", required=True)
    ap.add_argument("--tokenizers", nargs="+", default=["qwen3", "deepseek_v3", "gptoss"])
    ap.add_argument("--megabytes", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="append the results to bench/RESULTS.md")
    args = ap.parse_args()

    corpus = [json.loads(l)["text"] for l in
              (ROOT / "tests/data/tokenizer/corpus.jsonl").read_text(encoding="utf-8").split("\n") if l]
    corpus_bytes = sum(len(t.encode()) for t in corpus)
    texts = corpus * max(1, int(args.megabytes * 1e6 / corpus_bytes))
    total_bytes = sum(len(t.encode()) for t in texts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bench.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        for name in args.tokenizers:
            path = ROOT.parent / "shared/assets/tokenizers" / name / "tokenizer.json"
            if not path.is_file():
                print(f"skipping {name}: missing {path}", file=sys.stderr)
                continue
            tok = Tokenizer.from_file(str(path))
            hf_best, ids = None, None
            for _ in range(args.repeats):
                start = time.perf_counter()
                encodings = tok.encode_batch(texts)
                elapsed = time.perf_counter() - start
                hf_best = elapsed if hf_best is None else min(hf_best, elapsed)
                ids = [e.ids for e in encodings]
            n_tokens = sum(len(i) for i in ids)

            mf_best, out = None, None
            for _ in range(args.repeats):
                r = subprocess.run([args.moeforge, "tokenize", "--tokenizer", str(path), "--input", str(data),
                                    "--threads", "1", "--benchmark"], capture_output=True, text=True, check=True)
                seconds = float(re.search(r"encoded in ([0-9.]+) s", r.stderr).group(1))
                mf_best = seconds if mf_best is None else min(mf_best, seconds)
                out = r.stdout
            got = [json.loads(l)["ids"] for l in out.split("\n") if l]
            assert got == ids, f"{name}: moeforge ids differ from the library's"
            rows.append((name, total_bytes, n_tokens, n_tokens / hf_best, n_tokens / mf_best))
            print(f"{name}: {total_bytes / 1e6:.1f} MB, {n_tokens} tokens; tokenizers {n_tokens / hf_best:,.0f} tok/s, "
                  f"moeforge {n_tokens / mf_best:,.0f} tok/s ({hf_best / mf_best:.2f}x)")

    if args.write and rows:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results = ROOT / "bench/RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n\nMeasured numbers only; each row names its command, commit and date.\n")
        lines = ["", f"## Tokenizer encoding, one thread ({date}, commit {commit})", "",
                 "`.venv/bin/python bench/tokenizer/bench_tokenize.py --moeforge <binary> --write` "
                 f"(corpus repeated to {total_bytes / 1e6:.1f} MB, best of {args.repeats}; tokenizers "
                 "encode_batch with RAYON_NUM_THREADS=1 vs moeforge tokenize --threads 1 --benchmark, "
                 "encoding time only)", "",
                 "| tokenizer | tokens | tokenizers (tok/s) | moeforge (tok/s) | speed-up |",
                 "|---|---|---|---|---|"]
        for name, _, n, hf, mf in rows:
            lines.append(f"| {name} | {n} | {hf:,.0f} | {mf:,.0f} | {mf / hf:.2f}x |")
        with open(results, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
