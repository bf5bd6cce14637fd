#!/usr/bin/env python3
"""Aggregate decode throughput of `whale serve` with 1, 2, 4, 8, 16 concurrent streams, and
time to first token for a repeated long prompt (cold, cached in memory, cached on disk after a
restart). Standard library only; prints a markdown table.

    python3 scripts/bench/serve_scaling.py --model /work/bench-model --quant q8_0 \\
        [--streams 1,2,4,8,16] [--tokens 64] [--threads 2] [--ttft-prompt 2000]

Each stream is a streamed /v1/completions request with `ignore_eos` (a random-weight model
would otherwise stop at random) and a distinct short prompt. Decode throughput is measured in
the steady state, while all N streams are decoding: the tokens that arrive between the last
stream's first token and the first stream's last token, over that window. Streams that arrive a
few milliseconds apart are prefilled in different steps, and a window opening at the *first*
stream's first token would count the others' prefill as decode time. The end-to-end rate (all
completion tokens over the whole run, prefill included) is printed beside it.
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
        """(arrival time of each token, request start, time of end) of one streamed completion."""
        body = json.dumps({"model": "whale", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                           "stream": True, "ignore_eos": True, "return_token_ids": True,
                           "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        start, times, tokens = time.perf_counter(), [], 0
        with urllib.request.urlopen(req, timeout=3600) as r:
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                # With `return_token_ids` every step's tokens come as a chunk, even those whose
                # text is held back (a partial character).
                for choice in chunk.get("choices") or []:
                    times += [time.perf_counter()] * len(choice.get("token_ids") or [])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        if tokens != len(times):
            raise RuntimeError(f"{len(times)} chunks for {tokens} completion tokens")
        return times, start, time.perf_counter()


def throughput(server, n, max_tokens):
    results = [None] * n

    def run(i):
        results[i] = server.stream(f"Stream {i} says hello to the world, number {i * 7919}.", max_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Steady state: every stream has its first token and none has finished.
    start = max(times[0] for times, _, _ in results)
    end = min(times[-1] for times, _, _ in results)
    steady = sum(start < t <= end for times, _, _ in results for t in times) / (end - start)
    whole = sum(len(times) for times, _, _ in results) / (max(r[2] for r in results) - min(r[1] for r in results))
    return steady, whole


def ttft(server, prompt):
    start = time.perf_counter()
    times, _, _ = server.stream(prompt, 1)
    return times[0] - start


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
    one, one_whole = rates[min(rates)]
    print("| streams | " + " | ".join(str(n) for n in rates) + " |")
    print("|---|" + "---|" * len(rates))
    print("| aggregate decode tok/s | " + " | ".join(f"{r:.1f}" for r, _ in rates.values()) + " |")
    print("| vs 1 stream | " + " | ".join(f"{r / one:.2f}×" for r, _ in rates.values()) + " |")
    print("| end to end tok/s (prefill included) | " + " | ".join(f"{w:.1f}" for _, w in rates.values()) + " |")
    print("| vs 1 stream | " + " | ".join(f"{w / one_whole:.2f}×" for _, w in rates.values()) + " |")
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
