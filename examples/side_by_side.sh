#!/usr/bin/env bash
# Runs finetune_hf.py and finetune_moeforge.py on the same model folder and the same data, one after
# the other, and prints each one's result line (train and eval loss, steps, seconds).
#   examples/side_by_side.sh MODEL_DIR DATA.jsonl [MAX_STEPS] [OUT_DIR]
# Without MODEL_DIR/DATA (pass "demo" for both) it makes them with the moeforge binary in $MOEFORGE
# (default: moeforge on PATH): `moeforge demo --max-steps 1` writes a small Qwen3-MoE folder with its
# tokenizer and a chat dataset. Needs torch + transformers for the Hugging Face side and moeforge
# importable (pip install ., or PYTHONPATH=<build>/python/bindings:python).
set -euo pipefail
model=${1:?MODEL_DIR or demo}
data=${2:?DATA.jsonl or demo}
steps=${3:-50}
out=${4:-side-by-side}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
if [[ $model == demo || $data == demo ]]; then
  "${MOEFORGE:-moeforge}" demo --max-steps 1 --eval-questions 1 --output-dir "$out/demo" > "$out/demo.log" 2>&1
  model=$out/demo/base-model
  data=$out/demo/train.jsonl
fi
for impl in hf moeforge; do
  result=$(python3 "$here/finetune_$impl.py" --model "$model" --data "$data" --max_steps "$steps" \
             --output_dir "$out/$impl" 2> "$out/$impl.log" | tail -n 1)
  echo "$impl: $result (log: $out/$impl.log)"
done
