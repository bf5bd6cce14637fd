//! The MLA latent cache: per layer and per position only `kv_lora_rank + qk_rope_head_dim`
//! values — the normalised latent `c_KV` and the rotated shared key `k_pe` (SPEC §3.2) —
//! stored as f32, bf16 or Q8_0 (`--cache-type`).

use half::bf16;
use whale_tensor::quant::BlockQ8_0;
use whale_tensor::rows::push_q8_0_row;
use whale_tensor::{RowData, Rows};

use crate::config::Config;

/// How the cached latents are stored. bf16 halves and Q8_0 nearly quarters the cache's memory
/// and the bytes attention reads per step, at a small cost in accuracy (bench/RESULTS.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    #[default]
    F32,
    Bf16,
    /// ggml's Q8_0 blocks, each row its own blocks (the last one zero-padded).
    Q8_0,
}

impl CacheType {
    pub fn name(self) -> &'static str {
        match self {
            CacheType::F32 => "f32",
            CacheType::Bf16 => "bf16",
            CacheType::Q8_0 => "q8_0",
        }
    }

    /// Bytes one cached row of `width` values takes.
    pub fn row_bytes(self, width: usize) -> usize {
        match self {
            CacheType::F32 => 4 * width,
            CacheType::Bf16 => 2 * width,
            CacheType::Q8_0 => width.div_ceil(32) * std::mem::size_of::<BlockQ8_0>(),
        }
    }
}

impl std::fmt::Display for CacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(CacheType::F32),
            "bf16" => Ok(CacheType::Bf16),
            "q8_0" => Ok(CacheType::Q8_0),
            _ => Err(format!(
                "unknown cache type {s:?} (expected f32, bf16 or q8_0)"
            )),
        }
    }
}

/// One layer's rows in the cache's storage type.
#[derive(Clone)]
enum Store {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Q8_0(Vec<BlockQ8_0>),
}

pub struct LatentCache {
    /// Per layer `[positions, latent_dim]`, row `p` = `[c_KV ; k_pe]` of position `p`.
    layers: Vec<Store>,
    latent_dim: usize,
    len: usize,
    capacity: usize,
}

impl LatentCache {
    /// An f32 cache for up to `capacity` positions; memory grows with use.
    pub fn new(config: &Config, capacity: usize) -> LatentCache {
        LatentCache::with_type(config, capacity, CacheType::F32)
    }

    /// A cache for up to `capacity` positions storing rows as `ty`; memory grows with use, up
    /// to `capacity × layers × ty.row_bytes(latent_dim)` bytes.
    pub fn with_type(config: &Config, capacity: usize, ty: CacheType) -> LatentCache {
        let store = match ty {
            CacheType::F32 => Store::F32(Vec::new()),
            CacheType::Bf16 => Store::Bf16(Vec::new()),
            CacheType::Q8_0 => Store::Q8_0(Vec::new()),
        };
        LatentCache {
            layers: vec![store; config.num_hidden_layers],
            latent_dim: config.latent_dim(),
            len: 0,
            capacity,
        }
    }

    pub fn cache_type(&self) -> CacheType {
        match self.layers.first() {
            Some(Store::Bf16(_)) => CacheType::Bf16,
            Some(Store::Q8_0(_)) => CacheType::Q8_0,
            _ => CacheType::F32,
        }
    }

    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions `len..`, e.g. to reuse a shared prefix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let (n, d) = (self.len, self.latent_dim);
        for l in &mut self.layers {
            match l {
                Store::F32(v) => v.truncate(n * d),
                Store::Bf16(v) => v.truncate(n * d),
                Store::Q8_0(v) => v.truncate(n * d.div_ceil(32)),
            }
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Copies positions `range` of every layer as f32, `[layer][position × latent_dim]` (for a
    /// prefix cache to keep). bf16 and Q8_0 rows come back exactly as [`LatentCache::import`]
    /// stores them again (a bf16 value is an f32; requantizing dequantized Q8_0 blocks gives
    /// the same blocks).
    pub fn export(&self, range: std::ops::Range<usize>) -> Vec<Vec<f32>> {
        assert!(range.end <= self.len, "export past the cached positions");
        let d = self.latent_dim;
        (0..self.layers.len())
            .map(|layer| {
                let mut out = vec![0.0f32; range.len() * d];
                self.rows(layer, range.end)
                    .decode(range.start, range.end, d, &mut out);
                out
            })
            .collect()
    }

    /// Appends positions exported by [`LatentCache::export`] (same model, same order);
    /// returns how many were added.
    pub fn import(&mut self, per_layer: &[Vec<f32>]) -> usize {
        assert_eq!(per_layer.len(), self.layers.len(), "one slice per layer");
        let n = per_layer[0].len() / self.latent_dim;
        assert!(self.len + n <= self.capacity, "import past the capacity");
        for (layer, rows) in per_layer.iter().enumerate() {
            assert_eq!(
                rows.len(),
                n * self.latent_dim,
                "same positions in every layer"
            );
            self.append(layer, rows);
        }
        self.commit(n);
        n
    }

    /// Cached rows `0..n` of `layer`.
    pub(crate) fn rows(&self, layer: usize, n: usize) -> Rows<'_> {
        let d = self.latent_dim;
        let data = match &self.layers[layer] {
            Store::F32(v) => RowData::F32(&v[..n * d]),
            Store::Bf16(v) => RowData::Bf16(&v[..n * d]),
            Store::Q8_0(v) => RowData::Q8_0(&v[..n * d.div_ceil(32)]),
        };
        Rows { data, width: d }
    }

    /// Appends the rows of a step to `layer`; `commit` then advances `len` once all
    /// layers have their rows.
    pub(crate) fn append(&mut self, layer: usize, rows: &[f32]) {
        let (n, d) = (self.len, self.latent_dim);
        match &mut self.layers[layer] {
            Store::F32(v) => {
                v.truncate(n * d);
                v.extend_from_slice(rows);
            }
            Store::Bf16(v) => {
                v.truncate(n * d);
                v.extend(rows.iter().map(|&x| bf16::from_f32(x)));
            }
            Store::Q8_0(v) => {
                v.truncate(n * d.div_ceil(32));
                for row in rows.chunks_exact(d) {
                    push_q8_0_row(v, row);
                }
            }
        }
    }

    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Export then import gives back the same stored rows in every type (what the server's
    /// prefix cache relies on), for a latent width that is not a multiple of 32.
    #[test]
    fn export_import_round_trips_in_every_type() {
        let config = Config::from_json_str(
            r#"{"model_type": "deepseek_v2", "vocab_size": 16, "hidden_size": 8,
                "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 1,
                "kv_lora_rank": 40, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
                "v_head_dim": 8}"#,
            std::path::Path::new("test"),
        )
        .unwrap();
        let d = config.latent_dim();
        let rows: Vec<f32> = (0..5 * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for ty in [CacheType::F32, CacheType::Bf16, CacheType::Q8_0] {
            let mut a = LatentCache::with_type(&config, 16, ty);
            for layer in 0..2 {
                a.append(layer, &rows);
            }
            a.commit(5);
            let exported = a.export(1..4);
            let mut b = LatentCache::with_type(&config, 16, ty);
            b.import(&exported);
            assert_eq!(b.export(0..3), exported, "{ty}");
            for layer in 0..2 {
                let (x, y) = (a.rows(layer, 4), b.rows(layer, 3));
                let (mut xa, mut yb) = (vec![0.0; 3 * d], vec![0.0; 3 * d]);
                x.decode(1, 4, d, &mut xa);
                y.decode(0, 3, d, &mut yb);
                assert_eq!(xa, yb, "{ty}");
            }
            if ty == CacheType::Q8_0 {
                let (Store::Q8_0(x), Store::Q8_0(y)) = (&a.layers[0], &b.layers[0]) else {
                    unreachable!()
                };
                assert_eq!(x[d.div_ceil(32)..4 * d.div_ceil(32)], y[..]);
            }
        }
    }
}
