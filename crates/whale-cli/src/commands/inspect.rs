//! `whale inspect`: architecture, parameter counts and latent-cache size from config.json or
//! a GGUF file's metadata; for GGUF also the file itself (tensor types, MLA layout, tokenizer).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use whale_gguf::{GgufFile, Value};
use whale_model::config::{Config, ModelType};
use whale_model::GgufCheckpoint;

use crate::model_dir;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder (only config.json is needed) or GGUF file (only its header is read).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `1234567` → `"1,234,567"`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn billions(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else {
        format!("{:.2}M", n as f64 / 1e6)
    }
}

/// What a GGUF file holds besides the config.
struct GgufSummary {
    version: u32,
    file_size: u64,
    name: Option<String>,
    /// ggml type → (tensors, bytes).
    types: BTreeMap<String, (usize, u64)>,
    tensors: usize,
    /// `attn_kv_b` (older converters) or `attn_k_b` + `attn_v_b`.
    kv_b: &'static str,
    tokenizer: Option<String>,
    chat_template: bool,
}

impl GgufSummary {
    fn of(f: &GgufFile) -> GgufSummary {
        let mut types: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for t in f.tensors() {
            let e = types.entry(t.ggml_type.to_string()).or_default();
            e.0 += 1;
            e.1 += t.size;
        }
        let has = |suffix: &str| f.tensors().iter().any(|t| t.name.ends_with(suffix));
        let kv_b = match (has(".attn_kv_b.weight"), has(".attn_k_b.weight")) {
            (true, true) => "attn_kv_b and attn_k_b/attn_v_b",
            (true, false) => "fused attn_kv_b (older converter)",
            (false, true) => "split attn_k_b/attn_v_b (rebuilt to kv_b at load)",
            (false, false) => "none",
        };
        let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
        let tokenizer = s("tokenizer.ggml.model").map(|model| {
            let n = f
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map_or(0, |t| t.len());
            let pre = s("tokenizer.ggml.pre").unwrap_or_else(|| "none".into());
            format!("{model}, pre-tokenizer {pre}, {n} tokens")
        });
        GgufSummary {
            version: f.version(),
            file_size: f.file_size(),
            name: s("general.name"),
            types,
            tensors: f.tensors().len(),
            kv_b,
            tokenizer,
            chat_template: f.get("tokenizer.chat_template").is_some(),
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let dir = model_dir::resolve(args.model.as_deref())?;
    let (c, gguf) = if dir.is_file() || dir.extension().is_some_and(|e| e == "gguf") {
        let g = GgufCheckpoint::open(&dir)?;
        (g.config().clone(), Some(GgufSummary::of(g.file())))
    } else {
        (Config::from_file(&dir.join("config.json"))?, None)
    };
    let p = c.param_counts();
    let mla = c.latent_cache_bytes_per_token(2) as u64;
    let mha = c.mha_cache_bytes_per_token(2) as u64;
    let saved = 100.0 * (1.0 - mla as f64 / mha as f64);
    if args.json {
        let mut v = serde_json::json!({
            "model_type": match c.model_type { ModelType::DeepseekV2 => "deepseek_v2", ModelType::DeepseekV3 => "deepseek_v3" },
            "total_params": p.total, "active_params": p.active, "mtp_params": p.mtp,
            "latent_cache_bytes_per_token_bf16": mla, "mha_cache_bytes_per_token_bf16": mha,
            "cache_saved_percent": saved,
        });
        if let Some(g) = &gguf {
            let types: serde_json::Map<String, serde_json::Value> = g
                .types
                .iter()
                .map(|(t, (n, b))| (t.clone(), serde_json::json!({"tensors": n, "bytes": b})))
                .collect();
            v["gguf"] = serde_json::json!({
                "version": g.version, "file_size": g.file_size, "name": g.name,
                "tensors": g.tensors, "types": types, "kv_b": g.kv_b,
                "tokenizer": g.tokenizer, "chat_template": g.chat_template,
            });
        }
        println!("{v}");
        return Ok(());
    }
    let moe = match &c.moe {
        Some(m) => format!(
            "{} routed experts (top-{}, {:?} routing, {:?} scores, {} groups / {} kept) + {} shared, width {}; first {} layers dense (width {})",
            m.n_routed_experts, m.num_experts_per_tok, m.topk_method, m.scoring_func, m.n_group, m.topk_group,
            m.n_shared_experts, m.moe_intermediate_size, m.first_k_dense_replace, c.intermediate_size
        ),
        None => format!("dense SwiGLU, width {}", c.intermediate_size),
    };
    let rope = match &c.rope.yarn {
        Some(y) => format!(
            "YaRN ×{} from {} (θ = {})",
            y.factor, y.original_max_position_embeddings, c.rope.theta
        ),
        None => format!("plain (θ = {})", c.rope.theta),
    };
    println!("model         {} ({:?})", dir.display(), c.model_type);
    println!(
        "layers        {} × hidden {}, vocab {}",
        c.num_hidden_layers, c.hidden_size, c.vocab_size
    );
    println!(
        "attention     MLA, {} heads, q_lora_rank {}, kv_lora_rank {}, head dims nope {} + rope {} / v {}",
        c.num_attention_heads,
        c.q_lora_rank.map_or("none".into(), |r| r.to_string()),
        c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    );
    println!(
        "rope          {rope}, context {}",
        c.max_position_embeddings
    );
    println!("ffn           {moe}");
    println!(
        "parameters    {} total ({}), {} active per token ({})",
        grouped(p.total),
        billions(p.total),
        grouped(p.active),
        billions(p.active)
    );
    if p.mtp > 0 {
        println!(
            "mtp           {} layer(s), {} parameters (not used for plain decoding)",
            c.num_nextn_predict_layers,
            grouped(p.mtp)
        );
    }
    println!(
        "kv cache      {} bytes/token in bf16 ({} values × {} layers × 2 bytes); standard MHA of the same shape: {} bytes/token; {saved:.2}% saved",
        grouped(mla), c.latent_dim(), c.num_hidden_layers, grouped(mha)
    );
    if let Some(g) = gguf {
        let types: Vec<String> = g
            .types
            .iter()
            .map(|(t, (n, b))| format!("{t} {n} ({:.1} MB)", *b as f64 / 1e6))
            .collect();
        let types = if types.is_empty() {
            " (metadata only)".to_string()
        } else {
            format!(": {}", types.join(", "))
        };
        println!(
            "gguf          v{}, {:.1} MB, {} tensors{types}{}",
            g.version,
            g.file_size as f64 / 1e6,
            g.tensors,
            g.name
                .map_or(String::new(), |n| format!("; general.name {n:?}"))
        );
        println!("mla weights   {}", g.kv_b);
        println!(
            "tokenizer     {}{}",
            g.tokenizer.unwrap_or_else(|| "none in the file".into()),
            if g.chat_template {
                ", chat template"
            } else {
                ""
            }
        );
    }
    Ok(())
}
