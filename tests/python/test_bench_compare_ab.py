"""bench/compare_ab.py: the builds of an A/B side by side, from gpu_run.sh's ab folder or a merged record."""
import json
import os
import subprocess
import sys
from pathlib import Path

SOURCE = Path(os.environ.get("MOEFORGE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
SCRIPT = SOURCE / "bench" / "compare_ab.py"


def result(ms, op_ms, impl="moeforge", loss=12.2804149):
    return {"impl": impl, "ms_per_step": ms, "peak_memory_bytes": 53 * 2**30, "op_ms": op_ms, "loss": loss,
            "expert_products": {"forward": {"tflops": 524.0}, "dx": {"tflops": 570.0}, "dw": {"tflops": 461.0}}}


def compare(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_an_ab_folder_gives_each_bundle_its_runs_and_the_ops_that_moved(tmp_path):
    runs = {"1_qwen3_base": result(760.0, {"gemm": 260.0, "swiglu_fwd": 6.3}),
            "2_qwen3_fused": result(755.0, {"gemm": 260.2, "gathered_grouped_linear_act": 55.0}),
            "3_qwen3_base": result(762.0, {"gemm": 259.8, "swiglu_fwd": 6.2}),
            "4_qwen3_fused": result(757.0, {"gemm": 260.0, "gathered_grouped_linear_act": 55.2}, loss=12.2804807)}
    for name, r in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps([r]))
    (tmp_path / "smi.csv").write_text("timestamp, clocks.sm [MHz], power.draw [W]\n"
                                      "t, 1650 MHz, 690.1 W\nt, 1700 MHz, 680.0 W\nt, 1600 MHz, 700.0 W\n")
    out = compare(tmp_path, "--min-ms", "0.5")
    assert out.returncode == 0, out.stderr
    assert "| base | 760.0, 762.0 | 761.0 | +0.0% | 53.0 | 524 / 570 / 461 | 12.280415, 12.280415 |" in out.stdout
    assert "| fused | 755.0, 757.0 | 756.0 | -0.7% | 53.0 | 524 / 570 / 461 | 12.280415, 12.280481 |" in out.stdout
    # swiglu_fwd is gone in fused (6.25 ms a step on average), the fused op new; gemm moves by less than 0.5 ms.
    assert "| swiglu_fwd | 6.25 | 0.00 (-6.25) |" in out.stdout
    assert "| gathered_grouped_linear_act | 0.00 | 55.10 (+55.10) |" in out.stdout
    assert "| gemm |" not in out.stdout
    assert "SM clock median 1650 MHz, power median 690 W (3 samples)" in out.stdout


def test_a_merged_record_reads_as_its_folder_did_and_the_baseline_can_be_named(tmp_path):
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"1_nemotron_base": [result(705.0, {"ssd_scan_bwd": 82.8})],
                                  "2_nemotron_dx192": [result(704.0, {"ssd_scan_bwd": 82.4})]}))
    out = compare(record, "--baseline", "dx192", "--min-ms", "0.3")
    assert out.returncode == 0, out.stderr
    assert "| base | 705.0 | 705.0 | +0.1% |" in out.stdout
    assert "| ssd_scan_bwd | 82.40 | 82.80 (+0.40) |" in out.stdout


def test_a_record_of_several_calls_compares_each_call_on_its_own(tmp_path):
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"call1/1_qwen3_base": [result(760.0, {})], "call1/2_qwen3_new": [result(750.0, {})],
                                  "call2/1_qwen3_base": [result(770.0, {})], "call2/2_qwen3_new": [result(777.0, {})]}))
    out = compare(record)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("# call2")
    assert "# call1" in first and "| new | 750.0 | 750.0 | -1.3% |" in first
    assert "| new | 777.0 | 777.0 | +0.9% |" in second


def test_bad_input_names_the_file_and_the_entry(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"qwen3": [result(1.0, {})]}))
    out = compare(bad)
    assert out.returncode == 2
    assert f"{bad}: 'qwen3' is not N_MODEL_BUNDLE or CALL/N_MODEL_BUNDLE" in out.stderr
    folder = tmp_path / "ab"
    folder.mkdir()
    (folder / "1_qwen3_base.json").write_text(json.dumps([result(1.0, {}, impl="transformers")]))
    out = compare(folder)
    assert out.returncode == 2
    assert f"{folder / '1_qwen3_base.json'}: '1_qwen3_base' holds no moeforge result" in out.stderr
    assert compare(tmp_path / "missing.json").returncode == 2
