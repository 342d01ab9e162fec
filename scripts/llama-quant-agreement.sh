#!/usr/bin/env bash
# llama.cpp's own quantization agreement on the SmolLM2 fixture prompts: the reference point for
# the fused engine's `--quant` rows (README, GPU section; issue 20). Here, on the CPU (no GPU
# needed): builds llama-quantize and scripts/llama_greedy.c against the anchor build of
# ../shared/anchors (ensure_llama_bench.sh), makes F16, Q8_0 and Q4_0 GGUFs from the shipped
# Q4_1 file (`--allow-requantize`: dequantized, then quantized as ggml does; Q4_0 also with
# `--pure`, every matrix in Q4_0 as our engine keeps a tied head), and prints for each the fixture
# prompts' greedy ids against the reference and against F16, and the last prompt position's
# logits against F16 and against the fixture's reference logits (max-abs, mean-abs).
set -euo pipefail
cd "$(dirname "$0")/.."
export XC_SCRIPTS=$PWD/scripts
SHARED=${XCOMPOSER_SHARED:-../shared}
MODEL=${MODEL:-${XCOMPOSER_MODELS:-$HOME/.cache/xcomposer/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
W=${W:-/tmp/xc-quant-agreement}
mkdir -p "$W"
bash "$SHARED/anchors/ensure_llama_bench.sh" > /dev/null
L=/tmp/xc-anchors/llama.cpp
command -v cmake > /dev/null || export PATH=/tmp/xc-anchors/venv/bin:$PATH # where ensure_llama_bench.sh puts it
cmake --build "$L/build-cpu" --target llama-quantize llama -j2 > "$W/build.log" 2>&1
cc -O2 -I "$L/include" -I "$L/ggml/include" scripts/llama_greedy.c -L "$L/build-cpu/bin" -lllama -lggml -lggml-base \
  -Wl,-rpath,"$L/build-cpu/bin" -o "$W/llama_greedy"
VARIANTS="F16 Q8_0 Q4_0 Q4_0-pure"
for v in $VARIANTS; do
  [ -f "$W/$v.gguf" ] && continue
  flags=(--allow-requantize); [ "$v" = Q4_0-pure ] && flags+=(--pure)
  "$L/build-cpu/bin/llama-quantize" "${flags[@]}" "$MODEL" "$W/$v.gguf" "${v%-pure}" > "$W/quantize-$v.log" 2>&1
done
python3 - "$SHARED/fixtures/smollm2/expected.json" "$W" $VARIANTS <<'PY'
import json, os, subprocess, sys
sys.path.insert(0, os.environ["XC_SCRIPTS"])
from fixture_agreement import agree, logit_errors, reference_last_logits
cases, w, variants = json.load(open(sys.argv[1]))["cases"], sys.argv[2], sys.argv[3:]
run = lambda v, c: json.loads(subprocess.run([f"{w}/llama_greedy", f"{w}/{v}.gguf", "48", ",".join(map(str, c["prompt_ids"]))],
                                             capture_output=True, text=True, check=True).stdout)
got = {(v, i): run(v, c) for v in variants for i, c in enumerate(cases)}
ref = [reference_last_logits(os.path.join(os.path.dirname(sys.argv[1]), "logits.safetensors"), i) for i in range(len(cases))]
print("| llama.cpp (CPU) | greedy ids equal to the reference | ids equal to F16 (first difference) | last logits vs F16: max-abs / mean-abs | vs the reference (transformers, f32) |")
print("|---|---|---|---|---|")
for v in variants:
    equal = sum(got[v, i]["generated_ids"] == c["greedy_new_ids"] for i, c in enumerate(cases))
    f16 = [f"{agree(got[v, i]['generated_ids'], got['F16', i]['generated_ids'])}/{len(got['F16', i]['generated_ids'])}" for i in range(len(cases))]
    mx, mean = logit_errors([(got[v, i]["logits"], got["F16", i]["logits"]) for i in range(len(cases))])
    rmx, rmean = logit_errors([(got[v, i]["logits"], ref[i]) for i in range(len(cases))])
    print(f"| {v} | {equal}/{len(cases)} cases | {', '.join(f16)} | {mx:.3f} / {mean:.4f} | {rmx:.2e} / {rmean:.2e} |")
PY
