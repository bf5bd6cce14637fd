//! Starting and stopping: [`Server::start`] loads the tokenizer, opens the prefix cache
//! and spawns the engine thread; [`run`] serves it on a socket until SIGINT/SIGTERM, then
//! stops accepting, lets running requests finish (cancelling them after a grace period),
//! writes the prefix cache out and returns.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use whale_model::Model;
use whale_tokenizer::Tokenizer;

use crate::disk_cache::{model_fingerprint, DiskCache, Shape};
use crate::engine::{Engine, EngineOptions};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::prefix_cache::PrefixCache;
use crate::routes::{app, unix_now, AppState, Shared};

/// How long running requests may continue after SIGINT/SIGTERM before being cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything `whale serve` is told besides the model.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Required as `Authorization: Bearer <key>` on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Context per sequence (default: the model's `max_position_embeddings`).
    pub ctx: Option<usize>,
    /// Sequences prefilling or decoding at once.
    pub max_seqs: usize,
    /// Requests allowed to wait for a slot (default: 4 × `max_seqs`); more get 429.
    pub max_queue: Option<usize>,
    /// Prompt tokens prefilled per step.
    pub prefill_chunk: usize,
    /// Where prefix-cache blocks persist across restarts.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of prefix-cache blocks kept in memory.
    pub cache_mem: usize,
    /// Most bytes the prefix cache may keep on disk (least recently used files go first).
    pub cache_disk: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            ctx: None,
            max_seqs: 8,
            max_queue: None,
            prefill_chunk: 256,
            cache_dir: None,
            cache_mem: 1 << 30,
            cache_disk: 8 << 30,
        }
    }
}

/// A started engine and the state the router serves.
pub struct Server {
    pub state: AppState,
    engine: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts serving `model`, loaded from `dir`: a model folder (which also holds the tokenizer
    /// files) or a GGUF file (which also holds the tokenizer).
    pub fn start(model: Model, dir: &Path, opts: &ServeOptions) -> Result<Server, ServerError> {
        if opts.max_seqs == 0 {
            return Err(ServerError::Options("--max-seqs must be at least 1".into()));
        }
        let ctx = opts.ctx.unwrap_or(model.config.max_position_embeddings);
        if ctx < 2 {
            return Err(ServerError::Options("--ctx must be at least 2".into()));
        }
        let tokenizer =
            Tokenizer::for_model(dir).map_err(|e| ServerError::Tokenizer(e.to_string()))?;
        if tokenizer.is_none() {
            tracing::warn!(
                "{} has no tokenizer: only token-id prompts on /v1/completions",
                dir.display()
            );
        }
        let tokenizer = tokenizer.map(Arc::new);
        let eos = whale_model::config::eos_token_ids(
            dir,
            &model.config,
            tokenizer.as_deref().and_then(Tokenizer::eos_token_id),
        );
        let fingerprint = model_fingerprint(dir)?;
        let metrics = Arc::new(Metrics::default());
        let (num_layers, latent_dim) = (model.config.num_hidden_layers, model.config.latent_dim());
        let disk = match &opts.cache_dir {
            Some(root) => {
                let shape = Shape {
                    fingerprint,
                    num_layers,
                    latent_dim,
                };
                let disk = DiskCache::open(root, shape, opts.cache_disk, metrics.clone())?;
                tracing::info!("prefix cache on disk: {}", disk.dir().display());
                Some(disk)
            }
            None => None,
        };
        let prefix = PrefixCache::new(
            opts.cache_mem,
            num_layers,
            latent_dim,
            disk,
            metrics.clone(),
        );
        let vocab_size = model.config.vocab_size;
        let engine = Engine {
            model,
            tokenizer: tokenizer.clone(),
            options: EngineOptions {
                max_seqs: opts.max_seqs,
                max_queue: opts.max_queue.unwrap_or(4 * opts.max_seqs),
                ctx,
                prefill_chunk: opts.prefill_chunk,
                eos,
            },
            prefix,
            metrics: metrics.clone(),
        };
        let (handle, thread) = engine.spawn().map_err(|source| ServerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        // A folder's name, or a GGUF file's without `.gguf`.
        let model_id = if dir.is_file() {
            dir.file_stem()
        } else {
            dir.file_name()
        };
        let model_id =
            model_id.map_or_else(|| "whale".to_string(), |n| n.to_string_lossy().into_owned());
        let state = AppState(Arc::new(Shared {
            model_id,
            created: unix_now(),
            ctx,
            vocab_size,
            tokenizer,
            api_key: opts.api_key.clone(),
            engine: handle,
            metrics,
            system_fingerprint: format!("whale-{fingerprint:016x}"),
            next_id: AtomicU64::new(0),
        }));
        Ok(Server {
            state,
            engine: Some(thread),
        })
    }

    pub fn app(&self) -> Router {
        app(self.state.clone())
    }

    /// Refuses new requests, cancels running ones after `grace`, and waits for the
    /// engine to write the prefix cache out.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        self.state.0.engine.shutdown(grace);
        if let Some(t) = self.engine.take() {
            if t.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// Serves on `opts.host:opts.port` until SIGINT or SIGTERM.
pub fn run(model: Model, dir: &Path, opts: ServeOptions) -> Result<(), ServerError> {
    let server = Server::start(model, dir, &opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServerError::Io {
            path: PathBuf::from("tokio runtime"),
            source,
        })?;
    let addr = format!("{}:{}", opts.host, opts.port);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_or(addr.clone(), |a| a.to_string());
        tracing::info!("listening on http://{local}");
        let state = server.state.clone();
        axum::serve(listener, server.app())
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                tracing::info!(
                    "shutting down: finishing running requests (up to {SHUTDOWN_GRACE:?})"
                );
                state.0.engine.shutdown(SHUTDOWN_GRACE);
            })
            .await
            .map_err(|source| ServerError::Io {
                path: PathBuf::from(&addr),
                source,
            })
    })?;
    server.shutdown(SHUTDOWN_GRACE);
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Parses a byte count: `1073741824`, `512M`, `4GiB`, `1.5G` (K, M, G, T are powers of
/// 1024, with or without `B`/`iB`).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 512M, 4GiB)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    Ok((value * (1u64 << shift) as f64) as usize)
}

/// Logs to stderr; `WHALE_LOG` (e.g. `debug`, `whale_server=trace`) overrides `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("2KB"), Ok(2048));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3X").is_err());
    }
}
