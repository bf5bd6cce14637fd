#!/usr/bin/env python3
"""Export a whale-tiny training checkpoint to a hub-style DeepSeek-V3 model directory.

  export.py --run /work/train-run --out models/whale-tiny

Writes config.json (hub DeepSeek-V3 layout: rope_theta + rope_scaling null), model.safetensors
(bf16; per-expert tensor names; gate.e_score_correction_bias kept float32), tokenizer.json,
tokenizer_config.json, generation_config.json; then reloads the directory with
DeepseekV3ForCausalLM.from_pretrained and checks keys and logits against the in-memory model
with its weights rounded to bf16.
"""
import argparse, json, os, shutil, sys
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import make_config, param_counts  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import DeepseekV3ForCausalLM  # noqa: E402


def hub_config(cfg):
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "first_k_dense_replace": cfg.first_k_dense_replace,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "initializer_range": cfg.initializer_range,
        "intermediate_size": cfg.intermediate_size,
        "kv_lora_rank": cfg.kv_lora_rank,
        "max_position_embeddings": cfg.max_position_embeddings,
        "moe_intermediate_size": cfg.moe_intermediate_size,
        "moe_layer_freq": 1,
        "n_group": cfg.n_group,
        "n_routed_experts": cfg.n_routed_experts,
        "n_shared_experts": cfg.n_shared_experts,
        "norm_topk_prob": True,
        "num_attention_heads": cfg.num_attention_heads,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "num_nextn_predict_layers": 0,
        "q_lora_rank": cfg.q_lora_rank,
        "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": float(cfg.rope_parameters["rope_theta"]),
        "routed_scaling_factor": cfg.routed_scaling_factor,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": cfg.topk_group,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "v_head_dim": cfg.v_head_dim,
        "vocab_size": cfg.vocab_size,
    }


def hub_tensors(model, cfg):
    """In-memory (fused experts) state dict -> hub per-expert names; bf16 except the routing bias."""
    out = {}
    I = cfg.moe_intermediate_size
    for k, v in model.state_dict().items():
        v = v.detach().float().cpu()
        if k.endswith("mlp.experts.gate_up_proj"):
            pre = k[: -len("gate_up_proj")]
            for e in range(v.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = v[e, :I].contiguous()
                out[f"{pre}{e}.up_proj.weight"] = v[e, I:].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            pre = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = v[e].contiguous()
        else:
            out[k] = v
    return {k: (v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)).contiguous() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="/work/train-run")
    ap.add_argument("--state", default=None, help="default RUN/model.pt")
    ap.add_argument("--step", type=int, default=None, help="training step of --state (default: RUN/progress.json)")
    ap.add_argument("--tok-dir", default="/work/train-data/tokenizer")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "whale-tiny"))
    a = ap.parse_args()
    run = json.load(open(os.path.join(a.run, "run.json")))
    cfg = make_config(run["size"])
    model = DeepseekV3ForCausalLM(cfg)
    sd = torch.load(a.state or os.path.join(a.run, "model.pt"), weights_only=True)
    model.load_state_dict(sd)
    model.eval()
    os.makedirs(a.out, exist_ok=True)
    tensors = hub_tensors(model, cfg)
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(hub_config(cfg), open(os.path.join(a.out, "config.json"), "w"), indent=2)
    json.dump({"_from_model_config": True, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
               "do_sample": True, "temperature": 0.6, "top_p": 0.95},
              open(os.path.join(a.out, "generation_config.json"), "w"), indent=2)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(a.tok_dir, f), os.path.join(a.out, f))

    # --- checks: reload, keys, logits vs in-memory model rounded to bf16
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16).float()
    for m in model.modules():
        if hasattr(m, "e_score_correction_bias"):
            pass  # kept float32 on disk
    re, info = DeepseekV3ForCausalLM.from_pretrained(a.out, dtype=torch.float32, output_loading_info=True)
    re.eval()
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, bad
    ids = torch.tensor([[0, 62, 4609, 374, 3920, 6180, 276, 894, 1144, 64, 202, 202, 57, 7012, 56]])
    with torch.no_grad():
        l1 = model(ids).logits
        l2 = re(ids).logits
    diff = (l1 - l2).abs().max().item()
    print(f"reload OK: no missing/unexpected keys; max |logit diff| vs bf16-rounded in-memory model = {diff:.3g}")
    assert diff < 1e-4, diff
    size = os.path.getsize(os.path.join(a.out, "model.safetensors"))
    pc = param_counts(model, cfg)
    json.dump(dict(source_run=os.path.abspath(a.run), step=a.step if a.step is not None else (json.load(open(os.path.join(a.run, "progress.json")))["step"] if os.path.exists(os.path.join(a.run, "progress.json")) else None),
                   params=pc, safetensors_bytes=size, reload_max_logit_diff=diff),
              open(os.path.join(a.out, "export_info.json"), "w"), indent=1)
    print(f"wrote {a.out}: model.safetensors {size/1e6:.1f} MB, {len(tensors)} tensors, params {pc}")


if __name__ == "__main__":
    main()
