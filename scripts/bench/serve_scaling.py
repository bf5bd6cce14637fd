#!/usr/bin/env python3
"""Aggregate decode throughput of `whale serve` with 1, 2, 4, 8, 16 concurrent streams, and
time to first token for a repeated long prompt (cold, cached in memory, cached on disk after a
restart). Standard library only; prints a markdown table.

    python3 scripts/bench/serve_scaling.py --model /work/bench-model --quant q8_0 \\
        [--streams 1,2,4,8,16] [--tokens 64] [--threads 2] [--ttft-prompt 2000]

Each stream is a streamed /v1/completions request with `ignore_eos` (a random-weight model
would otherwise stop at random) and a distinct short prompt. Throughput = all completion tokens
÷ the time from the first stream's first token to the last stream's end, so prefill is not
counted as decode time.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, a, cache_dir=None):
        self.port = free_port()
        cmd = [str(ROOT / "target/release/whale"), "serve", "--model", a.model, "--threads", str(a.threads),
               "--port", str(self.port), "--max-seqs", "16", "--ctx", str(a.ctx)]
        if a.quant:
            cmd += ["--quant", a.quant]
        if cache_dir:
            cmd += ["--cache-dir", cache_dir]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=120)

    def stream(self, prompt, max_tokens):
        """(time of first token, time of end, completion tokens) of one streamed completion."""
        body = json.dumps({"model": "whale", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                           "stream": True, "ignore_eos": True,
                           "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        first, tokens = None, 0
        with urllib.request.urlopen(req, timeout=3600) as r:
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and first is None:
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return first, time.perf_counter(), tokens


def throughput(server, n, max_tokens):
    results = [None] * n

    def run(i):
        results[i] = server.stream(f"Stream {i} says hello to the world, number {i * 7919}.", max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    return sum(r[2] for r in results) / (end - start)


def ttft(server, prompt):
    start = time.perf_counter()
    first, _, _ = server.stream(prompt, 1)
    return first - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--quant", default="q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ttft-prompt", type=int, default=2000, help="words in the repeated prompt; 0 = skip")
    ap.add_argument("--ctx", type=int, default=4096)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "whale-cli"], cwd=ROOT, check=True)
    server = Server(a)
    try:
        throughput(server, 1, 4)  # warm-up
        rates = {n: throughput(server, n, a.tokens) for n in map(int, a.streams.split(","))}
    finally:
        server.stop()
    one = rates[min(rates)]
    print("| streams | " + " | ".join(str(n) for n in rates) + " |")
    print("|---|" + "---|" * len(rates))
    print("| aggregate decode tok/s | " + " | ".join(f"{r:.1f}" for r in rates.values()) + " |")
    print("| vs 1 stream | " + " | ".join(f"{r / one:.2f}×" for r in rates.values()) + " |")
    if a.ttft_prompt:
        cache = tempfile.mkdtemp(prefix="whale-serve-cache-")
        # Common English words, about one token each: a fixed pseudo-random sequence.
        common = "the and of to a in that he was it his for with as had you not be her on".split()
        words = [common[(i * 2654435761) % 9973 % len(common)] for i in range(a.ttft_prompt)]
        prompt = " ".join(words)
        try:
            server = Server(a, cache)
            cold = ttft(server, prompt)
            warm = ttft(server, prompt)
            server.stop()
            server = Server(a, cache)
            disk = ttft(server, prompt)
            server.stop()
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"\nTTFT, repeated prompt of {a.ttft_prompt} words: cold {cold:.2f} s, memory cache "
              f"{warm * 1e3:.0f} ms ({cold / warm:.0f}×), disk cache after restart {disk * 1e3:.0f} ms "
              f"({cold / disk:.0f}×)")


if __name__ == "__main__":
    os.environ.setdefault("NO_PROXY", "127.0.0.1")
    main()
