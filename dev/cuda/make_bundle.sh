#!/usr/bin/env bash
# Packs the CUDA build's binaries and the shared libraries the GPU machine's image lacks into
# .carry/gpu/bundle.tar.xz (ignored by git; under the 64 MiB a run may carry) for dev/cuda/gpu_run.sh.
#   usage: dev/cuda/make_bundle.sh [BUILD_DIR]   (default build/cuda-release)
#          dev/cuda/make_bundle.sh BUILD_DIR --slim NAME
# --slim packs only the bench and op-table binaries (about 3.6 MB against 23) into
# .carry/gpu/NAME/bundle.tar.xz: a variant that gpu_run.sh's ab stage runs with the libraries of
# its first, full bundle, so that several builds fit in one carry.
set -euo pipefail
# -9e: a 64 MiB dictionary in one block spans binaries that each hold the same library code (the tests and
# tools link it statically): 23 MB where -6 -T2 (8 MiB dictionary, 24 MiB blocks) gave 41 (2026-12-07), so that
# a carry holds a full bundle beside several slim ones. It takes about 90 s here.
pack() { tar -C "$1" -cf - "$2" | xz -9e -T2 > "$3"; }  # pack DIR WHAT ARCHIVE
build=${1:-build/cuda-release}
stage=$(mktemp -d)
if [[ ${2:-} == --slim ]]; then
  mkdir -p "$stage/bin" ".carry/gpu/$3"
  cp "$build/bench/moeforge-train-bench" "$build/tests/gpu/test_gpu_op_table" "$stage/bin/"
  strip "$stage"/bin/*
  pack "$stage" bin ".carry/gpu/$3/bundle.tar.xz"
  rm -rf "$stage"
  ls -la ".carry/gpu/$3/bundle.tar.xz"
  exit 0
fi
mkdir -p "$stage/bin" "$stage/lib" .carry/gpu
cp "$build/tools/cli/moeforge" "$build/tests/gpu/test_gpu_ops" "$build/tests/gpu/test_gpu_op_table" \
   "$build/tests/gpu/test_gpu_model" "$build/tests/gpu/test_gpu_lora" "$build/tests/gpu/test_gpu_streams" "$build/tests/gpu/test_gpu_nccl" "$build/bench/moeforge-train-bench" "$build/bench/moeforge-load-bench" \
   "$build/bench/moeforge-ops-bench" "$stage/bin/"
strip "$stage"/bin/*
# The Python module, when the build has one for the GPU machine's Python 3.12 (configure the build
# with -DMOEFORGE_PYTHON=ON -DPython_EXECUTABLE=<a python3.12 with nanobind>).
for module in "$build"/python/bindings/_moeforge.cpython-312-*.so; do
  [[ -e $module ]] || continue
  mkdir -p "$stage/python"
  cp "$module" "$stage/python/"
  strip "$stage/python/$(basename "$module")"
done
for lib in libyaml-cpp.so.0.7 libonig.so.5 libicuuc.so.72 libicudata.so.72 libopenblas.so.0 \
           libgfortran.so.5 libquadmath.so.0 \
           libmpi.so.40 libopen-rte.so.40 libopen-pal.so.40 libhwloc.so.15 libevent_core-2.1.so.7 \
           libevent_pthreads-2.1.so.7 libudev.so.1; do  # Open MPI: the CPU backend's collectives (src/dist)
  cp -L "/lib/x86_64-linux-gnu/$lib" "$stage/lib/"
done
# Open MPI's launcher, its components and help texts, and PMIx's: the GPU image has no Open MPI of
# its own for the multi-process tests (gpu_run.sh points OPAL_*/PMIX_* at this relocated copy).
mkdir -p "$stage/mpi/bin" "$stage/mpi/lib" "$stage/mpi/share"
cp -L /usr/bin/orterun "$stage/mpi/bin/mpirun"
cp -r /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3 "$stage/mpi/lib/openmpi3"
cp -r /usr/lib/x86_64-linux-gnu/pmix2/lib/pmix "$stage/mpi/lib/pmix"
cp -r /usr/share/openmpi "$stage/mpi/share/openmpi"
for lib in libpmix.so.2 libmunge.so.2; do cp -L "/lib/x86_64-linux-gnu/$lib" "$stage/lib/"; done
pack "$stage" . .carry/gpu/bundle.tar.xz
rm -rf "$stage"
ls -la .carry/gpu/bundle.tar.xz
