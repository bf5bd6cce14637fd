//! One module per subcommand, plus the arguments they share.

pub mod bench;
pub mod chat;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod perplexity;
pub mod serve;
pub mod tokenize;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use whale_model::{MlaImpl, Model};
use whale_tokenizer::Tokenizer;

use crate::model_dir;

/// Where the model is and how to run it.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or a
    /// llama.cpp GGUF file (deepseek2). Defaults to the bundled model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// MLA form: naive (decompress K/V), absorbed (attend in latent space) or auto (per
    /// step, whichever needs fewer multiply-adds: decompressed for prefill, absorbed for
    /// decode).
    #[arg(long, default_value = "auto")]
    pub mla: MlaImpl,
    /// Context length in tokens (default: the model's max_position_embeddings).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Re-encode the weights at load: q8_0, q4_0, q4_k, q6_k, bf16 or f32 (default: as stored).
    #[arg(long)]
    pub quant: Option<whale_tensor::QuantType>,
    /// Compute threads (default: the machine's physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How the MLA latent cache stores each position: f32, bf16 (half the memory and the
    /// bytes attention reads) or q8_0 (about a quarter).
    #[arg(long, default_value = "f32")]
    pub cache_type: whale_model::CacheType,
}

impl ModelArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        model_dir::resolve(self.model.as_deref())
    }

    pub fn load(&self) -> Result<(Model, PathBuf)> {
        // One persistent pool for every matmul, sized before the first parallel call.
        whale_tensor::set_threads(self.threads.unwrap_or(0))?;
        let dir = self.dir()?;
        let opts = whale_model::LoadOptions {
            mla: self.mla,
            quant: self.quant,
            cache: self.cache_type,
        };
        let model = Model::load_with(&dir, &opts)?;
        Ok((model, dir))
    }

    pub fn context(&self, model: &Model) -> usize {
        self.ctx.unwrap_or(model.config.max_position_embeddings)
    }
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(
        &self,
        default_temperature: f32,
    ) -> Result<whale_model::sampling::SamplingParams> {
        let p = whale_model::sampling::SamplingParams {
            temperature: self.temperature.unwrap_or(default_temperature),
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..Default::default()
        };
        p.validate()
            .map_err(|e| anyhow::anyhow!("--{}", e.replace('_', "-")))?;
        Ok(p)
    }
}

/// Parses `--ids 0,5,9`.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("--ids: {p:?} is not a token id"))
        })
        .collect()
}

/// The tokenizer of a model folder (tokenizer.json) or GGUF file (its tokenizer metadata), or
/// `None` when the model has none.
pub fn optional_tokenizer(model: &Path) -> Result<Option<Tokenizer>> {
    Ok(Tokenizer::for_model(model)?)
}

/// The tokenizer a command cannot do without.
pub fn required_tokenizer(model: &Path, what: &str) -> Result<Tokenizer> {
    optional_tokenizer(model)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: {what} needs a tokenizer (tokenizer.json in a folder, tokenizer metadata in a GGUF file)",
            model.display()
        )
    })
}
