//! GGUF files, the format llama.cpp stores models in: a header, typed metadata (`key → value`),
//! tensor infos (name, ggml type, dims, offset) and the aligned tensor data.
//!
//! [`GgufFile::open`] maps a file and validates all of it up front — magic, version (2 or 3),
//! every metadata value, every tensor's type, size and place inside the file — so later reads
//! of metadata and tensor bytes cannot fail. Errors are one line naming the file and the key or
//! tensor at fault. [`GgufWriter`] writes the same format (for fixtures and tests).
//!
//! Layout (`gguf-py/gguf/constants.py`, `ggml/include/gguf.h` in llama.cpp): little-endian;
//! `"GGUF"`, `u32` version, `u64` tensor count, `u64` metadata count; each metadata entry is a
//! string key, a `u32` value type and the value; each tensor info is a string name, `u32` number
//! of dims, that many `u64` dims (ggml order: `ne[0]` is the contiguous one, i.e. the columns of a
//! matrix), `u32` ggml type and `u64` offset relative to the data section. The data section starts
//! at the next multiple of `general.alignment` (default 32) after the tensor infos. Strings are a
//! `u64` byte length and UTF-8 bytes, without terminator.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use types::{GgmlType, GgmlTypeInfo};
pub use value::{Value, ValueType};
pub use writer::GgufWriter;

/// `"GGUF"` read as a little-endian `u32`.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml tensors have at most this many dims (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
