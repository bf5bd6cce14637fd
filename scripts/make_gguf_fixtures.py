#!/usr/bin/env python3
"""Writes the GGUF test fixtures in fixtures/gguf/ from the safetensors golden fixtures.

Run with the reference venv (PyPI `gguf` >= 0.19, numpy, transformers for the tokenizer):

    /work/refenv/bin/python scripts/make_gguf_fixtures.py

Each file follows llama.cpp's `convert_hf_to_gguf.py` (class `DeepseekV2Model`) in naming,
layout and metadata, in one of two generations of that converter:

* "current": `attn_kv_b` split per head into `attn_k_b` (W_UK transposed, [h, c, n]) and
  `attn_v_b` ([h, v, c]); `attention.key_length`/`value_length` are the latent sizes (c + r, c)
  and `attention.key_length_mla`/`value_length_mla` the per-head sizes; `head_count_kv` = 1;
  `expert_gating_func`, expert groups and `expert_weights_norm` written.
* "legacy" (the 2024 converter): one fused `attn_kv_b`; key/value_length are the per-head sizes;
  no `_mla` keys, no gating function (llama.cpp then assumes softmax).

Tensor names come from gguf's own TensorNameMap (as the converter's `map_tensor_name`); routed
experts are stacked into 3-D `ffn_{gate,up,down}_exps`; norms, 1-D tensors and the router
(`ffn_gate_inp`) stay F32; other weights take the output type, with the converter's fallback to
F16 for rows that are not whole quantization blocks. The model fixtures carry no tokenizer (the
goldens have none); `whale-tiny-vocab.gguf` is the bundled model's tokenizer alone, written as
`convert_hf_to_gguf.py --vocab-only` does (pre-tokenizer "gpt-2": whale-tiny's is plain
byte-level BPE, which the converter's hash table does not know).

Deterministic: rerunning produces identical files.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np

import gguf

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "fixtures" / "models"
OUT = ROOT / "fixtures" / "gguf"

# (golden fixture, converter generation, output type)
FIXTURES = [
    ("v2_greedy_f32", "legacy", "f32"),
    ("v2_greedy_f32", "current", "f32"),
    ("v2_greedy_f32", "legacy", "q8_0"),
    ("v2_greedy_f32", "legacy", "q4_0"),
    ("v2_grouped_bf16_sharded", "current", "bf16"),
    ("v3_noaux_bf16", "current", "bf16"),
]

OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    # The converter cannot write Q4_0; llama-quantize's Q4_0 mix does, with the output head at
    # Q6_K, or Q8_0 when its rows are not whole 256-value blocks (as here).
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}


def read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) checkpoint as float32 arrays (bf16 widened exactly)."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            buf = raw[base + start : base + end]
            if info["dtype"] == "F32":
                arr = np.frombuffer(buf, dtype="<f4")
            elif info["dtype"] == "BF16":
                arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                raise SystemExit(f"{path}: {name}: dtype {info['dtype']} not handled")
            out[name] = arr.reshape(info["shape"]).copy()
    return out


def hf_tensors(cfg: dict, tensors: dict[str, np.ndarray], generation: str):
    """(hf-style name, array) in the converter's post-`modify_tensors` form."""
    n_layers = cfg["num_hidden_layers"]
    experts: dict[int, dict[str, np.ndarray]] = {}
    for name in sorted(tensors):
        data = tensors[name]
        parts = name.split(".")
        bid = int(parts[2]) if name.startswith("model.layers.") else None
        if bid is not None and bid >= n_layers:
            continue  # MTP layers are skipped, as the converter does
        if name.endswith("e_score_correction_bias"):
            name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        if ".mlp.experts." in name:
            experts.setdefault(bid, {})[name] = data
            if len(experts[bid]) == cfg["n_routed_experts"] * 3:
                for w in ("down_proj", "gate_proj", "up_proj"):
                    stacked = np.stack(
                        [experts[bid][f"model.layers.{bid}.mlp.experts.{e}.{w}.weight"] for e in range(cfg["n_routed_experts"])]
                    )
                    yield f"model.layers.{bid}.mlp.experts.{w}.weight", stacked
            continue
        if name.endswith("kv_b_proj.weight") and generation == "current":
            h, n, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
            kv_b = data.reshape(h, n + v, data.shape[-1])
            k_b = np.ascontiguousarray(kv_b[:, :n, :].transpose(0, 2, 1))
            v_b = np.ascontiguousarray(kv_b[:, n:, :])
            yield name.replace("kv_b_proj", "k_b_proj"), k_b
            yield name.replace("kv_b_proj", "v_b_proj"), v_b
            continue
        yield name, data


def rope_params(cfg: dict) -> dict:
    """The converter's `rope_parameters`: `rope_parameters` (transformers 5) or `rope_scaling`
    + `rope_theta` (hub), with `type` read as `rope_type`."""
    p = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if "type" in p and "rope_type" not in p:
        p["rope_type"] = p.pop("type")
    p.setdefault("rope_theta", cfg.get("rope_theta"))
    return p


def write_params(w: gguf.GGUFWriter, cfg: dict, generation: str, ftype, name: str):
    current = generation == "current"
    rp = rope_params(cfg)
    h = cfg["num_attention_heads"]
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    # TextModel.set_gguf_parameters
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(h)
    # current: "deepseek2 using MLA converts into MQA"; legacy: the config's value
    w.add_head_count_kv(1 if current else cfg.get("num_key_value_heads", h))
    if rp.get("rope_type") == "yarn" and rp.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        if current:
            if rp.get("beta_fast") is not None:
                w.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
            if rp.get("beta_slow") is not None:
                w.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
    w.add_rope_freq_base(rp["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_expert_count(cfg["n_routed_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if current:
        if cfg.get("n_group") is not None:
            w.add_expert_group_count(cfg["n_group"])
        if cfg.get("topk_group") is not None:
            w.add_expert_group_used_count(cfg["topk_group"])
        score = cfg.get("scoring_func")
        if score == "sigmoid":
            w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        elif score == "softmax":
            w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_file_type(ftype)
    # DeepseekV2Model.set_gguf_parameters
    w.add_leading_dense_block_count(cfg["first_k_dense_replace"])
    w.add_vocab_size(cfg["vocab_size"])
    if cfg.get("q_lora_rank") is not None:
        w.add_q_lora_rank(cfg["q_lora_rank"])
    c, r, n, v = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    w.add_kv_lora_rank(c)
    if current:
        w.add_key_length(c + r)
        w.add_value_length(c)
        w.add_key_length_mla(n + r)
        w.add_value_length_mla(v)
    else:
        w.add_key_length(n + r)
        w.add_value_length(v)
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_count(cfg.get("n_shared_experts", 0))
    if cfg.get("routed_scaling_factor") is not None:
        w.add_expert_weights_scale(cfg["routed_scaling_factor"])
    if current and cfg.get("norm_topk_prob"):
        w.add_expert_weights_norm(True)
    w.add_rope_dimension_count(r)
    if rp.get("mscale_all_dim") is not None:
        # [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]: written as 0.1 * mscale_all_dim
        w.add_rope_scaling_yarn_log_mul(0.1 * rp["mscale_all_dim"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tensor(w: gguf.GGUFWriter, gname: str, data: np.ndarray, qtype):
    n_dims = data.ndim
    if n_dims <= 1 or gname.endswith("_norm.weight") or ".ffn_gate_inp." in gname or not gname.endswith(".weight"):
        qtype = gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q4_0 and gname == "output.weight":
        assert data.shape[-1] % 256 != 0, "gguf-py cannot write the Q6_K head of a Q4_0 mix"
        qtype = gguf.GGMLQuantizationType.Q8_0
    data = data.astype(np.float32)
    try:
        q = gguf.quants.quantize(data, qtype)
    except gguf.QuantError:
        qtype = gguf.GGMLQuantizationType.F16  # the converter's fallback
        q = gguf.quants.quantize(data, qtype)
    w.add_tensor(gname, q, raw_dtype=qtype)


def write_model(fixture: str, generation: str, outtype: str) -> Path:
    folder = SRC / fixture
    cfg = json.loads((folder / "config.json").read_text())
    tensors = read_safetensors(folder)
    qtype, ftype = OUTTYPES[outtype]
    short = fixture.replace("_sharded", "")
    form = "kvb" if generation == "legacy" else "split"
    path = OUT / f"{short}-{form}-{outtype}.gguf"
    w = gguf.GGUFWriter(path, "deepseek2")
    write_params(w, cfg, generation, ftype, short)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, cfg["num_hidden_layers"])
    for name, data in hf_tensors(cfg, tensors, generation):
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise SystemExit(f"{fixture}: cannot map {name}")
        add_tensor(w, gname, data, qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def looks_special(token: str) -> bool:
    """The converter's `does_token_look_special`: added tokens some models forget to mark."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def write_vocab(model_dir: Path, name: str, pre: str) -> Path:
    """`convert_hf_to_gguf.py --vocab-only` for a gpt2-style tokenizer: the model parameters,
    `get_vocab_base`, then gguf.SpecialVocab for merges, special ids, add_bos/eos and the chat
    template; no tensors."""
    from transformers import AutoTokenizer

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab_size = cfg.get("vocab_size", len(tok.vocab))
    reverse = {i: t for t, i in tok.vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False))
            if decoder[i].special or looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    path = OUT / f"{name}-vocab.gguf"
    w = gguf.GGUFWriter(path, "deepseek2")
    # --vocab-only still writes the model parameters, just no tensors.
    write_params(w, cfg, "current", gguf.LlamaFileType.MOSTLY_BF16, name)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(w, quiet=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for fixture, generation, outtype in FIXTURES:
        path = write_model(fixture, generation, outtype)
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
    path = write_vocab(ROOT / "models" / "whale-tiny", "whale-tiny", "gpt-2")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    sys.exit(main())
