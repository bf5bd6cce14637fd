//! The crate's error type: one line naming the file and the key or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file (starts with {found:02x?}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{}: unsupported GGUF version {version} (whale reads versions 2 and 3{hint})", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },
    /// The file ends before `what` (a header field, a key, a tensor info) is complete.
    #[error("{}: truncated: the file ends inside {what} (at byte {offset} of {len})", path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        len: u64,
    },
    #[error("{}: metadata key `{key}`: {message}", path.display())]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
}
