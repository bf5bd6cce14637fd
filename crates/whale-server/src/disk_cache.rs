//! Prefix-cache blocks on disk (`--cache-dir`), one file per block, so a restarted server
//! still answers a long repeated prompt without recomputing it.
//!
//! Files live in `<cache-dir>/<model fingerprint>/<block key>.wkv`, little-endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `WHALEKV\0` |
//! | 8 | format version (u32) |
//! | 12 | tokens per block (u32) |
//! | 16 | model fingerprint (u64): config.json and the safetensors headers |
//! | 24 | block key (u64) and 32: parent key (u64) |
//! | 40 | layers (u32), 44: latent width (u32) |
//! | 48 | checksum (u64) of everything after the header |
//! | 56 | token ids (u32 × tokens), then rows (f32 × layers × tokens × width) |
//!
//! A file is trusted only if every field matches this server's model and the checksum
//! and the key recomputed from the ids agree; anything else is skipped with a warning.
//! Writes go through a background thread (temporary file, then rename) so the engine
//! never waits on the disk. The folder is kept under `--cache-disk` bytes: when a write
//! goes over, the least recently used files (by modification time, which a load refreshes)
//! are deleted down to 90% of the limit.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::prefix_cache::{block_key, Block, StableHasher, BLOCK_TOKENS};

const MAGIC: &[u8; 8] = b"WHALEKV\0";
/// Bump when the layout or the meaning of the rows changes.
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 56;
/// Blocks waiting for the writer; when full a block is skipped rather than stalling the
/// engine (it is offered again when evicted and at shutdown).
const WRITE_QUEUE: usize = 256;

pub struct DiskCache {
    reader: DiskReader,
    writer: Option<SyncSender<Arc<Block>>>,
    thread: Option<JoinHandle<()>>,
}

/// Reads and checks block files; cheap to clone, so reads can happen off the engine thread.
#[derive(Clone)]
pub struct DiskReader {
    dir: PathBuf,
    shape: Shape,
    metrics: Arc<Metrics>,
}

/// What a file must match to be usable by this model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub fingerprint: u64,
    pub num_layers: usize,
    pub latent_dim: usize,
}

impl DiskCache {
    /// Opens (creating it if needed) this model's folder under `root`.
    pub fn open(
        root: &Path,
        shape: Shape,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Result<DiskCache, ServerError> {
        let dir = root.join(format!("{:016x}", shape.fingerprint));
        fs::create_dir_all(&dir).map_err(|source| ServerError::Io {
            path: dir.clone(),
            source,
        })?;
        let (tx, rx) = sync_channel::<Arc<Block>>(WRITE_QUEUE);
        let writer_dir = dir.clone();
        let writer_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("whale-cache-writer".into())
            .spawn(move || {
                let mut used = folder_bytes(&writer_dir);
                for block in rx {
                    match write_block(&writer_dir, &block, shape) {
                        Ok(bytes) => {
                            writer_metrics.disk_written();
                            used += bytes;
                            if used > max_bytes {
                                used = evict_oldest(&writer_dir, max_bytes / 10 * 9);
                            }
                        }
                        Err(e) => tracing::warn!(
                            "prefix cache: cannot write block {:016x}: {e}",
                            block.key
                        ),
                    }
                }
            })
            .map_err(|source| ServerError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(DiskCache {
            reader: DiskReader {
                dir,
                shape,
                metrics,
            },
            writer: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.reader.dir
    }

    /// A reader of this cache's files for another thread.
    pub fn reader(&self) -> DiskReader {
        self.reader.clone()
    }

    /// The block stored under `key`, if its file exists and checks out.
    pub fn load(&self, key: u64) -> Option<Block> {
        self.reader.load(key)
    }

    /// Queues a block for writing; false when the queue is full.
    pub fn store(&self, block: Arc<Block>) -> bool {
        match self.writer.as_ref().map(|w| w.try_send(block)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_))) | Some(Err(TrySendError::Disconnected(_))) | None => {
                false
            }
        }
    }

    /// Queues a block, waiting for room (used at shutdown).
    pub fn store_blocking(&self, block: Arc<Block>) -> bool {
        self.writer.as_ref().is_some_and(|w| w.send(block).is_ok())
    }

    /// Finishes the queued writes.
    pub fn close(mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl DiskReader {
    /// The block stored under `key`, if its file exists and checks out.
    pub fn load(&self, key: u64) -> Option<Block> {
        let path = self.path(key);
        let mut bytes = Vec::new();
        match fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("prefix cache: ignoring {}: {e}", path.display());
                self.metrics.disk_rejected();
                return None;
            }
        }
        match decode(&bytes, self.shape, key) {
            Ok(block) => {
                // Recently used: eviction goes by modification time.
                let _ = fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                self.metrics.disk_loaded();
                Some(block)
            }
            Err(why) => {
                tracing::warn!("prefix cache: ignoring {}: {why}", path.display());
                self.metrics.disk_rejected();
                None
            }
        }
    }

    fn path(&self, key: u64) -> PathBuf {
        self.dir.join(format!("{key:016x}.wkv"))
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a block's file; returns its size.
fn write_block(dir: &Path, block: &Block, shape: Shape) -> std::io::Result<u64> {
    let path = dir.join(format!("{:016x}.wkv", block.key));
    // Another process (or an earlier run) may write the same key: the rename makes
    // whichever finishes last win, and both are complete files.
    let tmp = dir.join(format!("{:016x}.wkv.tmp{}", block.key, std::process::id()));
    let bytes = encode(block, shape);
    fs::write(&tmp, &bytes)?;
    fs::rename(&tmp, &path)?;
    Ok(bytes.len() as u64)
}

/// The block files of `dir` with their sizes and modification times.
fn block_files(dir: &Path) -> Vec<(std::time::SystemTime, u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let path = e.path();
            if path.extension()? != "wkv" {
                return None;
            }
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), path))
        })
        .collect()
}

fn folder_bytes(dir: &Path) -> u64 {
    block_files(dir).iter().map(|f| f.1).sum()
}

/// Deletes the least recently used block files until at most `target` bytes remain; returns
/// the bytes left.
fn evict_oldest(dir: &Path, target: u64) -> u64 {
    let mut files = block_files(dir);
    files.sort();
    let mut used: u64 = files.iter().map(|f| f.1).sum();
    for (_, len, path) in files {
        if used <= target {
            break;
        }
        match fs::remove_file(&path) {
            Ok(()) => used -= len,
            Err(e) => tracing::warn!("prefix cache: cannot remove {}: {e}", path.display()),
        }
    }
    used
}

/// The file bytes of a block.
pub fn encode(block: &Block, shape: Shape) -> Vec<u8> {
    let mut body = Vec::with_capacity(block.bytes());
    for id in &block.ids {
        body.extend_from_slice(&id.to_le_bytes());
    }
    for layer in &block.rows {
        for v in layer {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(block.ids.len() as u32).to_le_bytes());
    out.extend_from_slice(&shape.fingerprint.to_le_bytes());
    out.extend_from_slice(&block.key.to_le_bytes());
    out.extend_from_slice(&block.parent.to_le_bytes());
    out.extend_from_slice(&(shape.num_layers as u32).to_le_bytes());
    out.extend_from_slice(&(shape.latent_dim as u32).to_le_bytes());
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_BYTES);
    out.extend_from_slice(&body);
    out
}

/// Parses and checks a block file written by [`encode`]; the error says what differs.
pub fn decode(bytes: &[u8], shape: Shape, key: u64) -> Result<Block, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not a whale prefix-cache block".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let expect = |what: &str, got: u64, want: u64| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what} is {got:#x}, expected {want:#x}"))
        }
    };
    expect(
        "format version",
        u64::from(u32_at(8)),
        u64::from(FORMAT_VERSION),
    )?;
    expect(
        "tokens per block",
        u64::from(u32_at(12)),
        BLOCK_TOKENS as u64,
    )?;
    expect(
        "model fingerprint (written by another model?)",
        u64_at(16),
        shape.fingerprint,
    )?;
    expect("block key", u64_at(24), key)?;
    expect(
        "layer count",
        u64::from(u32_at(40)),
        shape.num_layers as u64,
    )?;
    expect(
        "latent width",
        u64::from(u32_at(44)),
        shape.latent_dim as u64,
    )?;
    let parent = u64_at(32);
    let rows_per_layer = BLOCK_TOKENS * shape.latent_dim;
    let body = &bytes[HEADER_BYTES..];
    let want_len = 4 * (BLOCK_TOKENS + shape.num_layers * rows_per_layer);
    expect("payload length", body.len() as u64, want_len as u64)?;
    expect("checksum", checksum(body), u64_at(48))?;
    let (id_bytes, row_bytes) = body.split_at(4 * BLOCK_TOKENS);
    let ids: Vec<u32> = id_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    expect("key recomputed from the ids", block_key(parent, &ids), key)?;
    let rows = row_bytes
        .chunks_exact(4 * rows_per_layer)
        .map(|layer| {
            layer
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect()
        })
        .collect();
    Ok(Block {
        key,
        parent,
        ids,
        rows,
    })
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new(u64::from(FORMAT_VERSION));
    h.write_bytes(bytes);
    h.finish()
}

/// Identifies a model's weights: `config.json` and each safetensors file's name, size and
/// header (tensor names, dtypes, shapes and offsets), without reading the weights. For a GGUF
/// file: its name, size, and everything before the tensor data (metadata and tensor infos).
pub fn model_fingerprint(dir: &Path) -> Result<u64, ServerError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::Io { path, source }
    };
    let mut h = StableHasher::new(u64::from(FORMAT_VERSION));
    if dir.is_file() {
        let gguf = whale_gguf::GgufFile::open(dir).map_err(|e| ServerError::Model(e.into()))?;
        let mut f = fs::File::open(dir).map_err(io(dir))?;
        let mut header = vec![0u8; gguf.data_offset() as usize];
        f.read_exact(&mut header).map_err(io(dir))?;
        h.write_bytes(
            dir.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.write_u64(gguf.file_size());
        h.write_bytes(&header);
        return Ok(h.finish());
    }
    let config = dir.join("config.json");
    h.write_bytes(&fs::read(&config).map_err(io(&config))?);
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for path in files {
        let mut f = fs::File::open(&path).map_err(io(&path))?;
        let size = f.metadata().map_err(io(&path))?.len();
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(io(&path))?;
        // The header is at most a few MB even for 100k-tensor checkpoints.
        let header_len = u64::from_le_bytes(len)
            .min(size.saturating_sub(8))
            .min(64 << 20);
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header).map_err(io(&path))?;
        h.write_bytes(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.write_u64(size);
        h.write_bytes(&header);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix_cache::ROOT;

    fn shape() -> Shape {
        Shape {
            fingerprint: 42,
            num_layers: 2,
            latent_dim: 3,
        }
    }

    fn block() -> Block {
        let ids: Vec<u32> = (0..BLOCK_TOKENS as u32).collect();
        Block {
            key: block_key(ROOT, &ids),
            parent: ROOT,
            ids,
            rows: (0..2)
                .map(|l| {
                    (0..BLOCK_TOKENS * 3)
                        .map(|i| (l * 1000 + i) as f32 * 0.5)
                        .collect()
                })
                .collect(),
        }
    }

    /// Blocks with other ids (and so other keys) than `block()`.
    fn block_n(n: u32) -> Block {
        let ids: Vec<u32> = (0..BLOCK_TOKENS as u32).map(|i| i + 1000 * n).collect();
        Block {
            key: block_key(ROOT, &ids),
            ids,
            ..block()
        }
    }

    #[test]
    fn folder_stays_under_the_limit_keeping_the_newest() {
        let root = std::env::temp_dir().join(format!("whale-disk-limit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let size = encode(&block_n(0), shape()).len() as u64;
        // Room for three files; six written one after another.
        let cache = DiskCache::open(&root, shape(), 3 * size + size / 2, Arc::default()).unwrap();
        let dir = cache.dir().to_path_buf();
        for n in 0..6 {
            assert!(cache.store_blocking(Arc::new(block_n(n))));
            // Distinct modification times even on coarse-grained file systems.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        cache.close();
        let left = block_files(&dir);
        assert!(
            folder_bytes(&dir) <= 3 * size + size / 2,
            "{} files left",
            left.len()
        );
        assert!(!left.is_empty());
        let newest = dir.join(format!("{:016x}.wkv", block_n(5).key));
        assert!(newest.exists(), "the newest block was evicted");
        let oldest = dir.join(format!("{:016x}.wkv", block_n(0).key));
        assert!(!oldest.exists(), "the oldest block was kept");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn round_trip() {
        let b = block();
        let back = decode(&encode(&b, shape()), shape(), b.key).unwrap();
        assert_eq!(
            (back.key, back.parent, &back.ids, &back.rows),
            (b.key, b.parent, &b.ids, &b.rows)
        );
    }

    #[test]
    fn corrupt_truncated_or_foreign_files_are_rejected() {
        let b = block();
        let good = encode(&b, shape());
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode(&flipped, shape(), b.key)
            .unwrap_err()
            .contains("checksum"));
        assert!(decode(&good[..good.len() - 4], shape(), b.key)
            .unwrap_err()
            .contains("length"));
        let foreign = Shape {
            fingerprint: 7,
            ..shape()
        };
        assert!(decode(&good, foreign, b.key)
            .unwrap_err()
            .contains("fingerprint"));
        assert!(decode(&good, shape(), b.key ^ 1)
            .unwrap_err()
            .contains("block key"));
        assert!(decode(b"garbage", shape(), b.key).is_err());
        let mut version = good.clone();
        version[8] = 99;
        assert!(decode(&version, shape(), b.key)
            .unwrap_err()
            .contains("version"));
    }
}
