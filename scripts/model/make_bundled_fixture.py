#!/usr/bin/env python3
"""Golden fixture for the bundled model: transformers' float32 logits, greedy tokens and
perplexity on models/whale-tiny, checked by crates/whale-cli/tests/bundled.rs.

    /work/refenv/bin/python scripts/model/make_bundled_fixture.py [--valid /work/train-data/valid.txt]

Writes fixtures/bundled/{reference.json, logits.npy, excerpt.txt}. reference.json records the
SHA-256 of model.safetensors, so a re-exported model with a stale fixture fails the test
instead of passing silently. The excerpt is public-domain text from the validation split.
"""

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DeepseekV3ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "whale-tiny"
OUT = ROOT / "fixtures" / "bundled"
PROMPT = "It was the best of times, it was the worst of times, and the old house on the hill"
PPL_CTX = 64
EXCERPT_CHARS = 6000
GREEDY_TOKENS = 16


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--valid", default="/work/train-data/valid.txt")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = DeepseekV3ForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").eval()

    ids = tok(PROMPT).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=GREEDY_TOKENS, pad_token_id=tok.eos_token_id)
    np.save(OUT / "logits.npy", logits.astype(np.float32))

    text = Path(a.valid).read_text(encoding="utf-8")[:EXCERPT_CHARS]
    (OUT / "excerpt.txt").write_text(text, encoding="utf-8")
    pid = tok(text, add_special_tokens=False).input_ids
    wins = [pid[i:i + PPL_CTX] for i in range(0, len(pid) - PPL_CTX + 1, PPL_CTX)]
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in wins:
            lp = torch.log_softmax(model(torch.tensor([w])).logits[0].float(), -1)
            nll -= lp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum().item()
            n += len(w) - 1

    ref = {
        "description": "transformers float32 on the bundled bf16 weights",
        "model_sha256": hashlib.sha256((MODEL / "model.safetensors").read_bytes()).hexdigest(),
        "prompt": PROMPT,
        "prompt_ids": ids,
        "greedy": {"prompt_ids": ids, "generated_ids": gen[0, len(ids):].tolist(), "max_new_tokens": GREEDY_TOKENS},
        "perplexity": {"file": "excerpt.txt", "ctx": PPL_CTX, "windows": len(wins), "predictions": n,
                       "perplexity": math.exp(nll / n)},
        "transformers_version": __import__("transformers").__version__,
    }
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps(ref["perplexity"]), ref["greedy"]["generated_ids"])


if __name__ == "__main__":
    main()
