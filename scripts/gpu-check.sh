#!/usr/bin/env bash
# Runs on the GPU machine: SmolLM2-135M (the default model) through `xcomposer generate --device
# cuda`: the fixture prompts' greedy ids against the reference on the fused engine (f32, f16) and
# on burn-cuda (--engine burn), token agreement of --quant q8_0 / q4_0 with f16, and decode
# tokens/s of each on a 256-token raw continuation, and each variant's logits of the prompts' last
# position (`generate --logits`) against fused f16's and the reference's; with LLAMA_BENCH,
# llama-bench on the same file.
# $1: a folder with xcomposer (built with --features cuda, plain or .xz), the model .gguf (or
# its pieces *.gguf.part*, joined here) and the fixture's expected.json and logits.safetensors.
# Writes under $OUT.
set -uo pipefail
export XC_SCRIPTS=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-.device}
OUT=${OUT:-/tmp/gpu-check}
W=/tmp/xc-check
mkdir -p "$OUT" "$W"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/cuda/lib64}
BIN="$DIR/xcomposer"
[ -f "$DIR/xcomposer.xz" ] && { xz -dc "$DIR/xcomposer.xz" > "$W/xcomposer" && chmod +x "$W/xcomposer"; BIN="$W/xcomposer"; }
MODEL=$(ls "$DIR"/*.gguf 2>/dev/null | head -1)
if [ -z "$MODEL" ]; then
  MODEL="$W/model.gguf"
  cat $(ls "$DIR"/*.gguf.part* | sort) > "$MODEL"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
VARIANTS="fused-f32:--dtype=f32 fused-f16:--dtype=f16 fused-q8_0:--dtype=f16,--quant=q8_0 fused-q4_0:--dtype=f16,--quant=q4_0 burn-f32:--engine=burn,--dtype=f32"
n=$(python3 -c "import json; print(len(json.load(open('$DIR/expected.json'))['cases']))")
for v in $VARIANTS; do
  name=${v%%:*}; IFS=, read -r -a flags <<< "${v#*:}"
  for i in $(seq 0 $((n - 1))); do
    msg=$(python3 -c "import json; print(json.load(open('$DIR/expected.json'))['cases'][$i]['user_message'])")
    rm -f "$OUT/$name-$i.logits.json"
    "$BIN" generate --model "$MODEL" --device cuda "${flags[@]}" --json --max-new-tokens 48 --logits "$OUT/$name-$i.logits.json" "$msg" > "$OUT/$name-$i.json" 2> "$OUT/$name-$i.log"
  done
  "$BIN" generate --model "$MODEL" --device cuda "${flags[@]}" --raw --max-new-tokens 256 "Once upon a time, in a small village by the sea," > /dev/null 2> "$OUT/$name-speed.log"
  echo "$name: $(grep -o 'decode [0-9.]* t/s' "$OUT/$name-speed.log" | tail -1) ($(grep -o '[0-9]* new tokens' "$OUT/$name-speed.log" | tail -1)); $(grep -o 'loaded .* in [0-9.]* s' "$OUT/$name-speed.log" | tail -1)"
done
python3 - "$DIR/expected.json" "$DIR/logits.safetensors" "$OUT" $VARIANTS <<'PY'
import json, os, sys
sys.path.insert(0, os.environ["XC_SCRIPTS"])
from fixture_agreement import agree, logit_errors, reference_last_logits
exp = json.load(open(sys.argv[1]))["cases"]
out, names = sys.argv[3], [v.split(":")[0] for v in sys.argv[4:]]
got = {(n, i): json.load(open(f"{out}/{n}-{i}.json")) for n in names for i in range(len(exp))}
logits = {(n, i): json.load(open(f"{out}/{n}-{i}.logits.json")) for n in names for i in range(len(exp))}
ref = [reference_last_logits(sys.argv[2], i) for i in range(len(exp))] if os.path.exists(sys.argv[2]) else None
print("| variant | prompt ids | greedy ids equal to the reference | ids equal to fused f16 (first difference) | last logits vs fused f16: max-abs / mean-abs | vs the reference (transformers, f32) |")
print("|---|---|---|---|---|---|")
for n in names:
    prompt = all(got[n, i]["prompt_ids"] == c["prompt_ids"] for i, c in enumerate(exp))
    equal = sum(got[n, i]["generated_ids"] == c["greedy_new_ids"] for i, c in enumerate(exp))
    f16 = [f"{agree(got[n, i]['generated_ids'], got['fused-f16', i]['generated_ids'])}/{len(got['fused-f16', i]['generated_ids'])}" for i in range(len(exp))]
    vs16 = "–" if n == "fused-f16" else "%.3f / %.4f" % logit_errors([(logits[n, i], logits["fused-f16", i]) for i in range(len(exp))])
    vsref = "%.2e / %.2e" % logit_errors([(logits[n, i], ref[i]) for i in range(len(exp))]) if ref else "–"
    print(f"| {n} | {'match' if prompt else 'DIFFER'} | {equal}/{len(exp)} cases | {', '.join(f16)} | {vs16} | {vsref} |")
PY
# With LLAMA_BENCH (a llama-bench built with CUDA): llama.cpp on the same GGUF in the same run,
# beside the decode rates above (ours over a 256-token generate, prompt and detokenizing included).
if [ -n "${LLAMA_BENCH:-}" ]; then
  "$LLAMA_BENCH" -m "$MODEL" -p 512 -n 128 -ngl 99 -fa 1 -r 5 -o json > "$OUT/llama-bench.json" 2> "$OUT/llama-bench.err" || tail -3 "$OUT/llama-bench.err"
  python3 - "$OUT/llama-bench.json" "$OUT" $VARIANTS <<'PY'
import json, re, sys
rows = json.load(open(sys.argv[1]))
out, names = sys.argv[2], [v.split(":")[0] for v in sys.argv[3:]]
tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
print(f"llama.cpp on the same GGUF ({rows[0].get('model_type', '?')}): pp512 {pp:.0f} t/s, tg128 {tg:.1f} t/s")
print("| variant | decode t/s | vs llama.cpp tg128 |")
print("|---|---|---|")
for n in names:
    m = re.findall(r"decode ([0-9.]+) t/s", open(f"{out}/{n}-speed.log").read())
    if m:
        print(f"| {n} | {float(m[-1]):.1f} | {float(m[-1]) / tg:.2f}× |")
PY
fi
