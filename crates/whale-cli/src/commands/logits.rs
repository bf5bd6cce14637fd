//! `whale logits`: float32 logits of every position, as a `.npy` file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use whale_model::Logits;

use super::{parse_ids, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long)]
    ids: String,
    /// Output file: float32 [number of ids, vocab_size], C order.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let ids = parse_ids(&args.ids)?;
    anyhow::ensure!(!ids.is_empty(), "--ids: no token ids given");
    let (model, _) = args.model.load()?;
    let mut cache = model.new_cache(args.model.context(&model));
    let logits = model.forward(&ids, &mut cache, Logits::All)?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("{}", args.out.display()))?,
    );
    crate::npy::write_f32(&mut file, &[ids.len(), model.config.vocab_size], &logits)
        .and_then(|_| std::io::Write::flush(&mut file))
        .with_context(|| format!("{}", args.out.display()))?;
    Ok(())
}
