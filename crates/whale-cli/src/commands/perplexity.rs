//! `whale perplexity`: perplexity of a text file in non-overlapping windows, the way
//! quantizations are compared with llama.cpp's perplexity tool.
//!
//! Definition (same as scripts/model/eval.py): the file is tokenized once without special
//! tokens, cut into consecutive windows of `--ctx` tokens from token 0 (a final partial window
//! is dropped), each window runs from an empty cache and is scored on its `ctx − 1`
//! next-token predictions; PPL = exp(mean negative log-likelihood over all of them).

use std::path::PathBuf;

use super::{required_tokenizer, ModelArgs};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use whale_model::sampling::log_softmax;
use whale_model::Logits;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Window length when `--ctx` is not given (llama.cpp's perplexity default).
const DEFAULT_WINDOW: usize = 512;

pub fn run(args: Args) -> Result<()> {
    let (model, dir) = args.model.load()?;
    let tok = required_tokenizer(&dir, "perplexity")?;
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let ids = tok.encode(&text, false)?;
    let ctx = args
        .model
        .ctx
        .unwrap_or(DEFAULT_WINDOW.min(model.config.max_position_embeddings));
    if ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let windows: Vec<&[u32]> = ids.chunks_exact(ctx).collect();
    if windows.is_empty() {
        bail!(
            "{}: {} tokens is less than one window of {ctx}",
            args.file.display(),
            ids.len()
        );
    }
    let bar = ProgressBar::new(windows.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} windows  ppl {msg}  [{elapsed} < {eta}]",
    )?);
    let v = model.config.vocab_size;
    let (mut nll, mut count) = (0f64, 0usize);
    for window in &windows {
        let mut cache = model.new_cache(ctx);
        let logits = model.forward(window, &mut cache, Logits::All)?;
        for (row, &next) in logits.chunks_exact(v).zip(&window[1..]) {
            nll -= log_softmax(row)[next as usize] as f64;
            count += 1;
        }
        bar.set_message(format!("{:.4}", (nll / count as f64).exp()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ppl = (nll / count as f64).exp();
    if args.json {
        let out = serde_json::json!({
            "perplexity": ppl, "tokens": ids.len(), "ctx": ctx, "windows": windows.len(), "predictions": count,
        });
        println!("{out}");
    } else {
        println!(
            "perplexity {ppl:.4} over {count} predictions ({} windows of {ctx} tokens, {} tokens in file)",
            windows.len(),
            ids.len()
        );
    }
    Ok(())
}
