#!/usr/bin/env python3
"""Writes a random-weight checkpoint with DeepSeek-V2-Lite's real dimensions for benchmarks.

hidden 2048, 16 heads, no q-LoRA, kv_lora_rank 512, 64 routed experts (top-6) + 2 shared,
expert width 1408, dense width 10944, vocab 102400, YaRN as V2-Lite; `--layers` decoder layers
(default 4: one dense, the rest MoE). bf16 safetensors, hub-style config. Needs only numpy (e.g. /work/refenv/bin/python or any venv with numpy).

    python3 scripts/bench/make_bench_model.py OUT_DIR [--layers 4] [--seed 0]
"""

import argparse
import json
import os
import struct

import numpy as np

CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "vocab_size": 102400,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "n_shared_experts": 2,
    "n_routed_experts": 64,
    "num_experts_per_tok": 6,
    "routed_scaling_factor": 1.0,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "hidden_act": "silu",
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def bf16_bytes(a: np.ndarray) -> bytes:
    """Round-to-nearest-even f32 → bf16, as little-endian bytes."""
    u = a.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def layout(cfg):
    """(name, shape, kind) of every tensor in write order; kind 'norm' is ones, 'mat' random."""
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    c, r, v = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    ie, e = cfg["moe_intermediate_size"], cfg["n_routed_experts"]
    yield "model.embed_tokens.weight", (cfg["vocab_size"], d), "mat"
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (d,), "norm"
        yield f"{p}.post_attention_layernorm.weight", (d,), "norm"
        yield f"{p}.self_attn.q_proj.weight", (h * qk, d), "mat"
        yield f"{p}.self_attn.kv_a_proj_with_mqa.weight", (c + r, d), "mat"
        yield f"{p}.self_attn.kv_a_layernorm.weight", (c,), "norm"
        yield f"{p}.self_attn.kv_b_proj.weight", (h * (cfg["qk_nope_head_dim"] + v), c), "mat"
        yield f"{p}.self_attn.o_proj.weight", (d, h * v), "mat"
        if i < cfg["first_k_dense_replace"]:
            w = cfg["intermediate_size"]
            mlps = [(f"{p}.mlp", w)]
        else:
            yield f"{p}.mlp.gate.weight", (e, d), "mat"
            mlps = [(f"{p}.mlp.experts.{x}", ie) for x in range(e)]
            mlps.append((f"{p}.mlp.shared_experts", cfg["n_shared_experts"] * ie))
        for prefix, w in mlps:
            yield f"{prefix}.gate_proj.weight", (w, d), "mat"
            yield f"{prefix}.up_proj.weight", (w, d), "mat"
            yield f"{prefix}.down_proj.weight", (d, w), "mat"
    yield "model.norm.weight", (d,), "norm"
    yield "lm_head.weight", (cfg["vocab_size"], d), "mat"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = dict(CONFIG, num_hidden_layers=a.layers)
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    tensors = list(layout(cfg))
    header, offset = {}, 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = os.path.join(a.out, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, kind in tensors:
            if kind == "norm":
                t = np.ones(shape, dtype=np.float32)
            else:  # scaled so activations keep unit size through the layers
                t = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])
            f.write(bf16_bytes(t))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(f"wrote {path}: {offset / 1e9:.2f} GB, {a.layers} layers")


if __name__ == "__main__":
    main()
