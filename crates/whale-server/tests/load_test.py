#!/usr/bin/env python3
"""Bounded load on loopback: N requests from C concurrent clients against `whale serve`,
a share of them malformed and a share disconnecting mid-stream. Passes when every
well-formed request completes, every malformed one gets a 4xx, the server stays up and
its resident memory stays under --rss-limit-mb.

Usage: load_test.py --whale target/release/whale --model DIR [--requests 300 --clients 32]

Standard library only: a minimal HTTP/1.1 client on asyncio streams (one connection per
request), so malformed bodies and abrupt disconnects are exactly what the server sees."""

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_support import Server, prepare_model, rss_mb  # noqa: E402

MALFORMED = [
    (b'{"model": "x", "messages": [', "bad JSON"),
    (json.dumps({"messages": "hello"}).encode(), "messages of the wrong type"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(), "max_tokens 0"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 3}).encode(), "n > 1"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), "wrong type"),
    (json.dumps({"prompt": [1, 2, 10**9]}).encode(), "token id out of range"),
]


def well_formed(rng, i):
    """A chat or completion request, streamed or not, with a shared or a fresh prefix."""
    shared = "You answer questions about the sea. " * 20 if rng.random() < 0.5 else f"Session {i}. "
    if rng.random() < 0.6:
        body = {"model": "whale", "messages": [{"role": "system", "content": shared},
                                               {"role": "user", "content": f"Question {i}?"}]}
        path = "/v1/chat/completions"
    else:
        body = {"model": "whale", "prompt": shared + f"Item {i}:"}
        path = "/v1/completions"
    body.update(max_tokens=rng.randint(4, 48), temperature=rng.choice([0, 0.7, 1.0]), seed=i)
    return path, body, rng.random() < 0.5


class Response:
    def __init__(self, status, headers, reader, writer):
        self.status_code, self.headers, self.reader, self.writer = status, headers, reader, writer

    async def chunks(self):
        """The body in pieces as they arrive (chunked or Content-Length)."""
        if self.headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        elif "content-length" in self.headers:
            yield await self.reader.readexactly(int(self.headers["content-length"]))
        else:
            yield await self.reader.read()

    async def body(self):
        return b"".join([c async for c in self.chunks()])

    async def sse(self):
        """`data:` payloads of an event stream."""
        buf = b""
        async for c in self.chunks():
            buf += c
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.decode().splitlines():
                    if line.startswith("data: "):
                        yield line[6:]

    def close(self):
        self.writer.close()


async def post(base, path, payload):
    host, port = base.hostname, base.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + payload)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    return Response(status, headers, reader, writer)


async def run_one(base, i, rng, stats):
    kind = rng.random()
    if kind < 0.10:
        payload, what = rng.choice(MALFORMED)
        path = "/v1/completions" if b"prompt" in payload else "/v1/chat/completions"
        r = await post(base, path, payload)
        text = await r.body()
        r.close()
        stats["malformed"] += 1
        if not 400 <= r.status_code < 500:
            stats["errors"].append(f"malformed ({what}) got {r.status_code}: {text[:200]}")
        return
    path, body, stream = well_formed(rng, i)
    if kind < 0.20:
        # Disconnect mid-stream: read a couple of events, then hang up.
        body.update(stream=True, max_tokens=400)
        r = await post(base, path, json.dumps(body).encode())
        if r.status_code != 200:
            stats["errors"].append(f"disconnecting client got {r.status_code}")
            r.close()
            return
        events = 0
        async for _ in r.sse():
            events += 1
            if events == 3:
                break
        r.close()
        stats["disconnected"] += 1
        return
    t0 = time.perf_counter()
    body["stream"] = stream
    r = await post(base, path, json.dumps(body).encode())
    try:
        if r.status_code != 200:
            stats["errors"].append(f"request got {r.status_code}: {(await r.body())[:200]}")
            return
        if stream:
            finish, done = None, False
            async for data in r.sse():
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    stats["errors"].append(f"stream error: {chunk}")
                    return
                if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                    finish = chunk["choices"][0]["finish_reason"]
            if not done or finish is None:
                stats["errors"].append(f"stream ended without finish/[DONE] ({finish}, {done})")
                return
        else:
            reply = json.loads(await r.body())
            if reply["choices"][0]["finish_reason"] not in ("stop", "length"):
                stats["errors"].append(f"bad finish: {reply}")
                return
    finally:
        r.close()
    stats["latency"].append(time.perf_counter() - t0)
    stats["completed"] += 1


async def load(base, requests, clients, seed):
    rng = random.Random(seed)
    stats = {"completed": 0, "malformed": 0, "disconnected": 0, "errors": [], "latency": []}
    queue = list(range(requests))
    base = urlsplit(base)

    async def worker():
        while queue:
            i = queue.pop()
            try:
                await run_one(base, i, random.Random(rng.random()), stats)
            except Exception as e:  # noqa: BLE001 - a transport error is a failure
                stats["errors"].append(f"request {i}: {type(e).__name__}: {e}")

    await asyncio.gather(*(worker() for _ in range(clients)))
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whale", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-seqs", type=int, default=8)
    ap.add_argument("--rss-limit-mb", type=float, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="whale-load-") as work:
        model = prepare_model(args.model, work)
        with Server(args.whale, model, "--max-seqs", str(args.max_seqs)) as s:
            peak = [rss_mb(s.proc.pid) or 0.0]
            stop = threading.Event()

            def sample():
                while not stop.wait(0.05):
                    peak[0] = max(peak[0], rss_mb(s.proc.pid) or 0.0)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            stats = asyncio.run(load(s.base, args.requests, args.clients, args.seed))
            wall = time.perf_counter() - t0
            stop.set()
            sampler.join()
            alive = s.proc.poll() is None
            metrics = s.metrics() if alive else {}
    lat = sorted(stats["latency"]) or [0.0]
    print(f"{args.requests} requests, {args.clients} clients, {wall:.1f} s: {stats['completed']} completed, "
          f"{stats['malformed']} malformed (4xx), {stats['disconnected']} disconnected mid-stream; "
          f"latency p50 {lat[len(lat) // 2]:.2f} s, p99 {lat[int(len(lat) * 0.99)]:.2f} s; "
          f"peak RSS {peak[0]:.0f} MiB (limit {args.rss_limit_mb:.0f}); "
          f"generated {metrics.get('whale_generation_tokens_total', 0):.0f} tokens, "
          f"cancelled {metrics.get('whale_requests_cancelled_total', 0):.0f}, "
          f"prefix-cache hit tokens {metrics.get('whale_prefix_cache_hit_tokens_total', 0):.0f}")
    failures = list(stats["errors"])
    if not alive:
        failures.append("the server died")
    if peak[0] > args.rss_limit_mb:
        failures.append(f"peak RSS {peak[0]:.0f} MiB over {args.rss_limit_mb} MiB")
    if stats["completed"] + stats["malformed"] + stats["disconnected"] != args.requests:
        failures.append("some requests neither completed nor failed cleanly")
    for f in failures[:20]:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
