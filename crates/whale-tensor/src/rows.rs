//! Borrowed row-major matrices in the storage types of the MLA latent cache: f32, bf16 or
//! Q8_0 (each row its own blocks, the last one zero-padded when the width is not a multiple
//! of 32). [`crate::matmul_rows`] and [`crate::weighted_rows`] read them.

use half::bf16;

use crate::quant::{BlockQ8_0, GgmlType};

/// Rows of `width` values.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub data: RowData<'a>,
    pub width: usize,
}

#[derive(Clone, Copy, Debug)]
pub enum RowData<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// `width.div_ceil(32)` blocks per row.
    Q8_0(&'a [BlockQ8_0]),
}

impl<'a> Rows<'a> {
    pub fn f32(data: &'a [f32], width: usize) -> Rows<'a> {
        Rows {
            data: RowData::F32(data),
            width,
        }
    }

    /// Whether the first `cols` values of `rows` rows are all there (the last row of a float
    /// matrix may end right after them, e.g. a strided view into a wider one).
    pub fn holds(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 {
            return true;
        }
        let values = (rows - 1) * self.width + cols;
        cols <= self.width
            && match self.data {
                RowData::F32(v) => v.len() >= values,
                RowData::Bf16(v) => v.len() >= values,
                RowData::Q8_0(v) => v.len() >= rows * self.width.div_ceil(32),
            }
    }

    /// The f32 values when stored as f32 (no decoding needed).
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self.data {
            RowData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The first `cols` values of rows `j0..j1`, decoded into `out` (`[j1 − j0, cols]`).
    pub fn decode(&self, j0: usize, j1: usize, cols: usize, out: &mut [f32]) {
        assert!(self.holds(j1, cols), "rows out of range");
        assert_eq!(out.len(), (j1 - j0) * cols, "decode output length");
        let w = self.width;
        for (j, o) in (j0..j1).zip(out.chunks_exact_mut(cols.max(1))) {
            match self.data {
                RowData::F32(v) => o.copy_from_slice(&v[j * w..][..cols]),
                RowData::Bf16(v) => {
                    // bf16 is the top half of an f32: a shift, written on the bits so that it
                    // vectorises.
                    for (o, x) in o.iter_mut().zip(&v[j * w..][..cols]) {
                        *o = f32::from_bits((x.to_bits() as u32) << 16);
                    }
                }
                RowData::Q8_0(v) => {
                    let per_row = w.div_ceil(32);
                    let blocks = &v[j * per_row..][..cols.div_ceil(32)];
                    for (b, o) in blocks.iter().zip(o.chunks_mut(32)) {
                        let d = b.d.to_f32();
                        for (o, &q) in o.iter_mut().zip(&b.qs) {
                            *o = q as f32 * d;
                        }
                    }
                }
            }
        }
    }
}

/// Appends `row` as Q8_0 blocks (ggml's reference quantizer), the last block zero-padded.
pub fn push_q8_0_row(out: &mut Vec<BlockQ8_0>, row: &[f32]) {
    let n = row.len().div_ceil(32);
    let mut padded = [0.0f32; 32];
    for chunk in row.chunks(32) {
        padded[..chunk.len()].copy_from_slice(chunk);
        padded[chunk.len()..].fill(0.0);
        let mut b = [BlockQ8_0::default()];
        BlockQ8_0::quantize(&padded, &mut b);
        out.push(b[0]);
    }
    debug_assert!(n == 0 || out.len() >= n);
}
