//! Tensors, dtypes and compute kernels for whale.
//!
//! The model crate never names a storage dtype: a weight matrix is a [`Weight`], and
//! [`matmul`] is the one place that looks at how it is stored. The element-wise kernels
//! ([`ops`]) work on `f32` activations.

pub mod dtype;
pub mod ops;
pub mod weight;

pub use dtype::DType;
pub use weight::{matmul, Weight, WeightData};
