#!/usr/bin/env bash
# Runs on the GPU machine: greedy parity of `--device cuda` against `--device cpu` and the
# reference ids on the SmolLM2 fixture prompts, then the decode/prefill benchmark on CUDA.
# Expects in $DIR: xcomposer (built with --features cuda), the model .gguf, expected.json.
# Prints a summary; writes the raw outputs under $OUT when set.
set -euo pipefail
DIR=${1:-.device}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/cuda/lib64}
BIN="$DIR/xcomposer"
MODEL=$(ls "$DIR"/*.gguf)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
n=$(python3 -c "import json,sys; print(len(json.load(open('$DIR/expected.json'))['cases']))")
for i in $(seq 0 $((n - 1))); do
  msg=$(python3 -c "import json; print(json.load(open('$DIR/expected.json'))['cases'][$i]['user_message'])")
  for dev in cpu cuda; do
    "$BIN" generate --model "$MODEL" --device $dev --json --max-new-tokens 48 "$msg" > "$OUT/$dev-$i.json" 2> "$OUT/$dev-$i.log"
    tail -n 1 "$OUT/$dev-$i.log"
  done
done
python3 - "$DIR/expected.json" "$OUT" <<'PY'
import json, sys
exp = json.load(open(sys.argv[1]))
ok = True
for i, c in enumerate(exp["cases"]):
    for dev in ("cpu", "cuda"):
        got = json.load(open(f"{sys.argv[2]}/{dev}-{i}.json"))
        same_prompt = got["prompt_ids"] == c["prompt_ids"]
        same = got["generated_ids"] == c["greedy_new_ids"]
        ok &= same and same_prompt
        print(f"case {i} {dev}: prompt ids {'match' if same_prompt else 'DIFFER'}, "
              f"{len(got['generated_ids'])} greedy ids {'match' if same else 'DIFFER'} the reference")
print("GPU PARITY", "OK" if ok else "FAILED")
PY
"$BIN" bench llm --model "$MODEL" --device cuda --no-llama-cpp --runs 3 | tee "$OUT/bench-cuda.txt"
