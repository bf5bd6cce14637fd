#!/usr/bin/env python3
"""Evaluate an exported whale-tiny directory with transformers (float32 compute on the bf16 weights).

  eval.py --model models/whale-tiny [--ablation DIR] [--ctx 256] [--out models/whale-tiny/eval.json]

Perplexity definition (reproduced by `whale perplexity --ctx N`):
  * tokenize the whole validation file (valid.txt) once, WITHOUT special tokens (no BOS);
  * cut the token sequence into consecutive non-overlapping windows of N tokens, starting at
    token 0; a final partial window (< N tokens) is dropped;
  * each window is run independently (fresh context, positions 0..N-1) and scored on its N-1
    next-token predictions (token j+1 given tokens 0..j, j = 0..N-2);
  * PPL = exp(mean negative log-likelihood over all scored predictions of all windows).
Unigram baseline: add-one smoothed token frequencies of the training split (tokenized the same
way, without special tokens), scored on exactly the same predicted tokens.
Expert load: per MoE layer, over all positions of all windows, the number of (token, expert)
assignments per routed expert; reported as max/mean and min/mean (1.0 = perfectly balanced).
"""
import argparse, json, math, os, sys, time
import numpy as np
import torch

torch.set_num_threads(1)
from transformers import DeepseekV3ForCausalLM, AutoTokenizer  # noqa: E402


def windows(ids, n):
    k = len(ids) // n
    return torch.tensor(ids[: k * n], dtype=torch.long).view(k, n)


def evaluate(model_dir, wins, batch=8):
    model = DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    gates = [(i, l.mlp.gate) for i, l in enumerate(model.model.layers) if hasattr(l.mlp, "gate")]
    counts = {i: torch.zeros(g.num_experts, dtype=torch.long) for i, g in gates}
    def hook(i):
        def f(m, inp, out):
            counts[i].add_(torch.bincount(out[2].reshape(-1), minlength=m.num_experts))
        return f  # returns None: the gate's output is left unchanged
    for i, g in gates:
        g.register_forward_hook(hook(i))
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(wins), batch):
            x = wins[b: b + batch]
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = x[:, 1:]
            nll -= lp.gather(-1, tgt.unsqueeze(-1)).sum().item()
            n += tgt.numel()
    load = {}
    for i, c in counts.items():
        c = c.double()
        load[f"layer{i}"] = dict(max_over_mean=round((c.max() / c.mean()).item(), 4),
                                 min_over_mean=round((c.min() / c.mean()).item(), 4),
                                 share=[round(v, 5) for v in (c / c.sum()).tolist()])
    return model, dict(ppl=math.exp(nll / n), mean_nll=nll / n, predictions=n, expert_load=load)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/whale-tiny")
    ap.add_argument("--ablation", default=None, help="exported model dir of the no-balancing ablation run")
    ap.add_argument("--data-dir", default="/work/train-data")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--matched", default=None, help="exported model dir of the balanced run at the ablation's step")
    ap.add_argument("--out", default=None)
    ap.add_argument("--prompt", default="It was a bright cold morning, and the old captain")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    text = open(os.path.join(a.data_dir, "valid.txt"), encoding="utf-8").read()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    wins = windows(ids, a.ctx)
    # unigram baseline from the training split
    tr = np.load(os.path.join(a.data_dir, "train_tokens.npy")).astype(np.int64)
    tr = tr[tr != 1]  # the training stream's EOS separators are not text tokens
    cnt = np.bincount(tr, minlength=len(tok)).astype(np.float64) + 1.0
    logp = np.log(cnt / cnt.sum())
    tgt = wins[:, 1:].numpy().reshape(-1)
    uni = math.exp(-logp[tgt].mean())
    t0 = time.time()
    model, res = evaluate(a.model, wins)
    res["eval_seconds"] = round(time.time() - t0, 1)
    out = dict(definition=dict(file="valid.txt (scripts/model/prepare_data.py)", valid_file_bytes=len(text.encode("utf-8")),
                               tokens=len(ids), ctx=a.ctx, windows=len(wins), predictions_per_window=a.ctx - 1,
                               special_tokens=False, partial_last_window="dropped", compute="float32 on bf16 weights"),
               model=res, unigram_baseline_ppl=uni)
    # samples
    x = tok(a.prompt, return_tensors="pt")
    with torch.no_grad():
        g = model.generate(input_ids=x["input_ids"], max_new_tokens=60, do_sample=False, attention_mask=torch.ones_like(x["input_ids"]))
        torch.manual_seed(0)
        s = model.generate(input_ids=x["input_ids"], max_new_tokens=60, do_sample=True, temperature=0.7, top_p=0.95, attention_mask=torch.ones_like(x["input_ids"]))
    out["samples"] = dict(prompt=a.prompt, greedy=tok.decode(g[0], skip_special_tokens=True),
                          temperature_0_7_top_p_0_95_seed0=tok.decode(s[0], skip_special_tokens=True))
    step_of = lambda d: json.load(open(os.path.join(d, "export_info.json"))).get("step")
    out["step"] = step_of(a.model)
    if a.ablation:
        _, ab = evaluate(a.ablation, wins)
        out["ablation_no_balancing"] = ab
        out["ablation_step"] = step_of(a.ablation)
    if a.matched:
        _, mm = evaluate(a.matched, wins)
        mm["step"] = step_of(a.matched)
        out["model_matched_step"] = mm
    print(json.dumps({k: v for k, v in out.items()}, indent=1)[:6000])
    if a.out:
        json.dump(out, open(a.out, "w"), indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
