#!/usr/bin/env bash
# Runs on the GPU machine: clip-tiny parity on --device cuda (f32, f16) against the reference logits,
# then `bench clip` (burn-cuda f32/f16 beside PyTorch transformers) on random-weight ViT-B/32 and
# ViT-L/14 of the real shapes. Expects in $DIR: xcomposer (built with --features cuda) and
# clip-tiny/ + images/ (the fixture). Writes outputs under $OUT.
set -euo pipefail
DIR=${1:-.device}
OUT=${OUT:-/tmp/gpu-clip}
mkdir -p "$OUT"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/cuda/lib64}
BIN="$DIR/xcomposer"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
args=()
for im in chelsea cell logo; do args+=(--image "$DIR/images/$im.png"); done
caps=$(python3 -c "import json; print(json.dumps(json.load(open('$DIR/clip-tiny/expected.json'))['captions']))")
while IFS= read -r c; do args+=(--text "$c"); done < <(python3 -c "import json,sys; [print(c) for c in json.loads(sys.argv[1])]" "$caps")
for run in cpu:f32 cuda:f32 cuda:f16; do
  "$BIN" clip embed --json --device ${run%:*} --dtype ${run#*:} --model "$DIR/clip-tiny" "${args[@]}" > "$OUT/clip-tiny-${run%:*}-${run#*:}.json"
done
python3 - "$DIR/clip-tiny" "$OUT" <<'PY'
import json, struct, sys
d, out = sys.argv[1], sys.argv[2]
raw = open(f"{d}/expected.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
def tensor(name):
    h = hdr[name]; a, b = h["data_offsets"]; buf = raw[8 + n + a: 8 + n + b]
    return [struct.unpack_from("<f", buf, 4 * i)[0] for i in range(len(buf) // 4)], h["shape"]
want, shape = tensor("logits_per_image")
emb, _ = tensor("image_embeds")
for dev in ("cpu-f32", "cuda-f32", "cuda-f16"):
    g = json.load(open(f"{out}/clip-tiny-{dev}.json"))
    got = [x for row in g["logits_per_image"] for x in row]
    ge = [x for im in g["images"] for x in im["embedding"]]
    print(f"clip-tiny {dev}: logits max-abs {max(abs(a - b) for a, b in zip(got, want)):.2e}, image embeds max-abs {max(abs(a - b) for a, b in zip(ge, emb)):.2e}")
PY
for arch in B/32 L/14; do
  name=$(echo "$arch" | tr -d /)
  python3 scripts/bench_clip_torch.py make "$arch" "/tmp/clip-$name"
  for dt in f32 f16; do
    "$BIN" bench clip --model "/tmp/clip-$name" --device cuda --dtype $dt --torch --batches 1,32,128 --runs 10 | tee "$OUT/bench-$name-$dt.md"
  done
done
