//! `whale tokenize`: ids of a text, or of a chat rendered with the model's template.
//! Needs only the tokenizer files (or a GGUF file's tokenizer metadata).

use std::path::PathBuf;

use anyhow::{Context, Result};
use whale_tokenizer::ChatMessage;

use super::required_tokenizer;
use crate::model_dir;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder holding tokenizer.json (and tokenizer_config.json for chats), or a GGUF
    /// file with tokenizer metadata.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text to tokenize (BOS added as the tokenizer's post-processor says).
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    text: Option<String>,
    /// JSON file with an OpenAI-style list of {role, content} messages.
    #[arg(long)]
    messages: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let dir = model_dir::resolve(args.model.as_deref())?;
    let tok = required_tokenizer(&dir, "tokenize")?;
    let out = match (&args.text, &args.messages) {
        (Some(text), _) => serde_json::json!({ "ids": tok.encode(text, true)? }),
        (None, Some(path)) => {
            let raw =
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            let messages: Vec<ChatMessage> = serde_json::from_str(&raw).with_context(|| {
                format!(
                    "{}: expected a JSON list of {{role, content}} messages",
                    path.display()
                )
            })?;
            let text = tok.apply_chat_template(&messages, true)?;
            // The template already wrote BOS: encode without adding it again.
            serde_json::json!({ "ids": tok.encode(&text, false)?, "text": text })
        }
        (None, None) => anyhow::bail!("give --text or --messages"),
    };
    println!("{out}");
    Ok(())
}
