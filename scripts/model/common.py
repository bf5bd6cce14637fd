"""Shared model definition for whale-tiny training / export / eval."""
import json, os
from transformers import DeepseekV3Config

BOS_ID, EOS_ID = 0, 1

SIZES = {
    # name: overrides on top of BASE
    "s": dict(hidden_size=192, num_hidden_layers=4, intermediate_size=512, moe_intermediate_size=96,
              num_attention_heads=4, q_lora_rank=96, kv_lora_rank=48),
    "m": dict(hidden_size=256, num_hidden_layers=5, intermediate_size=768, moe_intermediate_size=128,
              num_attention_heads=4, q_lora_rank=128, kv_lora_rank=64),
    "l": dict(hidden_size=256, num_hidden_layers=6, intermediate_size=768, moe_intermediate_size=128,
              num_attention_heads=4, q_lora_rank=128, kv_lora_rank=64),
    "xl": dict(hidden_size=320, num_hidden_layers=6, intermediate_size=960, moe_intermediate_size=160,
               num_attention_heads=5, q_lora_rank=160, kv_lora_rank=64),
}

BASE = dict(
    vocab_size=8000, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_routed_experts=16, num_experts_per_tok=2, n_shared_experts=1, n_group=4, topk_group=2,
    topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
    first_k_dense_replace=1, moe_layer_freq=1, num_nextn_predict_layers=0,
    hidden_act="silu", max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
    rope_interleave=True, attention_bias=False, attention_dropout=0.0, initializer_range=0.02,
    tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID, use_cache=True,
)


def make_config(size):
    kw = dict(BASE)
    kw.update(SIZES[size])
    kw["num_key_value_heads"] = kw["num_attention_heads"]
    rope_theta = kw.pop("rope_theta")
    cfg = DeepseekV3Config(**kw, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    return cfg


def param_counts(model, cfg):
    total = sum(p.numel() for p in model.parameters())
    emb = cfg.vocab_size * cfg.hidden_size
    # active per token: everything except the routed experts not chosen and the embedding table
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    n_moe = cfg.num_hidden_layers - cfg.first_k_dense_replace
    inactive = n_moe * (cfg.n_routed_experts - cfg.num_experts_per_tok) * per_expert
    return dict(total=total, embedding=emb, lm_head=emb, routed_experts=n_moe * cfg.n_routed_experts * per_expert,
                active_per_token=total - inactive, active_per_token_excl_embedding=total - inactive - emb)
