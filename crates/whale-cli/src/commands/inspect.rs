//! `whale inspect`: architecture, parameter counts and latent-cache size from config.json.

use std::path::PathBuf;

use anyhow::Result;
use whale_model::config::{Config, ModelType};

use crate::model_dir;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder (only config.json is needed).
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

pub fn run(args: Args) -> Result<()> {
    let dir = model_dir::resolve(args.model.as_deref())?;
    let c = Config::from_file(&dir.join("config.json"))?;
    let p = c.param_counts();
    let mla = c.latent_cache_bytes_per_token(2) as u64;
    let mha = c.mha_cache_bytes_per_token(2) as u64;
    let saved = 100.0 * (1.0 - mla as f64 / mha as f64);
    if args.json {
        let v = serde_json::json!({
            "model_type": match c.model_type { ModelType::DeepseekV2 => "deepseek_v2", ModelType::DeepseekV3 => "deepseek_v3" },
            "total_params": p.total, "active_params": p.active, "mtp_params": p.mtp,
            "latent_cache_bytes_per_token_bf16": mla, "mha_cache_bytes_per_token_bf16": mha,
            "cache_saved_percent": saved,
        });
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
    Ok(())
}
