#!/usr/bin/env bash
# Runs on the GPU machine: the fused CUDA engine's checks, then its benchmarks beside PyTorch and
# llama.cpp in one run. $DIR (carried, git-ignored) holds xcomposer.xz and cuda_engine.xz
# (stripped, xz-compressed builds with --features cuda; scripts/prepare-device.sh makes the folder), xcomposer-tiny.tar.xz (the fixture),
# images/, and anchors/ (a copy of ../shared/anchors) for the llama.cpp rows. Writes under $OUT.
#   PART=check:  the engine's kernel tests against burn's CPU decoder, and the xcomposer-tiny fixture
#                on --device cuda (f32 and f16: logits, greedy and beam tokens against the reference).
#   PART=engine: `bench engine` (random 7B-shaped weights made in memory; f16, and quantized at
#                load to Q4_0 and Q8_0) beside PyTorch eager and llama-bench on an f16 and a Q4_0
#                GGUF of the same decoder shape (ENGINE_QUANTS=q4_0 for one format, TORCH=0 without
#                PyTorch, to fit a shorter call). PART=all: check, then engine.
#   PART=bench:  `bench xcomposer` on a random 7B checkpoint in the original format (load time,
#                image encode, the whole model) with the same anchors.
#   PART=compose: `bench compose --xcomposer` on that checkpoint, f16 then --quant q4_0 (QUANTS="f16"
#                or "q4_0" for one; each loads the checkpoint, about 2 minutes): wall time
#                per stage of a whole article, every text stage on the 7B model, images chosen from
#                the carried default library ($DIR/library, with its index) by CLIP alone
#                ($DIR/clip-tiny), so no other model is needed (nothing is fetched).
#   PART=load:   the random 7B checkpoint loaded by `bench xcomposer` twice (the first compiles the
#                kernels and caches their PTX, the second reads them back; LOAD_PASSES=1 for the
#                first only), no anchors; then PART=edit.
#   PART=edit:   an article composed with --xcomposer on the GPU (f16, CLIP alone from $DIR/clip-tiny,
#                the carried library), then `edit recaption 0` and `edit add 1` on it, on the GPU too.
#   PART=encoder: the image encoders on the CUDA encoder runtime: their tests against the
#                reference outputs of xcomposer-tiny and clip-tiny (f32 and f16), the xcomposer-tiny
#                fixture on --device cuda (its image now encoded there), `eval` on the tiny data
#                sets on cpu and cuda (predictions compared), then `bench clip` on a
#                random CLIP ViT-L/14 beside PyTorch (f16, batches 1, 32, 128) and `bench xcomposer`
#                on the random 7B (image encode beside PyTorch; ENCODER_7B=0 skips it, ENCODER_BENCH=0
#                skips both benchmarks).
#   PART=attention: the encoder's kernels (attention, norms, element-wise) and the KV-cache length
#                against the host, the encoder parity tests, `bench clip` ViT-L/14 f16 with the
#                fused attention and the batched products (and where
#                batch 128's time goes, XC_ENCODER_PROFILE, for each of $PROFILES), then `bench
#                engine --quant q4_0 --max-context 1024` for its memory (ATTENTION_ENGINE=0 skips it).
#   PART=smollm2: `bench engine --shape smollm2` (the default text model's shape, random weights)
#                beside llama-bench on a random f16 GGUF of that shape (scripts/write_random_gguf.py).
#   PART=split:  the model split across GPUs (--devices, burn's operations): xcomposer-tiny's greedy
#                and 5-beam answers on one GPU against split across every GPU (cuda:0,cuda:0 on a
#                machine of one), f32; then `bench xcomposer` on the random 7B (f16, burn) on 1, 2
#                and 4 GPUs where there are that many (SPLIT_TOKENS new tokens, default 32, 2 runs).
set -uo pipefail
DIR=${DIR:-.device}
PART=${PART:-engine}
OUT=${OUT:-/tmp/gpu-engine}
W=/tmp/xc-engine
mkdir -p "$OUT" "$W"
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/cuda/lib64}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for b in xcomposer cuda_engine cuda_visual cuda_clip; do
  [ -f "$DIR/$b.xz" ] && xz -dc "$DIR/$b.xz" > "$W/$b" && chmod +x "$W/$b"
done
[ -d "$W/xcomposer-tiny" ] || [ ! -f "$DIR/xcomposer-tiny.tar.xz" ] || tar xJf "$DIR/xcomposer-tiny.tar.xz" -C "$W"
# The random 7B takes its tokenizer from the fixture, or from $DIR/tokenizer.model when the
# fixture is left behind to make room in the carry.
TOKENIZER="$W/xcomposer-tiny/tokenizer.model"; [ -f "$DIR/tokenizer.model" ] && TOKENIZER="$DIR/tokenizer.model"
BIN="$W/xcomposer"

# llama.cpp builds in the background while the checks run.
A="$W/anchors"
if [ "$PART" != check ] && [ "$PART" != compose ] && [ "$PART" != load ] && [ "$PART" != edit ] && [ "$PART" != split ] && [ -d "$DIR/anchors" ] && [ ! -x "$A/llama.cpp/build/bin/llama-bench" ]; then
  mkdir -p "$A" && cp -r "$DIR/anchors/." "$A/" && tar xJf "$A/llama.cpp.tar.xz" -C "$A"
  ( cd "$A/llama.cpp" && cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release \
    && cmake --build build --target llama-bench llama-quantize -j12 ) > "$OUT/llama-build.log" 2>&1 &
  BUILD=$!
fi

if [ "$PART" = check ] || [ "$PART" = all ]; then
  echo "== kernel tests (engine vs burn's CPU decoder)"
  "$W/cuda_engine" --test-threads 1 --nocapture 2>&1 | tee "$OUT/cuda_engine.log" | grep -E "rel. error|test result|panicked|FAILED|ok$" | tail -20
  echo "== xcomposer-tiny fixture on the fused engine"
  mkdir -p "$W/dev" && ln -sfn "$W/xcomposer-tiny" "$W/dev/xcomposer-tiny" && ln -sfn "$(realpath "$DIR/images")" "$W/dev/images" && cp "$BIN" "$W/dev/xcomposer"
  OUT="$OUT" bash scripts/gpu-xcomposer.sh "$W/dev" fixture 2>&1 | grep "^xcomposer-tiny"
fi
[ "$PART" = check ] && exit 0


M=/tmp/xcomposer-7b-random
random_7b() {
  [ -f "$M/config.json" ] || python3 scripts/make_xcomposer_random.py "$M" "$TOKENIZER" > "$OUT/make7b.log" 2>&1
}
library_models() {
  for d in library/.xcomposer/index.json clip-tiny/config.json; do
    [ -f "$DIR/$d" ] || { echo "$DIR/$d is missing: scripts/prepare-device.sh carries it" >&2; exit 1; }
  done
  # A models folder holding only the default library (a writable copy: CLIP's features go into its index).
  export XCOMPOSER_MODELS="$W/models"
  rm -rf "$XCOMPOSER_MODELS/library" && mkdir -p "$XCOMPOSER_MODELS" && cp -r "$DIR/library" "$XCOMPOSER_MODELS/library"
}
if [ "$PART" = attention ]; then
  echo "== the encoder's attention (fused tensor-core kernel and batched products) and a shorter KV cache, against the host"
  "$W/cuda_engine" encoder_ a_shorter_kv_cache --test-threads 1 --nocapture 2>&1 | tee "$OUT/attention.log" | grep -E "^attention|^bias_act|^layer_norm|^residual_add_norm|test result|panicked|FAILED"
  mkdir -p "$W/shared/fixtures" && ln -sfn "$W/xcomposer-tiny" "$W/shared/fixtures/xcomposer-tiny" && ln -sfn "$(realpath "$DIR/clip-tiny")" "$W/shared/fixtures/clip-tiny"
  for t in cuda_visual cuda_clip; do
    [ -x "$W/$t" ] && XCOMPOSER_SHARED="$W/shared" "$W/$t" --test-threads 1 --nocapture 2>&1 | tee "$OUT/$t.log" | grep -E "max-abs|test result|panicked|FAILED" | tail -8
  done
  [ -f /tmp/clip-L14/config.json ] || python3 scripts/bench_clip_torch.py make L/14 /tmp/clip-L14 > "$OUT/clip-make.log" 2>&1
  echo "== bench clip, random ViT-L/14, f16: fused attention (default), with PyTorch"
  "$BIN" bench clip --model /tmp/clip-L14 --device cuda --dtype f16 --batches 1,32,128 --runs 10 --torch 2> "$OUT/bench-clip.err" | tee "$OUT/bench-clip.md"
  for mode in batched; do
    echo "== the same with XC_ENCODER_ATTENTION=$mode"
    XC_ENCODER_ATTENTION=$mode "$BIN" bench clip --model /tmp/clip-L14 --device cuda --dtype f16 --batches 1,32,128 --runs 10 2> "$OUT/bench-clip-$mode.err" | tee "$OUT/bench-clip-$mode.md"
  done
  for mode in ${PROFILES:-fused batched}; do
    echo "== where batch 128's time goes ($mode attention; each part synchronised)"
    XC_ENCODER_PROFILE=1 XC_ENCODER_ATTENTION=$mode "$BIN" bench clip --model /tmp/clip-L14 --device cuda --dtype f16 --batches 128 --runs 3 2>&1 >/dev/null | sed -n '/encoder profile/,$p' | tee "$OUT/profile-$mode.md"
  done
  echo "== where PyTorch's batch 128 goes (torch.profiler)"
  python3 scripts/bench_clip_torch.py profile /tmp/clip-L14 128 2>&1 | tee "$OUT/profile-torch.md" | head -24
  if [ "${ATTENTION_ENGINE:-1}" = 1 ]; then
    echo "== bench engine, Q4_0, KV cache of 1,024 positions (memory)"
    "$BIN" bench engine --dtype f16 --quant q4_0 --max-context 1024 --runs 1 --new-tokens 32 2> "$OUT/engine.err" | tee "$OUT/engine.md" | grep -E "^\\| engine|^\\| xcomposer|positions"
  fi
  exit 0
fi
if [ "$PART" = encoder ]; then
  echo "== encoder tests (CUDA encoder runtime vs the reference outputs)"
  mkdir -p "$W/shared/fixtures" && ln -sfn "$W/xcomposer-tiny" "$W/shared/fixtures/xcomposer-tiny" && ln -sfn "$(realpath "$DIR/clip-tiny")" "$W/shared/fixtures/clip-tiny"
  for t in cuda_visual cuda_clip; do
    XCOMPOSER_SHARED="$W/shared" "$W/$t" --test-threads 1 --nocapture 2>&1 | tee "$OUT/$t.log" | grep -E "max-abs|test result|panicked|FAILED" | tail -8
  done
  echo "== xcomposer-tiny fixture on --device cuda (image encoded on the GPU)"
  mkdir -p "$W/dev" && ln -sfn "$W/xcomposer-tiny" "$W/dev/xcomposer-tiny" && ln -sfn "$(realpath "$DIR/images")" "$W/dev/images" && cp "$BIN" "$W/dev/xcomposer"
  OUT="$OUT" bash scripts/gpu-xcomposer.sh "$W/dev" fixture 2>&1 | grep "^xcomposer-tiny"
  echo "== xcomposer eval on the tiny data sets: cpu f32, cuda f32 and f16 (the same answers expected in f32)"
  T=crates/eval/tests/fixtures/tiny
  for run in cpu:f32 cuda:f32 cuda:f16; do
    for b in "mme --data $T/mme" "mmbench --data $T/mmbench/mmbench_tiny.tsv" "ccbench --data $T/ccbench/ccbench_tiny.tsv" "seed --data $T/seed/images --questions $T/seed/SEED-Bench.json"; do
      name=${b%% *}; o="$W/eval-${run/:/-}/$name"; rm -rf "$o"; mkdir -p "$(dirname "$o")"
      "$BIN" eval $b --model "$W/xcomposer-tiny" --device ${run%:*} --dtype ${run#*:} --out "$o" > "$o.log" 2>&1 || tail -3 "$o.log"
    done
  done
  python3 - "$W" <<'PY'
import json, sys, os
w = sys.argv[1]
def answers(run, b):
    p = f"{w}/eval-{run}/{b}/predictions.jsonl"
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
for b in ("mme", "mmbench", "ccbench", "seed"):
    cpu = answers("cpu-f32", b)
    for run in ("cuda-f32", "cuda-f16"):
        got = answers(run, b)
        key = lambda r: (r["id"], r["prediction"], r.get("sequence"))
        same = sum(key(a) == key(c) for a, c in zip(got, cpu))
        dl = max((abs(x - y) for a, c in zip(got, cpu) for x, y in zip(a.get("losses", []), c.get("losses", []))), default=0.0)
        print(f"eval {b} {run}: {same}/{len(cpu)} answers (text and ids) equal to the CPU's ({len(got)} written); SEED losses max-abs {dl:.1e}")
PY
  [ "${ENCODER_BENCH:-1}" = 0 ] && exit 0
  echo "== bench clip, random ViT-L/14, f16"
  [ -f /tmp/clip-L14/config.json ] || python3 scripts/bench_clip_torch.py make L/14 /tmp/clip-L14 > "$OUT/clip-make.log" 2>&1
  "$BIN" bench clip --model /tmp/clip-L14 --device cuda --dtype f16 --batches 1,32,128 --runs 10 --torch 2> "$OUT/bench-clip.err" | tee "$OUT/bench-clip.md"
  tail -2 "$OUT/bench-clip.err"
  if [ "${ENCODER_7B:-1}" = 1 ]; then
    random_7b
    echo "== bench xcomposer, random 7B, f16 (image encode on the CUDA encoder)"
    "$BIN" bench xcomposer --model "$M" --device cuda --dtype f16 --torch --runs 10 --new-tokens 32 2> "$OUT/bench.err" | tee "$OUT/bench-xcomposer.md"
    tail -3 "$OUT/bench.err"
  fi
  # llama.cpp (started above when anchors are carried) is left built for a following call.
  [ -n "${BUILD:-}" ] && wait "$BUILD"
  exit 0
fi
if [ "$PART" = load ]; then
  random_7b
  export XCOMPOSER_KERNELS="$W/kernels" && rm -rf "$XCOMPOSER_KERNELS"
  passes=("no cached kernels" "kernels from the PTX cache"); [ "${LOAD_PASSES:-2}" = 1 ] && passes=("${passes[0]}")
  for pass in "${passes[@]}"; do
    echo "== bench xcomposer on the random 7B, $pass"
    "$BIN" bench xcomposer --model "$M" --device cuda --dtype f16 --runs 1 --new-tokens 16 2> "$OUT/load.err" | grep "loaded in"
  done
  PART=edit
fi
if [ "$PART" = edit ]; then
  random_7b
  library_models
  ART="$W/article-gpu"
  GPU=(--xcomposer "$M" --device cuda --dtype f16 --clip "$DIR/clip-tiny")
  echo "== compose and edit on the GPU, random 7B, f16"
  "$BIN" compose "Write an illustrated article about the history of coffee." --images 2 --out "$ART" --force "${GPU[@]}" > "$OUT/compose.log" 2>&1 || tail -5 "$OUT/compose.log"
  cp "$ART/article.json" "$OUT/article-before.json"
  "$BIN" edit "$ART/article.json" "${GPU[@]}" recaption 0 > "$OUT/edit-recaption.log" 2>&1 || tail -5 "$OUT/edit-recaption.log"
  "$BIN" edit "$ART/article.json" "${GPU[@]}" add 1 > "$OUT/edit-add.log" 2>&1 || tail -5 "$OUT/edit-add.log"
  cp "$ART/article.json" "$OUT/article-after.json"
  python3 - "$OUT/article-before.json" "$OUT/article-after.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print(f"before: {len(a['images'])} images; after recaption 0 and add 1: {len(b['images'])} images")
for tag, x in (("before", a), ("after", b)):
    for s in x["images"]:
        print(f"  {tag}: after paragraph {s['after_paragraph']}, caption {s['caption'][:60]!r} (by {s['caption_source'].get('by')}), chosen {s['chosen']} of {len(s['candidates'])}")
PY
  grep -h "loaded\|\[edit\]\|error" "$OUT/edit-recaption.log" "$OUT/edit-add.log" | head -8
  exit 0
fi
if [ "$PART" = compose ]; then
  random_7b
  library_models
  for q in ${QUANTS:-f16 q4_0}; do
    QUANT=(); [ "$q" = f16 ] || QUANT=(--quant "$q")
    echo "== bench compose --xcomposer, random 7B, $q"
    "$BIN" bench compose --xcomposer "$M" --device cuda --dtype f16 "${QUANT[@]}" --clip "$DIR/clip-tiny" --runs 3 --threads 16 \
      2> "$OUT/bench-compose-$q.err" | tee "$OUT/bench-compose-$q.md"
    tail -3 "$OUT/bench-compose-$q.err"
  done
  exit 0
fi

if [ "$PART" = split ]; then
  NG=$(nvidia-smi --list-gpus | wc -l)
  LIST=$(seq -s, -f 'cuda:%g' 0 $((NG - 1))); [ "$NG" -ge 2 ] || LIST=cuda:0,cuda:0
  echo "== xcomposer-tiny on one GPU and split across $LIST (burn, f32)"
  IMG="$(realpath "$DIR/images")/coffee.png"
  for beams in 1 5; do
    for where in "--device cuda" "--devices $LIST"; do
      # shellcheck disable=SC2086
      "$BIN" chat --model "$W/xcomposer-tiny" --image "$IMG" --max-new-tokens 24 --beams $beams --json --engine burn $where \
        "Describe this image." > "$OUT/split-$beams-${where%% *}.json" 2> "$OUT/split-$beams-${where%% *}.err" || tail -3 "$OUT/split-$beams-${where%% *}.err"
    done
    python3 - "$OUT/split-$beams---device.json" "$OUT/split-$beams---devices.json" "$beams" <<'PY'
import json, sys
one, split = (json.load(open(p))["generated_ids"] for p in sys.argv[1:3])
print(f"beams {sys.argv[3]}: {'the same' if one == split else 'DIFFERENT'} tokens ({len(one)} on one GPU, {len(split)} split)")
PY
  done
  grep -h "device [0-9]:" "$OUT/split-1---devices.err"
  random_7b
  for n in 1 2 4; do
    [ "$n" -le "$NG" ] || continue
    WHERE=(--device cuda); [ "$n" = 1 ] || WHERE=(--devices "$(seq -s, -f 'cuda:%g' 0 $((n - 1)))")
    echo "== bench xcomposer, random 7B, burn f16 on $n GPU(s)"
    "$BIN" bench xcomposer --model "$M" --engine burn --dtype f16 "${WHERE[@]}" --new-tokens "${SPLIT_TOKENS:-32}" --runs 2 --beams 0 \
      2> "$OUT/bench-split-$n.err" | tee "$OUT/bench-split-$n.md"
    grep "device [0-9]:" "$OUT/bench-split-$n.err"
  done
  echo "== the fused engine on one GPU, for comparison"
  "$BIN" bench xcomposer --model "$M" --device cuda --dtype f16 --new-tokens "${SPLIT_TOKENS:-32}" --runs 2 --beams 0 2> "$OUT/bench-split-fused.err" | tee "$OUT/bench-split-fused.md"
  exit 0
fi
if [ "$PART" = smollm2 ]; then
  [ -n "${BUILD:-}" ] && wait "$BUILD"
  LB="$A/llama.cpp/build/bin"
  [ -f /tmp/smollm2-f16.gguf ] || PYTHONPATH="$A/llama.cpp/gguf-py" python3 scripts/write_random_gguf.py smollm2 /tmp/smollm2-f16.gguf > "$OUT/gguf-smollm2.log" 2>&1
  echo "== engine at the SmolLM2-135M shape, beside llama.cpp on a GGUF of the same shape"
  "$BIN" bench engine --shape smollm2 --dtype f16 --runs 5 --llama-bench "$LB/llama-bench" --gguf /tmp/smollm2-f16.gguf 2> "$OUT/smollm2.err" | tee "$OUT/bench-smollm2.md"
  tail -2 "$OUT/smollm2.err"
  exit 0
fi

LLAMA=()
if [ -d "$A" ]; then
  [ -f /tmp/m-f16.gguf ] || PYTHONPATH="$A/llama.cpp/gguf-py" python3 "$A/gpu/write_gguf.py" /tmp/m-f16.gguf > "$OUT/gguf.log" 2>&1
  [ -n "${BUILD:-}" ] && wait "$BUILD"
  LB="$A/llama.cpp/build/bin"
  [ -f /tmp/m-q4.gguf ] || "$LB/llama-quantize" /tmp/m-f16.gguf /tmp/m-q4.gguf Q4_0 16 > "$OUT/quant.log" 2>&1
  LLAMA=(--llama-bench "$LB/llama-bench" --gguf /tmp/m-f16.gguf --gguf /tmp/m-q4.gguf)
fi
if [ "$PART" = engine ] || [ "$PART" = all ]; then
  echo "== engine on random 7B-shaped weights, beside PyTorch and llama.cpp"
  TORCH_ARG=(--torch); [ "${TORCH:-1}" = 0 ] && TORCH_ARG=()
  "$BIN" bench engine --dtype f16 --quant "${ENGINE_QUANTS:-q4_0,q8_0}" --runs 5 "${TORCH_ARG[@]}" "${LLAMA[@]}" 2> "$OUT/engine.err" | tee "$OUT/bench-engine.md"
  tail -2 "$OUT/engine.err"
else
  random_7b
  "$BIN" bench xcomposer --model "$M" --device cuda --dtype f16 --torch --runs 5 --new-tokens 128 "${LLAMA[@]}" 2> "$OUT/bench.err" | tee "$OUT/bench-xcomposer.md"
  tail -3 "$OUT/bench.err"
fi
