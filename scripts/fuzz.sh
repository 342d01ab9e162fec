#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ (issue 13) once, then runs each for SECONDS (default
# 60), one after the other, under the fuzzing bounds: at most 1 GiB of memory (-rss_limit_mb, -malloc_limit_mb) and
# 1 s per input (-timeout). Each target's corpus (fuzz/corpus/TARGET, git-ignored) starts from
# the seed-* files of tests/fuzz-regressions/TARGET (the crash-/leak-/timeout- files there are for
# `cargo test`: the timeout ones exceed 1 s in this sanitized build) and grows from run to run. Prints a Markdown table: target,
# seconds, executions, coverage (cov of libFuzzer's final line), crashes (crash-, oom-, timeout-
# and leak- files libFuzzer left in fuzz/artifacts/TARGET during this run; it stops at the first),
# peak RSS (MiB) and the slowest input (seconds, whole) as libFuzzer's final stats give them.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). TARGETS="gguf torch"
# runs only those.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
FUZZ=(cargo +nightly fuzz)
(cd fuzz && "${FUZZ[@]}" build -O) || exit 1
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
TARGETS=${TARGETS:-$(cd fuzz && "${FUZZ[@]}" list)}
mkdir -p fuzz/logs
# libFuzzer options of one target: tokenizer_text's texts at most 512 bytes (it streams at most 64
# ids; longer texts go down the same paths, only slower).
declare -A EXTRA=([tokenizer_text]="-max_len=512")
ROWS=()
for t in $TARGETS; do
  corpus=fuzz/corpus/$t artifacts=fuzz/artifacts/$t log=fuzz/logs/$t.log
  mkdir -p "$corpus" "$artifacts"
  cp -n tests/fuzz-regressions/"$t"/seed-* "$corpus"/ 2>/dev/null
  before=$(ls "$artifacts" | wc -l)
  echo "== $t: $SECONDS_EACH s (log in $log)" >&2
  # The binary built above, run directly (as `cargo fuzz run` does after its own build): a tree
  # that others change meanwhile is not rebuilt before each target.
  "$BIN/$t" "$corpus" -max_total_time="$SECONDS_EACH" \
    -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=1 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" ${EXTRA[$t]:-} >"$log" 2>&1
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  crashes=$(( $(ls "$artifacts" | wc -l) - before ))
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  slowest=$(grep -o 'stat::slowest_unit_time_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  ROWS+=("| $t | $SECONDS_EACH | ${execs:-?} | ${cov:-?} | $crashes | ${rss:-?} | ${slowest:-?} |")
done
echo "| target | seconds | executions | coverage | crashes | peak RSS MiB | slowest s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
