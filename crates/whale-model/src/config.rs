//! `config.json` of a DeepSeek-V2/V3-family checkpoint, parsed and validated.
//!
//! Accepts both the hub's spelling (`rope_theta` + `rope_scaling: {type: yarn, ...}`) and
//! the one transformers ≥ 5 writes (`rope_parameters: {rope_type, rope_theta, ...}`,
//! `rope_interleave`). Every inconsistency is an error naming its key.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    DeepseekV2,
    DeepseekV3,
}

/// How experts are chosen from the router scores (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    /// Plain top-k of the scores (V2-Lite).
    Greedy,
    /// Groups ranked by their best score, top `topk_group` groups eligible (V2).
    GroupLimitedGreedy,
    /// Groups ranked by the sum of their two best bias-corrected scores; the bias
    /// (`e_score_correction_bias`) only selects (V3).
    NoauxTc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
}

/// YaRN context extension parameters (SPEC §4.3).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Explicit cos/sin amplitude; derived from `mscale`s when absent.
    pub attention_factor: Option<f64>,
    pub truncate: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub yarn: Option<Yarn>,
    /// Rotary dims stored as interleaved pairs `(x0,x1),(x2,x3),…` (every released
    /// checkpoint); `false` means the halves layout of rotate-half.
    pub interleave: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Moe {
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_shared_experts: usize,
    pub moe_intermediate_size: usize,
    pub topk_method: TopkMethod,
    pub scoring_func: ScoringFunc,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_nextn_predict_layers: usize,
    pub num_attention_heads: usize,
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub rope: Rope,
    /// `None` when the model has no routed experts (every layer dense).
    pub moe: Option<Moe>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub tie_word_embeddings: bool,
    /// Block shape of FP8 weights when `quantization_config` says `fp8`.
    pub fp8_block: Option<[usize; 2]>,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_json_str(&text, path)
    }

    /// Parses config JSON; `path` only labels errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Config> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(ModelError::Json {
                path: path.to_path_buf(),
                message: "expected a JSON object".into(),
            });
        };
        Parser {
            path: path.to_path_buf(),
            map: &map,
        }
        .config()
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per token per layer: the latent plus the shared RoPE key.
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Whether layer `i` uses the MoE block (remote-code rule; `moe_layer_freq` is 1 in
    /// every released checkpoint).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| i >= m.first_k_dense_replace && i.is_multiple_of(m.moe_layer_freq))
    }

    /// Softmax scale of attention logits: `d_qk^-0.5 · m²` with YaRN's
    /// `m = 0.1 · mscale_all_dim · ln(factor) + 1` (as transformers' `yarn_apply_mscale`).
    pub fn softmax_scale(&self) -> f32 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        let m = match &self.rope.yarn {
            Some(y) => match y.mscale_all_dim {
                Some(all) if all != 0.0 => yarn_mscale(y.factor, all),
                _ => 1.0,
            },
            None => 1.0,
        };
        (base * m * m) as f32
    }
}

/// End-of-sequence ids of a model folder: `generation_config.json`'s (what transformers'
/// `generate` stops on), else `config.json`'s, else the tokenizer's. For a GGUF file (no
/// folder to look in) the config's, which hold the file's EOS, EOT and EOM ids.
pub fn eos_token_ids(dir: &Path, config: &Config, tokenizer_eos: Option<u32>) -> Vec<u32> {
    let from_generation_config = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| match v.get("eos_token_id")? {
            Value::Array(a) => Some(
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as u32)
                    .collect(),
            ),
            x => x.as_u64().map(|x| vec![x as u32]),
        });
    let mut ids = from_generation_config.unwrap_or_else(|| config.eos_token_ids.clone());
    if ids.is_empty() {
        ids.extend(tokenizer_eos);
    }
    ids
}

/// YaRN's magnitude correction `0.1 · m · ln(factor) + 1` (1 when not extending).
pub fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}

struct Parser<'a> {
    path: PathBuf,
    map: &'a Map<String, Value>,
}

impl Parser<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Present and not null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize_in(&self, map: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
        match map.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn f64_in(&self, map: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
        match map.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.usize_in(self.map, key)
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    /// A required dimension: present and positive.
    fn dim(&self, key: &str) -> Result<usize> {
        let v = self.usize(key)?;
        if v == 0 {
            return Err(self.err(key, "must be positive"));
        }
        Ok(v)
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.f64_in(self.map, key)
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }

    fn config(&self) -> Result<Config> {
        let model_type = match self.opt_str("model_type")? {
            Some("deepseek_v2") => ModelType::DeepseekV2,
            // Kimi-K2 ships `kimi_k2` with the DeepseekV3 architecture.
            Some("deepseek_v3") | Some("kimi_k2") => ModelType::DeepseekV3,
            Some(other) => {
                return Err(self.err(
                    "model_type",
                    format!(
                        "unsupported model type {other:?} (expected deepseek_v2 or deepseek_v3)"
                    ),
                ))
            }
            None => return Err(self.err("model_type", "missing")),
        };
        let hidden_size = self.dim("hidden_size")?;
        let num_attention_heads = self.dim("num_attention_heads")?;
        let q_lora_rank = match self.opt_usize("q_lora_rank")? {
            Some(0) | None => None,
            Some(r) => Some(r),
        };
        let eos_token_ids = match self.get("eos_token_id") {
            None => vec![],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.err("eos_token_id", "expected integers"))?,
            Some(v) => vec![v
                .as_u64()
                .ok_or_else(|| self.err("eos_token_id", format!("expected an integer, got {v}")))?
                as u32],
        };
        let config = Config {
            model_type,
            vocab_size: self.dim("vocab_size")?,
            hidden_size,
            intermediate_size: self.dim("intermediate_size")?,
            num_hidden_layers: self.dim("num_hidden_layers")?,
            num_nextn_predict_layers: self.opt_usize("num_nextn_predict_layers")?.unwrap_or(0),
            num_attention_heads,
            q_lora_rank,
            kv_lora_rank: self.dim("kv_lora_rank")?,
            qk_nope_head_dim: self.dim("qk_nope_head_dim")?,
            qk_rope_head_dim: self.dim("qk_rope_head_dim")?,
            v_head_dim: self.dim("v_head_dim")?,
            rms_norm_eps: self.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            max_position_embeddings: self.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            rope: self.rope(model_type)?,
            moe: self.moe(model_type)?,
            bos_token_id: self.opt_usize("bos_token_id")?.map(|v| v as u32),
            eos_token_ids,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            fp8_block: self.fp8_block()?,
        };
        if !config.qk_rope_head_dim.is_multiple_of(2) {
            return Err(self.err("qk_rope_head_dim", "must be even (rotary pairs)"));
        }
        if let Some(k) = self.opt_usize("num_key_value_heads")? {
            // MLA has one shared latent; configs repeat the head count here.
            if k != num_attention_heads {
                return Err(self.err(
                    "num_key_value_heads",
                    format!("{k} differs from num_attention_heads {num_attention_heads}; MLA models set them equal"),
                ));
            }
        }
        Ok(config)
    }

    fn rope(&self, model_type: ModelType) -> Result<Rope> {
        // transformers ≥ 5: `rope_parameters` holds everything; the hub: `rope_theta` +
        // `rope_scaling`. Either may be null.
        let (key, params) = match (self.get("rope_parameters"), self.get("rope_scaling")) {
            (Some(p), _) => ("rope_parameters", Some(p)),
            (None, Some(s)) => ("rope_scaling", Some(s)),
            (None, None) => ("rope_scaling", None),
        };
        let empty = Map::new();
        let params = match params {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(v) => return Err(self.err(key, format!("expected an object, got {v}"))),
        };
        let theta = match self.f64_in(params, "rope_theta")? {
            Some(t) => t,
            None => self.opt_f64("rope_theta")?.unwrap_or(10000.0),
        };
        if theta <= 1.0 {
            return Err(self.err("rope_theta", format!("must be > 1, got {theta}")));
        }
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .filter(|v| !v.is_null());
        let kind = match kind {
            None => "default",
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(&format!("{key}.rope_type"), "expected a string"))?,
        };
        let yarn = match kind {
            "default" => None,
            "yarn" => {
                let sub = |k: &str| format!("{key}.{k}");
                let original = self
                    .usize_in(params, "original_max_position_embeddings")?
                    .or(self.opt_usize("original_max_position_embeddings")?)
                    .or(self.opt_usize("max_position_embeddings")?)
                    .ok_or_else(|| self.err(&sub("original_max_position_embeddings"), "missing"))?;
                let factor = match self.f64_in(params, "factor")? {
                    Some(f) => f,
                    // transformers derives it from the two lengths when absent.
                    None => {
                        let max = self.usize("max_position_embeddings")?;
                        max as f64 / original as f64
                    }
                };
                if factor <= 0.0 {
                    return Err(self.err(&sub("factor"), format!("must be positive, got {factor}")));
                }
                let truncate = match params.get("truncate").filter(|v| !v.is_null()) {
                    None => true,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| self.err(&sub("truncate"), "expected true or false"))?,
                };
                Some(Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    // transformers treats 0/absent as the paper's defaults.
                    beta_fast: self
                        .f64_in(params, "beta_fast")?
                        .filter(|&b| b != 0.0)
                        .unwrap_or(32.0),
                    beta_slow: self
                        .f64_in(params, "beta_slow")?
                        .filter(|&b| b != 0.0)
                        .unwrap_or(1.0),
                    mscale: self.f64_in(params, "mscale")?,
                    mscale_all_dim: self.f64_in(params, "mscale_all_dim")?,
                    attention_factor: self.f64_in(params, "attention_factor")?,
                    truncate,
                })
            }
            other => {
                return Err(self.err(
                    &format!("{key}.rope_type"),
                    format!("unsupported RoPE type {other:?} (expected default or yarn)"),
                ))
            }
        };
        // transformers' deepseek_v2 class always rotates interleaved pairs (complex
        // multiplication); deepseek_v3 follows `rope_interleave`, default true.
        let interleave = match model_type {
            ModelType::DeepseekV2 => true,
            ModelType::DeepseekV3 => self.opt_bool("rope_interleave")?.unwrap_or(true),
        };
        Ok(Rope {
            theta,
            yarn,
            interleave,
        })
    }

    fn moe(&self, model_type: ModelType) -> Result<Option<Moe>> {
        let Some(n_routed_experts) = self.opt_usize("n_routed_experts")?.filter(|&n| n > 0) else {
            return Ok(None);
        };
        let (default_method, default_scoring) = match model_type {
            ModelType::DeepseekV2 => (TopkMethod::Greedy, ScoringFunc::Softmax),
            ModelType::DeepseekV3 => (TopkMethod::NoauxTc, ScoringFunc::Sigmoid),
        };
        let topk_method = match self.opt_str("topk_method")? {
            None => default_method,
            Some("greedy") => TopkMethod::Greedy,
            Some("group_limited_greedy") => TopkMethod::GroupLimitedGreedy,
            Some("noaux_tc") => TopkMethod::NoauxTc,
            Some(other) => {
                return Err(self.err(
                    "topk_method",
                    format!(
                    "unknown method {other:?} (expected greedy, group_limited_greedy or noaux_tc)"
                ),
                ))
            }
        };
        let scoring_func = match self.opt_str("scoring_func")? {
            None => default_scoring,
            Some("softmax") => ScoringFunc::Softmax,
            Some("sigmoid") => ScoringFunc::Sigmoid,
            Some(other) => {
                return Err(self.err(
                    "scoring_func",
                    format!("unknown function {other:?} (expected softmax or sigmoid)"),
                ))
            }
        };
        let num_experts_per_tok = self.dim("num_experts_per_tok")?;
        let n_group = self.opt_usize("n_group")?.unwrap_or(1);
        let topk_group = self.opt_usize("topk_group")?.unwrap_or(n_group);
        if n_group == 0 {
            return Err(self.err("n_group", "must be positive"));
        }
        if n_routed_experts % n_group != 0 {
            return Err(self.err(
                "n_group",
                format!(
                    "n_routed_experts {n_routed_experts} is not divisible by n_group {n_group}"
                ),
            ));
        }
        if topk_group == 0 || topk_group > n_group {
            return Err(self.err(
                "topk_group",
                format!("{topk_group} must be in 1..=n_group ({n_group})"),
            ));
        }
        let per_group = n_routed_experts / n_group;
        let eligible = match topk_method {
            TopkMethod::Greedy => n_routed_experts,
            _ => topk_group * per_group,
        };
        if num_experts_per_tok > eligible {
            return Err(self.err(
                "num_experts_per_tok",
                format!("{num_experts_per_tok} exceeds the {eligible} experts the router can choose from"),
            ));
        }
        if topk_method == TopkMethod::NoauxTc && n_group > 1 && per_group < 2 {
            return Err(self.err(
                "n_group",
                "noaux_tc ranks groups by their top-2 scores: each group needs ≥ 2 experts",
            ));
        }
        if topk_method == TopkMethod::NoauxTc && scoring_func != ScoringFunc::Sigmoid {
            return Err(self.err("scoring_func", "noaux_tc routing requires sigmoid scoring"));
        }
        let moe_layer_freq = self.opt_usize("moe_layer_freq")?.unwrap_or(1);
        if moe_layer_freq == 0 {
            return Err(self.err("moe_layer_freq", "must be positive"));
        }
        Ok(Some(Moe {
            n_routed_experts,
            num_experts_per_tok,
            n_shared_experts: self.opt_usize("n_shared_experts")?.unwrap_or(0),
            moe_intermediate_size: self.dim("moe_intermediate_size")?,
            topk_method,
            scoring_func,
            n_group,
            topk_group,
            norm_topk_prob: self.opt_bool("norm_topk_prob")?.unwrap_or(false),
            routed_scaling_factor: self.opt_f64("routed_scaling_factor")?.unwrap_or(1.0) as f32,
            first_k_dense_replace: self.opt_usize("first_k_dense_replace")?.unwrap_or(0),
            moe_layer_freq,
        }))
    }

    fn fp8_block(&self) -> Result<Option<[usize; 2]>> {
        let Some(q) = self.get("quantization_config") else {
            return Ok(None);
        };
        let key = "quantization_config";
        let Value::Object(q) = q else {
            return Err(self.err(key, "expected an object"));
        };
        match q.get("quant_method").and_then(Value::as_str) {
            Some("fp8") => {}
            other => {
                return Err(self.err(
                    &format!("{key}.quant_method"),
                    format!("unsupported quantization {other:?} (expected \"fp8\")"),
                ))
            }
        }
        if let Some(fmt) = q.get("fmt").and_then(Value::as_str) {
            if fmt != "e4m3" {
                return Err(self.err(
                    &format!("{key}.fmt"),
                    format!("unsupported FP8 format {fmt:?}"),
                ));
            }
        }
        let block = match q.get("weight_block_size") {
            None | Some(Value::Null) => [128, 128],
            Some(Value::Array(a)) if a.len() == 2 => {
                let d = |v: &Value| v.as_u64().filter(|&n| n > 0).map(|n| n as usize);
                match (d(&a[0]), d(&a[1])) {
                    (Some(r), Some(c)) => [r, c],
                    _ => {
                        return Err(self.err(
                            &format!("{key}.weight_block_size"),
                            "expected two positive integers",
                        ))
                    }
                }
            }
            Some(_) => {
                return Err(self.err(&format!("{key}.weight_block_size"), "expected [rows, cols]"))
            }
        };
        Ok(Some(block))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const V3_HUB: &str = r#"{
      "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
      "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
      "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
      "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
      "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
      "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
      "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
      "moe_layer_freq": 1, "first_k_dense_replace": 3, "norm_topk_prob": true,
      "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 163840,
      "rms_norm_eps": 1e-06, "rope_theta": 10000, "bos_token_id": 0, "eos_token_id": 1,
      "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
        "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
      "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
        "quant_method": "fp8", "weight_block_size": [128, 128]},
      "tie_word_embeddings": false
    }"#;

    fn parse(text: &str) -> Result<Config> {
        Config::from_json_str(text, Path::new("config.json"))
    }

    #[test]
    fn parses_v3_hub_config() {
        let c = parse(V3_HUB).unwrap();
        assert_eq!(c.model_type, ModelType::DeepseekV3);
        assert_eq!(c.latent_dim(), 576);
        let m = c.moe.as_ref().unwrap();
        assert_eq!(
            (m.n_group, m.topk_group, m.topk_method),
            (8, 4, TopkMethod::NoauxTc)
        );
        assert_eq!(c.fp8_block, Some([128, 128]));
        assert!(!c.is_moe_layer(2) && c.is_moe_layer(3));
        // SPEC §3.1 table: V3 softmax scale 0.1352338.
        assert!((c.softmax_scale() - 0.1352338).abs() < 1e-6);
    }

    #[test]
    fn rope_parameters_spelling_is_equivalent() {
        let v5 = V3_HUB
            .replace(r#""rope_theta": 10000,"#, "")
            .replace(
                r#""rope_scaling""#,
                r#""rope_interleave": true, "rope_parameters""#,
            )
            .replace(
                r#""type": "yarn""#,
                r#""rope_type": "yarn", "rope_theta": 10000"#,
            );
        assert_eq!(parse(&v5).unwrap().rope, parse(V3_HUB).unwrap().rope);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = V3_HUB.replace(r#""n_group": 8"#, r#""n_group": 7"#);
        let msg = parse(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("`n_group`") && msg.contains("not divisible"),
            "{msg}"
        );
        let bad = V3_HUB.replace(r#""noaux_tc""#, r#""best_of_both""#);
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("`topk_method`"));
        let bad = V3_HUB.replace("deepseek_v3", "llama");
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("`model_type`"));
        let bad = V3_HUB.replace(r#""kv_lora_rank": 512,"#, "");
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("`kv_lora_rank`: missing"));
    }
}
