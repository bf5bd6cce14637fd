//! whale-tokenizer: loads a Hugging Face model folder's tokenizer, renders its chat template and
//! detokenizes a stream of generated ids (SPEC §7.2, §7.3).
//!
//! * [`Tokenizer`] wraps the `tokenizers` crate (byte-level BPE for every DeepSeek model) and adds
//!   what `tokenizer_config.json` says: special tokens and the chat template.
//! * [`Tokenizer::apply_chat_template`] renders with minijinja configured like transformers'
//!   jinja2 sandbox, so the text matches `apply_chat_template(tokenize=False)`.
//! * [`Tokenizer::from_gguf`] builds the same kind of tokenizer from the `tokenizer.*` metadata
//!   of a llama.cpp GGUF file.
//! * [`StreamDecoder`] turns ids pushed one at a time into text without ever splitting a
//!   multi-byte character.

mod chat;
mod error;
mod gguf;
mod python_compat;
mod stop;
mod stream;
mod tokenizer;

pub use chat::ChatMessage;
pub use error::TokenizerError;
pub use stop::StopStrings;
pub use stream::StreamDecoder;
pub use tokenizer::Tokenizer;
