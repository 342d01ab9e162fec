#!/usr/bin/env bash
# Runs on the GPU machine: the xcomposer-tiny fixture on --device cuda in f32 and f16 (tokens and
# last-position logits against the reference), then `bench xcomposer` on a random-weight model of
# the real 7B shapes in the original checkpoint format, beside PyTorch. Expects in $DIR:
# xcomposer (built with --features cuda), xcomposer-tiny/ and images/. Writes under $OUT.
set -euo pipefail
DIR=${1:-.device}
PART=${2:-all}   # fixture, bench or all
OUT=${OUT:-/tmp/gpu-xcomposer}
mkdir -p "$OUT"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/cuda/lib64}
BIN="$DIR/xcomposer"
if [ "$PART" != bench ]; then
for run in cpu:f32 cuda:f32 cuda:f16; do
  for mode in beam greedy; do
    extra=(); [ $mode = greedy ] && extra=(--beams 1 --repeat-penalty 1)
    "$BIN" chat --json --device ${run%:*} --dtype ${run#*:} --model "$DIR/xcomposer-tiny" --image "$DIR/images/coffee.png" \
      --max-new-tokens 24 "${extra[@]}" --logits-out "$OUT/logits-${run%:*}-${run#*:}.f32" "Describe this image." > "$OUT/chat-${run%:*}-${run#*:}-$mode.json"
  done
done
python3 - "$DIR/xcomposer-tiny" "$OUT" <<'PY'
import json, struct, sys
d, out = sys.argv[1], sys.argv[2]
raw = open(f"{d}/expected.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n])
h = hdr["coffee.logits_last"]; a, b = h["data_offsets"]; buf = raw[8 + n + a: 8 + n + b]
want = struct.unpack(f"<{len(buf)//4}f", buf)
exp = json.load(open(f"{d}/expected.json"))["cases"]["coffee"]
for run in ("cpu-f32", "cuda-f32", "cuda-f16"):
    lb = open(f"{out}/logits-{run}.f32", "rb").read()
    got = struct.unpack(f"<{len(lb)//4}f", lb)
    beam = json.load(open(f"{out}/chat-{run}-beam.json")); greedy = json.load(open(f"{out}/chat-{run}-greedy.json"))
    same_b = sum(x == y for x, y in zip(beam["generated_ids"], exp["beam"]["new_tokens"]))
    same_g = sum(x == y for x, y in zip(greedy["generated_ids"], exp["greedy"]["new_tokens"]))
    print(f"xcomposer-tiny {run}: logits_last max-abs {max(abs(x - y) for x, y in zip(got, want)):.2e}; beam tokens {same_b}/24 equal, greedy {same_g}/24 equal")
PY
fi
[ "$PART" = fixture ] && exit 0
M=/tmp/xcomposer-7b-random
python3 scripts/make_xcomposer_random.py "$M" "$DIR/xcomposer-tiny/tokenizer.model"
du -sh "$M"
"$BIN" bench xcomposer --model "$M" --device cuda --dtype f16 --torch --new-tokens 128 --runs 10 | tee "$OUT/bench-xcomposer-f16.md"
