//! `whale chat`: an interactive multi-turn chat in the terminal.

use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use whale_model::sampling::Sampler;
use whale_tokenizer::ChatMessage;

use super::{required_tokenizer, ModelArgs, SamplingArgs};
use crate::generation::{generate, Request};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt placed before the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(args: Args) -> Result<()> {
    let (model, dir) = args.model.load()?;
    let tok = required_tokenizer(&dir, "chat")?;
    let eos = whale_model::config::eos_token_ids(&dir, &model.config, tok.eos_token_id());
    let mut sampler = Sampler::new(args.sampling.params(0.7)?);
    let mut cache = model.new_cache(args.model.context(&model));
    // Ids whose latents are in the cache, so each turn only prefills what is new.
    let mut cached_ids: Vec<u32> = Vec::new();
    let mut messages: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    eprintln!(
        "whale chat: {} (empty line or Ctrl-D to quit, /reset to start over)",
        dir.display()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next().transpose()? else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        if line == "/reset" {
            messages.retain(|m| m.role == "system");
            continue;
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: line.to_string(),
        });
        let prompt = tok.encode_chat(&messages, true)?;
        if prompt.len() >= cache.capacity() {
            bail!(
                "the conversation ({} tokens) no longer fits the context of {} tokens",
                prompt.len(),
                cache.capacity()
            );
        }
        let common = cached_ids
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(prompt.len() - 1);
        cache.truncate(keep);
        cached_ids.truncate(keep);
        let mut stdout = std::io::stdout().lock();
        let out = generate(
            &model,
            &mut cache,
            Some(&tok),
            &mut sampler,
            &Request {
                prompt: &prompt,
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
        cached_ids = prompt;
        cached_ids.extend(&out.generated_ids);
        cached_ids.truncate(cache.len());
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: out.text,
        });
    }
    Ok(())
}
