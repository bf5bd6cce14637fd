//! The HTTP surface: [`app`] builds the axum router over an [`AppState`]; the handlers
//! validate and tokenize a request, hand it to the engine thread and turn its events into
//! a JSON response or a Server-Sent Events stream.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use whale_tokenizer::Tokenizer;

use crate::engine::{EngineHandle, Event, GenerationRequest, TokenLogprob, Usage};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::openai::{
    self, ChatFields, ChunkChoice, CommonParams, Completed, CompletionFields, Endpoint, Prompt,
    ResponseMeta,
};

/// Largest request body accepted (413 beyond): a 128K-token prompt is well under 1 MB.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    /// The name `/v1/models` lists (the model folder's name).
    pub model_id: String,
    /// Unix time the server started, reported as the model's `created`.
    pub created: u64,
    /// Context length per sequence.
    pub ctx: usize,
    pub vocab_size: usize,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub api_key: Option<String>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    /// `system_fingerprint` of responses: identifies the weights.
    pub system_fingerprint: String,
    pub next_id: AtomicU64,
}

impl AppState {
    fn meta(&self, endpoint: Endpoint) -> ResponseMeta {
        let s = &self.0;
        let n = s.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        ResponseMeta {
            id: format!("{prefix}-{:x}{n:06x}", s.created),
            created: unix_now(),
            model: s.model_id.clone(),
            system_fingerprint: s.system_fingerprint.clone(),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The whole API. `/v1/*` needs the bearer key when one is configured; `/health` and
/// `/metrics` do not (probes and scrapers).
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn count_responses(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    state
        .0
        .metrics
        .request(&endpoint, response.status().as_u16());
    response
}

async fn require_api_key(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = &state.0.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return Err(ApiError::unauthorized());
        }
    }
    Ok(next.run(req).await)
}

/// Compares without an early exit, so response time does not reveal how much of a
/// guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(state): State<AppState>) -> Response {
    if state.0.engine.is_shutting_down() {
        return ApiError::shutting_down().into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.0.metrics.render(),
    )
        .into_response()
}

fn model_json(s: &Shared) -> Value {
    json!({
        "id": s.model_id,
        "object": "model",
        "created": s.created,
        "owned_by": "whale",
        "max_model_len": s.ctx,
    })
}

async fn list_models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_json(&state.0)] }))
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id != state.0.model_id {
        return Err(ApiError::not_found(format!(
            "the model `{id}` does not exist"
        )));
    }
    Ok(Json(model_json(&state.0)))
}

/// The body as a JSON object; 413 past [`MAX_BODY_BYTES`].
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(MAX_BODY_BYTES),
        _ => ApiError::invalid(None, r.body_text()),
    })?;
    openai::parse_body(&bytes)
}

/// Tokenizes off the async runtime: a long prompt takes milliseconds.
async fn tokenize<T: Send + 'static>(
    tokenizer: Arc<Tokenizer>,
    param: &'static str,
    f: impl FnOnce(&Tokenizer) -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&tokenizer))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
        .map_err(|e| ApiError::invalid(Some(param), e))
}

async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let value = read_body(body)?;
    let common: CommonParams = openai::parse(&value)?;
    let fields: ChatFields = openai::parse(&value)?;
    common.check_supported()?;
    let messages = fields.messages()?;
    let logprobs = fields.logprobs()?;
    let tokenizer = state.0.tokenizer.clone().ok_or_else(|| {
        ApiError::invalid(
            Some("messages"),
            "this model has no tokenizer.json, so it cannot render a chat: use /v1/completions with token ids",
        )
    })?;
    let prompt = tokenize(tokenizer, "messages", move |t| {
        t.encode_chat(&messages, true)
            .map_err(|e| format!("cannot render the chat template: {e}"))
    })
    .await?;
    let max_tokens = common.max_tokens(
        fields.max_completion_tokens,
        prompt.len(),
        state.0.ctx,
        "messages",
    )?;
    generate(
        state,
        Endpoint::Chat,
        &common,
        prompt,
        max_tokens,
        logprobs,
        arrival,
    )
    .await
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let value = read_body(body)?;
    let common: CommonParams = openai::parse(&value)?;
    let fields: CompletionFields = openai::parse(&value)?;
    common.check_supported()?;
    fields.check_supported()?;
    let logprobs = fields.logprobs()?;
    let prompt = match fields.prompt.single()? {
        Prompt::Ids(ids) => {
            let vocab = state.0.vocab_size;
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!("token id {id} at position {i} is out of range: the vocabulary has {vocab} tokens"),
                ));
            }
            ids
        }
        Prompt::Text(text) => {
            let tokenizer = state.0.tokenizer.clone().ok_or_else(|| {
                ApiError::invalid(
                    Some("prompt"),
                    "this model has no tokenizer.json: give the prompt as a list of token ids",
                )
            })?;
            tokenize(tokenizer, "prompt", move |t| {
                t.encode(&text, true).map_err(|e| e.to_string())
            })
            .await?
        }
    };
    let max_tokens = common.max_tokens(None, prompt.len(), state.0.ctx, "prompt")?;
    generate(
        state,
        Endpoint::Completion,
        &common,
        prompt,
        max_tokens,
        logprobs,
        arrival,
    )
    .await
}

async fn generate(
    state: AppState,
    endpoint: Endpoint,
    common: &CommonParams,
    prompt: Vec<u32>,
    max_tokens: usize,
    logprobs: Option<usize>,
    arrival: Instant,
) -> Result<Response, ApiError> {
    let req = GenerationRequest {
        prompt,
        max_tokens,
        sampling: common.sampling()?,
        stop: common.stops()?,
        logprobs,
        ignore_eos: common.ignore_eos.unwrap_or(false),
        arrival,
    };
    let rx = state.0.engine.submit(req)?;
    let out = Output {
        endpoint,
        meta: state.meta(endpoint),
        with_ids: common.return_token_ids.unwrap_or(false) || state.0.tokenizer.is_none(),
        with_logprobs: logprobs.is_some(),
    };
    if common.stream() {
        Ok(stream(out, rx, common.include_usage()))
    } else {
        collect(out, rx).await
    }
}

/// How to render one request's output.
struct Output {
    endpoint: Endpoint,
    meta: ResponseMeta,
    with_ids: bool,
    with_logprobs: bool,
}

/// Waits for the whole generation. If the client goes away this future is dropped with
/// the receiver, which cancels the sequence.
async fn collect(out: Output, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut logprobs: Vec<TokenLogprob> = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Delta(d) => {
                text.push_str(&d.text);
                ids.extend(d.token_ids);
                logprobs.extend(d.logprobs);
            }
            Event::Done(finish) => {
                let completed = Completed {
                    text: &text,
                    token_ids: out.with_ids.then_some(&ids[..]),
                    logprobs: out.with_logprobs.then_some(&logprobs[..]),
                    finish: finish.reason,
                    usage: finish.usage,
                };
                return Ok(
                    Json(openai::response_json(out.endpoint, &out.meta, &completed))
                        .into_response(),
                );
            }
            Event::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::internal(
        "the engine stopped before finishing the request",
    ))
}

/// Where an SSE stream is.
enum Phase {
    /// Chat streams open with a chunk carrying the assistant role.
    Role,
    Tokens,
    /// The finish chunk went out; the usage chunk (if asked) and `[DONE]` follow.
    Usage(Option<Usage>),
    Done,
    Closed,
}

struct Streamer {
    out: Output,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    phase: Phase,
    /// Bytes of text sent so far (completions' `text_offset`).
    offset: usize,
}

impl Streamer {
    fn data(value: &Value) -> SseEvent {
        SseEvent::default().data(value.to_string())
    }

    fn chunk(&self, c: &ChunkChoice) -> SseEvent {
        Self::data(&openai::chunk_json(
            self.out.endpoint,
            &self.out.meta,
            c,
            self.include_usage,
        ))
    }

    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Tokens) {
                Phase::Role => {
                    return Some(self.chunk(&ChunkChoice {
                        role: true,
                        text: Some(""),
                        token_ids: None,
                        logprobs: None,
                        finish: None,
                    }))
                }
                Phase::Usage(usage) => {
                    self.phase = Phase::Done;
                    if let Some(u) = usage {
                        return Some(Self::data(&openai::usage_chunk_json(
                            self.out.endpoint,
                            &self.out.meta,
                            u,
                        )));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::Closed;
                    return Some(SseEvent::default().data("[DONE]"));
                }
                Phase::Closed => {
                    self.phase = Phase::Closed;
                    return None;
                }
                Phase::Tokens => match self.rx.recv().await {
                    Some(Event::Delta(d)) => {
                        let with_logprobs = self.out.with_logprobs && !d.logprobs.is_empty();
                        if d.text.is_empty() && !with_logprobs && !self.out.with_ids {
                            continue; // text held back (a partial character or stop string)
                        }
                        let logprobs = with_logprobs.then(|| {
                            openai::logprobs_json(self.out.endpoint, &d.logprobs, self.offset)
                        });
                        self.offset += d.text.len();
                        return Some(self.chunk(&ChunkChoice {
                            role: false,
                            text: Some(&d.text),
                            token_ids: self.out.with_ids.then_some(&d.token_ids[..]),
                            logprobs,
                            finish: None,
                        }));
                    }
                    Some(Event::Done(finish)) => {
                        self.phase = Phase::Usage(self.include_usage.then_some(finish.usage));
                        return Some(self.chunk(&ChunkChoice {
                            role: false,
                            text: (self.out.endpoint == Endpoint::Completion).then_some(""),
                            token_ids: None,
                            logprobs: None,
                            finish: Some(finish.reason),
                        }));
                    }
                    Some(Event::Failed(e)) => {
                        self.phase = Phase::Closed;
                        return Some(Self::data(&e.body()));
                    }
                    None => {
                        self.phase = Phase::Closed;
                        return Some(Self::data(&ApiError::internal("the engine stopped").body()));
                    }
                },
            }
        }
    }
}

/// An SSE response: `data: {chunk}` events ending with `data: [DONE]`. When the client
/// disconnects, hyper drops this stream and with it the receiver, cancelling the
/// sequence at the engine's next step.
fn stream(out: Output, rx: UnboundedReceiver<Event>, include_usage: bool) -> Response {
    let phase = match out.endpoint {
        Endpoint::Chat => Phase::Role,
        Endpoint::Completion => Phase::Tokens,
    };
    let streamer = Streamer {
        out,
        rx,
        include_usage,
        phase,
        offset: 0,
    };
    let events = futures_util::stream::unfold(streamer, |mut s| async move {
        s.next().await.map(|e| (Ok::<_, Infallible>(e), s))
    });
    Sse::new(events).into_response()
}
