//! The MLA latent cache: per layer and per position only `kv_lora_rank + qk_rope_head_dim`
//! values — the normalised latent `c_KV` and the rotated shared key `k_pe` (SPEC §3.2).

use crate::config::Config;

pub struct LatentCache {
    /// Per layer `[positions, latent_dim]`, row `p` = `[c_KV ; k_pe]` of position `p`.
    layers: Vec<Vec<f32>>,
    latent_dim: usize,
    len: usize,
    capacity: usize,
}

impl LatentCache {
    /// A cache for up to `capacity` positions; memory grows with use, up to
    /// `capacity × latent_dim × layers × 4` bytes.
    pub fn new(config: &Config, capacity: usize) -> LatentCache {
        LatentCache {
            layers: vec![Vec::new(); config.num_hidden_layers],
            latent_dim: config.latent_dim(),
            len: 0,
            capacity,
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
        for l in &mut self.layers {
            l.truncate(self.len * self.latent_dim);
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

    /// Copies positions `range` of every layer, `[layer][position × latent_dim]` (for a
    /// prefix cache to keep).
    pub fn export(&self, range: std::ops::Range<usize>) -> Vec<Vec<f32>> {
        assert!(range.end <= self.len, "export past the cached positions");
        let span = range.start * self.latent_dim..range.end * self.latent_dim;
        self.layers
            .iter()
            .map(|l| l[span.clone()].to_vec())
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
    pub(crate) fn rows(&self, layer: usize, n: usize) -> &[f32] {
        &self.layers[layer][..n * self.latent_dim]
    }

    /// Appends the rows of a step to `layer`; `commit` then advances `len` once all
    /// layers have their rows.
    pub(crate) fn append(&mut self, layer: usize, rows: &[f32]) {
        let l = &mut self.layers[layer];
        l.truncate(self.len * self.latent_dim);
        l.extend_from_slice(rows);
    }

    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }
}
