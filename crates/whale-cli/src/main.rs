//! `whale`: run DeepSeek-architecture models from the command line.

mod commands;
mod generation;
mod model_dir;
mod npy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "whale",
    version,
    about = "Run DeepSeek-architecture language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt, streamed to stdout.
    Generate(commands::generate::Args),
    /// Interactive multi-turn chat using the model's chat template.
    Chat(commands::chat::Args),
    /// Write the logits of every position of an id sequence to a .npy file.
    Logits(commands::logits::Args),
    /// Tokenize text, or render and tokenize a chat (tokenizer files only).
    Tokenize(commands::tokenize::Args),
    /// Measure prefill and decode speed against the machine's memory-bandwidth roofline.
    Bench(commands::bench::Args),
    /// Perplexity of a text file in non-overlapping windows.
    Perplexity(commands::perplexity::Args),
    /// Describe a model from its config.json: parameters and latent-cache size.
    Inspect(commands::inspect::Args),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(commands::serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Logits(a) => commands::logits::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Perplexity(a) => commands::perplexity::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Serve(a) => commands::serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined with ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
