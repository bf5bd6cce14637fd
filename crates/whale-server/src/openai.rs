//! OpenAI's request and response shapes for `/v1/chat/completions` and `/v1/completions`:
//! parsing and validating request bodies into a [`GenerationRequest`], and rendering
//! results, stream chunks and `usage` as the official clients expect them.
//!
//! A body is parsed twice from one JSON value, once into the fields both endpoints share
//! and once into the endpoint's own, each struct ignoring the other's fields (unknown
//! fields are accepted, as OpenAI does); a known field of the wrong type is a 400 that
//! names it.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use whale_model::sampling::SamplingParams;
use whale_tokenizer::ChatMessage;

use crate::engine::{FinishReason, TokenLogprob, Usage};
use crate::error::ApiError;

/// OpenAI's limit for `top_logprobs` in chat.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// OpenAI's limit for `logprobs` in legacy completions.
pub const MAX_COMPLETION_LOGPROBS: i64 = 5;
/// Stop sequences per request (DeepSeek's API allows 16, OpenAI's 4).
pub const MAX_STOPS: usize = 16;
/// Longest stop sequence: the engine rescans held-back text against each one per token,
/// so an unbounded one would let a single request slow every stream.
pub const MAX_STOP_BYTES: usize = 1024;

/// Parses a body as JSON into `T`; errors name the offending field.
pub fn parse<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde reports a missing field at its parent: name the field itself.
        let missing = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let param = missing
            .as_deref()
            .or((path != ".").then_some(path.as_str()));
        let message = match param {
            Some(p) if missing.is_none() => format!("invalid value for `{p}`: {inner}"),
            _ => format!("invalid request body: {inner}"),
        };
        ApiError::invalid(param, message)
    })
}

/// The body as a JSON object.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(None, format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            None,
            "request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Fields shared by both endpoints. `top_k`, `min_p` and `repetition_penalty` are
/// extensions (as in vLLM and llama.cpp's servers).
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub n: Option<i64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Also return the generated token ids (vLLM's extension); always on when the model
    /// has no tokenizer, since then there is no text.
    pub return_token_ids: Option<bool>,
    /// Keep generating past EOS until `max_tokens` (vLLM's extension; for benchmarks).
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<MessageIn>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    pub content: Option<Content>,
}

/// A message's content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionFields {
    pub prompt: PromptField,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
}

/// The four prompt forms OpenAI accepts; a batch must hold exactly one prompt here.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdBatches(Vec<Vec<u32>>),
}

/// A completion prompt before tokenization.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl PromptField {
    pub fn single(self) -> Result<Prompt, ApiError> {
        let batch = |n: usize| {
            ApiError::invalid(
                Some("prompt"),
                format!("a batch of {n} prompts is not supported: send one prompt per request"),
            )
        };
        match self {
            PromptField::Text(t) => Ok(Prompt::Text(t)),
            PromptField::Ids(ids) => Ok(Prompt::Ids(ids)),
            PromptField::Texts(mut v) if v.len() == 1 => Ok(Prompt::Text(v.remove(0))),
            PromptField::IdBatches(mut v) if v.len() == 1 => Ok(Prompt::Ids(v.remove(0))),
            PromptField::Texts(v) => Err(batch(v.len())),
            PromptField::IdBatches(v) => Err(batch(v.len())),
        }
    }
}

impl ChatFields {
    /// The conversation for the chat template. OpenAI's `developer` role is the newer
    /// name of `system`.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "`messages` must not be empty",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                _ => {
                                    return Err(ApiError::invalid(
                                        Some(&format!("messages[{i}].content[{j}]")),
                                        format!(
                                        "content part of type {:?} is not supported (text only)",
                                        p.kind
                                    ),
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                let role = if m.role == "developer" {
                    "system"
                } else {
                    m.role.as_str()
                };
                Ok(ChatMessage {
                    role: role.to_string(),
                    content,
                })
            })
            .collect()
    }

    /// Alternatives per token: `None` without `logprobs: true`.
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (false, Some(k)) if k > 0 => Err(ApiError::invalid(
                Some("top_logprobs"),
                "`top_logprobs` requires `logprobs: true`",
            )),
            (false, _) => Ok(None),
            (true, k) => Ok(Some(in_range(
                "top_logprobs",
                k.unwrap_or(0),
                0,
                MAX_TOP_LOGPROBS,
            )?)),
        }
    }
}

impl CompletionFields {
    pub fn check_supported(&self) -> Result<(), ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid(Some("echo"), "`echo` is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid(
                Some("best_of"),
                "only `best_of: 1` is supported",
            ));
        }
        Ok(())
    }

    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        self.logprobs
            .map(|k| in_range("logprobs", k, 0, MAX_COMPLETION_LOGPROBS))
            .transpose()
    }
}

fn in_range(name: &str, v: i64, lo: i64, hi: i64) -> Result<usize, ApiError> {
    if (lo..=hi).contains(&v) {
        Ok(v as usize)
    } else {
        Err(ApiError::invalid(
            Some(name),
            format!("`{name}` must be in [{lo}, {hi}], got {v}"),
        ))
    }
}

impl CommonParams {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Checks what whale does not support or OpenAI rejects.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        match self.n {
            None | Some(1) => Ok(()),
            Some(n) => Err(ApiError::invalid(
                Some("n"),
                format!("only `n: 1` is supported, got {n}"),
            )),
        }
    }

    /// `max_tokens` (or chat's newer `max_completion_tokens`, which wins), checked
    /// against the context left after the prompt; unset means "up to the context".
    /// `prompt_param` names the prompt's field (`messages` or `prompt`) in errors.
    pub fn max_tokens(
        &self,
        newer: Option<i64>,
        prompt_len: usize,
        ctx: usize,
        prompt_param: &str,
    ) -> Result<usize, ApiError> {
        let (name, asked) = match newer {
            Some(m) => ("max_completion_tokens", Some(m)),
            None => ("max_tokens", self.max_tokens),
        };
        if prompt_len == 0 {
            return Err(ApiError::invalid(Some(prompt_param), "the prompt is empty"));
        }
        match asked {
            Some(m) if m <= 0 => Err(ApiError::invalid(Some(name), format!("`{name}` must be at least 1, got {m}"))),
            Some(m) if prompt_len as u64 + m as u64 > ctx as u64 => Err(ApiError::context_length(
                prompt_param,
                format!(
                "this model's context is {ctx} tokens, but {} were requested ({prompt_len} in the prompt, {m} \
                 to generate); shorten the prompt or lower `{name}`",
                    prompt_len as u64 + m as u64
                ),
            )),
            Some(m) => Ok(m as usize),
            None if prompt_len >= ctx => Err(ApiError::context_length(
                prompt_param,
                format!("this model's context is {ctx} tokens, but the prompt has {prompt_len}"),
            )),
            None => Ok(ctx - prompt_len),
        }
    }

    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!(
                    "at most {MAX_STOPS} stop sequences are supported, got {}",
                    stops.len()
                ),
            ));
        }
        if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                Some("stop"),
                format!(
                    "stop sequences are limited to {MAX_STOP_BYTES} bytes, got {}",
                    long.len()
                ),
            ));
        }
        Ok(stops)
    }

    /// Sampling parameters with OpenAI's defaults (temperature 1, top_p 1) and ranges.
    pub fn sampling(&self) -> Result<SamplingParams, ApiError> {
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("`temperature` must be in [0, 2], got {temperature}"),
            ));
        }
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k < 0 => 0, // -1 means "off" in vLLM
            Some(k) => k as usize,
        };
        let params = SamplingParams {
            temperature,
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            // Negative seeds are valid integers to OpenAI: keep their bits.
            seed: self.seed.map(|s| s as u64),
        };
        params.validate().map_err(|message| {
            let param = message
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            ApiError::invalid(
                Some(&param),
                format!("`{param}` {}", &message[param.len()..].trim_start()),
            )
        })?;
        Ok(params)
    }
}

/// Identifies one response: `chatcmpl-…` or `cmpl-…`, `created`, and the model name.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
}

pub fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
        // DeepSeek's API names for the same split.
        "prompt_cache_hit_tokens": u.cached_tokens,
        "prompt_cache_miss_tokens": u.prompt_tokens - u.cached_tokens,
    })
}

/// The endpoint a response belongs to: its object names and logprobs layout differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

fn token_bytes(token: &str) -> Vec<u8> {
    token.as_bytes().to_vec()
}

/// Logprobs in the endpoint's layout: chat's `{content: [{token, logprob, bytes,
/// top_logprobs}]}`, or legacy completions' parallel arrays.
pub fn logprobs_json(endpoint: Endpoint, items: &[TokenLogprob], text_offset: usize) -> Value {
    match endpoint {
        Endpoint::Chat => json!({
            "content": items.iter().map(|t| json!({
                "token": t.token,
                "logprob": t.logprob,
                "bytes": token_bytes(&t.token),
                "top_logprobs": t.top.iter().map(|(tok, lp)| json!({
                    "token": tok, "logprob": lp, "bytes": token_bytes(tok),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Endpoint::Completion => {
            let mut offsets = Vec::with_capacity(items.len());
            let mut at = text_offset;
            for t in items {
                offsets.push(at);
                at += t.token.len();
            }
            json!({
                "tokens": items.iter().map(|t| &t.token).collect::<Vec<_>>(),
                "token_logprobs": items.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": items.iter().map(|t| {
                    t.top.iter().map(|(tok, lp)| (tok.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }
}

/// The whole non-streamed response.
pub struct Completed<'a> {
    pub text: &'a str,
    pub token_ids: Option<&'a [u32]>,
    pub logprobs: Option<&'a [TokenLogprob]>,
    pub finish: FinishReason,
    pub usage: Usage,
}

pub fn response_json(endpoint: Endpoint, meta: &ResponseMeta, c: &Completed) -> Value {
    let logprobs = c.logprobs.map(|l| logprobs_json(endpoint, l, 0));
    let mut choice = match endpoint {
        Endpoint::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": c.text },
            "logprobs": logprobs,
            "finish_reason": c.finish.as_str(),
        }),
        Endpoint::Completion => json!({
            "index": 0,
            "text": c.text,
            "logprobs": logprobs,
            "finish_reason": c.finish.as_str(),
        }),
    };
    if let Some(ids) = c.token_ids {
        choice["token_ids"] = json!(ids);
    }
    json!({
        "id": meta.id,
        "object": match endpoint { Endpoint::Chat => "chat.completion", Endpoint::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.system_fingerprint,
        "choices": [choice],
        "usage": usage_json(c.usage),
    })
}

/// One streamed piece of a choice.
pub struct ChunkChoice<'a> {
    /// Chat's first chunk carries the role.
    pub role: bool,
    pub text: Option<&'a str>,
    pub token_ids: Option<&'a [u32]>,
    pub logprobs: Option<Value>,
    pub finish: Option<FinishReason>,
}

/// A `chat.completion.chunk` / streamed `text_completion` object. With
/// `include_usage`, every chunk carries `"usage": null` and the last one the totals.
pub fn chunk_json(
    endpoint: Endpoint,
    meta: &ResponseMeta,
    c: &ChunkChoice,
    include_usage: bool,
) -> Value {
    let finish = c.finish.map(FinishReason::as_str);
    let mut choice = match endpoint {
        Endpoint::Chat => {
            let mut delta = serde_json::Map::new();
            if c.role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = c.text {
                delta.insert("content".into(), json!(t));
            }
            json!({ "index": 0, "delta": delta, "logprobs": c.logprobs, "finish_reason": finish })
        }
        Endpoint::Completion => {
            json!({ "index": 0, "text": c.text.unwrap_or(""), "logprobs": c.logprobs, "finish_reason": finish })
        }
    };
    if let Some(ids) = c.token_ids {
        choice["token_ids"] = json!(ids);
    }
    let mut chunk = chunk_envelope(endpoint, meta);
    chunk["choices"] = json!([choice]);
    if include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

/// The final usage-only chunk of a stream with `include_usage` (no choices).
pub fn usage_chunk_json(endpoint: Endpoint, meta: &ResponseMeta, usage: Usage) -> Value {
    let mut chunk = chunk_envelope(endpoint, meta);
    chunk["choices"] = json!([]);
    chunk["usage"] = usage_json(usage);
    chunk
}

fn chunk_envelope(endpoint: Endpoint, meta: &ResponseMeta) -> Value {
    json!({
        "id": meta.id,
        "object": match endpoint { Endpoint::Chat => "chat.completion.chunk", Endpoint::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.system_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(v: Value) -> Result<CommonParams, ApiError> {
        parse(&v)
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = common(json!({"temperature": "hot"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = common(json!({"stop": [1, 2]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        // Unknown fields are fine; nulls mean "default".
        let c = common(json!({"user": "x", "logit_bias": {}, "temperature": null})).unwrap();
        assert!(c.temperature.is_none());
    }

    #[test]
    fn max_tokens_rules() {
        let c = CommonParams::default();
        assert_eq!(c.max_tokens(None, 10, 100, "prompt").unwrap(), 90);
        assert_eq!(c.max_tokens(Some(5), 10, 100, "prompt").unwrap(), 5);
        assert_eq!(
            c.max_tokens(Some(0), 10, 100, "prompt")
                .unwrap_err()
                .param
                .as_deref(),
            Some("max_completion_tokens")
        );
        let e = c.max_tokens(Some(91), 10, 100, "prompt").unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(c.max_tokens(None, 100, 100, "prompt").is_err());
        let c = CommonParams {
            max_tokens: Some(-3),
            ..Default::default()
        };
        assert_eq!(
            c.max_tokens(None, 10, 100, "prompt")
                .unwrap_err()
                .param
                .as_deref(),
            Some("max_tokens")
        );
    }

    #[test]
    fn sampling_ranges_are_checked() {
        let bad = |v: Value, param: &str| {
            let e = common(v).unwrap().sampling().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{e:?}");
        };
        bad(json!({"temperature": 2.5}), "temperature");
        bad(json!({"top_p": 0}), "top_p");
        bad(json!({"frequency_penalty": 3}), "frequency_penalty");
        bad(json!({"presence_penalty": -2.5}), "presence_penalty");
        let p = common(json!({"temperature": 0, "seed": -1}))
            .unwrap()
            .sampling()
            .unwrap();
        assert_eq!((p.temperature, p.seed), (0.0, Some(u64::MAX)));
    }

    #[test]
    fn prompt_forms() {
        let p: CompletionFields = parse(&json!({"prompt": [[1, 2]]})).unwrap();
        assert!(matches!(p.prompt.single().unwrap(), Prompt::Ids(v) if v == [1, 2]));
        let p: CompletionFields = parse(&json!({"prompt": ["a", "b"]})).unwrap();
        assert!(p.prompt.single().is_err());
        let e = parse::<CompletionFields>(&json!({"prompt": [-1]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }
}
