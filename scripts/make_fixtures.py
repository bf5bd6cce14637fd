#!/usr/bin/env python3
"""Golden fixtures for whale: tiny random DeepSeek-V2/V3 checkpoints + transformers' float32 outputs.

Usage:  python scripts/make_fixtures.py [--out fixtures/models] [--only NAME ...]
Needs:  scripts/requirements-fixtures.txt (transformers==5.24.0, torch, safetensors, numpy); CPU only.

===================================================================================================
WHAT THE REFERENCE (transformers 5.24.0, DeepseekV2ForCausalLM / DeepseekV3ForCausalLM) COMPUTES
(read from models/deepseek_v2|v3/modeling_*.py, configuration_*.py and modeling_rope_utils.py;
 the routing part is re-derived by this script on every MoE call and asserted equal to the model's)
===================================================================================================
Router, V2 class (DeepseekV2TopkRouter) -- honours `topk_method`, ignores `scoring_func`:
  * logits = x·W_gᵀ in FP32 (both operands cast to f32); scores = softmax(logits) over all E in FP32.
  * "greedy": top-K of scores.
  * "group_limited_greedy": view [G, E/G], group score = MAX score in the group, keep top `topk_group`
    groups, other experts' scores set to 0.0 (not -inf; equivalent since softmax > 0), top-K.
  * weight = selected softmax prob * routed_scaling_factor.  `norm_topk_prob` is IGNORED by the V2
    class (never renormalises; real V2 configs say false anyway).  Any other topk_method -> crash.
Router, V3 class (DeepseekV3TopkRouter) -- ALWAYS sigmoid + noaux_tc grouped selection, whatever
  `scoring_func` / `topk_method` say (those keys are not even DeepseekV3Config fields):
  * logits = x·W_gᵀ in FP32; s = sigmoid(logits); b = s + e_score_correction_bias (bias FP32 buffer,
    kept FP32 on load via _keep_in_fp32_modules_strict, used only for choosing).
  * group score = SUM OF THE TOP-2 b in each group of E/G contiguous experts (runs even when G == 1,
    where it is a no-op); top `topk_group` groups kept; other experts' b masked with -inf.
  * top-K of masked b -> indices; weights gathered from the UNBIASED s; if norm_topk_prob:
    w /= (sum w + 1e-20); then w *= routed_scaling_factor.
  * MoE output = sum_k w_k * expert_k(x) (FP32, index_add in expert-index order) + shared_experts(x).
  * Experts are held fused in memory (gate_up_proj[e] = cat(gate_proj, up_proj) rows, down_proj[e]),
    but save_pretrained/from_pretrained use the hub's per-expert names
    model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight (checked: 5.24 writes those).
  * Layer i is MoE iff i >= first_k_dense_replace (moe_layer_freq ignored).
YaRN (modeling_rope_utils._compute_yarn_parameters), dim D = qk_rope_head_dim (config.head_dim is set
  to qk_rope_head_dim by both configs -- a transformers-5 config.json has "head_dim" = d_r, NOT the
  attention head size):
  * factor = rope_parameters["factor"] (explicit); only if it is null is it recomputed as
    max_position_embeddings / original_max_position_embeddings (a mismatch only logs a warning).
    The fixtures' configs set max_position_embeddings = factor * original_max_position_embeddings.
  * low/high = floor/ceil of cd(beta_fast)/cd(beta_slow) with cd(r) = D*ln(L0/(2*pi*r))/(2*ln base),
    L0 = original_max_position_embeddings, clamped to [0, D-1]; ramp over i = 0..D/2-1 in f32,
    (high += 0.001 if low == high); inv_freq = inv_ext*(1-ramp) + (inv_ext/factor)*ramp
    with inv_ext = 1/base^(2i/D) computed in f32.  beta_fast/beta_slow default 32/1 if absent.
  * cos/sin amplitude `attention_factor` = g(f,mscale)/g(f,mscale_all_dim) if BOTH mscale and
    mscale_all_dim are present and non-zero, else g(f,1) = 0.1*ln f + 1 (!), g(f,m)=0.1*m*ln f+1
    (1 if f<=1).  v3_noaux_bf16 sets mscale != mscale_all_dim so the amplitude is tested; the others have 1.
  * Softmax scale (both classes, same code): d_qk^-0.5 * g(f, mscale_all_dim)^2 when rope type is
    not "default" and mscale_all_dim is non-zero; otherwise d_qk^-0.5.  The V2 class DOES include
    the m^2 factor in 5.24.  The factor multiplies the whole logit (nope + rope parts).
  * Angles pos*inv_freq in f32; no YaRN at all when rope_scaling is absent/null (rope_type default).
RoPE layout: only the d_r dims rotate, pairs are INTERLEAVED (x[2i], x[2i+1]) rotated by angle_i:
  y[2i] = x[2i]cos - x[2i+1]sin, y[2i+1] = x[2i+1]cos + x[2i]sin.  V2 class: complex multiply, output
  stays interleaved.  V3 class with rope_interleave=true (default; hub configs lack the key): output is
  DE-interleaved [evens' results, odds' results] for q_pe and k_pe alike -- dot products are identical
  to the interleaved form.  rope_interleave=false would mean plain rotate-half (no fixture uses it).
Norms: RMSNorm in f32: w * (x * rsqrt(mean(x^2) + eps)).  input/post_attention/final norms use
  rms_norm_eps; q_a_layernorm and kv_a_layernorm are built with the DEFAULT eps 1e-6 regardless of
  rms_norm_eps (fixture v3_moonlight_bf16 has rms_norm_eps 1e-5 and is sensitive to both choices).
Attention (eager, naive MLA): k = [kv_b_proj(c)[nope part] ; k_pe shared by all heads], logits =
  q·kᵀ * scale + causal mask (finfo.min), softmax in f32, P·V, o_proj.  kv_b_proj rows are head-major
  blocks of (qk_nope_head_dim + v_head_dim): first the key part, then the value part.
  num_key_value_heads must equal num_attention_heads (HF uses it in repeat_kv; the DeepseekV3Config
  class default is 128 -- a config that omits it breaks a small-head model in HF).
Other: no biases anywhere; lm_head not tied (tie_word_embeddings false); from_pretrained skips
  unexpected tensors (the V3 class silences the warning only for the hard-coded model.layers.61.*);
  5.24 has no MTP module for DeepSeek-V3 -- the reference ignores the MTP tensors.
Cross-checked: an independent float64 re-implementation of SPEC.md (absorbed MLA, interleaved complex
  RoPE, SPEC YaRN formulas, the routers above) reading only the written files reproduces every
  fixture's logits.npy to < 5% of the 1e-3*std tolerance (that checker is not committed).
transformers-5 config.json spelling: `rope_parameters` {rope_type, rope_theta, factor, ...},
  `rope_interleave`, `dtype` (not torch_dtype), `head_dim` (= d_r), `qk_head_dim`, no `topk_method` /
  `scoring_func` / `moe_layer_freq` for V3; `num_nextn_predict_layers` always written (default 1).
Hub config.json spelling: `rope_theta` + `rope_scaling: {"type": "yarn", ...}` (or null),
  `torch_dtype`, `topk_method`, `scoring_func`, `quantization_config` for FP8.
===================================================================================================

Weights: drawn here (seeded), init std 0.2, every RMSNorm weight 1 + 0.3*randn, V3 correction bias
non-zero.  They are first put in the checkpoint's storage dtype (f32 / bf16 / fp8 e4m3fn with
128x128 block scales `weight_scale_inv`, dequant = f32(q) * scale[i//128, j//128]); the float32
reference model is loaded with exactly the values a reader gets back from the file (bf16 upcast,
fp8 dequantised in f32).  Outputs per checkpoint in fixtures/models/<name>/:
  config.json, generation_config.json, model.safetensors | model-0000k-of-0000n.safetensors +
  model.safetensors.index.json, reference.json, logits.npy (float32 [len(prompt_ids), vocab]).
"""

import argparse
import json
import math
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np
import torch

torch.set_num_threads(1)

import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GenerationConfig,
)

transformers.logging.set_verbosity_error()

TRANSFORMERS_VERSION = "5.24.0"
FP8_MAX = 448.0
BLOCK = 128
PROMPT_LEN = 32
GREEDY_PROMPT_LEN = 8
MAX_NEW_TOKENS = 12
BOS, EOS = 0, 1
MARGIN_REL = 5e-3  # greedy top-1/top-2 margin must exceed this * std(step logits): > 2x the 1e-3 test tolerance
LOGIT_TOL_REL = 1e-3  # the Rust golden tests' logit tolerance (x std), used to express sensitivities
ROUTE_GAP_MIN = 1e-4  # every routing decision (expert and group cut-offs) must have at least this gap

# ------------------------------------------------------------------------------------------------
# The checkpoints.
# ------------------------------------------------------------------------------------------------
COMMON = dict(vocab_size=256, hidden_act="silu", bos=BOS, eos=EOS, rope_theta=10000.0, rms_norm_eps=1e-6)

CHECKPOINTS = [
    dict(
        COMMON,
        name="v2_greedy_f32",
        description=(
            "DeepSeek-V2-Lite-like: V2 class, greedy softmax routing (no groups), no q-LoRA, YaRN with "
            "mscale=mscale_all_dim=0.707 (softmax scale x m^2), f32 weights, single file, hub-style config"
        ),
        arch="v2",
        style="hub",
        dtype="f32",
        shards=1,
        seed=1001,
        hidden_size=64,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        num_attention_heads=2,
        q_lora_rank=None,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=16,
        v_head_dim=16,
        intermediate_size=128,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_shared_experts=2,
        num_experts_per_tok=3,
        n_group=1,
        topk_group=1,
        topk_method="greedy",
        scoring_func="softmax",
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        yarn=dict(factor=8.0, original_max_position_embeddings=32, beta_fast=32, beta_slow=1,
                  mscale=0.707, mscale_all_dim=0.707),
    ),
    dict(
        COMMON,
        name="v2_grouped_bf16_sharded",
        description=(
            "DeepSeek-V2/V2.5-like: V2 class, group_limited_greedy softmax routing (4 groups, keep 2, group "
            "score = max), routed_scaling_factor 16, q-LoRA, YaRN mscale=mscale_all_dim=1.0, bf16 weights, "
            "2 shards + index, transformers-5 config (rope_parameters)"
        ),
        arch="v2",
        style="tf5",
        dtype="bf16",
        shards=2,
        seed=2002,
        vocab_size=320,
        hidden_size=96,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=4,
        q_lora_rank=48,
        kv_lora_rank=48,
        qk_nope_head_dim=24,
        qk_rope_head_dim=8,
        v_head_dim=24,
        intermediate_size=160,
        moe_intermediate_size=32,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=3,
        n_group=4,
        topk_group=2,
        topk_method="group_limited_greedy",
        scoring_func="softmax",
        norm_topk_prob=False,
        routed_scaling_factor=16.0,
        yarn=dict(factor=16.0, original_max_position_embeddings=16, beta_fast=32, beta_slow=1,
                  mscale=1.0, mscale_all_dim=1.0),
    ),
    dict(
        COMMON,
        name="v3_noaux_bf16",
        description=(
            "DeepSeek-V3-like: V3 class, sigmoid + noaux_tc with non-zero e_score_correction_bias (fp32), "
            "4 groups keep 2 (group score = top-2 sum), top-4, norm_topk_prob, routed_scaling_factor 2.5, "
            "q-LoRA, YaRN (mscale 1.0 != mscale_all_dim 0.8: amplitude != 1), 3 heads, v_head_dim != qk_nope_head_dim, bf16, "
            "single file, transformers-5 config (rope_parameters, rope_interleave)"
        ),
        arch="v3",
        style="tf5",
        dtype="bf16",
        shards=1,
        seed=3003,
        vocab_size=384,
        hidden_size=96,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=3,
        q_lora_rank=64,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=24,
        intermediate_size=192,
        moe_intermediate_size=32,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        bias_mean=-0.5,  # many biased scores < 0: masking groups with 0 instead of -inf is caught
        bias_std=0.15,
        # mscale != mscale_all_dim: the cos/sin amplitude g(f,1)/g(f,0.8) differs from 1.
        yarn=dict(factor=4.0, original_max_position_embeddings=32, beta_fast=32, beta_slow=1,
                  mscale=1.0, mscale_all_dim=0.8),
    ),
    dict(
        COMMON,
        name="v3_fp8_mtp_sharded",
        description=(
            "DeepSeek-V3/R1-like FP8: V3 class, float8_e4m3fn weights with 128x128 block scales "
            "(weight_scale_inv; partial edge blocks, hidden 160 and intermediate 200 give full+partial "
            "blocks), bf16 embeddings/norms/lm_head/router gate, fp32 correction bias, sigmoid noaux_tc "
            "2 groups keep 1, q-LoRA, YaRN factor 40, MTP layer (index num_hidden_layers, ignored by the "
            "reference) present in the files, 3 shards + index, hub-style config with quantization_config"
        ),
        arch="v3",
        style="hub",
        dtype="fp8",
        shards=3,
        mtp=True,
        seed=4004,
        vocab_size=256,
        hidden_size=160,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        num_attention_heads=2,
        q_lora_rank=96,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        intermediate_size=200,
        moe_intermediate_size=48,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        bias_std=0.15,
        yarn=dict(factor=40.0, original_max_position_embeddings=64, beta_fast=32, beta_slow=1,
                  mscale=1.0, mscale_all_dim=1.0),
    ),
    dict(
        COMMON,
        name="v3_moonlight_bf16",
        description=(
            "Moonlight-like: V3 class, no q-LoRA, no YaRN (rope_scaling null, rope_theta 50000), n_group 1, "
            "sigmoid with non-zero correction bias, norm_topk_prob, routed_scaling_factor 2.446, "
            "rms_norm_eps 1e-5 (layer norms) while q/kv_a norms keep 1e-6 (small embeddings and small "
            "latent projections make both eps values matter), bf16, single file, hub-style config"
        ),
        arch="v3",
        style="hub",
        dtype="bf16",
        shards=1,
        seed=5005,
        hidden_size=64,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        num_attention_heads=2,
        q_lora_rank=None,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        intermediate_size=128,
        moe_intermediate_size=24,
        n_routed_experts=8,
        n_shared_experts=2,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        norm_topk_prob=True,
        routed_scaling_factor=2.446,
        rms_norm_eps=1e-5,
        rope_theta=50000.0,
        max_position_embeddings=512,
        bias_std=0.15,
        embed_std=0.004,  # variance ~1.6e-5: layer-norm eps 1e-5 vs 1e-6 changes the result
        kv_latent_std=0.0006,  # kv_a_proj latent rows: variance ~1e-5, kv_a_layernorm eps matters
        yarn=None,
    ),
]

INIT_STD = 0.2
NORM_JITTER = 0.3


# ------------------------------------------------------------------------------------------------
# Config writing
# ------------------------------------------------------------------------------------------------
def max_positions(ck):
    if ck["yarn"] is not None:
        y = ck["yarn"]
        return int(y["factor"] * y["original_max_position_embeddings"])
    return ck["max_position_embeddings"]


def hub_config(ck):
    """config.json as the DeepSeek hub repositories spell it (rope_theta + rope_scaling, torch_dtype)."""
    cfg = {
        "architectures": ["DeepseekV2ForCausalLM" if ck["arch"] == "v2" else "DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": ck["bos"],
        "eos_token_id": ck["eos"],
        "first_k_dense_replace": ck["first_k_dense_replace"],
        "hidden_act": ck["hidden_act"],
        "hidden_size": ck["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": ck["intermediate_size"],
        "kv_lora_rank": ck["kv_lora_rank"],
        "max_position_embeddings": max_positions(ck),
        "model_type": "deepseek_v2" if ck["arch"] == "v2" else "deepseek_v3",
        "moe_intermediate_size": ck["moe_intermediate_size"],
        "moe_layer_freq": 1,
        "n_group": ck["n_group"],
        "n_routed_experts": ck["n_routed_experts"],
        "n_shared_experts": ck["n_shared_experts"],
        "norm_topk_prob": ck["norm_topk_prob"],
        "num_attention_heads": ck["num_attention_heads"],
        "num_experts_per_tok": ck["num_experts_per_tok"],
        "num_hidden_layers": ck["num_hidden_layers"],
        "num_key_value_heads": ck["num_attention_heads"],
        "pretraining_tp": 1,
        "q_lora_rank": ck["q_lora_rank"],
        "qk_nope_head_dim": ck["qk_nope_head_dim"],
        "qk_rope_head_dim": ck["qk_rope_head_dim"],
        "rms_norm_eps": ck["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": ck["rope_theta"],
        "routed_scaling_factor": ck["routed_scaling_factor"],
        "scoring_func": ck["scoring_func"],
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": ck["topk_group"],
        "topk_method": ck["topk_method"],
        "torch_dtype": "bfloat16" if ck["dtype"] in ("bf16", "fp8") else "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "v_head_dim": ck["v_head_dim"],
        "vocab_size": ck["vocab_size"],
    }
    if ck["arch"] == "v3":
        cfg["ep_size"] = 1
        cfg["num_nextn_predict_layers"] = 1 if ck.get("mtp") else 0
    if ck["yarn"] is not None:
        y = ck["yarn"]
        cfg["rope_scaling"] = {
            "beta_fast": y["beta_fast"],
            "beta_slow": y["beta_slow"],
            "factor": y["factor"],
            "mscale": y["mscale"],
            "mscale_all_dim": y["mscale_all_dim"],
            "original_max_position_embeddings": y["original_max_position_embeddings"],
            "type": "yarn",
        }
    if ck["dtype"] == "fp8":
        cfg["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [BLOCK, BLOCK],
        }
    return dict(sorted(cfg.items()))


def tf5_config(ck):
    """The config object transformers 5.24 would save for this model (written by save_pretrained)."""
    if ck["yarn"] is not None:
        rope = dict(rope_type="yarn", rope_theta=ck["rope_theta"], **ck["yarn"])
    else:
        rope = dict(rope_type="default", rope_theta=ck["rope_theta"])
    kw = dict(
        vocab_size=ck["vocab_size"],
        hidden_size=ck["hidden_size"],
        intermediate_size=ck["intermediate_size"],
        moe_intermediate_size=ck["moe_intermediate_size"],
        num_hidden_layers=ck["num_hidden_layers"],
        num_attention_heads=ck["num_attention_heads"],
        num_key_value_heads=ck["num_attention_heads"],
        n_shared_experts=ck["n_shared_experts"],
        n_routed_experts=ck["n_routed_experts"],
        routed_scaling_factor=ck["routed_scaling_factor"],
        kv_lora_rank=ck["kv_lora_rank"],
        q_lora_rank=ck["q_lora_rank"],
        qk_rope_head_dim=ck["qk_rope_head_dim"],
        qk_nope_head_dim=ck["qk_nope_head_dim"],
        v_head_dim=ck["v_head_dim"],
        n_group=ck["n_group"],
        topk_group=ck["topk_group"],
        num_experts_per_tok=ck["num_experts_per_tok"],
        first_k_dense_replace=ck["first_k_dense_replace"],
        norm_topk_prob=ck["norm_topk_prob"],
        hidden_act=ck["hidden_act"],
        max_position_embeddings=max_positions(ck),
        rms_norm_eps=ck["rms_norm_eps"],
        bos_token_id=ck["bos"],
        eos_token_id=ck["eos"],
        tie_word_embeddings=False,
        rope_parameters=rope,
    )
    if ck["arch"] == "v2":
        cfg = DeepseekV2Config(topk_method=ck["topk_method"], **kw)
        cfg.architectures = ["DeepseekV2ForCausalLM"]
    else:
        cfg = DeepseekV3Config(rope_interleave=True, num_mtp_layers=1 if ck.get("mtp") else 0, **kw)
        cfg.architectures = ["DeepseekV3ForCausalLM"]
    cfg.dtype = "bfloat16" if ck["dtype"] in ("bf16", "fp8") else "float32"
    return cfg


def write_config(ck, out):
    if ck["style"] == "hub":
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(hub_config(ck), f, indent=2)
            f.write("\n")
    else:
        tf5_config(ck).save_pretrained(out)
    GenerationConfig(bos_token_id=ck["bos"], eos_token_id=ck["eos"]).save_pretrained(out)


# ------------------------------------------------------------------------------------------------
# Weights (hub names), storage conversion, FP8
# ------------------------------------------------------------------------------------------------
def mla_and_ffn_shapes(ck, prefix, moe):
    d, H = ck["hidden_size"], ck["num_attention_heads"]
    dqk = ck["qk_nope_head_dim"] + ck["qk_rope_head_dim"]
    s = OrderedDict()
    s[prefix + "input_layernorm.weight"] = (d,)
    s[prefix + "post_attention_layernorm.weight"] = (d,)
    a = prefix + "self_attn."
    if ck["q_lora_rank"] is None:
        s[a + "q_proj.weight"] = (H * dqk, d)
    else:
        s[a + "q_a_proj.weight"] = (ck["q_lora_rank"], d)
        s[a + "q_a_layernorm.weight"] = (ck["q_lora_rank"],)
        s[a + "q_b_proj.weight"] = (H * dqk, ck["q_lora_rank"])
    s[a + "kv_a_proj_with_mqa.weight"] = (ck["kv_lora_rank"] + ck["qk_rope_head_dim"], d)
    s[a + "kv_a_layernorm.weight"] = (ck["kv_lora_rank"],)
    s[a + "kv_b_proj.weight"] = (H * (ck["qk_nope_head_dim"] + ck["v_head_dim"]), ck["kv_lora_rank"])
    s[a + "o_proj.weight"] = (d, H * ck["v_head_dim"])
    m = prefix + "mlp."
    if not moe:
        I = ck["intermediate_size"]
        s[m + "gate_proj.weight"] = (I, d)
        s[m + "up_proj.weight"] = (I, d)
        s[m + "down_proj.weight"] = (d, I)
    else:
        E, Ie = ck["n_routed_experts"], ck["moe_intermediate_size"]
        s[m + "gate.weight"] = (E, d)
        if ck["arch"] == "v3":
            s[m + "gate.e_score_correction_bias"] = (E,)
        for e in range(E):
            s[m + f"experts.{e}.gate_proj.weight"] = (Ie, d)
            s[m + f"experts.{e}.up_proj.weight"] = (Ie, d)
            s[m + f"experts.{e}.down_proj.weight"] = (d, Ie)
        Is = Ie * ck["n_shared_experts"]
        s[m + "shared_experts.gate_proj.weight"] = (Is, d)
        s[m + "shared_experts.up_proj.weight"] = (Is, d)
        s[m + "shared_experts.down_proj.weight"] = (d, Is)
    return s


def all_shapes(ck):
    d, V, L = ck["hidden_size"], ck["vocab_size"], ck["num_hidden_layers"]
    s = OrderedDict()
    s["model.embed_tokens.weight"] = (V, d)
    for i in range(L):
        s.update(mla_and_ffn_shapes(ck, f"model.layers.{i}.", i >= ck["first_k_dense_replace"]))
    s["model.norm.weight"] = (d,)
    s["lm_head.weight"] = (V, d)
    if ck.get("mtp"):
        p = f"model.layers.{L}."
        s.update(mla_and_ffn_shapes(ck, p, True))
        s[p + "enorm.weight"] = (d,)
        s[p + "hnorm.weight"] = (d,)
        s[p + "eh_proj.weight"] = (d, 2 * d)
        s[p + "embed_tokens.weight"] = (V, d)
        s[p + "shared_head.norm.weight"] = (d,)
        s[p + "shared_head.head.weight"] = (V, d)
    return s


def is_norm(name):
    return name.endswith("norm.weight")


def draw_weights(ck, seed):
    """Master float32 values, hub names."""
    g = torch.Generator().manual_seed(seed)
    w = OrderedDict()
    L = ck["num_hidden_layers"]
    for name, shape in all_shapes(ck).items():
        if is_norm(name):
            t = 1.0 + NORM_JITTER * torch.randn(shape, generator=g)
        elif name.endswith("e_score_correction_bias"):
            t = ck.get("bias_mean", 0.0) + ck["bias_std"] * torch.randn(shape, generator=g)
        elif name.endswith("embed_tokens.weight"):
            t = ck.get("embed_std", INIT_STD) * torch.randn(shape, generator=g)
        else:
            t = INIT_STD * torch.randn(shape, generator=g)
            if name.endswith("kv_a_proj_with_mqa.weight") and "kv_latent_std" in ck:
                t[: ck["kv_lora_rank"]] *= ck["kv_latent_std"] / INIT_STD
        w[name] = t
    if ck.get("mtp"):  # the hub's MTP embedding/head are copies of the main ones
        w[f"model.layers.{L}.embed_tokens.weight"] = w["model.embed_tokens.weight"].clone()
        w[f"model.layers.{L}.shared_head.head.weight"] = w["lm_head.weight"].clone()
    return w


def fp8_eligible(name):
    """SPEC 2.3: FP8 = every linear weight except embeddings, lm_head, router gate, MTP eh_proj/head."""
    if not name.endswith(".weight") or is_norm(name):
        return False
    if name.endswith(("embed_tokens.weight", "lm_head.weight", "mlp.gate.weight", "eh_proj.weight",
                      "shared_head.head.weight")):
        return False
    return True


def quant_fp8(w):
    """Block-wise e4m3fn quantisation. Returns (q fp8 [R,C], scale_inv f32 [ceil(R/128), ceil(C/128)])."""
    R, C = w.shape
    nr, nc = math.ceil(R / BLOCK), math.ceil(C / BLOCK)
    pad = torch.zeros(nr * BLOCK, nc * BLOCK)
    pad[:R, :C] = w
    blocks = pad.view(nr, BLOCK, nc, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = (amax / FP8_MAX).clamp(min=1e-12).to(torch.float32)
    full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:R, :C]
    q = (w / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequant_fp8(q, scale):
    R, C = q.shape
    full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:R, :C]
    return q.to(torch.float32) * full


def to_storage(ck, master):
    """-> (stored tensors in file dtype, effective float32 values a reader reconstructs)."""
    stored, eff = OrderedDict(), OrderedDict()
    for name, t in master.items():
        if name.endswith("e_score_correction_bias") or ck["dtype"] == "f32":
            stored[name] = t.to(torch.float32).contiguous()
            eff[name] = stored[name].clone()
        elif ck["dtype"] == "fp8" and fp8_eligible(name):
            q, s = quant_fp8(t)
            stored[name] = q.contiguous()
            stored[name + "_scale_inv"] = s.contiguous()
            eff[name] = dequant_fp8(q, s)
        else:  # bf16 storage (also the non-quantised tensors of the FP8 checkpoint)
            stored[name] = t.to(torch.bfloat16).contiguous()
            eff[name] = stored[name].to(torch.float32)
    return stored, eff


def write_safetensors(ck, stored, out):
    files = []
    if ck["shards"] == 1:
        save_file(dict(stored), os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    # Size-balanced contiguous split in name order (keeps X.weight next to X.weight_scale_inv).
    names = list(stored.keys())
    nbytes = [stored[n].numel() * stored[n].element_size() for n in names]
    total = sum(nbytes)
    n = ck["shards"]
    groups, cur, acc = [], [], 0
    for name, b in zip(names, nbytes):
        cur.append(name)
        acc += b
        if acc >= total * (len(groups) + 1) / n and len(groups) < n - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    assert len(groups) == n and all(groups)
    weight_map = {}
    for k, grp in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file({x: stored[x] for x in grp}, os.path.join(out, fname), metadata={"format": "pt"})
        files.append(fname)
        for x in grp:
            weight_map[x] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return files + ["model.safetensors.index.json"]


def load_into_model(model, ck, eff):
    """Copy effective float32 values (hub names) into the transformers model (fused experts)."""
    sd = model.state_dict()
    L = ck["num_hidden_layers"]
    done = set()
    with torch.no_grad():
        for i in range(ck["first_k_dense_replace"], L):
            p = f"model.layers.{i}.mlp.experts."
            E = ck["n_routed_experts"]
            gate_up = torch.stack([torch.cat([eff[p + f"{e}.gate_proj.weight"], eff[p + f"{e}.up_proj.weight"]], 0)
                                   for e in range(E)])
            down = torch.stack([eff[p + f"{e}.down_proj.weight"] for e in range(E)])
            sd[p + "gate_up_proj"].copy_(gate_up)
            sd[p + "down_proj"].copy_(down)
            done |= {p + "gate_up_proj", p + "down_proj"}
            done |= {p + f"{e}.{k}_proj.weight" for e in range(E) for k in ("gate", "up", "down")}
        for name, t in eff.items():
            if name in done:
                continue
            if name.startswith(f"model.layers.{L}."):  # MTP: not part of the reference model
                done.add(name)
                continue
            assert sd[name].shape == t.shape, (name, sd[name].shape, t.shape)
            sd[name].copy_(t)
            done.add(name)
    missing = [k for k in sd if k not in done]
    assert not missing, f"model tensors not set: {missing}"
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


# ------------------------------------------------------------------------------------------------
# Routing analysis (re-derives the router and checks it against the model's output)
# ------------------------------------------------------------------------------------------------
def topk_sets(idx):
    return [frozenset(r) for r in idx.tolist()]


def sorted_gap(x, k):
    """x [N, n]: value of k-th largest minus (k+1)-th largest (inf if none / -inf neighbour)."""
    if k >= x.shape[1]:
        return torch.full((x.shape[0],), float("inf"))
    s = x.sort(dim=-1, descending=True).values
    gap = s[:, k - 1] - s[:, k]
    return torch.where(torch.isinf(s[:, k]), torch.full_like(gap, float("inf")), gap)


def v3_route(router, x, use_bias=True, use_groups=True):
    E, G, Gk, K = router.num_experts, router.num_group, router.topk_group, router.top_k
    scores = torch.nn.functional.linear(x.float(), router.weight.float()).sigmoid()
    choice = scores + (router.e_score_correction_bias if use_bias else 0.0)
    gap_g = torch.full((x.shape[0],), float("inf"))
    if use_groups:
        gs = choice.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
        gap_g = sorted_gap(gs, Gk)
        gidx = gs.topk(Gk, dim=-1)[1]
        mask = torch.zeros_like(gs).scatter_(1, gidx, 1).bool()
        mask = mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        choice = choice.masked_fill(~mask, float("-inf"))
    idx = choice.topk(K, dim=-1)[1]
    return topk_sets(idx), sorted_gap(choice, K), gap_g


def v2_route(router, x, use_groups=True):
    E, K = router.num_experts, router.top_k
    scores = torch.nn.functional.linear(x.float(), router.weight.float()).softmax(dim=-1)
    gap_g = torch.full((x.shape[0],), float("inf"))
    if router.topk_method == "group_limited_greedy" and use_groups:
        G, Gk = router.num_group, router.topk_group
        gs = scores.view(-1, G, E // G).max(dim=-1).values
        gap_g = sorted_gap(gs, Gk)
        gidx = gs.topk(Gk, dim=-1)[1]
        mask = torch.zeros_like(gs).scatter_(1, gidx, 1).bool()
        mask = mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        scores = scores.masked_fill(~mask, 0.0)
    idx = scores.topk(K, dim=-1)[1]
    return topk_sets(idx), sorted_gap(scores, K), gap_g


class RoutingMonitor:
    def __init__(self, model, arch):
        self.arch = arch
        self.routers = [l.mlp.gate for l in model.model.layers if hasattr(l.mlp, "gate")]
        self.reset()
        self.handles = [r.register_forward_hook(self.hook) for r in self.routers]

    def reset(self):
        self.calls = 0
        self.tokens = 0
        self.min_expert_gap = float("inf")
        self.min_group_gap = float("inf")
        self.bias_changed = 0
        self.groups_changed = 0

    def hook(self, router, args, output):
        x = args[0].reshape(-1, router.hidden_dim).detach()
        _, _, model_idx = output
        if self.arch == "v3":
            sel, gap_e, gap_g = v3_route(router, x)
            no_bias, _, _ = v3_route(router, x, use_bias=False)
            no_groups, _, _ = v3_route(router, x, use_groups=False)
            self.bias_changed += sum(a != b for a, b in zip(sel, no_bias))
        else:
            sel, gap_e, gap_g = v2_route(router, x)
            no_groups, _, _ = v2_route(router, x, use_groups=False)
        assert sel == topk_sets(model_idx), "re-derived routing differs from transformers' router"
        self.groups_changed += sum(a != b for a, b in zip(sel, no_groups))
        self.min_expert_gap = min(self.min_expert_gap, gap_e.min().item())
        self.min_group_gap = min(self.min_group_gap, gap_g.min().item())
        self.calls += 1
        self.tokens += x.shape[0]

    def summary(self):
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731  (strict JSON has no Infinity)
        return dict(router_calls=self.calls, routed_tokens=self.tokens,
                    min_expert_cutoff_gap=finite(self.min_expert_gap),
                    min_group_cutoff_gap=finite(self.min_group_gap),
                    tokens_where_bias_changes_experts=self.bias_changed if self.arch == "v3" else None,
                    tokens_where_group_limit_changes_experts=self.groups_changed)

    def close(self):
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------------------------
# Reference computation
# ------------------------------------------------------------------------------------------------
def build_model(ck, out):
    config = AutoConfig.from_pretrained(out)
    cls = DeepseekV2ForCausalLM if ck["arch"] == "v2" else DeepseekV3ForCausalLM
    model = cls._from_config(config, attn_implementation="eager", experts_implementation="eager",
                             dtype=torch.float32)
    model.eval()
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32, n
    return model


@torch.no_grad()
def forward_logits(model, ids):
    out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, ck, prompt):
    gc = GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=0,
                          bos_token_id=ck["bos"], eos_token_id=ck["eos"], pad_token_id=ck["eos"])
    inp = torch.tensor([prompt])
    res = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gc,
                         output_logits=True, return_dict_in_generate=True)
    gen = res.sequences[0, len(prompt):].tolist()
    margins, stds = [], []
    for step_logits in res.logits:
        v = step_logits[0].float()
        top = v.topk(2).values
        margins.append((top[0] - top[1]).item())
        stds.append(v.std(unbiased=False).item())
    # Cross-check against cache-free full recomputation.
    seq = list(prompt)
    for tok in gen:
        assert int(forward_logits(model, seq)[-1].argmax()) == tok, "cached generate != full recompute"
        seq.append(tok)
    return gen, margins, stds


@torch.no_grad()
def sensitivity(model, ck, ids, ref, tol):
    """How far (in units of the test tolerance 1e-3*std) common implementation mistakes move the logits."""
    res = OrderedDict()
    layers = model.model.layers
    attns = [l.self_attn for l in layers]
    routers = [l.mlp.gate for l in layers if hasattr(l.mlp, "gate")]

    def measure(key, apply, restore):
        saved = apply()
        try:
            res[key] = round(float((forward_logits(model, ids) - ref).abs().max()) / tol, 1)
        finally:
            restore(saved)

    def set_attr(objs, attr, fn):
        def apply():
            old = [getattr(o, attr) for o in objs]
            for o in objs:
                setattr(o, attr, fn(o))
            return old

        def restore(old):
            for o, v in zip(objs, old):
                setattr(o, attr, v)
        return apply, restore

    plain = lambda a: a.qk_head_dim ** -0.5  # noqa: E731
    if any(abs(a.scaling - plain(a)) > 0 for a in attns):
        measure("softmax_scale_without_mscale_squared", *set_attr(attns, "scaling", plain))
    rot = model.model.rotary_emb
    base = ck["rope_theta"]
    D = ck["qk_rope_head_dim"]
    default_inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float) / D))  # YaRN switched off
    if ck["yarn"] is not None:
        measure("rope_without_yarn_frequencies", *set_attr([rot], "inv_freq", lambda r: default_inv))
    if ck["yarn"] is None:
        other_base = 10000.0 if base != 10000.0 else 50000.0
        other_inv = 1.0 / (other_base ** (torch.arange(0, D, 2, dtype=torch.float) / D))
        measure(f"rope_theta_{other_base:g}_instead", *set_attr([rot], "inv_freq", lambda r: other_inv))
    if ck["arch"] == "v3":
        measure("rope_rotate_half_instead_of_interleaved", *set_attr([model.config], "rope_interleave", lambda c: False))
        measure("routing_without_correction_bias",
                *set_attr(routers, "e_score_correction_bias", lambda r: torch.zeros_like(r.e_score_correction_bias)))
        measure("norm_topk_prob_flipped", *set_attr(routers, "norm_topk_prob", lambda r: not r.norm_topk_prob))
    if ck["n_group"] > 1:
        measure("routing_without_group_limit", *set_attr(routers, "topk_group", lambda r: r.num_group))
    if ck["routed_scaling_factor"] != 1.0:
        measure("routed_scaling_factor_ignored", *set_attr(routers, "routed_scaling_factor", lambda r: 1.0))
    layer_norms = [l.input_layernorm for l in layers] + [l.post_attention_layernorm for l in layers] + [model.model.norm]
    inner = [a.kv_a_layernorm for a in attns] + [a.q_a_layernorm for a in attns if a.q_a_layernorm is not None]
    other_eps = 1e-5 if ck["rms_norm_eps"] == 1e-6 else 1e-6
    measure(f"layer_norm_eps_{other_eps:g}_instead", *set_attr(layer_norms, "variance_epsilon", lambda n: other_eps))
    if ck["rms_norm_eps"] != 1e-6:  # the mistake "q_a/kv_a norms use rms_norm_eps" only exists here
        measure("q_kv_a_norm_eps_from_rms_norm_eps", *set_attr(inner, "variance_epsilon", lambda n: ck["rms_norm_eps"]))

    # Router variants: first check that the re-implementation reproduces the reference exactly.
    def variant(**kw):
        fwd = v3_router_forward if ck["arch"] == "v3" else v2_router_forward

        def apply():
            for r in routers:
                r.forward = (lambda r_: (lambda hs: fwd(r_, hs, **kw)))(r)

        def restore(_):
            for r in routers:
                del r.forward
        return apply, restore

    measure("router_reimplementation_check", *variant())
    assert res.pop("router_reimplementation_check") == 0.0, "router re-implementation differs"
    if ck["arch"] == "v3":
        if ck["n_group"] > 1:
            measure("group_score_max_instead_of_top2_sum", *variant(group_score="max"))
            measure("groups_masked_with_0_instead_of_-inf", *variant(mask_value=0.0))
        measure("weights_from_biased_scores", *variant(biased_weights=True))
    elif ck["topk_method"] == "group_limited_greedy":
        measure("group_score_top2_sum_instead_of_max", *variant(group_score="top2"))

    # RoPE pairs taken as (i, i + d_r/2) -- rotate-half on the raw interleaved weights.
    if ck["arch"] == "v2":
        import transformers.models.deepseek_v2.modeling_deepseek_v2 as mv2

        def apply():
            orig = mv2.apply_rotary_emb

            def halves(xq, xk, freqs_cis):
                to_il = lambda t: torch.stack(t.chunk(2, dim=-1), dim=-1).flatten(-2)  # noqa: E731
                from_il = lambda t: torch.cat([t[..., 0::2], t[..., 1::2]], dim=-1)  # noqa: E731
                q, k = orig(to_il(xq), to_il(xk), freqs_cis)
                return from_il(q), from_il(k)
            mv2.apply_rotary_emb = halves
            return orig

        def restore(orig):
            mv2.apply_rotary_emb = orig
        measure("rope_rotate_half_instead_of_interleaved", apply, restore)
    return res


def _group_mask(gs, G, E, Gk):
    gidx = gs.topk(Gk, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(gs).scatter_(1, gidx, 1).bool()
    return mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)


def v3_router_forward(router, hs, group_score="top2", mask_value=float("-inf"), biased_weights=False):
    """DeepseekV3TopkRouter.forward re-implemented, with optional deliberate mistakes."""
    x = hs.view(-1, router.hidden_dim)
    logits = torch.nn.functional.linear(x.float(), router.weight.float())
    s = logits.sigmoid()
    c = s + router.e_score_correction_bias
    G, E = router.num_group, router.num_experts
    v = c.view(-1, G, E // G)
    gs = v.topk(2, dim=-1)[0].sum(-1) if group_score == "top2" else v.max(dim=-1).values
    masked = c.masked_fill(~_group_mask(gs, G, E, router.topk_group), mask_value)
    idx = masked.topk(router.top_k, dim=-1, sorted=False)[1]
    w = (c if biased_weights else s).gather(1, idx)
    if router.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return logits, w * router.routed_scaling_factor, idx


def v2_router_forward(router, hs, group_score="max"):
    """DeepseekV2TopkRouter.forward re-implemented, with optional deliberate mistakes."""
    x = hs.view(-1, router.hidden_dim)
    logits = torch.nn.functional.linear(x.float(), router.weight.float())
    s = logits.softmax(dim=-1, dtype=torch.float32)
    if router.topk_method == "group_limited_greedy":
        G, E = router.num_group, router.num_experts
        v = s.view(-1, G, E // G)
        gs = v.max(dim=-1).values if group_score == "max" else v.topk(2, dim=-1)[0].sum(-1)
        s = s.masked_fill(~_group_mask(gs, G, E, router.topk_group), 0.0)
    w, idx = torch.topk(s, k=router.top_k, dim=-1, sorted=False)
    return logits, w * router.routed_scaling_factor, idx


def derived_values(model, ck):
    rot = model.model.rotary_emb
    return OrderedDict(
        softmax_scale=model.model.layers[0].self_attn.scaling,
        rope_attention_scaling=float(rot.attention_scaling),
        rope_inv_freq=[float(x) for x in rot.inv_freq.tolist()],
    )


def make_prompt(ck, seed):
    g = torch.Generator().manual_seed(seed)
    rest = torch.randint(2, ck["vocab_size"], (PROMPT_LEN - 1,), generator=g).tolist()
    return [ck["bos"]] + rest


def build_checkpoint(ck, root):
    out = os.path.join(root, ck["name"])
    print(f"\n=== {ck['name']}: {ck['description']}")
    for attempt in range(40):
        wseed = ck["seed"] + 100 * (attempt // 8)
        pseed = ck["seed"] * 7 + attempt
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out)
        write_config(ck, out)
        master = draw_weights(ck, wseed)
        stored, eff = to_storage(ck, master)
        files = write_safetensors(ck, stored, out)
        model = build_model(ck, out)
        load_into_model(model, ck, eff)

        prompt = make_prompt(ck, pseed)
        mon = RoutingMonitor(model, ck["arch"])
        logits = forward_logits(model, prompt)
        gen, margins, stds = greedy(model, ck, prompt[:GREEDY_PROMPT_LEN])
        route = mon.summary()
        mon.close()

        std = logits.std(unbiased=False).item()
        problems = []
        if not torch.isfinite(logits).all() or not (0.3 < std < 30.0):
            problems.append(f"logits not sane (std {std})")
        rel = [m / s for m, s in zip(margins, stds)]
        if min(rel) < MARGIN_REL:
            problems.append(f"greedy margin {min(rel):.2e}*std too small")
        if len(gen) != MAX_NEW_TOKENS or ck["eos"] in gen:
            problems.append("EOS generated")
        if len(set(gen)) < 8:
            problems.append("greedy continuation too repetitive")
        if min(mon.min_expert_gap, mon.min_group_gap) < ROUTE_GAP_MIN:
            problems.append(f"routing near-tie {mon.min_expert_gap:.2e}/{mon.min_group_gap:.2e}")
        if ck["arch"] == "v3" and route["tokens_where_bias_changes_experts"] == 0:
            problems.append("correction bias changes no selection")
        if ck["n_group"] > 1 and route["tokens_where_group_limit_changes_experts"] == 0:
            problems.append("group limit changes no selection")
        if not problems:
            break
        print(f"  attempt {attempt} (weight seed {wseed}, prompt seed {pseed}) rejected: {'; '.join(problems)}")
    else:
        raise SystemExit(f"{ck['name']}: no acceptable seed found")

    tol = LOGIT_TOL_REL * std
    sens = sensitivity(model, ck, prompt, logits, tol)
    derived = derived_values(model, ck)
    np.save(os.path.join(out, "logits.npy"), np.ascontiguousarray(logits.numpy().astype("<f4")))

    fp8_info = None
    if ck["dtype"] == "fp8":
        scales = {k: list(v.shape) for k, v in stored.items() if k.endswith("_scale_inv")}
        partial = sorted({k[: -len("_scale_inv")] for k in scales
                          if any(d % BLOCK for d in stored[k[: -len("_scale_inv")]].shape)})
        fp8_info = dict(fp8_tensors=len(scales), tensors_with_partial_blocks=len(partial),
                        example_scale_shapes={k: scales[k] for k in sorted(scales)
                                              if k.startswith("model.layers.0.")})

    ref = OrderedDict()
    ref["description"] = ck["description"]
    ref["transformers_version"] = transformers.__version__
    ref["torch_version"] = torch.__version__
    ref["model_class"] = "DeepseekV2ForCausalLM" if ck["arch"] == "v2" else "DeepseekV3ForCausalLM"
    ref["config_style"] = "hub (rope_theta + rope_scaling)" if ck["style"] == "hub" else "transformers-5 save_pretrained (rope_parameters)"
    ref["weights_dtype"] = {"f32": "float32", "bf16": "bfloat16", "fp8": "float8_e4m3fn + 128x128 weight_scale_inv"}[ck["dtype"]]
    ref["files"] = files
    ref["prompt_ids"] = prompt
    ref["logits_file"] = "logits.npy"
    ref["logits_shape"] = list(logits.shape)
    ref["logits_std"] = std
    ref["greedy"] = OrderedDict(
        prompt_ids=prompt[:GREEDY_PROMPT_LEN], generated_ids=gen, max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=ck["eos"], step_top1_top2_margin=margins, step_logits_std=stds)
    ref["routing_checks"] = route
    ref["sensitivity_in_tolerance_units"] = sens
    ref["derived"] = derived
    if fp8_info:
        ref["fp8"] = fp8_info
    if ck.get("mtp"):
        ref["mtp"] = f"model.layers.{ck['num_hidden_layers']}.* present in the files, ignored by the reference"
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2, allow_nan=False)
        f.write("\n")

    print(f"  weight seed {wseed}, prompt seed {pseed}; logits std {std:.3f}; files {files}")
    print(f"  greedy {prompt[:GREEDY_PROMPT_LEN]} -> {gen}; min margin {min(rel):.3f}*std")
    print(f"  routing: {route}")
    if ck["arch"] == "v3":
        print(f"  correction bias changes the selected experts for {route['tokens_where_bias_changes_experts']} "
              f"of {route['routed_tokens']} routed tokens")
    print(f"  derived: scale {derived['softmax_scale']:.6f}, rope amplitude {derived['rope_attention_scaling']}")
    print(f"  sensitivity (x tolerance): {dict(sens)}")
    if fp8_info:
        print(f"  fp8: {fp8_info}")
    return out, logits, prompt


@torch.no_grad()
def reload_check(ck, out, logits, prompt):
    cls = DeepseekV2ForCausalLM if ck["arch"] == "v2" else DeepseekV3ForCausalLM
    m = cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    m.eval()
    diff = (forward_logits(m, prompt) - logits).abs().max().item()
    print(f"  reload {ck['name']} with from_pretrained: max |dlogit| = {diff:.3g}")
    assert diff <= 1e-5 * logits.std().item(), f"{ck['name']}: reload differs by {diff}"


@torch.no_grad()
def verify_from_files(ck, out):
    """Rebuild the reference from the files alone (config.json, safetensors, index) and compare."""
    from safetensors import safe_open
    index_path = os.path.join(out, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        wmap = index["weight_map"]
    else:
        index, wmap = None, None
    files = sorted(set(wmap.values())) if wmap else ["model.safetensors"]
    tensors, total = {}, 0
    for fname in files:
        with safe_open(os.path.join(out, fname), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                assert k not in tensors, f"{k} stored twice"
                if wmap is not None:
                    assert wmap[k] == fname, (k, wmap[k], fname)
                tensors[k] = t
                total += t.numel() * t.element_size()
    if index is not None:
        assert set(wmap) == set(tensors) and index["metadata"]["total_size"] == total
    expect = all_shapes(ck)
    L = ck["num_hidden_layers"]
    eff = OrderedDict()
    for name, shape in expect.items():
        t = tensors.pop(name)
        assert tuple(t.shape) == tuple(shape), (name, t.shape, shape)
        if name.endswith("e_score_correction_bias") or ck["dtype"] == "f32":
            assert t.dtype == torch.float32, (name, t.dtype)
            eff[name] = t.float()
        elif ck["dtype"] == "fp8" and fp8_eligible(name):
            s = tensors.pop(name + "_scale_inv")
            assert t.dtype == torch.float8_e4m3fn and s.dtype == torch.float32, name
            assert tuple(s.shape) == (math.ceil(shape[0] / BLOCK), math.ceil(shape[1] / BLOCK)), name
            eff[name] = dequant_fp8(t, s)
        else:
            assert t.dtype == torch.bfloat16, (name, t.dtype)
            eff[name] = t.float()
    assert not tensors, f"unexpected tensors {sorted(tensors)}"
    model = build_model(ck, out)
    load_into_model(model, ck, eff)
    with open(os.path.join(out, "reference.json")) as f:
        ref = json.load(f)
    want = torch.from_numpy(np.load(os.path.join(out, "logits.npy")))
    got = forward_logits(model, ref["prompt_ids"])
    assert got.shape == want.shape and torch.equal(got, want), f"{ck['name']}: rebuilt-from-files logits differ"
    mtp = sum(1 for k in expect if k.startswith(f"model.layers.{L}."))
    print(f"  verified {ck['name']} from its files: {len(expect)} weights ({mtp} MTP), logits identical")


README = """# Golden fixtures (tiny random DeepSeek checkpoints)

Generated by `scripts/make_fixtures.py` with transformers 5.24.0 (float32, CPU, eager attention).
Do not edit by hand; regenerate with

    python -m venv /tmp/fx && /tmp/fx/bin/pip install -r scripts/requirements-fixtures.txt
    /tmp/fx/bin/python scripts/make_fixtures.py          # writes fixtures/models/<name>/

The script is deterministic (fixed seeds). Each folder holds `config.json`, `generation_config.json`,
the weights (`model.safetensors`, or `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`),
`logits.npy` (float32 `[len(prompt_ids), vocab_size]`, transformers' logits for one forward over
`prompt_ids`) and `reference.json` (`prompt_ids`, `greedy` = {prompt_ids, generated_ids,
max_new_tokens, per-step top-1/top-2 margins}, routing checks, `sensitivity_in_tolerance_units` =
how many multiples of the 1e-3·std(logits) tolerance a typical mistake moves the logits, and
`derived` = softmax scale and RoPE inverse frequencies as transformers computed them).
The reference is the float32 computation on exactly the stored values (bf16 upcast, FP8 dequantised
as f32(q)·scale[i/128, j/128]). The header of the script summarises what transformers computes.

| checkpoint | covers |
|---|---|
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "models"))
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--no-reload", action="store_true")
    args = ap.parse_args()
    if transformers.__version__ != TRANSFORMERS_VERSION:
        print(f"warning: transformers {transformers.__version__}, fixtures are pinned to {TRANSFORMERS_VERSION}",
              file=sys.stderr)
    root = os.path.abspath(args.out)
    os.makedirs(root, exist_ok=True)
    results = []
    for ck in CHECKPOINTS:
        if args.only and ck["name"] not in args.only:
            continue
        results.append((ck,) + build_checkpoint(ck, root))
    print("\n=== rebuild each reference from the written files")
    for ck, out, logits, prompt in results:
        verify_from_files(ck, out)
    if not args.no_reload:
        print("\n=== reload checks (from_pretrained, non-FP8)")
        for ck, out, logits, prompt in results:
            if ck["dtype"] != "fp8":
                reload_check(ck, out, logits, prompt)
    if not args.only:
        with open(os.path.join(root, "README.md"), "w") as f:
            f.write(README)
            for ck in CHECKPOINTS:
                f.write(f"| `{ck['name']}` | {ck['description']} |\n")


if __name__ == "__main__":
    main()
