//! The prefix cache: latent rows of past prompts kept in fixed-size token blocks, keyed by
//! a hash chain of their token ids, so a request that starts with a cached prefix (a
//! multi-turn chat re-sending its history, a shared system prompt) imports those rows
//! instead of recomputing them.
//!
//! Block `i` of a token sequence covers positions `i·B..(i+1)·B` and its key is
//! `H(key of block i-1, ids of block i)` (block 0 chains from [`ROOT`]), so one key names
//! a whole prefix: MLA's latent row at a position depends on every token before it. Only
//! full blocks are cached. Memory is bounded by `--cache-mem` with least-recently-used
//! eviction; with `--cache-dir` every block is also written to disk (see
//! [`crate::disk_cache`]) and read back on a miss, after a restart too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use whale_model::LatentCache;

use crate::disk_cache::{DiskCache, DiskReader};
use crate::metrics::Metrics;

/// Tokens per block: small enough that a prompt loses at most 63 tokens of reuse, large
/// enough that per-block overhead (a hash, a map entry, a file) stays negligible.
pub const BLOCK_TOKENS: usize = 64;

/// Parent key of the first block.
pub const ROOT: u64 = 0x5748_414c_455f_4b56; // "WHALE_KV"

/// One block of latent rows and the ids that produced them.
pub struct Block {
    pub key: u64,
    pub parent: u64,
    /// `[BLOCK_TOKENS]`
    pub ids: Vec<u32>,
    /// `[layer][BLOCK_TOKENS × latent_dim]`, as [`LatentCache::export`] returns them.
    pub rows: Vec<Vec<f32>>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Block {{ key: {:016x}, parent: {:016x}, {} bytes }}",
            self.key,
            self.parent,
            self.bytes()
        )
    }
}

impl Block {
    pub fn bytes(&self) -> usize {
        self.rows.iter().map(|r| r.len() * 4).sum::<usize>() + self.ids.len() * 4
    }
}

/// A stable 64-bit hash (the same on every machine and Rust version, unlike std's, so
/// keys written to disk stay valid): words folded through splitmix64's finaliser. Not
/// cryptographic; blocks also carry their ids, compared on every hit.
#[derive(Clone, Copy)]
pub struct StableHasher(u64);

impl StableHasher {
    pub fn new(seed: u64) -> StableHasher {
        StableHasher(mix(seed ^ 0x9e37_79b9_7f4a_7c15))
    }

    pub fn write_u64(&mut self, x: u64) {
        self.0 = mix(self.0.rotate_left(23) ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.write_u64(u64::from_le_bytes(w.try_into().expect("8-byte chunk")));
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        self.write_u64(u64::from_le_bytes(tail));
        self.write_u64(bytes.len() as u64);
    }

    pub fn finish(self) -> u64 {
        mix(self.0)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key of the block holding `ids` after the block keyed `parent`.
pub fn block_key(parent: u64, ids: &[u32]) -> u64 {
    let mut h = StableHasher::new(parent);
    for pair in ids.chunks(2) {
        let hi = pair.get(1).map_or(u64::MAX, |&x| u64::from(x));
        h.write_u64(u64::from(pair[0]) | hi << 32);
    }
    h.finish()
}

/// Keys of the full blocks of `ids`, in order.
pub fn chain_keys(ids: &[u32]) -> Vec<u64> {
    let mut parent = ROOT;
    ids.chunks_exact(BLOCK_TOKENS)
        .map(|chunk| {
            parent = block_key(parent, chunk);
            parent
        })
        .collect()
}

struct Entry {
    block: Arc<Block>,
    /// Position in the LRU order (larger is more recent).
    tick: u64,
    /// Written to (or read from) the disk cache already.
    on_disk: bool,
}

pub struct PrefixCache {
    blocks: HashMap<u64, Entry>,
    /// tick → key, oldest first.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    bytes: usize,
    budget: usize,
    num_layers: usize,
    latent_dim: usize,
    disk: Option<DiskCache>,
    metrics: Arc<Metrics>,
}

impl PrefixCache {
    /// A cache of at most `budget` bytes of blocks in memory, plus `disk` if given.
    pub fn new(
        budget: usize,
        num_layers: usize,
        latent_dim: usize,
        disk: Option<DiskCache>,
        metrics: Arc<Metrics>,
    ) -> PrefixCache {
        PrefixCache {
            blocks: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            budget,
            num_layers,
            latent_dim,
            disk,
            metrics,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The longest chain of blocks in memory that is a prefix of `ids[..limit]` (blocks on
    /// disk are read beforehand, off the engine thread: [`Self::disk_job`]).
    pub fn lookup(&mut self, ids: &[u32], limit: usize) -> Vec<Arc<Block>> {
        let ids = &ids[..limit.min(ids.len())];
        let mut found = Vec::new();
        let mut parent = ROOT;
        for chunk in ids.chunks_exact(BLOCK_TOKENS) {
            let key = block_key(parent, chunk);
            let block = self.blocks.get(&key).map(|e| e.block.clone());
            // A key collision would show as different ids or parent: treat it as a miss.
            match block {
                Some(b) if b.parent == parent && b.ids == chunk => found.push(b),
                _ => break,
            }
            parent = key;
        }
        self.touch_chain(found.iter().map(|b| b.key));
        found
    }

    /// Caches the full blocks of `ids` whose latents `cache` holds (`ids[p]` at position
    /// `p`); blocks already cached are only marked as used.
    pub fn insert(&mut self, ids: &[u32], cache: &LatentCache) {
        if cache.num_layers() != self.num_layers || cache.latent_dim() != self.latent_dim {
            return;
        }
        let n = ids.len().min(cache.len());
        let keys = chain_keys(&ids[..n]);
        let mut parent = ROOT;
        for (i, &key) in keys.iter().enumerate() {
            if !self.blocks.contains_key(&key) {
                let span = i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS;
                let block = Arc::new(Block {
                    key,
                    parent,
                    ids: ids[span.clone()].to_vec(),
                    rows: cache.export(span),
                });
                let on_disk = self.disk.as_ref().is_some_and(|d| d.store(block.clone()));
                // A chain longer than the budget keeps its head; without a disk the rest
                // would only be copied to be dropped.
                if !self.add(block, on_disk, &keys[..i]) && self.disk.is_none() {
                    break;
                }
            }
            parent = key;
        }
        self.touch_chain(keys.into_iter());
        self.metrics.cache_size(self.blocks.len(), self.bytes);
    }

    /// For a prompt whose cached prefix may continue on disk: the job of reading
    /// `ids[..limit]`'s blocks from the first one not in memory, to run off the engine thread
    /// ([`DiskJob::read`]) and be handed back with [`Self::add_loaded`] before admission.
    pub fn disk_job(&self, ids: &[u32], limit: usize) -> Option<DiskJob> {
        let reader = self.disk.as_ref()?.reader();
        let keys = chain_keys(&ids[..limit.min(ids.len())]);
        let first = keys.iter().position(|k| !self.blocks.contains_key(k))?;
        Some(DiskJob {
            reader,
            keys,
            first,
        })
    }

    /// Keeps the blocks a [`DiskJob`] read in memory, as a lookup that found them on disk
    /// would (the lookup at admission then checks them as usual).
    pub fn add_loaded(&mut self, job: &DiskJob, blocks: Vec<Block>) {
        // `read` returns the chain's blocks in order from `first`, each checked against its key.
        for (i, block) in (job.first..).zip(blocks) {
            if !self.blocks.contains_key(&block.key) {
                self.add(Arc::new(block), true, &job.keys[..i]);
            }
        }
        self.metrics.cache_size(self.blocks.len(), self.bytes);
    }

    /// Writes every block not yet on disk and waits for the writes (at shutdown).
    pub fn flush(&mut self) {
        let Some(disk) = self.disk.take() else { return };
        for e in self.blocks.values_mut().filter(|e| !e.on_disk) {
            e.on_disk = disk.store_blocking(e.block.clone());
        }
        disk.close();
    }

    /// Adds a block, evicting least recently used ones to stay within the budget, but
    /// never a block of `chain` (the new block's ancestors: evicting them would leave it
    /// unreachable). Returns false when it does not fit; the disk may still have it.
    fn add(&mut self, block: Arc<Block>, on_disk: bool, chain: &[u64]) -> bool {
        let size = block.bytes();
        while self.bytes + size > self.budget {
            let Some((&tick, &old)) = self.lru.iter().find(|(_, k)| !chain.contains(k)) else {
                return false;
            };
            self.lru.remove(&tick);
            if let Some(e) = self.blocks.remove(&old) {
                self.bytes -= e.block.bytes();
                // Write-through failed earlier (the writer was busy): try again now.
                if !e.on_disk {
                    if let Some(d) = &self.disk {
                        d.store(e.block);
                    }
                }
            }
        }
        self.tick += 1;
        self.lru.insert(self.tick, block.key);
        self.bytes += size;
        self.blocks.insert(
            block.key,
            Entry {
                block,
                tick: self.tick,
                on_disk,
            },
        );
        true
    }

    /// Marks a chain as used, last block first, so a parent is always more recent than
    /// its children and eviction never strands a child behind a missing parent.
    fn touch_chain(&mut self, keys: impl DoubleEndedIterator<Item = u64>) {
        for key in keys.rev() {
            if let Some(e) = self.blocks.get_mut(&key) {
                self.lru.remove(&e.tick);
                self.tick += 1;
                e.tick = self.tick;
                self.lru.insert(self.tick, key);
            }
        }
    }
}

/// Blocks of one prompt's chain to read from disk ([`PrefixCache::disk_job`]): the whole
/// chain's keys (hashed once, kept for reinsertion) and the first one not in memory.
pub struct DiskJob {
    reader: DiskReader,
    keys: Vec<u64>,
    first: usize,
}

impl DiskJob {
    /// Reads the chain's blocks in order from the first one not in memory, stopping at the
    /// first one missing or rejected.
    pub fn read(&self) -> Vec<Block> {
        self.keys[self.first..]
            .iter()
            .map_while(|&k| self.reader.load(k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_through_the_prefix() {
        let a: Vec<u32> = (0..128).collect();
        let mut b = a.clone();
        b[3] = 999; // first block differs, so the second block's key differs too
        let (ka, kb) = (chain_keys(&a), chain_keys(&b));
        assert_eq!(ka.len(), 2);
        assert_ne!(ka[0], kb[0]);
        assert_ne!(ka[1], kb[1]);
        assert_eq!(chain_keys(&a[..100]), ka[..1].to_vec());
        // Stable across runs and machines: a fixed value guards the on-disk format.
        assert_eq!(block_key(ROOT, &[1, 2, 3]), 0x6b48_04b0_0985_e099);
        assert_ne!(block_key(ROOT, &[1, 2, 3]), block_key(ROOT, &[1, 2]));
    }

    /// A cache over `n` positions of a model with 2 layers and latent width 4, row `p`
    /// filled with `p`.
    fn latent_cache(n: usize) -> LatentCache {
        let config = whale_model::Config::from_json_str(
            r#"{"model_type": "deepseek_v2", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 8,
                "num_hidden_layers": 2, "num_attention_heads": 1, "kv_lora_rank": 2,
                "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2}"#,
            std::path::Path::new("test"),
        )
        .unwrap();
        let mut cache = LatentCache::new(&config, n);
        let rows: Vec<f32> = (0..n).flat_map(|p| [p as f32; 4]).collect();
        cache.import(&[rows.clone(), rows]);
        cache
    }

    #[test]
    fn a_chain_longer_than_the_budget_keeps_its_head() {
        let ids: Vec<u32> = (0..4 * BLOCK_TOKENS as u32).collect();
        let cache = latent_cache(ids.len());
        let block_bytes = BLOCK_TOKENS * (2 * 4 * 4 + 4);
        let mut pc = PrefixCache::new(2 * block_bytes, 2, 4, None, Arc::new(Metrics::default()));
        pc.insert(&ids, &cache);
        assert_eq!((pc.len(), pc.bytes()), (2, 2 * block_bytes));
        let found = pc.lookup(&ids, ids.len());
        assert_eq!(found.len(), 2, "the first two blocks, not the last two");
        assert_eq!(found[1].rows[0][0], BLOCK_TOKENS as f32);
        // Another prompt evicts the least recently used chain's tail first.
        let other: Vec<u32> = (1000..1000 + BLOCK_TOKENS as u32).collect();
        pc.insert(&other, &latent_cache(BLOCK_TOKENS));
        assert_eq!(pc.lookup(&ids, ids.len()).len(), 1);
        assert_eq!(pc.lookup(&other, other.len()).len(), 1);
        // A block bigger than the whole budget is never kept.
        let mut tiny = PrefixCache::new(block_bytes - 1, 2, 4, None, Arc::new(Metrics::default()));
        tiny.insert(&ids, &cache);
        assert!(tiny.is_empty());
    }

    #[test]
    fn hasher_sees_every_byte() {
        let h = |b: &[u8]| {
            let mut s = StableHasher::new(1);
            s.write_bytes(b);
            s.finish()
        };
        assert_ne!(h(b"abcdefgh1"), h(b"abcdefgh2"));
        assert_ne!(h(b""), h(b"\0"));
    }
}
