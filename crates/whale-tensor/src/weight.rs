//! Weight matrices in their storage dtype, and the matmul that is the only place
//! where the storage dtype matters.
//!
//! Weights are row-major `[rows = out_features, cols = in_features]` as PyTorch stores
//! them, so `y = x · Wᵀ`: each output element is a dot product of an input row with a
//! weight row. A row is decoded to `f32` once and reused for every token of the step.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::FP8_E4M3_LUT;
use crate::ops::dot;

/// How a weight's elements are stored.
#[derive(Debug)]
pub enum WeightData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    /// DeepSeek-V3 block-scaled FP8: `W[i, j] = fp8(values[i, j]) · scales[i / b0, j / b1]`,
    /// with `scales` of shape `[ceil(rows / b0), ceil(cols / b1)]` (edge blocks are partial).
    Fp8Block {
        values: Vec<u8>,
        scales: Vec<f32>,
        block: [usize; 2],
    },
}

/// A `[rows, cols]` matrix in its storage dtype.
#[derive(Debug)]
pub struct Weight {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

impl Weight {
    /// Builds a weight, checking that the element count matches the shape.
    pub fn new(rows: usize, cols: usize, data: WeightData) -> Self {
        let len = match &data {
            WeightData::F32(v) => v.len(),
            WeightData::F16(v) => v.len(),
            WeightData::Bf16(v) => v.len(),
            WeightData::Fp8Block {
                values,
                scales,
                block,
            } => {
                let scale_len = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
                assert_eq!(scales.len(), scale_len, "fp8 scale count");
                values.len()
            }
        };
        assert_eq!(len, rows * cols, "weight element count");
        Weight { rows, cols, data }
    }

    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        Weight::new(rows, cols, WeightData::F32(values))
    }

    /// Short name of the storage type, for messages and `inspect`.
    pub fn storage_name(&self) -> &'static str {
        match self.data {
            WeightData::F32(_) => "f32",
            WeightData::F16(_) => "f16",
            WeightData::Bf16(_) => "bf16",
            WeightData::Fp8Block { .. } => "fp8-block",
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn storage_bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(v) => v.len() * 4,
            WeightData::F16(v) => v.len() * 2,
            WeightData::Bf16(v) => v.len() * 2,
            WeightData::Fp8Block { values, scales, .. } => values.len() + scales.len() * 4,
        }
    }

    /// Decodes row `r` into `out` (`out.len() == cols`).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.cols);
        let span = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            WeightData::F32(v) => out.copy_from_slice(&v[span]),
            WeightData::F16(v) => decode(&v[span], out, f16::to_f32),
            WeightData::Bf16(v) => decode(&v[span], out, bf16::to_f32),
            WeightData::Fp8Block {
                values,
                scales,
                block,
            } => {
                let scale_row = &scales[(r / block[0]) * self.cols.div_ceil(block[1])..];
                for (j, (o, &q)) in out.iter_mut().zip(&values[span]).enumerate() {
                    *o = FP8_E4M3_LUT[q as usize] * scale_row[j / block[1]];
                }
            }
        }
    }

    /// The whole matrix as `f32`, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, row);
        }
        out
    }

    /// Row `r` borrowed directly when stored as `f32`.
    fn f32_row(&self, r: usize) -> Option<&[f32]> {
        match &self.data {
            WeightData::F32(v) => Some(&v[r * self.cols..(r + 1) * self.cols]),
            _ => None,
        }
    }
}

fn decode<T: Copy>(src: &[T], out: &mut [f32], f: impl Fn(T) -> f32) {
    for (o, &s) in out.iter_mut().zip(src) {
        *o = f(s);
    }
}

/// Rows of the weight handled by one parallel task: large enough to amortise the
/// task, small enough to balance two to sixteen cores on the narrowest matrices.
const ROWS_PER_TASK: usize = 16;

/// `out[t, rows] = x[t, cols] · wᵀ` for `n_tokens` input rows.
pub fn matmul(out: &mut [f32], x: &[f32], w: &Weight, n_tokens: usize) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n_tokens * cols, "matmul input length");
    assert_eq!(out.len(), n_tokens * rows, "matmul output length");
    if n_tokens == 0 || rows == 0 {
        return;
    }
    // Computed transposed ([rows, t]) so each task owns a contiguous block of output,
    // then transposed back; for decode (t = 1) the two layouts coincide.
    let mut out_t = if n_tokens == 1 {
        Vec::new()
    } else {
        vec![0.0f32; rows * n_tokens]
    };
    let dst: &mut [f32] = if n_tokens == 1 { out } else { &mut out_t };
    dst.par_chunks_mut(ROWS_PER_TASK * n_tokens)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; cols],
            |row_buf, (task, chunk)| {
                let first = task * ROWS_PER_TASK;
                for (i, per_token) in chunk.chunks_exact_mut(n_tokens).enumerate() {
                    let r = first + i;
                    let row: &[f32] = match w.f32_row(r) {
                        Some(row) => row,
                        None => {
                            w.row_into(r, row_buf);
                            row_buf
                        }
                    };
                    for (t, o) in per_token.iter_mut().enumerate() {
                        *o = dot(row, &x[t * cols..(t + 1) * cols]);
                    }
                }
            },
        );
    if n_tokens > 1 {
        for r in 0..rows {
            for t in 0..n_tokens {
                out[t * rows + r] = out_t[r * n_tokens + t];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], t: usize, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0.0; t * rows];
        for i in 0..t {
            for r in 0..rows {
                out[i * rows + r] = (0..cols).map(|k| x[i * cols + k] * w[r * cols + k]).sum();
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matmul_matches_naive_for_every_dtype() {
        for &(t, rows, cols) in &[(1, 1, 1), (3, 7, 31), (5, 33, 17), (2, 130, 257)] {
            let x = values(t * cols, 1);
            let wf = values(rows * cols, 2);
            let bf: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
            let bf_as_f32: Vec<f32> = bf.iter().map(|v| v.to_f32()).collect();
            for (w, reference) in [
                (Weight::from_f32(rows, cols, wf.clone()), wf.clone()),
                (Weight::new(rows, cols, WeightData::Bf16(bf)), bf_as_f32),
            ] {
                let want = naive(&x, &reference, t, rows, cols);
                let mut got = vec![0.0; t * rows];
                matmul(&mut got, &x, &w, t);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn fp8_block_dequant_uses_edge_blocks() {
        // 3×5 matrix with 2×2 blocks: scales [2, 3], last row/col blocks partial.
        let values: Vec<u8> = vec![0x38; 15]; // every element 1.0 before scaling
        let scales = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = Weight::new(3, 5, WeightData::Fp8Block { values, scales, block: [2, 2] });
        let dense = w.to_f32();
        assert_eq!(&dense[0..5], &[1.0, 1.0, 2.0, 2.0, 3.0]);
        assert_eq!(&dense[10..15], &[4.0, 4.0, 5.0, 5.0, 6.0]);
    }
}
