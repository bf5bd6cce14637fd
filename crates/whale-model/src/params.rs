//! Parameter and cache-size arithmetic from a config alone (for `whale inspect`).

use crate::config::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    /// Every weight of the main model (embedding and lm_head included, MTP excluded).
    pub total: u64,
    /// Weights one token touches: all but the routed experts it is not sent to.
    pub active: u64,
    /// Weights of the MTP modules stored after the main layers.
    pub mtp: u64,
}

impl Config {
    pub fn param_counts(&self) -> ParamCounts {
        let d = self.hidden_size as u64;
        let h = self.num_attention_heads as u64;
        let (c, r, n, v) = (
            self.kv_lora_rank as u64,
            self.qk_rope_head_dim as u64,
            self.qk_nope_head_dim as u64,
            self.v_head_dim as u64,
        );
        let q = match self.q_lora_rank {
            None => h * (n + r) * d,
            Some(rank) => {
                let rank = rank as u64;
                rank * d + rank + h * (n + r) * rank
            }
        };
        let attn = q + (c + r) * d + c + h * (n + v) * c + d * h * v + 2 * d; // + two layer norms
        let mlp = |width: u64| 3 * d * width;
        let (mut total, mut active) = (0u64, 0u64);
        let mut moe_layer = (0u64, 0u64);
        for i in 0..self.num_hidden_layers {
            let (t, a) = self.ffn_params(i, mlp);
            total += attn + t;
            active += attn + a;
            if self.is_moe_layer(i) {
                moe_layer = (t, a);
            }
        }
        let vocab = self.vocab_size as u64 * d;
        let head = if self.tie_word_embeddings { 0 } else { vocab };
        total += vocab + head + d;
        active += vocab + head + d;
        // An MTP module: a MoE decoder block, two norms, eh_proj [d, 2d], its head norm
        // (embedding and head are shared with the main model).
        let mtp =
            self.num_nextn_predict_layers as u64 * (attn + moe_layer.0 + 2 * d + 2 * d * d + d);
        ParamCounts { total, active, mtp }
    }

    fn ffn_params(&self, layer: usize, mlp: impl Fn(u64) -> u64) -> (u64, u64) {
        let d = self.hidden_size as u64;
        match self.moe.as_ref().filter(|_| self.is_moe_layer(layer)) {
            None => (
                mlp(self.intermediate_size as u64),
                mlp(self.intermediate_size as u64),
            ),
            Some(m) => {
                let e = m.n_routed_experts as u64;
                let expert = mlp(m.moe_intermediate_size as u64);
                let router = e * d
                    + if m.topk_method == crate::config::TopkMethod::NoauxTc {
                        e
                    } else {
                        0
                    };
                let shared = mlp((m.n_shared_experts * m.moe_intermediate_size) as u64);
                (
                    router + shared + e * expert,
                    router + shared + m.num_experts_per_tok as u64 * expert,
                )
            }
        }
    }

    /// Latent-cache bytes per token over all layers at `bytes_per_value`.
    pub fn latent_cache_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        self.latent_dim() * self.num_hidden_layers * bytes_per_value
    }

    /// What standard multi-head attention with MLA's head dims would cache per token:
    /// keys `h·(n + r)` plus values `h·v`, per layer.
    pub fn mha_cache_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        self.num_attention_heads
            * (self.qk_head_dim() + self.v_head_dim)
            * self.num_hidden_layers
            * bytes_per_value
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn deepseek_v3_sizes_match_the_published_ones() {
        let c =
            Config::from_json_str(crate::config::tests::V3_HUB, Path::new("config.json")).unwrap();
        assert_eq!(c.latent_cache_bytes_per_token(2), 70_272);
        assert_eq!(c.mha_cache_bytes_per_token(2), 4_997_120);
        let p = c.param_counts();
        // DeepSeek-V3: 671B total, 37B activated, ~11.5B more in the MTP module.
        assert!((p.total as f64 / 1e9 - 671.0).abs() < 1.0, "{}", p.total);
        assert!((p.active as f64 / 1e9 - 37.5).abs() < 1.0, "{}", p.active);
        assert!((p.mtp as f64 / 1e9 - 11.6).abs() < 0.5, "{}", p.mtp);
    }
}
