//! [`Tokenizer`]: `tokenizer.json` plus what `tokenizer_config.json` adds (special tokens,
//! the chat template), read once from a model folder.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::TokenizerError;

/// Special-token names transformers passes to every chat template (`SPECIAL_TOKENS_ATTRIBUTES`).
const SPECIAL_TOKEN_FIELDS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A model folder's tokenizer: encode, decode, chat template.
///
/// BOS policy: `encode(text, true)` adds exactly what `tokenizer.json`'s post-processor adds,
/// as transformers 5 (the reference) does: it ignores `add_bos_token` from
/// `tokenizer_config.json` whenever a `tokenizer.json` exists. DeepSeek's own post-processor is
/// plain ByteLevel, so plain text encodes without BOS there (transformers 4 and llama.cpp
/// prepend one); chat templates write BOS themselves.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    /// `None` when the folder has no template; a broken template is kept and reported on use.
    chat_template: Option<ChatTemplate>,
    /// Where a template would have come from and what it is called there, for the
    /// `NoChatTemplate` error.
    template_home: (PathBuf, &'static str),
}

// The server shares one tokenizer across request threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};

/// The fields of `tokenizer_config.json` we use.
#[derive(Default)]
struct TokenizerConfig {
    chat_template: Option<String>,
    /// `(field, content)` for each special token the config names, e.g. `("bos_token", "<s>")`.
    special_tokens: Vec<(&'static str, String)>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional: `chat_template`,
    /// `bos_token`, `eos_token` and the other special tokens)
    /// from a model folder. A `chat_template.jinja` file, when present, overrides the config's
    /// template, as in transformers. A template that does not compile does not fail the load: it
    /// is reported by [`Tokenizer::apply_chat_template`], so plain completion still works.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tokenizer_path).map_err(|source| TokenizerError::Read {
            path: tokenizer_path.clone(),
            source,
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            TokenizerError::InvalidTokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            }
        })?;

        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            read_config(&config_path)?
        } else {
            TokenizerConfig::default()
        };

        let token_id = |field: &str| {
            let content = config
                .special_tokens
                .iter()
                .find(|(name, _)| *name == field)?;
            inner.token_to_id(&content.1)
        };
        let bos_token_id = token_id("bos_token");
        let eos_token_id = token_id("eos_token");

        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = if jinja_path.exists() {
            let source =
                std::fs::read_to_string(&jinja_path).map_err(|source| TokenizerError::Read {
                    path: jinja_path.clone(),
                    source,
                })?;
            Some(ChatTemplate::new(
                jinja_path,
                source,
                &config.special_tokens,
            ))
        } else {
            config.chat_template.map(|source| {
                ChatTemplate::new(config_path.clone(), source, &config.special_tokens)
            })
        };

        Ok(Tokenizer {
            inner,
            bos_token_id,
            eos_token_id,
            chat_template,
            template_home: (
                config_path,
                "`chat_template` and there is no chat_template.jinja",
            ),
        })
    }

    /// Assembles a tokenizer from parts built elsewhere (a GGUF file's metadata).
    pub(crate) fn from_parts(
        inner: tokenizers::Tokenizer,
        bos_token_id: Option<u32>,
        eos_token_id: Option<u32>,
        chat_template: Option<ChatTemplate>,
        template_home: (PathBuf, &'static str),
    ) -> Self {
        Tokenizer {
            inner,
            bos_token_id,
            eos_token_id,
            chat_template,
            template_home,
        }
    }

    /// Encodes plain text. `add_special_tokens = true` applies the post-processor (see the BOS
    /// policy on [`Tokenizer`]); special-token text inside `text` (e.g. `<｜User｜>`)
    /// always becomes the special token's id, as in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes ids to text. Ids outside the vocabulary are dropped (the `tokenizers` crate's
    /// behaviour), which matters for models whose embedding is padded past the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Renders the chat template, as transformers' `apply_chat_template(tokenize=False)`: the
    /// result already starts with BOS for DeepSeek templates.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template =
            self.chat_template
                .as_ref()
                .ok_or_else(|| TokenizerError::NoChatTemplate {
                    path: self.template_home.0.clone(),
                    missing: self.template_home.1,
                })?;
        if messages.is_empty() {
            return Err(TokenizerError::EmptyConversation);
        }
        template.render(messages, add_generation_prompt)
    }

    /// Renders the chat template and encodes the text without adding special tokens, so the BOS
    /// the template wrote is the only one (as `apply_chat_template(tokenize=True)`).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// The id of `bos_token` from `tokenizer_config.json`, if it names one the vocabulary has.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The id of `eos_token` from `tokenizer_config.json`, if it names one the vocabulary has.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// The id of a token (regular or added), e.g. `"<｜User｜>"`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of tokens the tokenizer knows, added tokens included (transformers' `len(tok)`).
    /// The model's embedding may have more rows (DeepSeek-V3: 128815 here, 129280 rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Reads the fields we use from `tokenizer_config.json`; a wrong type names the field.
fn read_config(path: &Path) -> Result<TokenizerConfig, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |field: &str, message: String| TokenizerError::InvalidConfig {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let json: Json = serde_json::from_str(&text).map_err(|e| invalid("(root)", e.to_string()))?;
    let Json::Object(map) = json else {
        return Err(invalid("(root)", "expected a JSON object".into()));
    };

    let mut config = TokenizerConfig::default();
    for field in SPECIAL_TOKEN_FIELDS {
        // A special token is a string or an AddedToken object `{"content": ..., ...}`.
        let content = match map.get(field) {
            None | Some(Json::Null) => continue,
            Some(Json::String(s)) => s.clone(),
            Some(Json::Object(token)) => match token.get("content") {
                Some(Json::String(s)) => s.clone(),
                _ => {
                    return Err(invalid(
                        field,
                        "AddedToken object without a string `content`".into(),
                    ))
                }
            },
            Some(other) => {
                return Err(invalid(
                    field,
                    format!("expected a string or an AddedToken object, got {other}"),
                ))
            }
        };
        config.special_tokens.push((field, content));
    }
    config.chat_template = match map.get("chat_template") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        // Older configs list named templates; transformers uses the one named "default".
        Some(Json::Array(list)) => {
            let default = list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
            match default
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
            {
                Some(s) => Some(s.to_string()),
                None => return Err(invalid(
                    "chat_template",
                    "a list of templates without one named \"default\" with a string `template`"
                        .into(),
                )),
            }
        }
        Some(other) => {
            return Err(invalid(
                "chat_template",
                format!("expected a string, got {other}"),
            ))
        }
    };
    Ok(config)
}
