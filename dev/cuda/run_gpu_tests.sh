#!/usr/bin/env bash
# Runs a test_gpu_ops binary built on the development machine (carried in .carry/cuda with the
# shared libraries the GPU machine's image lacks) on the GPU machine; everything goes to $OUT.
#   usage (GPU machine, repository root): dev/cuda/run_gpu_tests.sh [extra gtest flags]
set -uo pipefail
dir=.carry/cuda
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
# cuDNN comes with the image's PyTorch wheels; the CUDA toolkit's own libraries from /usr/local/cuda.
# cuBLASLt from the toolkit, else from the wheels too.
cudnn=$(find / -name 'libcudnn.so.9' -not -path '/proc/*' 2>/dev/null | head -1)
cublaslt=$(ls /usr/local/cuda/lib64/libcublasLt.so.13 2>/dev/null ||
           find / -name 'libcublasLt.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$dir/lib:${cudnn%/*}:${cublaslt%/*}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
{ nvidia-smi; echo "cudnn: $cudnn"; echo "cublasLt: $cublaslt"; ldd "$dir/test_gpu_ops"; } > "$out/env.txt" 2>&1
"$dir/test_gpu_ops" "$@" 2>&1 | tee "$out/test_gpu_ops.log"
