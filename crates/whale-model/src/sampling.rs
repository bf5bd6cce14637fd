//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p and
//! penalties, seeded for reproducibility. Order as in transformers' logits processors:
//! penalties, then temperature, then the top-k / top-p / min-p filters.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 disables.
    pub min_p: f32,
    /// CTRL-style penalty on tokens already seen (>1 discourages repeats); 1 disables.
    pub repetition_penalty: f32,
    /// OpenAI-style: subtract `frequency_penalty × count` and `presence_penalty` once.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks ranges; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, name: &str, range: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{name} must be {range}"))
            }
        };
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "temperature",
            "≥ 0",
        )?;
        check(self.top_p > 0.0 && self.top_p <= 1.0, "top_p", "in (0, 1]")?;
        check((0.0..=1.0).contains(&self.min_p), "min_p", "in [0, 1]")?;
        check(
            self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(),
            "repetition_penalty",
            "> 0",
        )?;
        check(
            (-2.0..=2.0).contains(&self.frequency_penalty),
            "frequency_penalty",
            "in [-2, 2]",
        )?;
        check(
            (-2.0..=2.0).contains(&self.presence_penalty),
            "presence_penalty",
            "in [-2, 2]",
        )
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token given the logits of the last position and the ids so far
    /// (prompt and generated) that the penalties look at.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = logits.to_vec();
        self.apply_penalties(&mut logits, history);
        if p.temperature == 0.0 {
            return argmax(&logits) as u32;
        }
        // Candidates sorted by logit, best first.
        let mut cand: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1 / p.temperature;
        let mut probs: Vec<f32> = cand
            .iter()
            .map(|c| (c.1 / p.temperature - max).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    acc += q;
                    acc >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &q) in probs.iter().enumerate() {
            if r < q {
                return cand[i].0 as u32;
            }
            r -= q;
        }
        cand[probs.len() - 1].0 as u32
    }

    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0 {
            return;
        }
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &id in history {
            *counts.entry(id).or_default() += 1;
        }
        for (&id, &n) in &counts {
            let Some(l) = logits.get_mut(id as usize) else {
                continue;
            };
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
            *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
        }
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Log-probabilities of all tokens (log-softmax in f32).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|&l| l - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).sin()).collect();
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 5,
            seed: Some(7),
            ..Default::default()
        };
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top5 = &order[..5];
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..100).map(|_| s.sample(&logits, &[])).collect()
        };
        let mut s = Sampler::new(params);
        let b: Vec<u32> = (0..100).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| top5.contains(&(t as usize))));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [10.0, 9.0, 0.0, 0.0];
        for params in [
            SamplingParams {
                top_p: 0.5,
                seed: Some(1),
                ..Default::default()
            },
            SamplingParams {
                min_p: 0.5,
                seed: Some(1),
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params);
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[]), 0);
            }
        }
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[2.0, 1.5], &[0]), 1);
    }
}
