#!/usr/bin/env python3
"""Train whale-tiny (DeepSeek-V3 architecture) on one CPU thread. Deterministic and resumable:
re-running the same command resumes from OUT/ckpt.pt.

  train.py --out /work/train-run --size m --steps 1200 --batch 16 --seq 256
  train.py --out /work/train-run-ablation --no-balance ...   # ablation without bias balancing
  train.py --bench 5 --size m                                 # measure tokens/s only

Data: a token stream made of each training document's tokens followed by EOS. Step s draws
its batch from np.random.default_rng([seed, s]): BATCH random windows of SEQ tokens; half of
the rows (even rows) start with BOS followed by SEQ-1 stream tokens, the others are SEQ
stream tokens. So the data position is a pure function of the step.

Auxiliary-loss-free balancing (DeepSeek-V3 report, sec. 2.1.2): after each optimizer step, for
each MoE layer, c_i = tokens routed to expert i in that step; bias_i += gamma * sign(mean(c) - c_i).
The bias (a buffer, no gradient) is only used by transformers' router for top-k selection.
"""
import argparse, csv, json, math, os, random, sys, time
import numpy as np
import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import make_config, param_counts, BOS_ID, EOS_ID  # noqa: E402
from transformers import DeepseekV3ForCausalLM  # noqa: E402
from tqdm import tqdm  # noqa: E402


def load_stream(data_dir, tok_dir):
    cache = os.path.join(data_dir, "train_tokens.npy")
    if os.path.exists(cache):
        return np.load(cache)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    docs = [json.loads(l) for l in open(os.path.join(data_dir, "train_docs.jsonl"), encoding="utf-8")]
    out = []
    for d in docs:
        out.extend(tok.encode(d, add_special_tokens=False).ids)
        out.append(EOS_ID)
    arr = np.array(out, dtype=np.uint16)
    np.save(cache, arr)
    return arr


def get_batch(stream, step, seed, batch, seq):
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - seq - 1, size=batch)
    rows = []
    for r, s in enumerate(starts):
        if r % 2 == 0:
            rows.append(np.concatenate([[BOS_ID], stream[s:s + seq - 1]]))
        else:
            rows.append(stream[s:s + seq])
    return torch.from_numpy(np.stack(rows).astype(np.int64))


class RouteRecorder:
    """Forward hooks on each MoE gate that count selected experts (topk_indices)."""

    def __init__(self, model):
        self.gates = [(i, l.mlp.gate) for i, l in enumerate(model.model.layers) if hasattr(l.mlp, "gate")]
        self.counts = {i: torch.zeros(g.num_experts, dtype=torch.long) for i, g in self.gates}
        for i, g in self.gates:
            g.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def f(mod, inp, out):
            idx = out[2].detach().reshape(-1)
            self.counts[i] += torch.bincount(idx, minlength=mod.num_experts)
        return f

    def reset(self):
        for c in self.counts.values():
            c.zero_()


def lr_at(step, total, peak, warmup, min_ratio):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/work/train-run")
    ap.add_argument("--data-dir", default="/work/train-data")
    ap.add_argument("--tok-dir", default="/work/train-data/tokenizer")
    ap.add_argument("--size", default="m")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--gamma", type=float, default=1e-3)
    ap.add_argument("--no-balance", action="store_true")
    ap.add_argument("--router-lr-mult", type=float, default=1.0, help="LR multiplier for the router (gate) weights")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ckpt-every-s", type=float, default=600)
    ap.add_argument("--stop-after-step", type=int, default=None, help="stop (with checkpoint) after this step")
    ap.add_argument("--snapshot-steps", default="", help="comma-separated steps at which to keep OUT/model_step{N}.pt")
    ap.add_argument("--bench", type=int, default=0, help="time this many steps and exit")
    a = ap.parse_args()

    torch.manual_seed(a.seed); random.seed(a.seed); np.random.seed(a.seed)
    torch.use_deterministic_algorithms(True)
    stream = load_stream(a.data_dir, a.tok_dir)
    cfg = make_config(a.size)
    model = DeepseekV3ForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    counts = param_counts(model, cfg)
    print(f"stream tokens {len(stream):,}; params {counts}", flush=True)
    rec = RouteRecorder(model)
    router = [p for n, p in model.named_parameters() if n.endswith("mlp.gate.weight")]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n and not n.endswith("mlp.gate.weight")]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    groups = [{"params": decay, "weight_decay": a.wd, "lr_mult": 1.0}, {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if router:
        groups.append({"params": router, "weight_decay": 0.0, "lr_mult": a.router_lr_mult})
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    if a.bench:
        model.train()
        for s in range(a.bench + 1):
            if s == 1:
                t0 = time.time()
            x = get_batch(stream, s, a.seed, a.batch, a.seq)
            loss = model(input_ids=x, labels=x).loss
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        dt = (time.time() - t0) / a.bench
        print(f"BENCH size={a.size} batch={a.batch} seq={a.seq}: {dt:.2f} s/step, {a.batch*a.seq/dt:.0f} tok/s, loss {loss.item():.3f}")
        return

    os.makedirs(a.out, exist_ok=True)
    ck = os.path.join(a.out, "ckpt.pt")
    step, elapsed = 0, 0.0
    if os.path.exists(ck):
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        torch.set_rng_state(st["torch_rng"]); random.setstate(st["py_rng"]); np.random.set_state(st["np_rng"])
        print(f"resumed from step {step} (elapsed {elapsed:.0f}s)", flush=True)
    json.dump(dict(vars(a), params=counts, config=cfg.to_dict()), open(os.path.join(a.out, "run.json"), "w"), indent=1, default=str)

    def save(final=False):
        st = dict(model=model.state_dict(), opt=opt.state_dict(), step=step, elapsed=elapsed, args=vars(a),
                  torch_rng=torch.get_rng_state(), py_rng=random.getstate(), np_rng=np.random.get_state())
        torch.save(st, ck + ".tmp"); os.replace(ck + ".tmp", ck)
        torch.save(model.state_dict(), os.path.join(a.out, "model.pt.tmp"))
        os.replace(os.path.join(a.out, "model.pt.tmp"), os.path.join(a.out, "model.pt"))
        json.dump(dict(step=step, elapsed=elapsed, final=final), open(os.path.join(a.out, "progress.json"), "w"))

    # CSV logs: truncate rows beyond the resumed step so a resume never duplicates rows
    def open_csv(name, header):
        p = os.path.join(a.out, name)
        rows = []
        if os.path.exists(p):
            with open(p) as f:
                r = list(csv.reader(f))
            rows = [x for x in r[1:] if int(x[0]) < step]
        f = open(p, "w", newline="")
        w = csv.writer(f); w.writerow(header); w.writerows(rows); f.flush()
        return f, w
    lf, lw = open_csv("loss.csv", ["step", "tokens", "loss", "lr", "elapsed_s", "tok_per_s"])
    gf, gw = open_csv("load.csv", ["step", "layer", "max_over_mean", "min_over_mean", "bias_min", "bias_max"] )

    model.train()
    tok_per_step = a.batch * a.seq
    last_ck = time.time()
    bar = tqdm(total=a.steps, initial=step, mininterval=10 if not sys.stderr.isatty() else 0.5, dynamic_ncols=True)
    ema = None
    while step < a.steps:
        t0 = time.time()
        lr = lr_at(step, a.steps, a.lr, a.warmup, a.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        x = get_batch(stream, step, a.seed, a.batch, a.seq)
        rec.reset()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for i, gate in rec.gates:
                c = rec.counts[i].float()
                if not a.no_balance:
                    gate.e_score_correction_bias += a.gamma * torch.sign(c.mean() - c)
                if step % 10 == 0:
                    b = gate.e_score_correction_bias
                    gw.writerow([step, i, f"{(c.max()/c.mean()).item():.4f}", f"{(c.min()/c.mean()).item():.4f}",
                                 f"{b.min().item():.4f}", f"{b.max().item():.4f}"])
        dt = time.time() - t0
        elapsed += dt
        step += 1
        L = loss.item()
        ema = L if ema is None else 0.98 * ema + 0.02 * L
        lw.writerow([step, step * tok_per_step, f"{L:.5f}", f"{lr:.6g}", f"{elapsed:.1f}", f"{tok_per_step/dt:.0f}"])
        if step % 10 == 0:
            lf.flush(); gf.flush()
        bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{tok_per_step/dt:.0f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
        if step % 50 == 0:
            print(f"\nstep {step} loss(ema) {ema:.4f} loss {L:.4f} lr {lr:.3g} tok/s {tok_per_step/dt:.0f} elapsed {elapsed:.0f}s", flush=True)
        if str(step) in a.snapshot_steps.split(","):
            torch.save(model.state_dict(), os.path.join(a.out, f"model_step{step}.pt"))
        if time.time() - last_ck > a.ckpt_every_s or step == a.steps or step == a.stop_after_step:
            lf.flush(); gf.flush()
            save(final=step == a.steps)
            last_ck = time.time()
            print(f"\ncheckpoint at step {step}", flush=True)
            if step == a.stop_after_step:
                break
    bar.close(); lf.close(); gf.close()
    print("done", step, f"elapsed {elapsed:.0f}s", flush=True)


if __name__ == "__main__":
    main()
