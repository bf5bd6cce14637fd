//! The generation loop shared by `generate` and `chat`: prefill, then sample token by
//! token, streaming text and stopping at EOS, a stop string or the token budget.

use std::time::Instant;

use anyhow::Result;
use whale_model::sampling::{FinishReason, Sampler};
use whale_model::{LatentCache, Logits, Model};
use whale_tokenizer::{StopStrings, StreamDecoder, Tokenizer};

pub struct Request<'a> {
    /// The whole prompt; positions already in the cache are not recomputed.
    pub prompt: &'a [u32],
    pub max_tokens: usize,
    pub eos: &'a [u32],
    pub stop: &'a [String],
}

pub struct Output {
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// Generates from `req.prompt`, whose first `cache.len()` ids must already be cached.
/// `on_text` receives each newly final piece of text.
pub fn generate(
    model: &Model,
    cache: &mut LatentCache,
    tokenizer: Option<&Tokenizer>,
    sampler: &mut Sampler,
    req: &Request,
    mut on_text: impl FnMut(&str),
) -> Result<Output> {
    let cached = cache.len();
    anyhow::ensure!(
        cached < req.prompt.len(),
        "empty prompt: give at least one token"
    );
    let start = Instant::now();
    let mut logits = model.forward(&req.prompt[cached..], cache, Logits::Last)?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();

    let mut history = req.prompt.to_vec();
    let mut generated = Vec::new();
    let mut decoder = tokenizer.map(|t| StreamDecoder::new(t, true));
    let mut stops = StopStrings::new(req.stop.to_vec());
    let mut finish = FinishReason::Length;
    while generated.len() < req.max_tokens {
        let id = sampler.sample(&logits, &history);
        generated.push(id);
        history.push(id);
        if req.eos.contains(&id) {
            finish = FinishReason::Stop;
            break;
        }
        if let Some(d) = decoder.as_mut() {
            if let Some(piece) = d.push(id)? {
                let (text, stopped) = stops.push(&piece);
                on_text(&text);
                if stopped {
                    finish = FinishReason::Stop;
                    break;
                }
            }
        }
        if generated.len() == req.max_tokens || cache.len() == cache.capacity() {
            break;
        }
        logits = model.forward(&[id], cache, Logits::Last)?;
    }
    if finish == FinishReason::Length {
        if let Some(d) = decoder.as_mut() {
            if let Some(rest) = d.flush()? {
                on_text(&stops.push(&rest).0);
            }
        }
    }
    on_text(&stops.finish());
    let text = stops.text().to_string();
    Ok(Output {
        generated_ids: generated,
        text,
        finish_reason: finish,
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64(),
    })
}
