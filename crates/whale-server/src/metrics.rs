//! Counters, gauges and histograms for `GET /metrics`, rendered in Prometheus' text
//! exposition format (version 0.0.4). Written by the handlers and the engine thread; one
//! mutex is enough at a few updates per token.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Bucket bounds (seconds) for time to first token: cached prompts answer in
/// milliseconds, cold long prompts in tens of seconds on a CPU.
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds (seconds) between two tokens of one stream.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Bucket bounds for sequences per batched forward.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (i, &b) in self.bounds.iter().enumerate() {
            acc += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        acc += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {acc}");
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {acc}", self.sum);
    }
}

struct Inner {
    /// `(endpoint, status)` → responses.
    requests: BTreeMap<(String, u16), u64>,
    prompt_tokens: u64,
    generated_tokens: u64,
    cancelled: u64,
    queue_depth: usize,
    running: usize,
    batch_size: Histogram,
    ttft: Histogram,
    inter_token: Histogram,
    cache_hit_tokens: u64,
    cache_miss_tokens: u64,
    cache_hit_requests: u64,
    cache_blocks: usize,
    cache_bytes: usize,
    disk_loaded: u64,
    disk_rejected: u64,
    disk_written: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            requests: BTreeMap::new(),
            prompt_tokens: 0,
            generated_tokens: 0,
            cancelled: 0,
            queue_depth: 0,
            running: 0,
            batch_size: Histogram::new(BATCH_BUCKETS),
            ttft: Histogram::new(TTFT_BUCKETS),
            inter_token: Histogram::new(ITL_BUCKETS),
            cache_hit_tokens: 0,
            cache_miss_tokens: 0,
            cache_hit_requests: 0,
            cache_blocks: 0,
            cache_bytes: 0,
            disk_loaded: 0,
            disk_rejected: 0,
            disk_written: 0,
        }
    }
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain counters, still usable.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        self.with(|m| {
            *m.requests
                .entry((endpoint.to_string(), status))
                .or_default() += 1
        });
    }

    /// A sequence was admitted: its prompt length and how much of it the prefix cache held.
    pub fn admitted(&self, prompt_tokens: usize, cached_tokens: usize) {
        self.with(|m| {
            m.prompt_tokens += prompt_tokens as u64;
            m.cache_hit_tokens += cached_tokens as u64;
            m.cache_miss_tokens += (prompt_tokens - cached_tokens) as u64;
            m.cache_hit_requests += u64::from(cached_tokens > 0);
        });
    }

    pub fn first_token(&self, seconds: f64) {
        self.with(|m| {
            m.ttft.observe(seconds);
            m.generated_tokens += 1;
        });
    }

    pub fn next_token(&self, seconds: f64) {
        self.with(|m| {
            m.inter_token.observe(seconds);
            m.generated_tokens += 1;
        });
    }

    pub fn cancelled(&self) {
        self.with(|m| m.cancelled += 1);
    }

    /// Once per engine step.
    pub fn step(&self, batch_sequences: usize, queue_depth: usize, running: usize) {
        self.with(|m| {
            if batch_sequences > 0 {
                m.batch_size.observe(batch_sequences as f64);
            }
            m.queue_depth = queue_depth;
            m.running = running;
        });
    }

    pub fn cache_size(&self, blocks: usize, bytes: usize) {
        self.with(|m| {
            m.cache_blocks = blocks;
            m.cache_bytes = bytes;
        });
    }

    pub fn disk_loaded(&self) {
        self.with(|m| m.disk_loaded += 1);
    }

    pub fn disk_rejected(&self) {
        self.with(|m| m.disk_rejected += 1);
    }

    pub fn disk_written(&self) {
        self.with(|m| m.disk_written += 1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let mut scalar = |name: &str, kind: &str, help: &str, v: f64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
            };
            scalar("whale_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", m.prompt_tokens as f64);
            scalar("whale_generation_tokens_total", "counter", "Tokens generated.", m.generated_tokens as f64);
            scalar("whale_requests_cancelled_total", "counter", "Sequences cancelled because the client went away.", m.cancelled as f64);
            scalar("whale_queue_depth", "gauge", "Requests waiting for a running slot.", m.queue_depth as f64);
            scalar("whale_running_sequences", "gauge", "Sequences being prefilled or decoded.", m.running as f64);
            scalar("whale_prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.", m.cache_hit_tokens as f64);
            scalar("whale_prefix_cache_miss_tokens_total", "counter", "Prompt tokens computed.", m.cache_miss_tokens as f64);
            scalar("whale_prefix_cache_hit_requests_total", "counter", "Requests that reused a cached prefix.", m.cache_hit_requests as f64);
            scalar("whale_prefix_cache_blocks", "gauge", "Blocks held in memory.", m.cache_blocks as f64);
            scalar("whale_prefix_cache_bytes", "gauge", "Bytes of latent rows held in memory.", m.cache_bytes as f64);
            scalar("whale_prefix_cache_disk_loads_total", "counter", "Blocks read back from --cache-dir.", m.disk_loaded as f64);
            scalar("whale_prefix_cache_disk_rejected_total", "counter", "Corrupt or foreign cache files ignored.", m.disk_rejected as f64);
            scalar("whale_prefix_cache_disk_writes_total", "counter", "Blocks written to --cache-dir.", m.disk_written as f64);
            let _ = writeln!(
                out,
                "# HELP whale_requests_total HTTP responses by endpoint and status.\n# TYPE whale_requests_total counter"
            );
            for ((endpoint, status), n) in &m.requests {
                let _ = writeln!(out, "whale_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
            }
            m.batch_size.render(&mut out, "whale_batch_size", "Sequences per batched forward step.");
            m.ttft.render(&mut out, "whale_time_to_first_token_seconds", "From request arrival to its first token.");
            m.inter_token.render(&mut out, "whale_inter_token_seconds", "Between consecutive tokens of a stream.");
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let m = Metrics::default();
        m.first_token(0.003);
        m.first_token(0.2);
        m.first_token(1000.0);
        m.request("/v1/completions", 200);
        let text = m.render();
        assert!(text.contains("whale_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("whale_time_to_first_token_seconds_bucket{le=\"0.25\"} 2"));
        assert!(text.contains("whale_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("whale_time_to_first_token_seconds_count 3"));
        assert!(text.contains("whale_generation_tokens_total 3"));
        assert!(
            text.contains("whale_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1")
        );
    }
}
