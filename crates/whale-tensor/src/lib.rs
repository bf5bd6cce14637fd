//! Tensors, dtypes and compute kernels for whale.
//!
//! The model crate never names a storage dtype: a weight matrix is a [`Weight`], and
//! [`matmul`] is the one place that looks at how it is stored. Block-quantized formats
//! ([`quant`]) are GGUF's; their dot products ([`kernels`]) have a scalar reference and AVX2
//! versions chosen at run time. The element-wise kernels ([`ops`]) work on `f32` activations.

pub mod attention;
pub mod dtype;
pub mod error;
pub mod kernels;
mod matmul;
pub mod ops;
pub mod quant;
pub mod rows;
pub mod threads;
pub mod weight;

pub use attention::attend_rows;
pub use dtype::DType;
pub use error::TensorError;
pub use kernels::Isa;
pub use matmul::{matmul, matmul_heads, matmul_rows, matmul_with, weighted_rows};
pub use quant::QuantType;
pub use rows::{RowData, Rows};
pub use threads::{on_pool, set_threads};
pub use weight::{Weight, WeightData};
