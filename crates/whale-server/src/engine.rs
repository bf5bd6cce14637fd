//! The engine thread and its continuous-batching scheduler. It owns the model and the
//! prefix cache; handlers talk to it only through channels, so model compute never runs
//! on the async runtime.
//!
//! Every step: take new requests off the channel, drop sequences whose client went away,
//! admit waiting requests up to `max_seqs` (importing their cached prefix), then run ONE
//! `Model::forward_batch` holding the next token of every decoding sequence plus up to
//! `prefill_chunk` prompt tokens of sequences still prefilling. Decoding streams thus
//! share each weight read, and a long prompt is prefilled in chunks between their
//! tokens instead of stalling them.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use whale_model::sampling::{log_softmax, Sampler, SamplingParams};
use whale_model::{LatentCache, Logits, Model, Step};
use whale_tokenizer::{StreamDecoder, Tokenizer};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::prefix_cache::{Block, DiskJob, PrefixCache};
use whale_tokenizer::StopStrings;

/// Scheduler limits.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Sequences prefilling or decoding at once.
    pub max_seqs: usize,
    /// Requests waiting for a slot beyond those; one more gets 429.
    pub max_queue: usize,
    /// Context length (positions) of each sequence.
    pub ctx: usize,
    /// Prompt tokens computed per step, shared by the sequences still prefilling.
    pub prefill_chunk: usize,
    /// Token ids that end a sequence.
    pub eos: Vec<u32>,
}

/// What a handler asks the engine to generate.
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Generate past EOS (benchmarks want a fixed number of tokens).
    pub ignore_eos: bool,
    /// When the request arrived (time to first token counts from here).
    pub arrival: Instant,
}

/// What the engine streams back for one request.
#[derive(Debug)]
pub enum Event {
    Delta(Delta),
    Done(Finish),
    Failed(ApiError),
}

/// New output of one step: text made final (stop strings may hold some back), the
/// sampled ids and, when asked, their log-probabilities.
#[derive(Debug, Default)]
pub struct Delta {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
}

#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The most likely tokens at this position, best first.
    pub top: Vec<(String, f32)>,
}

pub use whale_model::sampling::FinishReason;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose latents came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

/// Counts requests queued or running; a [`Permit`] is one of them and frees its slot
/// when dropped, wherever the request ends.
struct Admission {
    in_flight: AtomicUsize,
    limit: usize,
}

struct Permit(Arc<Admission>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn try_acquire(admission: &Arc<Admission>) -> Option<Permit> {
    admission
        .in_flight
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < admission.limit).then_some(n + 1)
        })
        .ok()
        .map(|_| Permit(admission.clone()))
}

enum Command {
    Submit(Submission),
    /// Stop taking requests; cancel what is still running after `grace`.
    Shutdown {
        grace: Duration,
    },
}

struct Submission {
    req: GenerationRequest,
    events: UnboundedSender<Event>,
    permit: Permit,
}

/// The handlers' side of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    admission: Arc<Admission>,
    shutting_down: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Queues a request; its events arrive on the returned receiver, and dropping the
    /// receiver cancels it. Fails with 429 when every slot is taken.
    pub fn submit(&self, req: GenerationRequest) -> Result<UnboundedReceiver<Event>, ApiError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ApiError::shutting_down());
        }
        let permit = try_acquire(&self.admission).ok_or_else(ApiError::overloaded)?;
        let (events, rx) = unbounded_channel();
        self.tx
            .send(Command::Submit(Submission {
                req,
                events,
                permit,
            }))
            .map_err(|_| ApiError::shutting_down())?;
        Ok(rx)
    }

    /// Refuses new requests from now on; the engine finishes running ones for up to
    /// `grace`, cancels the rest, writes the prefix cache out and its thread ends.
    pub fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        let _ = self.tx.send(Command::Shutdown { grace });
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

pub struct Engine {
    pub model: Model,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub options: EngineOptions,
    pub prefix: PrefixCache,
    pub metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts the engine thread.
    pub fn spawn(self) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel();
        let admission = Arc::new(Admission {
            in_flight: AtomicUsize::new(0),
            limit: self.options.max_seqs + self.options.max_queue,
        });
        let thread = std::thread::Builder::new()
            .name("whale-engine".into())
            .spawn(move || self.run(rx))?;
        let handle = EngineHandle {
            tx,
            admission,
            shutting_down: Arc::new(AtomicBool::new(false)),
        };
        Ok((handle, thread))
    }

    fn run(mut self, rx: Receiver<Command>) {
        let tokenizer = self.tokenizer.clone();
        let tok = tokenizer.as_deref();
        let mut waiting: VecDeque<Submission> = VecDeque::new();
        let mut running: Vec<Sequence> = Vec::new();
        let mut deadline: Option<Instant> = None;
        // Submissions whose cached prefix continues on disk wait here while a helper thread
        // reads the blocks, so running streams never stall on the disk.
        let (loaded_tx, loaded_rx) = mpsc::channel::<(Submission, DiskJob, Vec<Block>)>();
        let mut loading = 0usize;
        loop {
            let fresh = waiting.len();
            if running.is_empty() && waiting.is_empty() {
                if deadline.is_some() && loading == 0 {
                    break;
                }
                // Idle: sleep until a request (or shutdown) arrives, or a disk read ends.
                if loading == 0 {
                    match rx.recv() {
                        Ok(cmd) => accept(cmd, &mut waiting, &mut deadline),
                        Err(_) => break,
                    }
                } else if let Ok(cmd) = rx.recv_timeout(Duration::from_millis(1)) {
                    accept(cmd, &mut waiting, &mut deadline);
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                accept(cmd, &mut waiting, &mut deadline);
            }
            for sub in waiting.drain(fresh..).collect::<Vec<_>>() {
                let reusable = sub.req.prompt.len().saturating_sub(1);
                match self.prefix.disk_job(&sub.req.prompt, reusable) {
                    Some(job) => {
                        let tx = loaded_tx.clone();
                        let read = std::thread::Builder::new()
                            .name("whale-cache-reader".into())
                            .spawn(move || {
                                let blocks = job.read();
                                let _ = tx.send((sub, job, blocks));
                            });
                        match read {
                            Ok(_) => loading += 1,
                            // The request is dropped with the closure: its client sees the
                            // stream end, and its slot is freed.
                            Err(e) => tracing::error!("prefix cache: cannot start a reader: {e}"),
                        }
                    }
                    None => waiting.push_back(sub),
                }
            }
            while let Ok((sub, job, blocks)) = loaded_rx.try_recv() {
                loading -= 1;
                self.prefix.add_loaded(&job, blocks);
                waiting.push_back(sub);
            }

            // A dropped receiver means the client went away (or stopped reading).
            waiting.retain(|s| {
                let open = !s.events.is_closed();
                if !open {
                    self.metrics.cancelled();
                }
                open
            });
            running.retain_mut(|s| {
                let open = !s.events.is_closed();
                if !open {
                    self.metrics.cancelled();
                    // What was computed is still a valid prefix for a retry.
                    self.prefix.insert(&s.tokens, &s.cache);
                }
                open
            });
            if deadline.is_some_and(|d| Instant::now() >= d) {
                for s in waiting.drain(..) {
                    let _ = s.events.send(Event::Failed(ApiError::shutting_down()));
                }
                for s in running.drain(..) {
                    let _ = s.events.send(Event::Failed(ApiError::shutting_down()));
                }
                continue;
            }

            while running.len() < self.options.max_seqs {
                let Some(sub) = waiting.pop_front() else {
                    break;
                };
                running.push(self.admit(sub, tok));
            }
            let batch = self.step(&mut running, tok);
            self.metrics.step(batch, waiting.len(), running.len());
        }
        self.prefix.flush();
    }

    /// Starts a sequence, importing the longest cached prefix of its prompt. The last
    /// prompt token is always computed: its logits give the first generated token.
    fn admit<'t>(&mut self, sub: Submission, tok: Option<&'t Tokenizer>) -> Sequence<'t> {
        let Submission {
            req,
            events,
            permit,
        } = sub;
        let mut cache = self.model.new_cache(self.options.ctx);
        let reusable = req.prompt.len().saturating_sub(1);
        for block in self.prefix.lookup(&req.prompt, reusable) {
            cache.import(&block.rows);
        }
        let cached_tokens = cache.len();
        self.metrics.admitted(req.prompt.len(), cached_tokens);
        Sequence {
            events,
            permit: Some(permit),
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            cached_tokens,
            max_tokens: req.max_tokens,
            cache,
            sampler: Sampler::new(req.sampling),
            decoder: tok.map(|t| StreamDecoder::new(t, true)),
            stops: StopStrings::new(req.stop),
            logprobs: req.logprobs,
            ignore_eos: req.ignore_eos,
            arrival: req.arrival,
            last_token: None,
            finished: false,
        }
    }

    /// One batched forward over the running sequences; returns how many took part.
    fn step(&mut self, running: &mut Vec<Sequence>, tok: Option<&Tokenizer>) -> usize {
        // (index in `running`, tokens this step): every decoding sequence's pending token,
        // then prompt tokens, oldest request first, while the prefill budget lasts.
        let mut budget = self.options.prefill_chunk.max(1);
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, s) in running.iter().enumerate() {
            let pending = s.tokens.len() - s.cache.len();
            if !s.is_prefilling() {
                plan.push((i, pending));
            } else if budget > 0 {
                let n = pending.min(budget);
                budget -= n;
                plan.push((i, n));
            }
        }
        if plan.is_empty() {
            return 0;
        }
        let before: Vec<usize> = plan.iter().map(|&(i, _)| running[i].cache.len()).collect();
        let result = {
            let mut steps: Vec<Step> = Vec::with_capacity(plan.len());
            let mut next = plan.iter().peekable();
            for (i, s) in running.iter_mut().enumerate() {
                if let Some(&(_, n)) = next.next_if(|&&(j, _)| j == i) {
                    let start = s.cache.len();
                    steps.push(Step {
                        tokens: &s.tokens[start..start + n],
                        cache: &mut s.cache,
                        logits: Logits::Last,
                    });
                }
            }
            // A panic in the model must not take the server down: fail this batch only.
            std::panic::catch_unwind(AssertUnwindSafe(|| self.model.forward_batch(&mut steps)))
        };
        let logits = match result {
            Ok(Ok(logits)) => logits,
            failure => {
                let why = match failure {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the model panicked".to_string(),
                };
                tracing::error!("forward step failed: {why}");
                for (&(i, _), &len) in plan.iter().zip(&before) {
                    let s = &mut running[i];
                    s.cache.truncate(len);
                    s.permit = None;
                    let _ = s.events.send(Event::Failed(ApiError::internal(format!(
                        "model error: {why}"
                    ))));
                    s.finished = true;
                }
                running.retain(|s| !s.finished);
                return plan.len();
            }
        };
        for (&(i, _), logits) in plan.iter().zip(&logits) {
            let s = &mut running[i];
            if s.cache.len() < s.tokens.len() {
                continue; // a prefill chunk that does not finish the prompt
            }
            if s.tokens.len() == s.prompt_len {
                // Prompt done: share its blocks with requests arriving from now on.
                self.prefix.insert(&s.tokens, &s.cache);
            }
            self.sample(s, logits, tok);
            if s.finished {
                self.prefix.insert(&s.tokens, &s.cache);
            }
        }
        running.retain(|s| !s.finished);
        plan.len()
    }

    /// Samples the next token of `s` from the logits of its last position and streams
    /// what it adds; marks `s` finished at EOS, a stop string or the length limit.
    fn sample(&self, s: &mut Sequence, logits: &[f32], tok: Option<&Tokenizer>) {
        let id = s.sampler.sample(logits, &s.tokens[s.prompt_len..]);
        let now = Instant::now();
        match s.last_token {
            None => self.metrics.first_token((now - s.arrival).as_secs_f64()),
            Some(t) => self.metrics.next_token((now - t).as_secs_f64()),
        }
        s.last_token = Some(now);
        s.tokens.push(id);
        let mut delta = Delta {
            token_ids: vec![id],
            ..Delta::default()
        };
        if let Some(k) = s.logprobs {
            delta.logprobs.push(token_logprob(logits, id, k, tok));
        }
        let mut finish = None;
        if !s.ignore_eos && self.options.eos.contains(&id) {
            finish = Some(FinishReason::Stop);
        } else {
            if let Some(piece) = s.decoder.as_mut().and_then(|d| d.push(id).ok().flatten()) {
                let (text, stopped) = s.stops.push(&piece);
                delta.text.push_str(&text);
                if stopped {
                    finish = Some(FinishReason::Stop);
                }
            }
            // The next step would cache this token at position tokens.len() - 1.
            if finish.is_none()
                && (s.generated() >= s.max_tokens || s.tokens.len() > s.cache.capacity())
            {
                finish = Some(FinishReason::Length);
            }
        }
        if finish == Some(FinishReason::Length) {
            // Bytes of an unfinished character, then any held-back stop-string prefix.
            if let Some(rest) = s.decoder.as_mut().and_then(|d| d.flush().ok().flatten()) {
                let (text, stopped) = s.stops.push(&rest);
                delta.text.push_str(&text);
                if stopped {
                    finish = Some(FinishReason::Stop);
                }
            }
            delta.text.push_str(&s.stops.finish());
        }
        let _ = s.events.send(Event::Delta(delta));
        if let Some(reason) = finish {
            let usage = Usage {
                prompt_tokens: s.prompt_len,
                completion_tokens: s.generated(),
                cached_tokens: s.cached_tokens,
            };
            s.permit = None;
            let _ = s.events.send(Event::Done(Finish { reason, usage }));
            s.finished = true;
        }
    }
}

fn accept(cmd: Command, waiting: &mut VecDeque<Submission>, deadline: &mut Option<Instant>) {
    match cmd {
        Command::Submit(sub) if deadline.is_some() => {
            let _ = sub.events.send(Event::Failed(ApiError::shutting_down()));
        }
        Command::Submit(sub) => waiting.push_back(sub),
        Command::Shutdown { grace } => {
            let d = Instant::now() + grace;
            *deadline = Some(deadline.map_or(d, |old| old.min(d)));
        }
    }
}

/// One running request.
struct Sequence<'t> {
    events: UnboundedSender<Event>,
    /// Released before the final event is sent, so a client that sends its next request
    /// as soon as this one answers finds the slot free.
    permit: Option<Permit>,
    /// Prompt then generated ids; `tokens[cache.len()..]` are still to be computed.
    tokens: Vec<u32>,
    prompt_len: usize,
    cached_tokens: usize,
    max_tokens: usize,
    cache: LatentCache,
    sampler: Sampler,
    decoder: Option<StreamDecoder<'t>>,
    stops: StopStrings,
    logprobs: Option<usize>,
    ignore_eos: bool,
    arrival: Instant,
    last_token: Option<Instant>,
    finished: bool,
}

impl Sequence<'_> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn is_prefilling(&self) -> bool {
        self.cache.len() < self.prompt_len
    }
}

/// The chosen token's log-probability and the `k` most likely alternatives, from the
/// model's distribution before sampling adjustments (as OpenAI reports them).
fn token_logprob(logits: &[f32], id: u32, k: usize, tok: Option<&Tokenizer>) -> TokenLogprob {
    let lp = log_softmax(logits);
    let mut top: Vec<usize> = (0..lp.len()).collect();
    let k = k.min(lp.len());
    if k > 0 {
        top.select_nth_unstable_by(k - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
    }
    top.truncate(k);
    top.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    TokenLogprob {
        token: token_text(id, tok),
        logprob: lp.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY),
        top: top
            .into_iter()
            .map(|t| (token_text(t as u32, tok), lp[t]))
            .collect(),
    }
}

/// A token's text for logprobs; `token_id:N` when the model has no tokenizer (vLLM's
/// convention).
fn token_text(id: u32, tok: Option<&Tokenizer>) -> String {
    tok.and_then(|t| t.decode(&[id], false).ok())
        .unwrap_or_else(|| format!("token_id:{id}"))
}
