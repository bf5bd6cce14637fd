#!/usr/bin/env python3
"""Runs `whale bench` on the benchmark model for several weight types and writes the table to
bench/RESULTS.md. Standard library only.

    python3 scripts/bench/make_bench_model.py /tmp/bench-model          # once (4.5 GB, bf16)
    python3 scripts/bench/whale_results.py /tmp/bench-model [--quants q4_0,q8_0,bf16] \\
        [--threads 2] [--prompt 512] [--gen 64] [--depths 0,4096]
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--quants", default="q4_0,q8_0,bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--depths", default="0,4096")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "whale-cli"], cwd=ROOT, check=True)
    whale = ROOT / "target" / "release" / "whale"
    rows = []
    for q in a.quants.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            subprocess.run([str(whale), "bench", "--model", a.model, "--quant", q, "--threads", str(a.threads),
                            "--prompt", str(a.prompt), "--gen", str(a.gen), "--depths", a.depths,
                            "--json", str(out)], check=True)
            rows.append(json.loads(out.read_text()))
    lines = [
        "## whale on the 4-layer DeepSeek-V2-Lite-shaped model",
        "",
        f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} logical CPUs, {a.threads} threads, "
        f"prompt {a.prompt}, {a.gen} generated tokens per depth. Made by `scripts/bench/whale_results.py`.",
        "",
        "| weights | load s | weight MB | MB read / token | triad GB/s | roofline tok/s | prefill tok/s | "
        + " | ".join(f"decode @{d} tok/s (% roofline)" for d in a.depths.split(",")) + " | peak RSS MB |",
        "|---|---|---|---|---|---|---|" + "---|" * len(a.depths.split(",")) + "---|",
    ]
    for r in rows:
        dec = " | ".join(f"{d['tokens_per_second']:.1f} ({d['roofline_percent']:.0f}%)" for d in r["decode"])
        lines.append(
            f"| {r['quant']} | {r['load_seconds']:.1f} | {r['weight_bytes'] / 1e6:.0f} | "
            f"{r['weight_bytes_per_decoded_token'] / 1e6:.0f} | {r['triad_bandwidth_gb_per_s']:.1f} | "
            f"{r['decode_roofline_tokens_per_second']:.0f} | {r['prefill']['tokens_per_second']:.1f} | {dec} | "
            f"{(r['peak_rss_bytes'] or 0) / 1e6:.0f} |"
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    section = "\n".join(lines) + "\n"
    print(section)
    Path(a.out + ".whale.md").write_text(section)


if __name__ == "__main__":
    main()
