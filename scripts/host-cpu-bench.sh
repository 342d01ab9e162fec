#!/usr/bin/env bash
# Runs on the GPU machine, on its host CPU (no GPU used): `xcomposer bench llm` on SmolLM2-135M Q4_1
# as shipped and on Q4_0, Q8_0 and Q4_K_M made from it by llama-quantize --allow-requantize, beside
# llama-bench's CPU build from ../shared/anchors, 1 and 2 threads, in one run (issue 15 on a second
# kind of CPU). The shipped file (94 MiB) is over the carry limit: it comes as pieces
# (*.gguf.part*) in folders carried by consecutive calls (a warm machine keeps them), joined here
# and checked against the sha256 carried beside the last piece.
#   STEP=build: llama-bench and llama-quantize for this CPU into /tmp/xc-host (GGML_NATIVE, or the
#               CPU's own flags without AMX where it reports AMX: -march=native's AMX kernels died
#               with SIGILL on an earlier machine, README "Benchmarks"), or unpacked from
#               $DIR/llama-bin.tar.xz where that was built for the same flags (STEP=prebuild).
#   STEP=prebuild: here, before the device calls (saves the ~3 device minutes of the build there):
#               the same build for the flags the CPU flags in $CPU_FLAGS imply (default: the AMX
#               Xeon's "avx2 avx512f avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_tile"), packed
#               into $DIR/llama-bin.tar.xz. Same folder as there: the libraries are found by
#               absolute run path.
#   STEP=bench: join, check, quantize, then `bench llm` per file (FILES, default "Q4_1 Q4_0 Q8_0
#               Q4_K_M"; DECODE, default int16; ISA, an optional --cpu-isa).
# $DIR: the folder with xcomposer.xz (scripts/prepare-device.sh); $PARTS: the folders of the pieces.
# Writes under $OUT.
set -uo pipefail
DIR=${DIR:-.device}
OUT=${OUT:-/tmp/host-cpu}
H=/tmp/xc-host
mkdir -p "$OUT" "$H"
LB="$H/llama.cpp/build-cpu/bin"

cpu_summary() {
  lscpu | grep -E "^Model name|^CPU\(s\)|^Thread|^Core|^Socket|^L[23]" | sed 's/  */ /g'
  grep -o -w -E "avx2|avx512f|avx512_vnni|avx_vnni|avx512_bf16|avx512vbmi|amx_tile|amx_int8" /proc/cpuinfo | sort -u | tr '\n' ' '; echo
}

# The llama.cpp cmake flags for a CPU with the flags (words of /proc/cpuinfo) in "$1".
cmake_flags() {
  local has=" $1 " flags="-DGGML_NATIVE=ON"
  if [[ $has == *" amx_tile "* ]]; then
    flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    [[ $has == *" avx512f "* ]] && flags="$flags -DGGML_AVX512=ON"
    [[ $has == *" avx512vbmi "* ]] && flags="$flags -DGGML_AVX512_VBMI=ON"
    [[ $has == *" avx512_vnni "* ]] && flags="$flags -DGGML_AVX512_VNNI=ON"
    [[ $has == *" avx512_bf16 "* ]] && flags="$flags -DGGML_AVX512_BF16=ON"
    [[ $has == *" avx_vnni "* ]] && flags="$flags -DGGML_AVX_VNNI=ON"
  fi
  echo "$flags"
}

# llama-bench and llama-quantize built with the cmake flags "$1" (kept in bin/flags.txt).
build_with() {
  rm -rf "$H/llama.cpp" && tar xJf "$DIR/anchors/llama.cpp.tar.xz" -C "$H" || return 1
  echo "llama.cpp CPU build: $1"
  ( cd "$H/llama.cpp" && cmake -B build-cpu $1 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release \
    && cmake --build build-cpu --target llama-bench llama-quantize -j"$(nproc)" ) > "$OUT/llama-build.log" 2>&1 \
    || { tail -20 "$OUT/llama-build.log"; return 1; }
  echo "$1" > "$LB/flags.txt"
}

build() {
  [ -x "$LB/llama-bench" ] && [ -x "$LB/llama-quantize" ] && return 0
  local flags
  flags=$(cmake_flags "$(grep -m1 "^flags" /proc/cpuinfo | cut -d: -f2)")
  if [ -f "$DIR/llama-bin.tar.xz" ]; then
    mkdir -p "$H/llama.cpp/build-cpu" && tar xJf "$DIR/llama-bin.tar.xz" -C "$H/llama.cpp/build-cpu"
    if [ "$(cat "$LB/flags.txt" 2>/dev/null)" = "$flags" ] && "$LB/llama-bench" --help > /dev/null 2>&1; then
      echo "llama.cpp CPU build: unpacked from $DIR/llama-bin.tar.xz ($flags)"
      return 0
    fi
    echo "$DIR/llama-bin.tar.xz was built for other flags than this CPU's ($flags) or does not run here: building"
  fi
  build_with "$flags"
}

models() {
  local q41="$H/SmolLM2-135M-Instruct.Q4_1.gguf" sum
  if [ ! -f "$q41" ]; then
    sum=$(for d in $PARTS; do cat "$d"/*.sha256 2>/dev/null; done | awk '{print $1}' | head -1)
    [ -n "$sum" ] || { echo "no *.sha256 beside the pieces in PARTS=\"$PARTS\"" >&2; return 1; }
    # The pieces in the order of their names, whichever folder holds each.
    cat $(for d in $PARTS; do ls "$d"/*.gguf.part*; done | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2) > "$q41.tmp"
    [ "$(sha256sum "$q41.tmp" | awk '{print $1}')" = "$sum" ] || { echo "the joined pieces do not match the sha256 $sum" >&2; return 1; }
    mv "$q41.tmp" "$q41"
  fi
  for t in Q4_0 Q8_0 Q4_K_M; do
    [ -f "$H/SmolLM2-135M-Instruct.$t.gguf" ] || "$LB/llama-quantize" --allow-requantize "$q41" "$H/SmolLM2-135M-Instruct.$t.gguf" "$t" > "$OUT/quantize-$t.log" 2>&1 \
      || { tail -5 "$OUT/quantize-$t.log"; return 1; }
  done
}

cpu_summary | tee "$OUT/cpu.txt"
case "${STEP:-bench}" in
  build) build ;;
  prebuild)
    command -v cmake > /dev/null || { echo "prebuild needs cmake here (\`pip install cmake\`)" >&2; exit 1; }
    build_with "$(cmake_flags "${CPU_FLAGS:-avx2 avx512f avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_tile}")" \
      && tar cJf "$DIR/llama-bin.tar.xz" -C "$H/llama.cpp/build-cpu" bin && ls -l "$DIR/llama-bin.tar.xz" ;;
  bench)
    build && models || exit 1
    # Unpacked on every call: a warm machine may hold an earlier call's build.
    xz -dc "$DIR/xcomposer.xz" > "$H/xcomposer" && chmod +x "$H/xcomposer" || exit 1
    for t in ${FILES:-Q4_1 Q4_0 Q8_0 Q4_K_M}; do
      f="$H/SmolLM2-135M-Instruct.$t.gguf"
      echo "## $t, $(du -m "$f" | cut -f1) MiB, load $(cut -d' ' -f1-3 /proc/loadavg)"
      "$H/xcomposer" bench llm --model "$f" --decode "${DECODE:-int16}" ${ISA:+--cpu-isa "$ISA"} --threads 1,2 --runs 3 \
        --llama-bench "$LB/llama-bench" 2> "$OUT/bench-$t.err" | tee "$OUT/bench-$t.md" | grep -E "^\| (xc|ll)|peak"
    done ;;
esac
