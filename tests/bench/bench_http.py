#!/usr/bin/env python3
"""bench_http.py - concurrent streaming clients against the HTTP front (a benchmark, not a test).

Usage: bench_http.py URL [--clients 1,8,32] [--tokens 32] [--prompt TEXT] [--key KEY]

For each client count, that many threads each stream one greedy /v1/completions request at
once; every reply must equal the first client's text (greedy: the same prompt gives the same
tokens). Prints one table: time to first token (p50, max), each client's decode rate after its
first token (mean), the aggregate rate, and whether every reply was complete and equal.
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def one(url, body, key, out):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    t0 = time.monotonic()
    c.request("POST", "/v1/completions", body=body, headers=h)
    r = c.getresponse()
    if r.status != 200:
        out.update(error="%d %s" % (r.status, r.read()[:200]))
        return
    text, chunks, first, fin, buf = "", 0, None, None, b""
    while True:
        d = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not d:
            break
        buf += d
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            ch = json.loads(ev[6:])["choices"][0]
            if ch["text"]:
                if first is None:
                    first = time.monotonic()
                chunks += 1
                text += ch["text"]
            fin = ch["finish_reason"] or fin
    end = time.monotonic()
    c.close()
    out.update(text=text, chunks=chunks, ttft=(first or end) - t0, end=end - t0, t0=t0,
               fin=fin, rate=(chunks - 1) / (end - first) if first and end > first else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--key", default="")
    a = ap.parse_args()
    body = json.dumps({"prompt": a.prompt, "max_tokens": a.tokens, "temperature": 0,
                       "stream": True})
    print("%7s  %9s  %9s  %14s  %13s  %s" % ("clients", "TTFT p50", "TTFT max",
                                          "client tok/s", "total tok/s", "all correct"))
    for n in [int(x) for x in a.clients.split(",")]:
        res = [dict() for _ in range(n)]
        th = [threading.Thread(target=one, args=(a.url, body, a.key, res[i])) for i in range(n)]
        t0 = time.monotonic()
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.monotonic() - t0
        errs = [r["error"] for r in res if "error" in r]
        if errs:
            print("%7d  error: %s" % (n, errs[0]))
            continue
        ref = res[0]["text"]
        ok = all(r["text"] == ref and r["fin"] == "length" for r in res)
        ttft = [r["ttft"] for r in res]
        print("%7d  %7.3f s  %7.3f s  %14.1f  %13.1f  %s" % (
            n, statistics.median(ttft), max(ttft), statistics.mean(r["rate"] for r in res),
            sum(r["chunks"] for r in res) / wall, "yes" if ok else "NO"))


if __name__ == "__main__":
    main()
