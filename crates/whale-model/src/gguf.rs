//! llama.cpp's `deepseek2` GGUF files: metadata → [`Config`], and tensors by Hugging Face name.
//!
//! The naming and layout follow llama.cpp's converter (`convert_hf_to_gguf.py`, class
//! `DeepseekV2Model`, which also converts V3) and loader (`src/models/deepseek2.cpp`):
//!
//! * Names: one table, [`LAYER_NAMES`], maps each per-layer Hugging Face name to llama.cpp's
//!   (`model.layers.N.self_attn.q_a_proj.weight` → `blk.N.attn_q_a.weight`).
//! * Routed experts are fused per layer into 3-D `ffn_{gate,up,down}_exps` (`[e, rows, cols]`,
//!   ggml dims `[cols, rows, e]`); expert `e` is a contiguous slice. Some files fuse gate and up
//!   into `ffn_gate_up_exps` (`[e, 2·rows, cols]`, gate rows first).
//! * `kv_b_proj` is `attn_kv_b` in older files. Newer converters split it per head into
//!   `attn_k_b` = `W_UK[h]ᵀ` (`[h, c, n]`) and `attn_v_b` = `W_UV[h]` (`[h, v, c]`) and drop
//!   `attn_kv_b`; [`rebuild_kv_b`] inverts that exactly. Those files also say so in metadata:
//!   `key_length`/`value_length` become the latent sizes (`c + r`, `c`) and the per-head sizes
//!   move to `key_length_mla`/`value_length_mla`.
//! * Dims are ggml order (`ne0` first = columns), the reverse of PyTorch's shapes.
//!
//! Metadata is translated into a Hugging Face `config.json` and parsed by [`Config`], so both
//! formats share one validation; its errors are reported under the GGUF key they came from.

use std::collections::HashSet;
use std::path::Path;

use half::{bf16, f16};
use serde_json::{json, Map, Value as Json};
use whale_gguf::{GgmlType, GgufFile, TensorInfo, Value};
use whale_tensor::dtype::bytes_to_f32;
use whale_tensor::{DType, QuantType, Weight, WeightData};

use crate::config::Config;
use crate::error::{ModelError, Result};

/// The only architecture whale reads (`general.architecture`).
pub const ARCH: &str = "deepseek2";

/// Per-layer tensors: Hugging Face suffix after `model.layers.N.` → llama.cpp's after `blk.N.`.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_a_proj.weight", "attn_q_a.weight"),
    ("self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"),
    ("self_attn.q_b_proj.weight", "attn_q_b.weight"),
    (
        "self_attn.kv_a_proj_with_mqa.weight",
        "attn_kv_a_mqa.weight",
    ),
    ("self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"),
    ("self_attn.kv_b_proj.weight", "attn_kv_b.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
    (
        "mlp.shared_experts.gate_proj.weight",
        "ffn_gate_shexp.weight",
    ),
    ("mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"),
    (
        "mlp.shared_experts.down_proj.weight",
        "ffn_down_shexp.weight",
    ),
];

/// Whole-model tensors.
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Where a Hugging Face tensor lives in a GGUF file.
#[derive(Debug, PartialEq)]
enum Place {
    /// One GGUF tensor with the same layout.
    Tensor(String),
    /// Routed expert `e` of layer `layer`; `proj` is `gate`, `up` or `down`.
    Expert {
        layer: usize,
        e: usize,
        proj: &'static str,
    },
    /// `kv_b_proj` of `layer`: `attn_kv_b`, or rebuilt from `attn_k_b` and `attn_v_b`.
    KvB { layer: usize },
}

/// Translates a Hugging Face tensor name; `None` for a name llama.cpp has no tensor for.
fn place(hf: &str) -> Option<Place> {
    if let Some(&(_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(Place::Tensor(g.to_string()));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if suffix == "self_attn.kv_b_proj.weight" {
        return Some(Place::KvB { layer });
    }
    if let Some(expert) = suffix.strip_prefix("mlp.experts.") {
        let (e, proj) = expert.split_once('.')?;
        let proj = match proj {
            "gate_proj.weight" => "gate",
            "up_proj.weight" => "up",
            "down_proj.weight" => "down",
            _ => return None,
        };
        return Some(Place::Expert {
            layer,
            e: e.parse().ok()?,
            proj,
        });
    }
    let &(_, g) = LAYER_NAMES.iter().find(|(h, _)| *h == suffix)?;
    Some(Place::Tensor(format!("blk.{layer}.{g}")))
}

/// A `deepseek2` GGUF file: its mapping, the config its metadata describes, and tensor access
/// by Hugging Face name for [`crate::checkpoint::WeightLoader`].
pub struct GgufCheckpoint {
    file: GgufFile,
    config: Config,
}

impl GgufCheckpoint {
    /// Maps `path` and reads its config; errors name the file and the key.
    pub fn open(path: &Path) -> Result<GgufCheckpoint> {
        let file = GgufFile::open(path)?;
        let config = config_from_metadata(&file)?;
        Ok(GgufCheckpoint { file, config })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn tensor_names(&self) -> Vec<String> {
        self.file.tensors().iter().map(|t| t.name.clone()).collect()
    }

    pub(crate) fn contains(&self, hf: &str) -> bool {
        match place(hf) {
            Some(Place::Tensor(name)) => self.file.tensor(&name).is_some(),
            Some(Place::KvB { layer }) => {
                self.has(&format!("blk.{layer}.attn_kv_b.weight"))
                    || self.has(&format!("blk.{layer}.attn_k_b.weight"))
            }
            Some(Place::Expert { layer, proj, .. }) => {
                self.has(&format!("blk.{layer}.ffn_{proj}_exps.weight"))
                    || (proj != "down" && self.has(&format!("blk.{layer}.ffn_gate_up_exps.weight")))
            }
            None => false,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// A tensor that must exist with dims `dims` (ggml order); marks it used.
    fn tensor(
        &self,
        name: &str,
        dims: &[u64],
        used: &mut HashSet<String>,
    ) -> Result<&TensorInfo, String> {
        let Some(t) = self.file.tensor(name) else {
            return Err(format!("missing tensor `{name}` (expected dims {dims:?})"));
        };
        used.insert(name.to_string());
        if trim_ones(&t.dims) != trim_ones(dims) {
            return Err(format!(
                "tensor `{name}` has dims {:?}, expected {dims:?} (ggml order, columns first)",
                t.dims
            ));
        }
        Ok(t)
    }

    /// The `[rows, cols]` matrix stored for Hugging Face tensor `hf`.
    pub(crate) fn matrix(
        &self,
        hf: &str,
        rows: usize,
        cols: usize,
        used: &mut HashSet<String>,
    ) -> Result<Weight, String> {
        if let Some(Place::KvB { layer }) = place(hf) {
            return self.kv_b(hf, layer, rows, cols, used);
        }
        let (t, bytes) = self.slice(hf, rows, cols, used)?;
        weight(t, cols, &[(rows, bytes)])
    }

    /// Matrices `hfs` (`rows` each) stacked row-wise into one weight and packed straight from
    /// the file (an MLP's gate and up, computed as one matmul); `None` when they are not all
    /// stored slices of one ggml type, and the caller loads them apart (which also reports
    /// what is missing or malformed).
    pub(crate) fn stacked(
        &self,
        hfs: &[&str],
        rows: usize,
        cols: usize,
        used: &mut HashSet<String>,
    ) -> Option<Result<Weight, String>> {
        let mut parts = Vec::with_capacity(hfs.len());
        for hf in hfs {
            if matches!(place(hf), None | Some(Place::KvB { .. })) {
                return None;
            }
            parts.push(self.slice(hf, rows, cols, used).ok()?);
        }
        let first = parts.first()?.0;
        if parts.iter().any(|(t, _)| t.ggml_type != first.ggml_type) {
            return None;
        }
        let bytes: Vec<(usize, &[u8])> = parts.iter().map(|&(_, b)| (rows, b)).collect();
        Some(weight(first, cols, &bytes))
    }

    /// The tensor holding Hugging Face matrix `hf` and the bytes of its `[rows, cols]`: the
    /// whole tensor, or one expert's rows of a fused `ffn_*_exps`.
    fn slice(
        &self,
        hf: &str,
        rows: usize,
        cols: usize,
        used: &mut HashSet<String>,
    ) -> Result<(&TensorInfo, &[u8]), String> {
        let (r, c) = (rows as u64, cols as u64);
        match place(hf) {
            None => Err(format!("tensor `{hf}` has no llama.cpp name")),
            Some(Place::Tensor(name)) => {
                let t = self.tensor(&name, &[c, r], used)?;
                Ok((t, self.file.tensor_bytes(t)))
            }
            Some(Place::Expert { layer, e, proj }) => {
                let n = self.config.moe.as_ref().map_or(0, |m| m.n_routed_experts) as u64;
                let fused = format!("blk.{layer}.ffn_{proj}_exps.weight");
                let gate_up = format!("blk.{layer}.ffn_gate_up_exps.weight");
                // gate and up may share one tensor: rows 0..r are gate, r..2r up.
                let (t, first_row, stored_rows) =
                    if proj != "down" && !self.has(&fused) && self.has(&gate_up) {
                        let t = self.tensor(&gate_up, &[c, 2 * r, n], used)?;
                        (t, if proj == "gate" { 0 } else { r }, 2 * r)
                    } else {
                        (self.tensor(&fused, &[c, r, n], used)?, 0, r)
                    };
                let row_bytes = t.ggml_type.row_bytes(c).ok_or_else(|| {
                    format!(
                        "tensor `{}`: {} rows of {c} values are not whole blocks",
                        t.name, t.ggml_type
                    )
                })?;
                let start = ((e as u64 * stored_rows + first_row) * row_bytes) as usize;
                Ok((
                    t,
                    &self.file.tensor_bytes(t)[start..start + (r * row_bytes) as usize],
                ))
            }
            Some(Place::KvB { .. }) => Err(format!("tensor `{hf}` is rebuilt, not stored")),
        }
    }

    /// `kv_b_proj` of `layer`: `attn_kv_b`, or rebuilt from `attn_k_b` and `attn_v_b`.
    fn kv_b(
        &self,
        hf: &str,
        layer: usize,
        rows: usize,
        cols: usize,
        used: &mut HashSet<String>,
    ) -> Result<Weight, String> {
        let (r, c) = (rows as u64, cols as u64);
        let fused = format!("blk.{layer}.attn_kv_b.weight");
        if self.has(&fused) {
            let t = self.tensor(&fused, &[c, r], used)?;
            return weight(t, cols, &[(rows, self.file.tensor_bytes(t))]);
        }
        let (h, n, v) = (
            self.config.num_attention_heads as u64,
            self.config.qk_nope_head_dim as u64,
            self.config.v_head_dim as u64,
        );
        if h * (n + v) != r {
            return Err(format!(
                "tensor `{hf}`: {r} rows is not heads × (nope + v dims)"
            ));
        }
        let k_b = self.tensor(&format!("blk.{layer}.attn_k_b.weight"), &[n, c, h], used)?;
        let v_b = self.tensor(&format!("blk.{layer}.attn_v_b.weight"), &[c, v, h], used)?;
        let k = weight(
            k_b,
            n as usize,
            &[((h * c) as usize, self.file.tensor_bytes(k_b))],
        )?;
        let vw = weight(
            v_b,
            c as usize,
            &[((h * v) as usize, self.file.tensor_bytes(v_b))],
        )?;
        Ok(rebuild_kv_b(&k, &vw, h as usize))
    }

    /// The vector stored for Hugging Face tensor `hf`, as `f32`.
    pub(crate) fn vector(
        &self,
        hf: &str,
        len: usize,
        used: &mut HashSet<String>,
    ) -> Result<Vec<f32>, String> {
        let Some(Place::Tensor(name)) = place(hf) else {
            return Err(format!("tensor `{hf}` has no llama.cpp name"));
        };
        let t = self.tensor(&name, &[len as u64], used)?;
        let dtype = match t.ggml_type {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::Bf16,
            other => {
                return Err(format!(
                    "tensor `{name}` is {other}; vectors must be F32, F16 or BF16"
                ))
            }
        };
        let mut out = Vec::with_capacity(len);
        bytes_to_f32(dtype, self.file.tensor_bytes(t), &mut out);
        Ok(out)
    }
}

/// `dims` without trailing 1s (a ggml `[n, 1]` is the same tensor as `[n]`).
fn trim_ones(dims: &[u64]) -> &[u64] {
    let keep = dims.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
    &dims[..keep]
}

/// The ggml types whale computes with, i.e. those [`Weight::from_gguf_bytes`] reads.
const SUPPORTED: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// A weight of `t`'s type from `parts` (`(rows, bytes)` of `[rows, cols]` each, stacked
/// row-wise; one part for a single matrix); errors name `t`.
fn weight(t: &TensorInfo, cols: usize, parts: &[(usize, &[u8])]) -> Result<Weight, String> {
    if !SUPPORTED.contains(&t.ggml_type) {
        return Err(format!(
            "tensor `{}` is {}, which whale cannot compute with (it reads F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K and Q6_K)",
            t.name, t.ggml_type
        ));
    }
    Weight::from_gguf_parts_for(whale_tensor::Isa::detect(), t.ggml_type.0, cols, parts)
        .map_err(|e| format!("tensor `{}`: {e}", t.name))
}

/// Inverts the converter's split of `kv_b_proj` (`[h·(n + v), c]`, per head `n` rows of `W_UK`
/// then `v` rows of `W_UV`): `k_b` holds `W_UK[h]ᵀ` as `[h·c, n]`, `v_b` holds `W_UV[h]` as
/// `[h·v, c]`. Float sources keep their dtype (the values are only moved, so the result is
/// bit-identical to the original). Block-quantized ones are decoded and re-encoded as Q8_0,
/// since `W_UK`'s rows cut across the blocks `k_b` was quantized in: Q8_0's rounding is finer
/// than any source block format's (the `W_UV` rows of a Q8_0 file come back bit-exact), and
/// this keeps the layer's bytes per token a quarter of an f32 rebuild's.
fn rebuild_kv_b(k_b: &Weight, v_b: &Weight, h: usize) -> Weight {
    let (c, n) = (k_b.rows / h, k_b.cols);
    let v = v_b.rows / h;
    let (k, vv) = (k_b.to_f32(), v_b.to_f32()); // [h, c, n], [h, v, c]
    let mut out = Vec::with_capacity(h * (n + v) * c); // [h, n + v, c]
    for head in 0..h {
        let k_head = &k[head * c * n..][..c * n];
        for i in 0..n {
            out.extend((0..c).map(|j| k_head[j * n + i]));
        }
        out.extend_from_slice(&vv[head * v * c..][..v * c]);
    }
    let rows = h * (n + v);
    match (&k_b.data, &v_b.data) {
        (WeightData::Bf16(_), WeightData::Bf16(_)) => Weight::new(
            rows,
            c,
            WeightData::Bf16(out.into_iter().map(bf16::from_f32).collect()),
        ),
        (WeightData::F16(_), WeightData::F16(_)) => Weight::new(
            rows,
            c,
            WeightData::F16(out.into_iter().map(f16::from_f32).collect()),
        ),
        (WeightData::F32(_), WeightData::F32(_)) => Weight::from_f32(rows, c, out),
        _ => {
            let w = Weight::from_f32(rows, c, out);
            match QuantType::Q8_0.fits(c) {
                true => w.quantize(QuantType::Q8_0).expect("fits (checked)"),
                false => w,
            }
        }
    }
}

/// Metadata keys read, as `(Hugging Face config key, GGUF key without the `deepseek2.` prefix)`;
/// used to report a config error under the key the file spells.
const CONFIG_KEYS: &[(&str, &str)] = &[
    ("vocab_size", "vocab_size"),
    ("hidden_size", "embedding_length"),
    ("intermediate_size", "feed_forward_length"),
    ("num_hidden_layers", "block_count"),
    ("num_nextn_predict_layers", "nextn_predict_layers"),
    ("num_attention_heads", "attention.head_count"),
    ("q_lora_rank", "attention.q_lora_rank"),
    ("kv_lora_rank", "attention.kv_lora_rank"),
    ("qk_rope_head_dim", "rope.dimension_count"),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
    ("max_position_embeddings", "context_length"),
    ("rope_theta", "rope.freq_base"),
    ("rope_scaling.factor", "rope.scaling.factor"),
    (
        "rope_scaling.original_max_position_embeddings",
        "rope.scaling.original_context_length",
    ),
    ("n_routed_experts", "expert_count"),
    ("num_experts_per_tok", "expert_used_count"),
    ("n_shared_experts", "expert_shared_count"),
    ("moe_intermediate_size", "expert_feed_forward_length"),
    ("routed_scaling_factor", "expert_weights_scale"),
    ("norm_topk_prob", "expert_weights_norm"),
    ("scoring_func", "expert_gating_func"),
    ("topk_method", "expert_gating_func"),
    ("n_group", "expert_group_count"),
    ("topk_group", "expert_group_used_count"),
    ("first_k_dense_replace", "leading_dense_block_count"),
];

/// Reads typed metadata, naming the key on every error.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.file.path().to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn key(short: &str) -> String {
        format!("{ARCH}.{short}")
    }

    /// An unsigned integer; a per-layer array (llama.cpp's `get_key_or_arr`) must hold one value.
    fn opt_u64(&self, short: &str) -> Result<Option<u64>> {
        let key = Self::key(short);
        let Some(v) = self.file.get(&key) else {
            return Ok(None);
        };
        let one = |v: &Value| {
            v.as_u64()
                .ok_or_else(|| self.err(&key, format!("expected a non-negative integer, got {v}")))
        };
        match v.as_array() {
            None => one(v).map(Some),
            Some(items) => {
                let values = items.iter().map(one).collect::<Result<Vec<_>>>()?;
                match values.split_first() {
                    Some((first, rest)) if rest.iter().all(|x| x == first) => Ok(Some(*first)),
                    _ => Err(self.err(
                        &key,
                        format!("per-layer values {v} differ; whale needs one value"),
                    )),
                }
            }
        }
    }

    fn u64(&self, short: &str) -> Result<u64> {
        self.opt_u64(short)?
            .ok_or_else(|| self.err(&Self::key(short), "missing"))
    }

    /// `key` through [`GgufFile::get_as`], its error reported under the key.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        as_type: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        self.file
            .get_as(key, what, as_type)
            .map_err(|message| self.err(key, message))
    }

    fn opt_f64(&self, short: &str) -> Result<Option<f64>> {
        self.typed(&Self::key(short), "a number", Value::as_f64)
    }

    fn opt_bool(&self, short: &str) -> Result<Option<bool>> {
        self.typed(&Self::key(short), "true or false", Value::as_bool)
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A token id from `tokenizer.ggml.*`.
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "a token id", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }
}

/// The [`Config`] a `deepseek2` file's metadata describes, interpreted as llama.cpp does.
pub fn config_from_metadata(file: &GgufFile) -> Result<Config> {
    let m = Meta { file };
    let arch_key = "general.architecture";
    match m.opt_str(arch_key)? {
        Some(ARCH) => {}
        Some(other) => {
            return Err(m.err(
                arch_key,
                format!("unsupported architecture {other:?} (whale reads {ARCH:?})"),
            ))
        }
        None => return Err(m.err(arch_key, "missing")),
    }

    let mut c = Map::new();
    let mut put = |k: &str, v: Json| {
        c.insert(k.to_string(), v);
    };
    let n_layers = m.u64("block_count")?;
    put("num_hidden_layers", json!(n_layers));
    put("hidden_size", json!(m.u64("embedding_length")?));
    put("intermediate_size", json!(m.u64("feed_forward_length")?));
    put("max_position_embeddings", json!(m.u64("context_length")?));
    put("num_attention_heads", json!(m.u64("attention.head_count")?));
    let vocab = match m.opt_u64("vocab_size")? {
        Some(v) => v,
        None => match file.get("tokenizer.ggml.tokens").and_then(Value::as_array) {
            Some(tokens) => tokens.len() as u64,
            None => {
                return Err(m.err(
                    &Meta::key("vocab_size"),
                    "missing, and no tokenizer.ggml.tokens to count",
                ))
            }
        },
    };
    put("vocab_size", json!(vocab));
    put(
        "num_nextn_predict_layers",
        json!(m.opt_u64("nextn_predict_layers")?.unwrap_or(0)),
    );
    // 0 or absent: no query compression (llama.cpp's `n_lora_q == 0`).
    put(
        "q_lora_rank",
        json!(m.opt_u64("attention.q_lora_rank")?.filter(|&r| r > 0)),
    );
    put("kv_lora_rank", json!(m.u64("attention.kv_lora_rank")?));

    // Per-head sizes: newer converters write the latent sizes as key/value_length and the
    // per-head ones as the `_mla` keys; older ones only the per-head sizes.
    let (qk_key, v_key) = if file.get(&Meta::key("attention.key_length_mla")).is_some() {
        ("attention.key_length_mla", "attention.value_length_mla")
    } else {
        ("attention.key_length", "attention.value_length")
    };
    let qk = m.u64(qk_key)?;
    let rope_dim = m.u64("rope.dimension_count")?;
    if qk <= rope_dim {
        return Err(m.err(
            &Meta::key(qk_key),
            format!("{qk} leaves no non-rotary dims next to rope.dimension_count {rope_dim}"),
        ));
    }
    put("qk_rope_head_dim", json!(rope_dim));
    put("qk_nope_head_dim", json!(qk - rope_dim));
    put("v_head_dim", json!(m.u64(v_key)?));
    put(
        "rms_norm_eps",
        json!(m
            .opt_f64("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| m.err(&Meta::key("attention.layer_norm_rms_epsilon"), "missing"))?),
    );
    put(
        "rope_theta",
        json!(m.opt_f64("rope.freq_base")?.unwrap_or(10000.0)),
    );
    put("rope_scaling", rope_scaling(&m)?);

    let experts = m.opt_u64("expert_count")?.unwrap_or(0);
    let bias = file
        .tensors()
        .iter()
        .any(|t| t.name.ends_with(".exp_probs_b.bias"));
    let sigmoid = match m.opt_u64("expert_gating_func")? {
        // Absent: llama.cpp assumes softmax, for V2/V2.5 files made before the key existed.
        // Those never carry `exp_probs_b`; a file that does is a V3 model whose config lacked
        // `scoring_func` (transformers 5 omits it: sigmoid is the V3 class default), and
        // softmax would silently route it wrongly.
        None => bias,
        Some(1) => false,
        Some(2) => true,
        Some(other) => {
            return Err(m.err(
                &Meta::key("expert_gating_func"),
                format!("gating function {other} is not supported (1 = softmax, 2 = sigmoid)"),
            ))
        }
    };
    put(
        "model_type",
        json!(if sigmoid {
            "deepseek_v3"
        } else {
            "deepseek_v2"
        }),
    );
    if experts > 0 {
        put("n_routed_experts", json!(experts));
        put("num_experts_per_tok", json!(m.u64("expert_used_count")?));
        put("n_shared_experts", json!(m.u64("expert_shared_count")?));
        put(
            "moe_intermediate_size",
            json!(m.u64("expert_feed_forward_length")?),
        );
        put(
            "first_k_dense_replace",
            json!(m.opt_u64("leading_dense_block_count")?.unwrap_or(0)),
        );
        // llama.cpp treats a scale of 0 as "not set".
        let scale = m
            .opt_f64("expert_weights_scale")?
            .filter(|&s| s != 0.0)
            .unwrap_or(1.0);
        put("routed_scaling_factor", json!(scale));
        put(
            "norm_topk_prob",
            json!(m.opt_bool("expert_weights_norm")?.unwrap_or(false)),
        );
        let groups = m.opt_u64("expert_group_count")?.unwrap_or(1);
        put("n_group", json!(groups));
        put(
            "topk_group",
            json!(m.opt_u64("expert_group_used_count")?.unwrap_or(groups)),
        );
        put(
            "scoring_func",
            json!(if sigmoid { "sigmoid" } else { "softmax" }),
        );
        put(
            "topk_method",
            json!(topk_method(&m, sigmoid, bias, groups)?),
        );
    }

    put(
        "bos_token_id",
        json!(m.token_id("tokenizer.ggml.bos_token_id")?),
    );
    // llama.cpp ends generation on any end-of-generation id the file names.
    let mut eos = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = m.token_id(key)? {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    put("eos_token_id", json!(eos));
    // No `output.weight`: llama.cpp reuses the embedding as the output head. (A vocab-only
    // file has no tensors at all and says nothing about it.)
    let tied = !file.tensors().is_empty() && file.tensor("output.weight").is_none();
    put("tie_word_embeddings", json!(tied));

    let text = Json::Object(c).to_string();
    Config::from_json_str(&text, file.path()).map_err(|e| match e {
        ModelError::Config { path, key, message } => {
            let gguf = CONFIG_KEYS.iter().find(|(hf, _)| key == *hf);
            let key = gguf.map_or(key, |(_, g)| Meta::key(g));
            ModelError::Config { path, key, message }
        }
        other => other,
    })
}

/// `rope_scaling` for the config. llama.cpp's deepseek2 reads YaRN's factor, original context
/// and `yarn_log_multiplier` = 0.1 · `mscale_all_dim` (the converter's spelling; the loader
/// divides by 0.1 again). It assumes `mscale == mscale_all_dim`, which makes the cos/sin
/// amplitude 1 and the attention scale `m²/√d_qk` with `m = 0.1 · mscale_all_dim · ln(factor) + 1`.
/// The converter also writes `yarn_beta_fast/slow` from the Hugging Face config; llama.cpp's
/// deepseek2 ignores them (its defaults 32 and 1 are DeepSeek's), whale honours them.
fn rope_scaling(m: &Meta) -> Result<Json> {
    let kind_key = "rope.scaling.type";
    let kind = m.opt_str(&Meta::key(kind_key))?.unwrap_or("none");
    let factor = m.opt_f64("rope.scaling.factor")?.unwrap_or(0.0);
    if let Some(a) = m.opt_f64("rope.scaling.attn_factor")? {
        if a != 1.0 {
            // llama.cpp scales both the rotary amplitude and the attention logits by it.
            return Err(m.err(
                &Meta::key("rope.scaling.attn_factor"),
                format!("{a} is not supported (only 1)"),
            ));
        }
    }
    match kind {
        "none" => Ok(Json::Null),
        "linear" if factor == 0.0 || factor == 1.0 => Ok(Json::Null),
        "yarn" if factor == 0.0 || factor == 1.0 => Ok(Json::Null),
        "yarn" => {
            let original = match m.opt_u64("rope.scaling.original_context_length")? {
                Some(n) => n,
                None => m.u64("context_length")?,
            };
            let mscale_all_dim = m
                .opt_f64("rope.scaling.yarn_log_multiplier")?
                .map(|x| x / 0.1);
            Ok(json!({
                "type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": original,
                "beta_fast": m.opt_f64("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                "beta_slow": m.opt_f64("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                "mscale": mscale_all_dim,
                "mscale_all_dim": mscale_all_dim,
                "attention_factor": 1.0,
            }))
        }
        other => Err(m.err(
            &Meta::key(kind_key),
            format!("RoPE scaling {other:?} is not supported (expected none or yarn)"),
        )),
    }
}

/// GGUF stores no routing method; it follows from the gating function and the groups:
/// * sigmoid: V3's `noaux_tc` (its per-layer `exp_probs_b` biases are then required tensors);
/// * softmax with groups: V2's `group_limited_greedy` (groups ranked by their best expert).
///   llama.cpp ranks groups by their two best experts for every model, so it differs from
///   DeepSeek-V2 here; whale keeps the reference's rule;
/// * softmax without groups: plain top-k.
fn topk_method(m: &Meta, sigmoid: bool, bias: bool, groups: u64) -> Result<&'static str> {
    match (sigmoid, bias, groups > 1) {
        (true, _, _) => Ok("noaux_tc"),
        (false, true, _) => Err(m.err(
            &Meta::key("expert_gating_func"),
            "the file has exp_probs_b routing biases, which need sigmoid gating (2), not softmax",
        )),
        (false, false, true) => Ok("group_limited_greedy"),
        (false, false, false) => Ok("greedy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_translate() {
        let t = |s: &str| Place::Tensor(s.to_string());
        assert_eq!(
            place("model.embed_tokens.weight"),
            Some(t("token_embd.weight"))
        );
        assert_eq!(place("lm_head.weight"), Some(t("output.weight")));
        assert_eq!(
            place("model.layers.12.self_attn.q_a_layernorm.weight"),
            Some(t("blk.12.attn_q_a_norm.weight"))
        );
        assert_eq!(
            place("model.layers.3.mlp.gate.e_score_correction_bias"),
            Some(t("blk.3.exp_probs_b.bias"))
        );
        assert_eq!(
            place("model.layers.3.mlp.experts.17.down_proj.weight"),
            Some(Place::Expert {
                layer: 3,
                e: 17,
                proj: "down"
            })
        );
        assert_eq!(
            place("model.layers.0.self_attn.kv_b_proj.weight"),
            Some(Place::KvB { layer: 0 })
        );
        assert_eq!(place("model.layers.0.mlp.experts.x.up_proj.weight"), None);
        assert_eq!(
            place("model.layers.0.self_attn.q_proj.weight_scale_inv"),
            None
        );
    }

    #[test]
    fn kv_b_is_rebuilt_exactly_from_its_split() {
        // h = 2 heads, n = 3, v = 2, c = 4; kv_b[h·(n+v) + i][j] = 100h + 10i + j.
        let (h, n, v, c) = (2, 3, 2, 4);
        let kv_b: Vec<f32> = (0..h)
            .flat_map(|hd| {
                (0..n + v).flat_map(move |i| (0..c).map(move |j| (100 * hd + 10 * i + j) as f32))
            })
            .collect();
        // The converter: view [h, n+v, c], split rows n | v, transpose k to [h, c, n].
        let at = |hd: usize, i: usize, j: usize| kv_b[(hd * (n + v) + i) * c + j];
        let k_b: Vec<f32> = (0..h)
            .flat_map(|hd| (0..c).flat_map(move |j| (0..n).map(move |i| at(hd, i, j))))
            .collect();
        let v_b: Vec<f32> = (0..h)
            .flat_map(|hd| (0..v).flat_map(move |i| (0..c).map(move |j| at(hd, n + i, j))))
            .collect();
        let to_bf16 = |x: &[f32], rows, cols| {
            Weight::new(
                rows,
                cols,
                WeightData::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
            )
        };
        let got = rebuild_kv_b(&to_bf16(&k_b, h * c, n), &to_bf16(&v_b, h * v, c), h);
        assert_eq!(
            (got.rows, got.cols, got.storage_name()),
            (h * (n + v), c, "bf16")
        );
        assert_eq!(got.to_f32(), kv_b);
        let got = rebuild_kv_b(
            &Weight::from_f32(h * c, n, k_b),
            &Weight::from_f32(h * v, c, v_b),
            h,
        );
        assert_eq!(got.to_f32(), kv_b);
    }

    /// Block-quantized halves come back as Q8_0: the `W_UV` rows of a Q8_0 split bit-exact
    /// (same blocks), the transposed `W_UK` rows within one more Q8_0 rounding.
    #[test]
    fn quantized_kv_b_split_is_rebuilt_as_q8_0() {
        let (h, n, v, c) = (2, 32, 32, 64);
        let value = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 250.0;
        let q8 = |rows: usize, cols: usize, off: usize| {
            Weight::from_f32(
                rows,
                cols,
                (0..rows * cols).map(|i| value(i + off)).collect(),
            )
            .quantize(QuantType::Q8_0)
            .unwrap()
        };
        let (k_b, v_b) = (q8(h * c, n, 0), q8(h * v, c, 1 << 20));
        let got = rebuild_kv_b(&k_b, &v_b, h);
        assert_eq!(got.storage_name(), "q8_0");
        let (k, vv, kv) = (k_b.to_f32(), v_b.to_f32(), got.to_f32());
        for hd in 0..h {
            for i in 0..v {
                let row = &kv[(hd * (n + v) + n + i) * c..][..c];
                assert_eq!(row, &vv[(hd * v + i) * c..][..c]);
            }
            for i in 0..n {
                for j in 0..c {
                    let (want, got) = (k[(hd * c + j) * n + i], kv[(hd * (n + v) + i) * c + j]);
                    // Q8_0 rounds to half a step of amax / 127 (amax ≤ 2 here).
                    assert!(
                        (want - got).abs() <= 2.0 / 127.0 / 2.0 + 1e-6,
                        "{want} {got}"
                    );
                }
            }
        }
    }
}
