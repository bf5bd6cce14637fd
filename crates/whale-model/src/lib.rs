//! DeepSeek-architecture models: config, checkpoint loading (safetensors folders and
//! llama.cpp's GGUF files), the forward pass with its latent cache, and sampling.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod deepseek;
pub mod error;
pub mod gguf;
pub mod params;
pub mod rope;
pub mod sampling;

pub use cache::{CacheType, LatentCache};
pub use config::Config;
pub use deepseek::{LoadOptions, Logits, MlaImpl, Model, Step};
pub use error::{ModelError, Result};
pub use gguf::GgufCheckpoint;
