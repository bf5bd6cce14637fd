//! The crate's error type: what can go wrong converting or loading a weight.

/// Errors from weight conversion, GGUF tensor loading and thread-pool setup.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("unknown quantization type {0:?} (expected one of f32, bf16, q8_0, q4_0, q4_k, q6_k)")]
    UnknownQuantType(String),
    #[error("cannot store a {rows}×{cols} weight as {quant}: rows of {cols} values are not a multiple of its {block}-value block")]
    BlockMisfit {
        quant: &'static str,
        block: usize,
        rows: usize,
        cols: usize,
    },
    #[error(
        "ggml type {0} is not supported (whale reads f32, f16, bf16, q8_0, q4_0, q4_k and q6_k)"
    )]
    UnsupportedGgmlType(u32),
    #[error("a {rows}×{cols} {dtype} tensor takes {expected} bytes, got {got}")]
    ByteLength {
        dtype: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("the thread pool already runs {running} threads; cannot change it to {requested}")]
    ThreadPoolRunning { requested: usize, running: usize },
}
