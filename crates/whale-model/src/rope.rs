//! Decoupled RoPE on the `qk_rope_head_dim` dims, with YaRN frequency blending
//! (SPEC §4), computed as transformers' `_compute_yarn_parameters` does.

use crate::config::{yarn_mscale, Config, Yarn};

/// Per-frequency rotation speeds and the cos/sin amplitude, fixed at load.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `ω'_i` for the `dim / 2` rotary pairs.
    inv_freq: Vec<f32>,
    /// YaRN's cos/sin amplitude (exactly 1 for every released config).
    amplitude: f32,
    interleave: bool,
}

impl Rope {
    pub fn new(config: &Config) -> Rope {
        let dim = config.qk_rope_head_dim;
        let base = config.rope.theta;
        // Base frequencies `θ^(-2i/D)`, rounded to f32 as torch computes them.
        let pos_freqs: Vec<f64> = (0..dim / 2)
            .map(|i| base.powf((2 * i) as f64 / dim as f64) as f32 as f64)
            .collect();
        let (inv_freq, amplitude) = match &config.rope.yarn {
            None => (pos_freqs.iter().map(|p| (1.0 / p) as f32).collect(), 1.0),
            Some(y) => yarn(y, dim, base, &pos_freqs),
        };
        Rope {
            inv_freq,
            amplitude,
            interleave: config.rope.interleave,
        }
    }

    /// Rotates one `dim`-wide vector in place for absolute position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.inv_freq.len();
        debug_assert_eq!(x.len(), 2 * half);
        for (i, &f) in self.inv_freq.iter().enumerate() {
            // Angle in f32, as the references compute `pos.float() * inv_freq`.
            let angle = pos as f32 * f;
            let (sin, cos) = angle.sin_cos();
            let (cos, sin) = (cos * self.amplitude, sin * self.amplitude);
            // Interleaved pairs (x[2i], x[2i+1]) as the checkpoints were trained; else
            // rotate-half pairs (x[i], x[i + D/2]).
            let (a, b) = if self.interleave {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (xa, xb) = (x[a], x[b]);
            x[a] = xa * cos - xb * sin;
            x[b] = xb * cos + xa * sin;
        }
    }
}

fn yarn(y: &Yarn, dim: usize, base: f64, pos_freqs: &[f64]) -> (Vec<f32>, f32) {
    let f = y.factor;
    let amplitude = match (y.attention_factor, y.mscale, y.mscale_all_dim) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
            yarn_mscale(f, m) / yarn_mscale(f, all)
        }
        _ => yarn_mscale(f, 1.0),
    };
    // Dimension at which a frequency completes `rotations` turns over the original context.
    let correction_dim = |rotations: f64| {
        dim as f64
            * (y.original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI))
                .ln()
            / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min((dim - 1) as f64);
    if low == high {
        high += 0.001; // avoid dividing by zero, as the reference does
    }
    let inv_freq = pos_freqs
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
            let extrapolation = 1.0 - ramp; // share of the unscaled frequency
            let (extra, inter) = ((1.0 / p) as f32, (1.0 / (f * p)) as f32);
            inter * (1.0 - extrapolation) + extra * extrapolation
        })
        .collect();
    (inv_freq, amplitude as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"{{"model_type": "deepseek_v3", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 1, "kv_lora_rank": 4, "qk_nope_head_dim": 4,
            "qk_rope_head_dim": 64, "v_head_dim": 4, "max_position_embeddings": 163840 {extra}}}"#
        );
        Config::from_json_str(&text, Path::new("config.json")).unwrap()
    }

    #[test]
    fn deepseek_yarn_keeps_fast_dims_and_scales_slow_ones() {
        let c = config(
            r#", "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}"#,
        );
        let r = Rope::new(&c);
        let plain = Rope::new(&config(""));
        // SPEC §4.3: low = 10, high = 23 for DeepSeek's YaRN.
        for i in 0..=10 {
            assert_eq!(r.inv_freq[i], plain.inv_freq[i], "dim {i}");
        }
        for i in 23..32 {
            assert!(
                (r.inv_freq[i] * 40.0 / plain.inv_freq[i] - 1.0).abs() < 1e-6,
                "dim {i}"
            );
        }
        assert!(r.inv_freq[16] < plain.inv_freq[16] && r.inv_freq[16] > plain.inv_freq[16] / 40.0);
        assert_eq!(r.amplitude, 1.0);
    }

    #[test]
    fn interleaved_and_halves_layouts_rotate_the_same_pairs() {
        let mut a: Vec<f32> = (0..64).map(|i| i as f32 * 0.1).collect();
        let mut inter = Rope::new(&config(""));
        // The halves layout holds pair i at (i, i + 32).
        let mut b: Vec<f32> = (0..32)
            .map(|i| a[2 * i])
            .chain((0..32).map(|i| a[2 * i + 1]))
            .collect();
        inter.apply(&mut a, 1234);
        inter.interleave = false;
        inter.apply(&mut b, 1234);
        for i in 0..32 {
            assert_eq!(a[2 * i], b[i]);
            assert_eq!(a[2 * i + 1], b[i + 32]);
        }
    }
}
