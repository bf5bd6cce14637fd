#!/usr/bin/env python3
"""whale and llama.cpp side by side on the same GGUF files; writes bench/RESULTS.md's
side-by-side section (between its `side-by-side` markers).

    python3 scripts/bench/make_bench_model.py /work/bench-model            # once, bf16
    python3 scripts/bench/compare_llama.py --model /work/bench-model \\
        --llama-bin LLAMA_BUILD/bin --llama-src LLAMA_SRC --work /work/bench-gguf \\
        [--python /work/refenv/bin/python] [--types Q8_0,Q4_0,Q4_K_M] [--threads 2] \\
        [--prompt 512] [--gen 64] [--depths 0,4096] [--rounds 2]

llama.cpp is not part of whale: build it yourself, outside this repository, and pass the
folder holding `llama-bench` and `llama-quantize` (`--llama-bin`) and its source tree
(`--llama-src`, for `convert_hf_to_gguf.py` and `gguf-py`; its Python needs torch).

What it does:
1. Gives the random benchmark checkpoint a tokenizer (the bundled model's byte-level BPE; the
   converter pads the vocabulary to 102400) and converts it with llama.cpp's own converter to
   a bf16 GGUF. The converter refuses pre-tokenizers it has no hash for; ours is GPT-2's byte
   level, so it is told "gpt-2".
2. Quantizes that file with `llama-quantize` to each type. llama.cpp reads
   `attention.q_lora_rank` unless the model has 26 or 27 layers (V2-Lite's), and the converter
   omits it for a model without q-LoRA, so the quantizer writes it as 0.
3. Alternates the engines, type by type, `--rounds` times: `llama-bench` (prefill `-p`, decode
   `-n` at each `-d` depth; its defaults otherwise, except `--repack 0`: with its CPU weight
   repacking on, this llama.cpp aborts on DeepSeek-V2 files (`GGML_ASSERT(*cur_backend_id !=
   -1)`: no backend takes the batched MUL_MAT of the 3-D `attn_k_b` once it is repacked; with
   `attn_k_b`/`attn_v_b` kept at f16 or bf16 it crashes too)) and `whale bench` on the same file, same
   threads, prompt, generation length and depths. Each figure is the best round (runs on a
   shared machine vary 10-20%; the best is the least disturbed).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- side-by-side:begin -->", "<!-- side-by-side:end -->"

# Runs llama.cpp's converter, treating an unknown BPE pre-tokenizer as GPT-2's.
CONVERT = r"""
import runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
from conversion import base
original = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"
base.TextModel.get_vocab_base_pre = pre
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in have]
    return []


def make_ggufs(a, work):
    bf16 = work / "bench-bf16.gguf"
    if not bf16.exists():
        hf = work / "hf"
        hf.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            link = hf / name
            if not link.exists():
                link.symlink_to(Path(a.model).resolve() / name)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (hf / name).write_bytes((ROOT / "models" / "whale-tiny" / name).read_bytes())
        tmp = bf16.with_suffix(".tmp")
        run([a.python, "-c", CONVERT, a.llama_src, hf, "--outtype", "bf16", "--outfile", tmp])
        tmp.rename(bf16)
    files = {}
    for t in a.types.split(","):
        out = work / f"bench-{t}.gguf"
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            run([Path(a.llama_bin) / "llama-quantize", "--override-kv",
                 "deepseek2.attention.q_lora_rank=int:0", bf16, tmp, t])
            tmp.rename(out)
        files[t] = out
    return files


def llama_bench(a, gguf):
    """{"prefill": tok/s, "decode": {depth: tok/s}} from llama-bench's JSON."""
    depths = a.depths.split(",")
    out = subprocess.run(
        [str(Path(a.llama_bin) / "llama-bench"), "-m", str(gguf), "-t", str(a.threads),
         "-p", str(a.prompt), "-n", "0", "-d", "0", "-r", str(a.reps), "--repack", "0", "-o", "json"],
        check=True, capture_output=True, text=True).stdout
    prefill = json.loads(out)[0]["avg_ts"]
    out = subprocess.run(
        [str(Path(a.llama_bin) / "llama-bench"), "-m", str(gguf), "-t", str(a.threads),
         "-p", "0", "-n", str(a.gen), "-d", a.depths, "-r", str(a.reps), "--repack", "0", "-o", "json"],
        check=True, capture_output=True, text=True).stdout
    decode = {str(r["n_depth"]): r["avg_ts"] for r in json.loads(out)}
    return {"prefill": prefill, "decode": {d: decode[d] for d in depths}}


def whale_bench(a, whale, gguf):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        run([whale, "bench", "--model", gguf, "--threads", a.threads, "--prompt", a.prompt,
             "--gen", a.gen, "--depths", a.depths, "--json", out], stdout=subprocess.DEVNULL)
        r = json.loads(out.read_text())
    return {
        "prefill": r["prefill"]["tokens_per_second"],
        "decode": {str(d["depth"]): d["tokens_per_second"] for d in r["decode"]},
        "load": r["load_seconds"],
        "triad": r["triad_bandwidth_gb_per_s"],
        "bytes_per_token": r["weight_bytes_per_decoded_token"],
        "roofline": r["decode_roofline_tokens_per_second"],
        "rss": r["peak_rss_bytes"] or 0,
    }


def best(runs):
    """Per figure, the best of the rounds."""
    out = dict(runs[0])
    out["prefill"] = max(r["prefill"] for r in runs)
    out["decode"] = {d: max(r["decode"][d] for r in runs) for d in runs[0]["decode"]}
    if "load" in out:
        out["load"] = min(r["load"] for r in runs)
        out["triad"] = max(r["triad"] for r in runs)
        out["roofline"] = max(r["roofline"] for r in runs)
    return out


def table(a, results):
    depths = a.depths.split(",")
    head = ["GGUF", "engine", f"prefill {a.prompt} tok/s"] + [f"decode @{d} tok/s" for d in depths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, (w, l) in results.items():
        for name, r in (("llama.cpp", l), ("whale", w)):
            cells = [t, name, f"{r['prefill']:.1f}"] + [f"{r['decode'][d]:.1f}" for d in depths]
            lines.append("| " + " | ".join(cells) + " |")
        ratio = [t, "**whale ÷ llama.cpp**", f"**{w['prefill'] / l['prefill']:.2f}×**"] + [
            f"**{w['decode'][d] / l['decode'][d]:.2f}×**" for d in depths]
        lines.append("| " + " | ".join(ratio) + " |")
    lines += ["", "whale's own measurements in the same runs (roofline = in-process STREAM triad ÷ "
              "weight bytes read per decoded token):", "",
              "| GGUF | load s | MB read / token | triad GB/s | roofline tok/s | decode @0 % of roofline | peak RSS MB |",
              "|---|---|---|---|---|---|---|"]
    for t, (w, _) in results.items():
        pct = 100 * w["decode"][depths[0]] / w["roofline"]
        lines.append(f"| {t} | {w['load']:.2f} | {w['bytes_per_token'] / 1e6:.0f} | {w['triad']:.1f} | "
                     f"{w['roofline']:.0f} | {pct:.0f}% | {w['rss'] / 1e6:.0f} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="bf16 checkpoint from make_bench_model.py")
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--llama-src", required=True)
    ap.add_argument("--work", required=True, help="folder for the GGUF files (several GB)")
    ap.add_argument("--python", default=sys.executable, help="a Python with torch, for the converter")
    ap.add_argument("--types", default="Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--depths", default="0,4096")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1, help="llama-bench -r within a round")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    files = make_ggufs(a, work)
    run(["cargo", "build", "--release", "-p", "whale-cli"], cwd=ROOT)
    whale = ROOT / "target" / "release" / "whale"
    runs = {t: ([], []) for t in files}
    for i in range(a.rounds):
        for t, f in files.items():
            # Alternate which engine goes first so neither always meets a warmer machine.
            order = [("llama", lambda: llama_bench(a, f)), ("whale", lambda: whale_bench(a, whale, f))]
            for name, bench in order if i % 2 == 0 else order[::-1]:
                r = bench()
                print(f"round {i} {t} {name}: {r}", flush=True)
                runs[t][name == "llama"].append(r)
    results = {t: (best(w), best(l)) for t, (w, l) in runs.items()}
    (work / "results.json").write_text(json.dumps(runs, indent=1))
    section = [
        BEGIN,
        f"{datetime.date.today()}, {cpu_name()} ({', '.join(cpu_flags())}), {os.cpu_count()} logical "
        f"CPUs, {a.threads} threads for both engines. Same GGUF files (llama.cpp's converter, then "
        f"`llama-quantize`), prompt {a.prompt}, {a.gen} generated tokens at depths {a.depths}, "
        f"{a.rounds} alternating rounds, best round per figure. Made by "
        f"`scripts/bench/compare_llama.py`.",
        "",
        *table(a, results),
        END,
    ]
    text = Path(a.out).read_text() if Path(a.out).exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + "\n".join(section) + text[text.index(END) + len(END):]
    else:
        text += "\n" + "\n".join(section) + "\n"
    Path(a.out).write_text(text)
    print("\n".join(section))


if __name__ == "__main__":
    main()
