#!/usr/bin/env python3
"""Batched decode side by side: `whale bench --batch` and llama.cpp's `llama-batched-bench` on
the same GGUF file, B sequences decoded together one token each per step. Prints a markdown
table of aggregate decode tok/s per batch size, each engine's gain over its own single
sequence, and whale ÷ llama.cpp.

    python3 scripts/bench/batched_llama.py --gguf /work/bench-gguf/bench-Q4_0.gguf \\
        --llama-bin LLAMA_BUILD/bin [--batches 1,2,4,8,16] [--context 16] [--gen 64] \\
        [--threads 2] [--rounds 2]

llama.cpp is not part of whale: build its `llama-batched-bench` yourself, outside this
repository (the GGUF files come from `compare_llama.py`). Both engines: every sequence has
`--context` tokens of its own cached first (llama.cpp `-npp`, whale `--depths`), then `--gen`
steps are timed (llama.cpp's S_TG, whale's batched decode). llama.cpp runs with `--no-repack`,
as in `compare_llama.py` (its repacked weights abort on DeepSeek-V2 files). The engines
alternate, round by round; each figure is the best round (a shared machine varies 10-20%).
"""

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def llama(a, batches):
    """{batch: aggregate decode tok/s} from llama-batched-bench's table."""
    ctx = max(batches) * (a.context + a.gen) + 64
    out = subprocess.run(
        [str(Path(a.llama_bin) / "llama-batched-bench"), "-m", a.gguf, "-c", str(ctx), "-b", "2048",
         "-ub", "512", "-npp", str(a.context), "-ntg", str(a.gen), "-npl", ",".join(map(str, batches)),
         "-t", str(a.threads), "-tb", str(a.threads), "--no-repack"],
        check=True, capture_output=True, text=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[2]):
            rates[int(cells[2])] = float(cells[7])
    if set(rates) != set(batches):
        raise RuntimeError(f"llama-batched-bench gave batches {sorted(rates)}:\n{out}")
    return rates


def whale(a, batches):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.json"
        subprocess.run([str(ROOT / "target/release/whale"), "bench", "--model", a.gguf, "--threads",
                        str(a.threads), "--prompt", "1", "--gen", str(a.gen), "--depths", str(a.context),
                        "--batch", ",".join(map(str, batches)), "--json", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
        r = json.loads(path.read_text())
    return {d["batch"]: d["tokens_per_second"] for d in r["decode"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--context", type=int, default=16, help="tokens cached per sequence first")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    subprocess.run(["cargo", "build", "--release", "-p", "whale-cli"], cwd=ROOT, check=True)
    runs = {"whale": [], "llama.cpp": []}
    for i in range(a.rounds):
        order = [("llama.cpp", llama), ("whale", whale)]
        for name, bench in order if i % 2 == 0 else order[::-1]:
            r = bench(a, batches)
            print(f"round {i} {name}: {r}", flush=True)
            runs[name].append(r)
    best = {name: {b: max(r[b] for r in rs) for b in batches} for name, rs in runs.items()}
    print(f"\n{Path(a.gguf).name}: {a.context} tokens cached per sequence, {a.gen} decode steps, "
          f"{a.threads} threads, best of {a.rounds} alternating rounds\n")
    print("| engine | " + " | ".join(f"B={b}" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for name in ("llama.cpp", "whale"):
        r = best[name]
        print(f"| {name} tok/s | " + " | ".join(f"{r[b]:.1f}" for b in batches) + " |")
        print(f"| {name} vs its B=1 | " + " | ".join(f"{r[b] / r[batches[0]]:.2f}×" for b in batches) + " |")
    print("| **whale ÷ llama.cpp** | " + " | ".join(
        f"**{best['whale'][b] / best['llama.cpp'][b]:.2f}×**" for b in batches) + " |")


if __name__ == "__main__":
    main()
