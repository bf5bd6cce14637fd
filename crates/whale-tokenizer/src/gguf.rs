//! A [`Tokenizer`] from a GGUF file's `tokenizer.*` metadata, for `tokenizer.ggml.model ==
//! "gpt2"` (byte-level BPE, every DeepSeek model).
//!
//! The metadata is turned back into a Hugging Face `tokenizer.json` and loaded with the
//! `tokenizers` crate, so encoding is exactly the Hugging Face tokenizer the file was converted
//! from. What the file stores (written by llama.cpp's `convert_hf_to_gguf.py`, read by
//! `src/llama-vocab.cpp`):
//!
//! * `tokenizer.ggml.tokens`: every id's token, byte-level encoded as in `tokenizer.json`; ids the
//!   Hugging Face tokenizer lacks are `[PAD<id>]` placeholders of type UNUSED (5). Those are left
//!   out of the vocabulary, so they decode to nothing, as they do from `tokenizer.json`.
//! * `tokenizer.ggml.token_type`: CONTROL (3) tokens become special added tokens, USER_DEFINED
//!   (4) ones non-special added tokens; both are matched in text as in transformers. The
//!   converter marks an added token CONTROL if it is special *or looks special* (`<｜…｜>`,
//!   `<|…|>`), so DeepSeek-V3's `<｜User｜>` and friends, non-special in its `tokenizer.json`,
//!   are special here and `skip_special_tokens` drops them (llama.cpp drops them too).
//! * `tokenizer.ggml.merges`: `"a b"` strings, rank order.
//! * `tokenizer.ggml.pre`: names the pre-tokenizer, whose Hugging Face form is spelled out in
//!   [`pre_tokenizer`]; an unknown name is an error (encoding would silently differ).
//! * BOS, as llama.cpp: prepended by `encode(text, true)` when `tokenizer.ggml.add_bos_token`
//!   is true (gpt2 vocabularies default to false); likewise EOS with `add_eos_token`. Today's
//!   converter takes the flag from `tokenizer.json`'s post-processor (false for DeepSeek-V3,
//!   whose post-processor is plain ByteLevel); older ones copied `add_bos_token` from
//!   `tokenizer_config.json` (true for V3), so older V3 files add BOS and newer ones do not.
//! * `tokenizer.chat_template`, rendered with the special tokens the file names.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value as Json};
use whale_gguf::{GgufFile, Value};

use crate::chat::ChatTemplate;
use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// llama.cpp's token types (`llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;

/// Special-token ids a GGUF file may name, with the template variable each one fills.
const SPECIAL_IDS: [(&str, &str); 6] = [
    ("tokenizer.ggml.bos_token_id", "bos_token"),
    ("tokenizer.ggml.eos_token_id", "eos_token"),
    ("tokenizer.ggml.unknown_token_id", "unk_token"),
    ("tokenizer.ggml.seperator_token_id", "sep_token"),
    ("tokenizer.ggml.padding_token_id", "pad_token"),
    ("tokenizer.ggml.mask_token_id", "mask_token"),
];

/// The Hugging Face pre-tokenizer of each `tokenizer.ggml.pre` whale knows, as the original
/// `tokenizer.json` spells it (non-ASCII characters escaped, so no editor can normalise a range
/// bound into another code point).
fn pre_tokenizer(pre: &str) -> Option<Json> {
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Some(match pre {
        // GPT-2's regex inside the byte-level pre-tokenizer (whale-tiny's own tokenizer).
        "gpt-2" => byte_level(true),
        // DeepSeek-V3 / R1. llama.cpp's converter names the pre-tokenizer by hashing how the
        // Hugging Face tokenizer splits a probe text; under transformers 5, which adds no BOS
        // there, V3's tokenizer hashes like JoyAI-LLM's (the same split without the BOS), so
        // converted V3 files may say "joyai-llm". llama.cpp runs both with one regex set.
        "deepseek-v3" | "joyai-llm" => json!({"type": "Sequence", "pretokenizers": [
            split("\\p{N}{1,3}"),
            split("[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+"),
            split("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
            byte_level(false),
        ]}),
        // DeepSeek LLM 7B/67B and DeepSeek-V2 / V2.5.
        "deepseek-llm" => json!({"type": "Sequence", "pretokenizers": [
            split("[\r\n]"),
            split("\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+"),
            split("\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+"),
            split("\\s+$"),
            split("[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+"),
            {"type": "Digits", "individual_digits": true},
            byte_level(false),
        ]}),
        _ => return None,
    })
}

/// Reads `tokenizer.*` keys, naming the key on every error.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> TokenizerError {
        TokenizerError::InvalidGguf {
            path: self.file.path().to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// `key` through [`GgufFile::get_as`], its error reported under the key.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        as_type: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, TokenizerError> {
        self.file
            .get_as(key, what, as_type)
            .map_err(|message| self.err(key, message))
    }

    fn str(&self, key: &str) -> Result<Option<&str>, TokenizerError> {
        self.typed(key, "a string", Value::as_str)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        self.typed(key, "true or false", Value::as_bool)
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>, TokenizerError> {
        self.typed(key, "an array", Value::as_array)
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&str>>, TokenizerError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| self.err(key, format!("element {i} is {v}, not a string")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A token id that must be inside the vocabulary.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>, TokenizerError> {
        let Some(v) = self.file.get(key) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(id) if (id as usize) < n_tokens => Ok(Some(id as u32)),
            _ => Err(self.err(key, format!("{v} is not a token id below {n_tokens}"))),
        }
    }
}

impl Tokenizer {
    /// The tokenizer of a model given as a path (whale's `--model`): a folder's
    /// `tokenizer.json`, or a GGUF file's tokenizer metadata. `None` when the model has none.
    pub fn for_model(path: &Path) -> Result<Option<Self>, TokenizerError> {
        if path.is_file() {
            let file = GgufFile::open(path)?;
            if file.get("tokenizer.ggml.model").is_none() {
                return Ok(None);
            }
            return Tokenizer::from_gguf(&file).map(Some);
        }
        if path.join("tokenizer.json").is_file() {
            Tokenizer::from_dir(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Opens a GGUF file and builds its tokenizer (see [`Tokenizer::from_gguf`]).
    pub fn from_gguf_path(path: &Path) -> Result<Self, TokenizerError> {
        Tokenizer::from_gguf(&GgufFile::open(path)?)
    }

    /// The tokenizer a GGUF file stores in its `tokenizer.*` metadata (module docs above).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let m = Meta { file };
        let model_key = "tokenizer.ggml.model";
        match m.str(model_key)? {
            Some("gpt2") => {}
            Some(other) => {
                return Err(m.err(
                    model_key,
                    format!("tokenizer model {other:?} is not supported (whale reads \"gpt2\" byte-level BPE)"),
                ))
            }
            None => return Err(m.err(model_key, "missing: the file has no tokenizer")),
        }
        let pre_key = "tokenizer.ggml.pre";
        let pre = m.str(pre_key)?.ok_or_else(|| m.err(pre_key, "missing"))?;
        let pre_tokenizer = pre_tokenizer(pre).ok_or_else(|| {
            m.err(
                pre_key,
                format!("pre-tokenizer {pre:?} is not supported (whale knows gpt-2, deepseek-llm, deepseek-v3 and joyai-llm)"),
            )
        })?;

        let tokens_key = "tokenizer.ggml.tokens";
        let tokens = m
            .strings(tokens_key)?
            .ok_or_else(|| m.err(tokens_key, "missing"))?;
        let types_key = "tokenizer.ggml.token_type";
        let types: Vec<i64> = match m.array(types_key)? {
            None => vec![1; tokens.len()],
            Some(items) if items.len() == tokens.len() => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| m.err(types_key, format!("{v} is not an integer")))
                })
                .collect::<Result<_, _>>()?,
            Some(items) => {
                return Err(m.err(
                    types_key,
                    format!("{} types for {} tokens", items.len(), tokens.len()),
                ))
            }
        };
        let merges_key = "tokenizer.ggml.merges";
        let merges = m
            .strings(merges_key)?
            .ok_or_else(|| m.err(merges_key, "missing"))?;
        if let Some((i, bad)) = merges.iter().enumerate().find(|(_, s)| !s.contains(' ')) {
            return Err(m.err(
                merges_key,
                format!("merge {i} ({bad:?}) is not two tokens joined by a space"),
            ));
        }

        let mut vocab = Map::new();
        let mut added = Vec::new();
        for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
            if ty == UNUSED || vocab.contains_key(token) {
                continue; // placeholders decode to nothing; a repeated string keeps its first id
            }
            vocab.insert(token.to_string(), json!(id));
            if ty == CONTROL || ty == USER_DEFINED {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == CONTROL,
                }));
            }
        }

        let n = tokens.len();
        let specials: Vec<(&'static str, u32)> = SPECIAL_IDS
            .iter()
            .map(|&(key, name)| Ok(m.token_id(key, n)?.map(|id| (name, id))))
            .collect::<Result<Vec<_>, TokenizerError>>()?
            .into_iter()
            .flatten()
            .collect();
        let id_of = |name: &str| specials.iter().find(|s| s.0 == name).map(|s| s.1);
        let (bos, eos) = (id_of("bos_token"), id_of("eos_token"));
        let add_bos = m.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = m.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let post_processor = post_processor(
            add_bos
                .then_some(bos)
                .flatten()
                .map(|id| (tokens[id as usize], id)),
            add_eos
                .then_some(eos)
                .flatten()
                .map(|id| (tokens[id as usize], id)),
        );

        let json = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges,
            },
        });
        let path: PathBuf = file.path().to_path_buf();
        let inner =
            tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).map_err(|e| {
                TokenizerError::InvalidTokenizer {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;

        let special_tokens: Vec<(&str, String)> = specials
            .iter()
            .map(|&(name, id)| (name, tokens[id as usize].to_string()))
            .collect();
        let template_key = "tokenizer.chat_template";
        let chat_template = m
            .str(template_key)?
            .map(|source| ChatTemplate::new(path.clone(), source.to_string(), &special_tokens));
        Ok(Tokenizer::from_parts(
            inner,
            bos,
            eos,
            chat_template,
            (path, "`tokenizer.chat_template`"),
        ))
    }
}

/// `$BOS $A $EOS` as far as the file asks for them; `None` adds nothing.
fn post_processor(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let mut single = Vec::new();
    let mut special_tokens = Map::new();
    let mut special = |(token, id): (&str, u32)| {
        special_tokens.insert(
            token.to_string(),
            json!({"id": token, "ids": [id], "tokens": [token]}),
        );
        json!({"SpecialToken": {"id": token, "type_id": 0}})
    };
    if let Some(b) = bos {
        single.push(special(b));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some(e) = eos {
        single.push(special(e));
    }
    let mut pair = single.clone();
    pair.extend(single.iter().map(|piece| {
        if piece.get("Sequence").is_some() {
            json!({"Sequence": {"id": "B", "type_id": 1}})
        } else {
            piece.clone()
        }
    }));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_pre_tokenizer_loads() {
        for pre in ["gpt-2", "deepseek-v3", "joyai-llm", "deepseek-llm"] {
            let json = json!({"type": "BPE", "vocab": {}, "merges": []});
            let text = json!({"version": "1.0", "added_tokens": [], "normalizer": null,
                "pre_tokenizer": pre_tokenizer(pre).unwrap(), "post_processor": null,
                "decoder": null, "model": json, "truncation": null, "padding": null});
            tokenizers::Tokenizer::from_bytes(text.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{pre}: {e}"));
        }
        assert!(pre_tokenizer("llama-bpe").is_none());
    }
}
