//! `whale serve`: an OpenAI-compatible HTTP server for DeepSeek-architecture models, with
//! continuous batching on an engine thread and a latent-KV prefix cache in memory and on
//! disk.
//!
//! | module | holds |
//! |---|---|
//! | [`routes`] | `app(state) -> Router`, the handlers, auth, SSE streaming |
//! | [`openai`] | request parsing and validation, response and chunk shapes |
//! | [`engine`] | the engine thread: admission, the batching scheduler, sampling |
//! | [`prefix_cache`] | latent blocks keyed by a hash chain, LRU under `--cache-mem` |
//! | [`disk_cache`] | the block file format and its background writer (`--cache-dir`) |
//! | [`metrics`] | Prometheus counters and histograms |
//! | [`server`] | start-up, the socket, signals and graceful shutdown |

pub mod disk_cache;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod prefix_cache;
pub mod routes;
pub mod server;

pub use error::{ApiError, ServerError};
pub use routes::{app, AppState, MAX_BODY_BYTES};
pub use server::{init_logging, parse_bytes, run, ServeOptions, Server, SHUTDOWN_GRACE};
