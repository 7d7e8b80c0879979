#!/usr/bin/env bash
# Runs moeforge binaries built on the development machine on the GPU machine. The binaries and the
# shared libraries the GPU image lacks travel as .carry/gpu/bundle.tar.xz (made by
# dev/cuda/make_bundle.sh; name .carry/gpu in the run's carry). Everything goes to $OUT.
#   usage (GPU machine, repository root): [BENCH_ARGS="..."] [MF_BUNDLE=...] dev/cuda/gpu_run.sh STAGE...
#   MF_BUNDLE picks another bundle (default .carry/gpu/bundle.tar.xz): a before/after comparison in
#   one lease runs the script twice, with OUT and MF_BUNDLE set per build.
#   stages: tests (the gpu-labelled gtests), curve (CPU vs CUDA loss curve),
#           bench (bench/train_bench.py with BENCH_ARGS; on a kind of N GPUs BENCH_ARGS="--gpus N
#           --zero-stages 1 2 ..." runs moeforge under the bundle's mpirun beside Transformers' FSDP2), load (bench/load_bench.cpp: write a
#           LOAD_LAYERS-layer (default 24) Qwen3-30B-A3B-shaped bf16 checkpoint, then load it in a
#           fresh process), ops-bench (the time of every backend op case; OPS_BENCH_FILTER picks
#           cases by name), python (the torch tests of the Python package, CPU and CUDA, and
#           test_peft_interop.py: adapters trained by both front ends loaded in PEFT), examples
#           (examples/side_by_side.sh on the demo's model and data),
#           oracle (Transformers' float32 golden fixtures of ORACLE_FAMILIES, default the families
#           after Qwen3, into $OUT/golden beside a copy of the committed ones, then Transformers'
#           bf16 baseline on every case; needs no bundle), saved (folders moeforge saves, the MXFP4
#           one included, loaded in Transformers against moeforge's logits), ep (expert parallelism on the CUDA
#           backend: two processes sharing the GPU under the bundle's mpirun against one), lora-oracle (PEFT's LoRA fixtures made
#           again on this machine's PEFT into $OUT/lora, compared tensor by tensor with the committed
#           tests/data/lora, then PEFT's bf16 baseline on each case; needs no bundle),
#           ab (several builds side by side, so that the machine's drift falls on all alike: two H100s
#           ran one build 2% apart. BUNDLES names folders under .carry/gpu holding a bundle.tar.xz
#           each, full or make_bundle.sh's --slim one, run with MF_BUNDLE's libraries; each model of
#           AB_MODELS (qwen3, gptoss, nemotron, moonlight; one named twice runs twice) takes the
#           8-layer bench (seq 4096, mb4 x GA4, bf16-state, moeforge only, 3 timed steps, ~15 s) with
#           every bundle in turn. OP_TABLE names bundles whose op table runs first, OP_FILTER its
#           gtest filter; AB_ARGS adds train_bench.py arguments to every run (--loss-chunk-tokens N).
#           Results go to $OUT/ab.tgz, written again after each run so that a call cut short keeps
#           what finished, with smi.csv: the SM clock and power every 0.5 s; bench/compare_ab.py reads the
#           unpacked folder),
#           ncu (Nsight Compute on the bench of NCU_MODEL, default qwen3-30b-a3b, at 2 layers, seq 4096,
#           mb4 x GA2, one step: for each regex of NCU_KERNELS, matched against demangled kernel names,
#           NCU_COUNT (default 2) launches after NCU_SKIP (default 4), into $OUT/ncu_N.txt; NCU_EXTRA adds
#           ncu arguments, e.g. "--section SourceCounters --metrics regex:smsp__average_warps_issue_stalled_.*"
#           for where and why warps wait. GA2 so that
#           the skipped launches can cover the first micro-batch, whose weight gradients are written,
#           not added)
set -uo pipefail
out=${OUT:-/tmp/gpu_out}
bundle=${MF_BUNDLE:-.carry/gpu/bundle.tar.xz}
mf=/tmp/mf-$(basename "$(dirname "$bundle")")
mkdir -p "$out" "$mf"
[ -f "$bundle" ] && tar -C "$mf" -xJf "$bundle"  # the oracle stage needs none
# cuDNN comes with the image's PyTorch wheels; the CUDA toolkit's own libraries from /usr/local/cuda.
cudnn=$(find / -name 'libcudnn.so.9' -not -path '/proc/*' 2>/dev/null | head -1)
# NCCL: PyTorch's wheel (2.28.9 on 2026-12-05, the version moeforge is built against) before the
# image's system copy (2.28.3), which sits beside the system cuDNN.
nccl=$(find / -path '*nvidia/nccl/lib/libnccl.so.2' -not -path '/proc/*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$mf/lib:${nccl%/*}:${cudnn%/*}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export MOEFORGE_BINARY=$mf/bin/moeforge MOEFORGE_SOURCE_DIR=$PWD NCCL_NVLS_ENABLE=0
# The bundle's relocated Open MPI (make_bundle.sh), for processes that share the GPU under mpirun.
if [ -d "$mf/mpi" ]; then
  export MOEFORGE_MPIRUN=$mf/mpi/bin/mpirun OPAL_PREFIX=$mf/mpi OPAL_PKGLIBDIR=$mf/mpi/lib/openmpi3 \
         OPAL_PKGDATADIR=$mf/mpi/share/openmpi OPAL_DATADIR=$mf/mpi/share PMIX_MCA_mca_base_component_path=$mf/mpi/lib/pmix \
         PMIX_MCA_mca_base_component_show_load_errors=0 OMPI_MCA_mca_base_component_show_load_errors=0
fi
{ nvidia-smi; echo "cudnn: $cudnn"; echo "nccl: $nccl"; ldd "$mf/bin/moeforge"; } > "$out/env.txt" 2>&1
status=0
for stage in "$@"; do
  case $stage in
    tests)
      { "$mf/bin/test_gpu_ops"; "$mf/bin/test_gpu_op_table"; "$mf/bin/test_gpu_model"; "$mf/bin/test_gpu_lora"; "$mf/bin/test_gpu_streams"; "$mf/bin/test_gpu_nccl"; } \
        > "$out/gpu_tests.log" 2>&1 || status=1 ;;
    curve)
      mkdir -p /tmp/curve
      python3 tests/gpu/loss_curve.py --moeforge "$mf/bin/moeforge" --out /tmp/curve > "$out/curve.log" 2>&1 || status=1
      cp /tmp/curve/loss_curve.md "$out/" 2>/dev/null
      tail -n 5 /tmp/curve/*.log >> "$out/curve.log" 2>/dev/null ;;
    bench)
      # shellcheck disable=SC2086
      python3 bench/train_bench.py --moeforge-bench "$mf/bin/moeforge-train-bench" \
        --out "$out/bench.json" --log "$out/bench.log" ${BENCH_ARGS:-} > "$out/bench.md" 2>&1 || status=1 ;;
    load)
      ckpt=/tmp/load-bench-checkpoint
      { "$mf/bin/moeforge-load-bench" write "$ckpt" --config bench/configs/qwen3-30b-a3b.json \
          --layers "${LOAD_LAYERS:-24}" --shard-gb 4 &&
        ls -la "$ckpt" &&
        "$mf/bin/moeforge-load-bench" load "$ckpt" --seq 4096 > "$out/load.json"; } > "$out/load.log" 2>&1 || status=1
      rm -rf "$ckpt" ;;
    ops-bench)
      "$mf/bin/moeforge-ops-bench" "${OPS_BENCH_FILTER:-}" > "$out/ops_bench.txt" 2>&1 || status=1 ;;
    ep)
      python3 -m pytest -q -s -p no:cacheprovider tests/python/test_expert_parallel_cuda.py > "$out/ep.log" 2>&1 || status=1 ;;
    python)
      PYTHONPATH="$mf/python:$PWD/python" python3 -m pytest -q tests/python/test_api_torch.py \
        tests/python/test_peft_interop.py > "$out/python.log" 2>&1 || status=1 ;;
    examples)
      PYTHONPATH="$mf/python:$PWD/python" MOEFORGE="$mf/bin/moeforge" \
        examples/side_by_side.sh demo demo "${EXAMPLE_STEPS:-30}" /tmp/side > "$out/examples.log" 2>&1 || status=1
      tail -n 20 /tmp/side/hf.log /tmp/side/moeforge.log >> "$out/examples.log" 2>/dev/null ;;
    oracle)
      mkdir -p "$out/golden" && cp -r tests/data/golden/. "$out/golden/"
      # shellcheck disable=SC2086
      { python3 python/oracle/golden_fixtures.py --out "$out/golden" \
          --families ${ORACLE_FAMILIES:-mixtral olmoe qwen2_moe} &&
        python3 python/oracle/bf16_baseline.py --golden "$out/golden" --out "$out/golden/bf16_baseline.json"
      } > "$out/oracle.log" 2>&1 || status=1 ;;
    saved)
      # Folders moeforge saves (tests/python/test_save_pretrained.py, the CPU backend of the bundle's
      # binary) loaded in Transformers: names, dtypes, config keys and logits (check_saved_model.py).
      rm -rf /tmp/saved && mkdir -p /tmp/saved
      { MOEFORGE_EXPORT_SAVED=/tmp/saved python3 -m pytest -q -p no:cacheprovider tests/python/test_save_pretrained.py &&
        python3 python/oracle/check_saved_model.py /tmp/saved/*; } > "$out/saved.log" 2>&1 || status=1 ;;
    lora-oracle)
      { python3 python/oracle/lora_fixtures.py --out "$out/lora" &&
        python3 python/oracle/compare_fixtures.py tests/data/lora "$out/lora" &&
        python3 python/oracle/lora_bf16_baseline.py --lora tests/data/lora --out "$out/lora_bf16_baseline.json"
      } > "$out/lora_oracle.log" 2>&1 || status=1 ;;
    ab)
      declare -A ab_config=([qwen3]=qwen3-30b-a3b [gptoss]=gpt-oss-20b [nemotron]=nemotron-3-nano-30b-a3b
                            [moonlight]=moonlight-16b-a3b)
      ab=/tmp/ab/ab
      rm -rf /tmp/ab && mkdir -p "$ab"
      # Clocks and power through the runs (an H100 under this load sat at its power cap, SMs at a median
      # 1650 MHz against 1980 boost: bench/RESULTS.md, 2026-12-05).
      nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv -lms 500 > "$ab/smi.csv" 2>&1 &
      smi=$!
      for b in ${BUNDLES:?name the bundles to compare}; do
        mkdir -p "/tmp/ab/$b" && tar -C "/tmp/ab/$b" -xJf ".carry/gpu/$b/bundle.tar.xz" || status=1
      done
      for b in ${OP_TABLE:-}; do
        "/tmp/ab/$b/bin/test_gpu_op_table" --gtest_filter="${OP_FILTER:-*}" > "$ab/op_table_$b.log" 2>&1 || status=1
        tar -C /tmp/ab -czf "$out/ab.tgz" ab
      done
      n=0
      for model in ${AB_MODELS:?name the models}; do
        n=$((n + 1))
        for b in $BUNDLES; do
          # shellcheck disable=SC2086
          python3 bench/train_bench.py --moeforge-bench "/tmp/ab/$b/bin/moeforge-train-bench" \
            --out "$ab/${n}_${model}_$b.json" --log "$ab/${n}_${model}_$b.log" \
            --config "bench/configs/${ab_config[$model]}.json" --layers 8 --shapes 4x4 --impls moeforge --modes \
            --steps 3 --warmup 1 ${AB_ARGS:-} > "$ab/${n}_${model}_$b.md" 2>&1 || status=1
          tar -C /tmp/ab -czf "$out/ab.tgz" ab
        done
      done
      kill "$smi" 2>/dev/null
      tar -C /tmp/ab -czf "$out/ab.tgz" ab ;;
    ncu)
      n=0
      for kernels in ${NCU_KERNELS:?name the kernels, regexes of their demangled names}; do
        n=$((n + 1))
        # shellcheck disable=SC2086
        ncu --target-processes all --kernel-name-base demangled --kernel-name "regex:$kernels" \
          --launch-skip "${NCU_SKIP:-4}" --launch-count "${NCU_COUNT:-2}" --section SpeedOfLight \
          --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --section SchedulerStats \
          --section WarpStateStats ${NCU_EXTRA:-} "$mf/bin/moeforge-train-bench" \
          --config "bench/configs/${NCU_MODEL:-qwen3-30b-a3b}.json" --layers 2 --seq 4096 --micro-batch 4 \
          --grad-accum 2 --steps 1 --warmup 0 --precision bf16-state > "$out/ncu_$n.txt" 2>&1 || status=1
      done ;;
    *) echo "unknown stage $stage" >&2; status=2 ;;
  esac
done
exit $status
