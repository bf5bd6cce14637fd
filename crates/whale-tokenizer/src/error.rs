//! The crate's one error type: each message is one line naming the file, field or template at fault.

use std::path::PathBuf;

/// Everything that can go wrong loading a tokenizer, encoding, decoding or templating.
#[derive(thiserror::Error, Debug)]
pub enum TokenizerError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `tokenizer.json` is not a tokenizer the `tokenizers` crate accepts.
    #[error("invalid tokenizer file {}: {message}", path.display())]
    InvalidTokenizer { path: PathBuf, message: String },
    /// `tokenizer_config.json` is not JSON, or one of the fields we read has the wrong type.
    #[error("invalid {}: field `{field}`: {message}", path.display())]
    InvalidConfig {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// The model has no chat template (a folder: neither `chat_template.jinja` nor the config
    /// field; a GGUF file: no `tokenizer.chat_template`). `missing` says what was looked for.
    #[error("no chat template: {} has no {missing}", path.display())]
    NoChatTemplate {
        path: PathBuf,
        missing: &'static str,
    },
    /// The chat template failed to compile or to render (includes `raise_exception` calls).
    #[error("chat template from {}: {message}", path.display())]
    Template { path: PathBuf, message: String },
    /// transformers refuses to render an empty message list; so do we.
    #[error("cannot apply the chat template to an empty conversation")]
    EmptyConversation,
    /// A GGUF file that cannot be read at all.
    #[error(transparent)]
    Gguf(#[from] whale_gguf::GgufError),
    /// A GGUF file whose `tokenizer.*` metadata whale cannot turn into a tokenizer.
    #[error("{}: key `{key}`: {message}", path.display())]
    InvalidGguf {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// The `tokenizers` crate failed to encode.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The `tokenizers` crate failed to decode (e.g. an id outside the vocabulary).
    #[error("decoding failed: {0}")]
    Decode(String),
}
