//! DeepSeek-architecture models: config, checkpoint loading, the forward pass with its
//! latent cache, and sampling.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod deepseek;
pub mod error;
pub mod params;
pub mod rope;
pub mod sampling;

pub use cache::LatentCache;
pub use config::Config;
pub use deepseek::{LoadOptions, Logits, MlaImpl, Model, Step};
pub use error::{ModelError, Result};
