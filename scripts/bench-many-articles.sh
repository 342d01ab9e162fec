#!/usr/bin/env bash
# Benchmark of many articles (not a test): articles per minute with 1, 2 and 4 `xcomposer worker`s
# on one Redis Streams queue with the default models, and the queue's overhead per job
# (submit -> start, ack -> visible). Needs redis-server and a built target/debug/xcomposer.
#   JOBS=8 TOKENS=24 bash scripts/bench-many-articles.sh
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XCOMPOSER:-target/debug/xcomposer}
JOBS=${JOBS:-8}
TOKENS=${TOKENS:-24}
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=redis://127.0.0.1:$port
redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp" --appendonly yes --save "" --daemonize no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; rm -rf "$tmp"' EXIT
until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; do sleep 0.1; done
topics=(owls coffee trains bread rivers bees kites tea maps snow lighthouses gardens)
jobs() { # $1: id prefix, $2: count
  local i
  for ((i = 0; i < $2; i++)); do
    printf '{"id": "%s%02d", "instruction": "Write one paragraph about %s.", "max_new_tokens": %d, "images": 1, "seed": %d}\n' "$1" "$i" "${topics[i % ${#topics[@]}]}" "$TOKENS" "$i"
  done
}
echo "# $JOBS articles (max_new_tokens $TOKENS, 1 image) per run; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| workers | wall s (incl. model load) | articles/min | vs 1 worker |"
echo "|---|---|---|---|"
base=""
for w in 1 2 4; do
  jobs "w$w-" "$JOBS" >"$tmp/jobs-$w.jsonl"
  "$X" queue submit "$tmp/jobs-$w.jsonl" --redis "$url" --queue "bench$w" 2>/dev/null
  start=$(date +%s.%N)
  pids=()
  for ((k = 0; k < w; k++)); do
    "$X" worker --redis "$url" --queue "bench$w" --out "$tmp/out-$w" --until-empty --name "w$k" 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
  rate=$(python3 -c "print(f'{$JOBS * 60 / $wall:.2f}')")
  base=${base:-$rate}
  echo "| $w | $wall | $rate | $(python3 -c "print(f'{$rate / $base:.2f}x')") |"
done
# Overhead: one idle worker; jobs submitted one at a time. submit -> start is the worker's
# waited_seconds; ack -> visible is when a client polling the results hash sees the result,
# less the time the worker stamped just before acknowledging.
# The worker is idle once its models are loaded (its "waiting for jobs" line); the poll sleeps
# 5 ms between looks so that it does not take a core from the worker.
"$X" worker --redis "$url" --queue overhead --out "$tmp/out-o" --name idle 2>"$tmp/idle.log" &
worker_pid=$!
until grep -qs "waiting for jobs" "$tmp/idle.log"; do
  kill -0 $worker_pid 2>/dev/null || { cat "$tmp/idle.log" >&2; exit 1; }
  sleep 0.1
done
for ((i = 0; i < 5; i++)); do
  jobs "o$i-" 1 >"$tmp/o.jsonl"
  "$X" queue submit "$tmp/o.jsonl" --redis "$url" --queue overhead 2>/dev/null
  until [ "$(redis-cli -p "$port" hexists overhead:results "o$i-00")" = 1 ]; do sleep 0.005; done
  echo "$(date +%s%3N) $(redis-cli -p "$port" hget overhead:results "o$i-00")" >>"$tmp/overhead.txt"
done
kill -INT $worker_pid; wait $worker_pid || true
python3 - "$tmp/overhead.txt" <<'EOF'
import json, statistics, sys
rows = [(int(l.split(" ", 1)[0]), json.loads(l.split(" ", 1)[1])) for l in open(sys.argv[1])]
waits = [r["waited_seconds"] * 1000 for _, r in rows]
visible = [seen - r["finished_ms"] for seen, r in rows]
print(f"\nqueue overhead per job (5 jobs, one idle worker): submit -> start median {statistics.median(waits):.0f} ms (max {max(waits):.0f}); ack -> visible median {statistics.median(visible):.0f} ms (max {max(visible):.0f})")
EOF
