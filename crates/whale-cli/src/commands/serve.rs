//! `whale serve`: the OpenAI-compatible HTTP server (crates/whale-server) on a model.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on; anything but loopback exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* requests.
    #[arg(long)]
    api_key: Option<String>,
    /// Sequences prefilled or decoded at once; 4× as many more may wait (then 429).
    #[arg(long, default_value_t = 8)]
    max_seqs: usize,
    /// Folder where prefix-cache blocks persist across restarts.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Memory for the prefix cache, e.g. 512M or 4GiB.
    #[arg(long, default_value = "1GiB", value_parser = whale_server::parse_bytes)]
    cache_mem: usize,
    /// Most disk space for `--cache-dir`, e.g. 20GiB; least recently used blocks go first.
    #[arg(long, default_value = "8GiB", value_parser = whale_server::parse_bytes)]
    cache_disk: usize,
}

pub fn run(args: Args) -> Result<()> {
    whale_server::init_logging();
    let (model, dir) = args.model.load()?;
    let opts = whale_server::ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        ctx: Some(args.model.context(&model)),
        max_seqs: args.max_seqs,
        cache_dir: args.cache_dir,
        cache_mem: args.cache_mem,
        cache_disk: args.cache_disk as u64,
        ..Default::default()
    };
    whale_server::run(model, &dir, opts).with_context(|| format!("serving {}", dir.display()))
}
