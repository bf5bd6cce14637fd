#!/usr/bin/env python3
"""Aggregate decode throughput of `whale serve` with 1, 2, 4, 8, 16 concurrent streams:
the continuous-batching scheduler runs all decoding sequences in one forward, so
concurrent streams share each weight read. Prints a Markdown table.

Usage: streams.py --whale target/release/whale --model DIR [--tokens 64] [-- --quant q8_0]
(arguments after `--` go to `whale serve`). Standard library only."""

import argparse
import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from serve_support import Server  # noqa: E402


def complete(base, prompt, tokens, out, i):
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "return_token_ids": True,
                       "stream": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body, headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    first = None
    n = 0
    with urllib.request.urlopen(req, timeout=3600) as r:
        for line in r:
            if line.startswith(b"data: {") and b'"token_ids"' in line:
                n += len(json.loads(line[6:])["choices"][0].get("token_ids") or [])
                first = first or time.perf_counter()
    out[i] = (t0, first, time.perf_counter(), n)


def run(base, streams, prompt_tokens, tokens, vocab):
    prompts = [[(7 + 31 * i + 13 * j) % vocab for j in range(prompt_tokens)] for i in range(streams)]
    out = [None] * streams
    threads = [threading.Thread(target=complete, args=(base, prompts[i], tokens, out, i)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Decode window: from the last stream's first token to the last stream's end, so
    # prefill (staggered by chunking) is left out.
    start = max(o[1] for o in out)
    end = max(o[2] for o in out)
    decoded = sum(o[3] - 1 for o in out)
    wall = end - min(o[0] for o in out)
    return decoded / (end - start), sum(o[3] for o in out) / wall


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whale", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.streams.split(",")]
    with open(os.path.join(args.model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    ctx = args.prompt_tokens + args.tokens + 8
    with Server(args.whale, args.model, "--max-seqs", str(max(counts)), *extra, ctx=ctx) as s:
        run(s.base, 1, args.prompt_tokens, 4, vocab)  # warm-up
        rows = []
        for n in counts:
            decode, overall = run(s.base, n, args.prompt_tokens, args.tokens, vocab)
            rows.append((n, decode, overall))
    base = rows[0][1]
    print(f"\n`{os.path.basename(os.path.normpath(args.model))}` {' '.join(extra)}, {args.tokens} tokens per stream, "
          f"{args.prompt_tokens}-token prompts\n")
    print("| streams | aggregate decode tok/s | per stream tok/s | vs 1 stream | incl. prefill tok/s |")
    print("|---|---|---|---|---|")
    for n, decode, overall in rows:
        print(f"| {n} | {decode:.1f} | {decode / n:.1f} | {decode / base:.2f}x | {overall:.1f} |")


if __name__ == "__main__":
    main()
