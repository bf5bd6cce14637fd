//! `whale generate`: stream a continuation of a prompt.

use std::io::Write;

use anyhow::{bail, Result};
use whale_model::sampling::Sampler;
use whale_tokenizer::Tokenizer;

use super::{optional_tokenizer, parse_ids, ModelArgs, SamplingArgs};
use crate::generation::{generate, Request};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (tokenized with the model's tokenizer, BOS added as it says).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long)]
    ids: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print a JSON summary (prompt_ids, generated_ids, text, ...) as the last line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let (model, dir) = args.model.load()?;
    let tokenizer = optional_tokenizer(&dir)?;
    let prompt_ids = match (&args.prompt, &args.ids, &tokenizer) {
        (_, Some(ids), _) => parse_ids(ids)?,
        (Some(text), None, Some(tok)) => tok.encode(text, true)?,
        (Some(_), None, None) => bail!(
            "{}: no tokenizer (tokenizer.json, or tokenizer metadata in a GGUF file); pass --ids instead of --prompt",
            dir.display()
        ),
        (None, None, _) => bail!("give --prompt or --ids"),
    };
    if prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    let ctx = args.model.context(&model);
    if prompt_ids.len() > ctx {
        bail!(
            "prompt of {} tokens is longer than the context of {ctx} tokens",
            prompt_ids.len()
        );
    }
    let eos = whale_model::config::eos_token_ids(
        &dir,
        &model.config,
        tokenizer.as_ref().and_then(Tokenizer::eos_token_id),
    );
    let mut sampler = Sampler::new(args.sampling.params(0.8)?);
    let mut cache = model.new_cache(ctx);
    let mut stdout = std::io::stdout().lock();
    let out = generate(
        &model,
        &mut cache,
        tokenizer.as_ref(),
        &mut sampler,
        &Request {
            prompt: &prompt_ids,
            max_tokens: args.max_tokens,
            eos: &eos,
            stop: &args.sampling.stop,
        },
        |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        },
    )?;
    writeln!(stdout)?;
    let n = out.generated_ids.len();
    if args.json {
        let summary = serde_json::json!({
            "prompt_ids": prompt_ids,
            "generated_ids": out.generated_ids,
            "text": out.text,
            "finish_reason": out.finish_reason.as_str(),
            "prefill_tokens_per_second": prompt_ids.len() as f64 / out.prefill_seconds.max(1e-9),
            "decode_tokens_per_second": n.saturating_sub(1) as f64 / out.decode_seconds.max(1e-9),
        });
        writeln!(stdout, "{summary}")?;
    } else {
        eprintln!(
            "[{} prompt tokens, {n} generated, prefill {:.1} tok/s, decode {:.1} tok/s]",
            prompt_ids.len(),
            prompt_ids.len() as f64 / out.prefill_seconds.max(1e-9),
            n.saturating_sub(1) as f64 / out.decode_seconds.max(1e-9)
        );
    }
    Ok(())
}
