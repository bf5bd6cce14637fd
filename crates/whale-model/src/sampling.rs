//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p and
//! penalties, seeded for reproducibility. Order as in transformers' logits processors:
//! penalties, then temperature, then the top-k / top-p / min-p filters.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use whale_tensor::kernels::exp_sub_sum;
use whale_tensor::Isa;

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

/// A token in the running for sampling: its logit and `exp((logit − max) / T)`.
struct Cand {
    id: usize,
    logit: f32,
    w: f32,
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

    /// The candidates that top-k, top-p and min-p keep (temperature > 0), with their
    /// unnormalised probabilities.
    fn kept(&self, logits: &[f32]) -> Vec<Cand> {
        let p = &self.params;
        // The filters act on candidates in order of logit, best first (ties: lower id), but
        // only as far as they cut: a full sort of a 100K vocabulary costs milliseconds per
        // token, so top-k selects, top-p sorts just the head that reaches its mass, and
        // without a cut the draw scans the candidates in any order (same distribution).
        let by_logit = |a: &Cand, b: &Cand| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id));
        let mut cand: Vec<Cand> = logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| Cand { id, logit, w: 0.0 })
            .collect();
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        // Unnormalised probabilities relative to the best: w = exp((l − max) / T), vectorised.
        let mut w: Vec<f32> = cand.iter().map(|c| c.logit / p.temperature).collect();
        let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = exp_sub_sum(Isa::detect(), &mut w, max);
        for (c, w) in cand.iter_mut().zip(w) {
            c.w = w;
        }
        // How many of the best stay: top-p's shortest head reaching the mass, then min-p's
        // floor (w ≥ min_p, as the best has w = 1) within it; at least one.
        let mut keep = cand.len();
        let mut sorted = false; // cand[..keep] in order
        if p.top_p < 1.0 {
            let mut head = 256.min(cand.len());
            loop {
                if head < cand.len() {
                    cand.select_nth_unstable_by(head - 1, by_logit);
                }
                cand[..head].sort_unstable_by(by_logit);
                let mut acc = 0.0;
                let reached = cand[..head].iter().position(|c| {
                    acc += c.w / sum;
                    acc >= p.top_p
                });
                if let Some(i) = reached {
                    keep = i + 1;
                } else if head < cand.len() {
                    head = (head * 8).min(cand.len());
                    continue;
                } // else rounding: the whole mass fell just short of top_p; keep all
                sorted = true;
                break;
            }
        }
        if p.min_p > 0.0 {
            cand.truncate(keep);
            if sorted {
                keep = cand.iter().take_while(|c| c.w >= p.min_p).count();
            } else {
                cand.retain(|c| c.w >= p.min_p);
                keep = cand.len();
            }
        }
        cand.truncate(keep.max(1));
        cand
    }

    /// Picks the next token given the logits of the last position and the ids so far
    /// (prompt and generated) that the penalties look at.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let penalised =
            p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        // Copied only to be changed: a vocabulary's logits per sequence and step otherwise.
        let logits = if penalised {
            let mut own = logits.to_vec();
            self.apply_penalties(&mut own, history);
            std::borrow::Cow::Owned(own)
        } else {
            std::borrow::Cow::Borrowed(logits)
        };
        if self.params.temperature == 0.0 {
            return argmax(&logits) as u32;
        }
        let kept = self.kept(&logits);
        let total: f32 = kept.iter().map(|c| c.w).sum();
        let mut r = self.rng.random::<f32>() * total;
        for c in &kept {
            if r < c.w {
                return c.id as u32;
            }
            r -= c.w;
        }
        kept[kept.len() - 1].id as u32
    }

    fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
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

/// Index of the largest logit (the first one on ties, as torch.argmax); NaNs are passed over
/// unless the first logit is one, as a running `v > best` comparison does. Greedy decoding runs
/// it for every sequence of every step on the engine's thread, so both passes (the maximum,
/// then its first position) go sixteen independent lanes at a time, which compile to vector
/// instructions (a 102,400-entry vocabulary: 6.7 µs instead of 54 for one comparison chain).
pub fn argmax(logits: &[f32]) -> usize {
    const LANES: usize = 16;
    let Some(&first) = logits.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(first, |m, &v| if v > m { v } else { m });
    // `==` also matches the other zero: the first of equal values, whatever their sign.
    for (k, chunk) in logits.chunks(LANES).enumerate() {
        if chunk.iter().fold(false, |hit, &v| hit | (v == max)) {
            return k * LANES + chunk.iter().position(|&v| v == max).unwrap_or(0);
        }
    }
    0
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

    /// The lane-wise argmax picks what one running comparison picks: ties, NaNs, infinities
    /// and signed zeros at every position, lengths around the lane width, and a vocabulary.
    #[test]
    fn argmax_equals_a_running_comparison() {
        fn running(logits: &[f32]) -> usize {
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            best
        }
        let specials = [
            f32::NAN,
            f32::NEG_INFINITY,
            f32::INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
        ];
        let mut seed = 9u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for len in (0..40).chain([102_400, 102_401]) {
            for _ in 0..200 {
                let logits: Vec<f32> = (0..len)
                    .map(|_| match next() % 4 {
                        0 => specials[next() % specials.len()],
                        _ => (next() % 7) as f32 - 3.0, // few distinct values: many ties
                    })
                    .collect();
                assert_eq!(argmax(&logits), running(&logits), "{logits:?}");
            }
        }
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

    /// The filters as written in transformers' order over a full sort: (id, probability) kept.
    fn reference_kept(logits: &[f32], p: &SamplingParams) -> Vec<(usize, f64)> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        // Scaled in f32 as the sampler does; the rest in f64.
        let scaled = |i: usize| (logits[i] / p.temperature) as f64;
        let max = scaled(order[0]);
        let w: Vec<f64> = order.iter().map(|&i| (scaled(i) - max).exp()).collect();
        let sum: f64 = w.iter().sum();
        let mut keep = order.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            keep = w
                .iter()
                .position(|&x| {
                    acc += x / sum;
                    acc >= p.top_p as f64
                })
                .map_or(keep, |i| i + 1);
        }
        if p.min_p > 0.0 {
            keep = w[..keep]
                .iter()
                .take_while(|&&x| x >= p.min_p as f64)
                .count()
                .max(1);
        }
        order[..keep]
            .iter()
            .zip(&w)
            .map(|(&i, &x)| (i, x))
            .collect()
    }

    #[test]
    fn partial_selection_keeps_what_a_full_sort_keeps() {
        // A vocabulary large enough that top-p's head must grow past its first 256 (flat
        // logits), and a peaked one where it stops early.
        let n = 5000;
        let flat: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 300.0).collect();
        let peaked: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 30.0).collect();
        for logits in [&flat, &peaked] {
            for (top_k, top_p, min_p) in [
                (0, 1.0, 0.0),
                (0, 0.9, 0.0),
                (0, 0.3, 0.0),
                (40, 0.95, 0.0),
                (0, 1.0, 0.05),
                (0, 0.8, 0.2),
                (3000, 0.999, 0.01),
            ] {
                let params = SamplingParams {
                    temperature: 0.8,
                    top_k,
                    top_p,
                    min_p,
                    ..Default::default()
                };
                let want = reference_kept(logits, &params);
                let mut got: Vec<(usize, f32)> = Sampler::new(params.clone())
                    .kept(logits)
                    .iter()
                    .map(|c| (c.id, c.w))
                    .collect();
                got.sort_by_key(|g| g.0);
                let mut want_sorted = want.clone();
                want_sorted.sort_by_key(|w| w.0);
                let ids = |v: &[(usize, f32)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
                // The cut falls where the f32 and f64 cumulative sums agree (no candidate sits
                // within rounding of the threshold for these logits).
                assert_eq!(
                    ids(&got),
                    want_sorted.iter().map(|x| x.0).collect::<Vec<_>>(),
                    "{params:?}"
                );
                for (g, w) in got.iter().zip(&want_sorted) {
                    // The SIMD exp is within a few ulp; `l/T − max` rounds to half an ulp of
                    // its size, which exp turns into a relative error of that much.
                    let tol = (4.0 + w.1.ln().abs()) * f32::EPSILON as f64 * w.1;
                    assert!(
                        (g.1 as f64 - w.1).abs() <= tol,
                        "{params:?}: {g:?} vs {w:?}"
                    );
                }
            }
        }
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
