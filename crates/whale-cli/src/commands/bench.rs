//! `whale bench`: prefill and decode speed at several context depths, load time, peak RSS,
//! and decode as a share of the memory-bandwidth roofline measured in the same process.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use rayon::prelude::*;
use whale_model::sampling::argmax;
use whale_model::{Logits, Model, Step};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens to prefill.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Tokens to decode at each depth.
    #[arg(long, default_value_t = 64)]
    gen: usize,
    /// Context depths (cached tokens) at which to measure decode, comma-separated.
    #[arg(long, default_value = "0")]
    depths: String,
    /// Sequences decoded together in one batched forward per step (as `whale serve` batches
    /// concurrent streams), comma-separated; decode is reported as aggregate tok/s for each.
    #[arg(long, default_value = "1")]
    batch: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Deterministic pseudo-random token ids (a benchmark must not depend on a tokenizer).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// STREAM triad `a = b + s·c` over arrays far larger than the caches, on the benchmark's
/// thread pool; returns the best of five in bytes/s (24 bytes moved per element).
fn triad_bandwidth() -> f64 {
    const N: usize = 32 << 20; // 3 × 128 MiB
    let (mut a, b, c) = (vec![0.0f32; N], vec![1.0f32; N], vec![2.0f32; N]);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        a.par_chunks_mut(1 << 16)
            .zip(b.par_chunks(1 << 16))
            .zip(c.par_chunks(1 << 16))
            .for_each(|((a, b), c)| {
                for i in 0..a.len() {
                    a[i] = b[i] + 3.0 * c[i];
                }
            });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&a);
    (3 * 4 * N) as f64 / best
}

/// Peak resident set size in bytes (Linux `VmHWM`), if available.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Aggregate decode tok/s of `batch` greedy sequences, each with `depth` cached tokens of its
/// own, decoded together one token per sequence per step.
fn decode_rate(model: &Model, depth: usize, gen: usize, ctx: usize, batch: usize) -> Result<f64> {
    let vocab = model.config.vocab_size;
    let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache(ctx)).collect();
    let mut next = Vec::with_capacity(batch);
    for (b, cache) in caches.iter_mut().enumerate() {
        let context = tokens(depth.max(1), vocab, 7 + b as u64);
        next.push(argmax(&model.forward(&context, cache, Logits::Last)?) as u32);
    }
    let start = Instant::now();
    for _ in 0..gen {
        let mut steps: Vec<Step> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, id)| Step {
                tokens: std::slice::from_ref(id),
                cache,
                logits: Logits::Last,
            })
            .collect();
        let logits = model.forward_batch(&mut steps)?;
        next = logits.iter().map(|l| argmax(l) as u32).collect();
    }
    Ok((gen * batch) as f64 / start.elapsed().as_secs_f64())
}

pub fn run(args: Args) -> Result<()> {
    let threads = whale_tensor::set_threads(args.model.threads.unwrap_or(0))?;
    let depths: Vec<usize> = args
        .depths
        .split(',')
        .map(|d| {
            d.trim()
                .parse()
                .with_context(|| format!("--depths: {d:?} is not a number"))
        })
        .collect::<Result<_>>()?;
    let batches: Vec<usize> = args
        .batch
        .split(',')
        .map(|b| match b.trim().parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("--batch: {b:?} is not a positive number"),
        })
        .collect::<Result<_>>()?;
    let bandwidth = triad_bandwidth();
    let start = Instant::now();
    let (model, dir) = args.model.load()?;
    let load_seconds = start.elapsed().as_secs_f64();
    let max_depth = depths.iter().copied().max().unwrap_or(0);
    let ctx = (max_depth.max(1) + args.gen).max(args.prompt) + 1;

    let prompt = tokens(args.prompt, model.config.vocab_size, 1);
    let mut cache = model.new_cache(ctx);
    let start = Instant::now();
    model.forward(&prompt, &mut cache, Logits::Last)?;
    let prefill = args.prompt as f64 / start.elapsed().as_secs_f64();

    let bytes_per_token = model.weight_bytes_per_token() as f64;
    // Latent cache bytes per cached position, all layers.
    let kv_bytes =
        model.config.num_hidden_layers * model.cache_type.row_bytes(model.config.latent_dim());
    let roofline = bandwidth / bytes_per_token;
    let mut decode = Vec::new();
    for &depth in &depths {
        for &batch in &batches {
            let rate = decode_rate(&model, depth, args.gen, ctx, batch)?;
            decode.push(serde_json::json!({
                "depth": depth, "batch": batch, "tokens_per_second": rate,
                "roofline_percent": 100.0 * rate / roofline,
            }));
        }
    }
    let result = serde_json::json!({
        "model": dir.display().to_string(),
        "quant": args.model.quant.map(|q| q.name()).unwrap_or("as stored"),
        "mla": format!("{:?}", args.model.mla),
        "cache_type": model.cache_type.name(),
        "kv_cache_bytes_per_token": kv_bytes,
        "threads": threads,
        "load_seconds": load_seconds,
        "weight_bytes": model.weight_bytes(),
        "weight_bytes_per_decoded_token": bytes_per_token,
        "triad_bandwidth_gb_per_s": bandwidth / 1e9,
        "decode_roofline_tokens_per_second": roofline,
        "prefill": { "tokens": args.prompt, "tokens_per_second": prefill },
        "decode": decode,
        "gen_tokens": args.gen,
        "peak_rss_bytes": peak_rss(),
    });
    println!("model           {}", dir.display());
    println!(
        "threads         {threads}, load {load_seconds:.2} s, weights {:.1} MB",
        model.weight_bytes() as f64 / 1e6
    );
    println!(
        "bandwidth       {:.1} GB/s (STREAM triad, same threads)",
        bandwidth / 1e9
    );
    println!(
        "bytes/token     {:.1} MB → roofline {roofline:.1} tok/s",
        bytes_per_token / 1e6
    );
    println!(
        "kv cache        {}, {kv_bytes} bytes/token (MLA {:?})",
        model.cache_type, args.model.mla
    );
    println!(
        "prefill         {prefill:.1} tok/s ({} tokens)",
        args.prompt
    );
    for d in &decode {
        let rate = d["tokens_per_second"].as_f64().unwrap_or(0.0);
        if d["batch"] == 1 {
            println!(
                "decode @ {:>6}  {rate:.1} tok/s ({:.0}% of roofline)",
                d["depth"],
                d["roofline_percent"].as_f64().unwrap_or(0.0)
            );
        } else {
            println!(
                "decode @ {:>6}  {rate:.1} tok/s aggregate, {} sequences per step",
                d["depth"], d["batch"]
            );
        }
    }
    if let Some(rss) = peak_rss() {
        println!("peak RSS        {:.1} MB", rss as f64 / 1e6);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}
