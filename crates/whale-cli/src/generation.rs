//! The generation loop shared by `generate` and `chat`: prefill, then sample token by
//! token, streaming text and stopping at EOS, a stop string or the token budget.

use std::time::Instant;

use anyhow::Result;
use whale_model::sampling::Sampler;
use whale_model::{LatentCache, Logits, Model};
use whale_tokenizer::{StreamDecoder, Tokenizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

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
    let mut stops = StopStrings::new(req.stop);
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
                if stops.push(&piece, &mut on_text) {
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
                stops.push(&rest, &mut on_text);
            }
        }
    }
    let text = stops.finish(&mut on_text);
    Ok(Output {
        generated_ids: generated,
        text,
        finish_reason: finish,
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Streams text while holding back any tail that could be the start of a stop string.
struct StopStrings<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
    stopped: bool,
}

impl<'a> StopStrings<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopStrings {
            stops,
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Adds text; returns true when a stop string completed (the text is cut before it).
    fn push(&mut self, piece: &str, on_text: &mut impl FnMut(&str)) -> bool {
        if self.stopped {
            return true;
        }
        // A stop string may straddle pieces: search from where one could have begun.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
        }
        let safe = if self.stopped {
            self.text.len()
        } else {
            self.safe_end()
        };
        if safe > self.emitted {
            on_text(&self.text[self.emitted..safe]);
            self.emitted = safe;
        }
        self.stopped
    }

    /// End of the text that cannot become part of a stop string.
    fn safe_end(&self) -> usize {
        let held = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len()).filter(|&k| s.is_char_boundary(k) && self.text.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        self.text.len() - held
    }

    fn finish(mut self, on_text: &mut impl FnMut(&str)) -> String {
        if self.emitted < self.text.len() {
            on_text(&self.text[self.emitted..]);
            self.emitted = self.text.len();
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::StopStrings;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopStrings::new(&stops);
        let mut streamed = String::new();
        let mut stopped = false;
        for p in pieces {
            if s.push(p, &mut |t: &str| streamed.push_str(t)) {
                stopped = true;
                break;
            }
        }
        let text = s.finish(&mut |t: &str| streamed.push_str(t));
        (text, streamed, stopped)
    }

    #[test]
    fn stop_string_across_pieces_is_cut_and_never_streamed() {
        let (text, streamed, stopped) = run(&["END"], &["hello E", "N", "D more"]);
        assert!(stopped);
        assert_eq!(text, "hello ");
        assert_eq!(streamed, "hello ");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_match() {
        let (text, streamed, stopped) = run(&["END"], &["a E", "x"]);
        assert!(!stopped);
        assert_eq!((text.as_str(), streamed.as_str()), ("a Ex", "a Ex"));
    }
}
