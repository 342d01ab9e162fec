#!/usr/bin/env python3
"""Load benchmark of `xcomposer serve`: N concurrent streaming chat clients on loopback, each
sending a fixed number of requests; prints requests/s, time to first token and total latency
(p50/p99), and every error by kind (429s and dropped connections counted apart).

    xcomposer serve --port 8080 &
    python3 crates/server/bench/load.py --base http://127.0.0.1:8080 --clients 1,8,32 --requests 64

Standard library only."""

import argparse, http.client, json, statistics, threading, time, urllib.parse


def one(base, model, max_tokens, key):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": True})
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        if r.status != 200:
            r.read()
            return {"error": "http %d" % r.status}
        ttft, done, buf = None, False, b""
        while True:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
            if not chunk:
                break
            buf += chunk
            if ttft is None and b'"content":"' in buf and buf.count(b"data: ") >= 2:
                ttft = time.perf_counter() - t0
            if b"data: [DONE]" in buf:
                done = True
                break
        if not done:
            return {"error": "stream ended without [DONE]"}
        return {"ttft": ttft if ttft is not None else time.perf_counter() - t0, "total": time.perf_counter() - t0}
    except Exception as e:  # a dropped connection is an error to report, not to hide
        return {"error": type(e).__name__ + ": " + str(e)}
    finally:
        conn.close()


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run(base, model, clients, requests, max_tokens, key):
    results, lock = [], threading.Lock()
    per = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]

    def worker(n):
        for _ in range(n):
            r = one(base, model, max_tokens, key)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errors = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    ttft = [r["ttft"] for r in ok]
    total = [r["total"] for r in ok]
    print("| %d | %d | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %s |" % (
        clients, len(results), len(ok), len(ok) / wall, pct(ttft, 50), pct(ttft, 99), pct(total, 50), pct(total, 99),
        ", ".join("%s ×%d" % kv for kv in errors.items()) or "0"), flush=True)
    return len(results) == requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64, help="requests per row")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--api-key", default="")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", "/v1/models", headers={"Authorization": "Bearer " + a.api_key} if a.api_key else {})
    model = json.loads(conn.getresponse().read())["data"][0]["id"]
    print("model %s, %d requests a row, max_tokens %d, streamed" % (model, a.requests, a.max_tokens))
    print("| clients | requests | ok | req/s | TTFT p50 s | TTFT p99 s | total p50 s | total p99 s | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    lost = False
    for c in [int(x) for x in a.clients.split(",")]:
        lost |= not run(a.base, model, c, a.requests, a.max_tokens, a.api_key)
    if lost:
        raise SystemExit("a request was lost (no result recorded)")


if __name__ == "__main__":
    main()
