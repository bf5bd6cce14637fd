//! Weight matrices in their storage dtype: float, FP8 block-scaled or GGUF block-quantized.
//!
//! Weights are row-major `[rows = out_features, cols = in_features]` as PyTorch and GGUF store
//! them, so `y = x · Wᵀ`: each output element is a dot product of an input row with a weight
//! row. [`crate::matmul`] is the one place that looks at how a weight is stored.

use std::mem::size_of;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::FP8_E4M3_LUT;
use crate::error::TensorError;
use crate::kernels::{Isa, IsaKind};
use crate::quant::{
    self, ggml_type, BlockQ4K, BlockQ4Kx16, BlockQ4_0, BlockQ4_0x16, BlockQ5_0, BlockQ5_0x16,
    BlockQ6K, BlockQ6Kx16, BlockQ8_0, BlockQ8_0x16, GgmlType, Interleaved, QuantType,
};

pub use crate::matmul::matmul;

/// How a weight's elements are stored.
#[derive(Clone, Debug)]
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
    /// GGUF block formats: `rows · cols / BLOCK` blocks, each row starting a new block.
    Q8_0(Vec<BlockQ8_0>),
    Q4_0(Vec<BlockQ4_0>),
    /// Read from GGUF only (llama.cpp's Q4_K_M mixes), not a `--quant` target.
    Q5_0(Vec<BlockQ5_0>),
    Q4K(Vec<BlockQ4K>),
    Q6K(Vec<BlockQ6K>),
    /// The block formats with sixteen rows interleaved per block ([`crate::quant::x16`]), as
    /// the AVX-512 VNNI kernels read them; made by [`Weight::for_isa`], same values.
    Q8_0x16(Vec<BlockQ8_0x16>),
    Q4_0x16(Vec<BlockQ4_0x16>),
    Q5_0x16(Vec<BlockQ5_0x16>),
    Q4Kx16(Vec<BlockQ4Kx16>),
    Q6Kx16(Vec<BlockQ6Kx16>),
}

/// A `[rows, cols]` matrix in its storage dtype.
#[derive(Clone, Debug)]
pub struct Weight {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

impl Weight {
    /// Builds a weight, checking that the element count matches the shape (and, for block
    /// formats, that each row is a whole number of blocks).
    pub fn new(rows: usize, cols: usize, data: WeightData) -> Self {
        fn blocks<B: GgmlType>(v: &[B], cols: usize) -> usize {
            assert_eq!(cols % B::BLOCK, 0, "{} rows must be whole blocks", B::NAME);
            v.len() * B::BLOCK
        }
        fn blocks16<B: Interleaved>(v: &[B], rows: usize, cols: usize) -> usize {
            assert_eq!(rows % quant::ROWS, 0, "interleaved rows come in sixteens");
            let block = B::Plain::BLOCK;
            assert_eq!(cols % block, 0, "interleaved rows must be whole blocks");
            v.len() * block * quant::ROWS
        }
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
            WeightData::Q8_0(v) => blocks(v, cols),
            WeightData::Q4_0(v) => blocks(v, cols),
            WeightData::Q5_0(v) => blocks(v, cols),
            WeightData::Q4K(v) => blocks(v, cols),
            WeightData::Q6K(v) => blocks(v, cols),
            WeightData::Q8_0x16(v) => blocks16(v, rows, cols),
            WeightData::Q4_0x16(v) => blocks16(v, rows, cols),
            WeightData::Q5_0x16(v) => blocks16(v, rows, cols),
            WeightData::Q4Kx16(v) => blocks16(v, rows, cols),
            WeightData::Q6Kx16(v) => blocks16(v, rows, cols),
        };
        assert_eq!(len, rows * cols, "weight element count");
        Weight { rows, cols, data }
    }

    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        Weight::new(rows, cols, WeightData::F32(values))
    }

    /// Builds a weight from a GGUF tensor's raw bytes (`ne[0] = cols`, `ne[1] = rows`).
    ///
    /// The bytes are copied into an owned, aligned `Vec` (a bytewise copy for block formats, no
    /// conversion); borrowing them from the mmap instead is left for later.
    pub fn from_gguf_bytes(
        ggml: u32,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Weight, TensorError> {
        Weight::from_gguf_parts(ggml, cols, &[(rows, bytes)])
    }

    /// [`Weight::from_gguf_bytes`] for matrices of one ggml type stacked row-wise: `parts` are
    /// `(rows_i, bytes_i)` of `[rows_i, cols]` each, copied once into one `[Σ rows_i, cols]`.
    pub fn from_gguf_parts(
        ggml: u32,
        cols: usize,
        parts: &[(usize, &[u8])],
    ) -> Result<Weight, TensorError> {
        fn blocks<B: GgmlType>(
            cols: usize,
            parts: &[(usize, &[u8])],
        ) -> Result<Vec<B>, TensorError> {
            for &(rows, bytes) in parts {
                check_blocks::<B>(rows, cols, bytes)?;
            }
            Ok(quant::blocks_from_bytes(parts.iter().map(|p| p.1)))
        }
        fn floats<T>(
            name: &'static str,
            cols: usize,
            parts: &[(usize, &[u8])],
            from: impl Fn(&[u8]) -> T,
        ) -> Result<Vec<T>, TensorError> {
            let size = size_of::<T>();
            for &(rows, bytes) in parts {
                check(name, rows, cols, rows * cols * size, bytes.len())?;
            }
            Ok(parts
                .iter()
                .flat_map(|p| p.1.chunks_exact(size))
                .map(from)
                .collect())
        }
        let rows = parts.iter().map(|p| p.0).sum();
        let data = match ggml {
            ggml_type::F32 => WeightData::F32(floats("f32", cols, parts, |c| {
                f32::from_le_bytes([c[0], c[1], c[2], c[3]])
            })?),
            ggml_type::F16 => WeightData::F16(floats("f16", cols, parts, |c| {
                f16::from_le_bytes([c[0], c[1]])
            })?),
            ggml_type::BF16 => WeightData::Bf16(floats("bf16", cols, parts, |c| {
                bf16::from_le_bytes([c[0], c[1]])
            })?),
            ggml_type::Q8_0 => WeightData::Q8_0(blocks(cols, parts)?),
            ggml_type::Q4_0 => WeightData::Q4_0(blocks(cols, parts)?),
            ggml_type::Q5_0 => WeightData::Q5_0(blocks(cols, parts)?),
            ggml_type::Q4_K => WeightData::Q4K(blocks(cols, parts)?),
            ggml_type::Q6_K => WeightData::Q6K(blocks(cols, parts)?),
            other => return Err(TensorError::UnsupportedGgmlType(other)),
        };
        Ok(Weight::new(rows, cols, data))
    }

    /// Converts to `target`, from any storage: each row is decoded to `f32` and re-encoded with
    /// ggml's reference quantizer (rows in parallel). Errors if a row is not a whole number of
    /// the target's blocks (e.g. 1408- or 10944-wide rows in a 256-value K-quant).
    pub fn quantize(&self, target: QuantType) -> Result<Weight, TensorError> {
        let (rows, cols) = (self.rows, self.cols);
        if !target.fits(cols) {
            return Err(TensorError::BlockMisfit {
                quant: target.name(),
                block: target.block_size(),
                rows,
                cols,
            });
        }
        let data = match target {
            QuantType::F32 => WeightData::F32(self.to_f32()),
            QuantType::Bf16 => WeightData::Bf16(self.map_rows(bf16::ZERO, 1, |row, out| {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = bf16::from_f32(v);
                }
            })),
            QuantType::Q8_0 => WeightData::Q8_0(self.quantize_rows()),
            QuantType::Q4_0 => WeightData::Q4_0(self.quantize_rows()),
            QuantType::Q4K => WeightData::Q4K(self.quantize_rows()),
            QuantType::Q6K => WeightData::Q6K(self.quantize_rows()),
        };
        Ok(Weight::new(rows, cols, data))
    }

    fn quantize_rows<B: GgmlType>(&self) -> Vec<B> {
        match &self.data {
            WeightData::F32(v) => quant::quantize_matrix(v, self.cols),
            _ => self.map_rows(quant::blank::<B>(), B::BLOCK, |row, out| {
                B::quantize(row, out)
            }),
        }
    }

    /// Decodes each row to `f32` and encodes it with `f` into `cols / per` elements of `T`.
    fn map_rows<T: Copy + Send>(
        &self,
        zero: T,
        per: usize,
        f: impl Fn(&[f32], &mut [T]) + Sync,
    ) -> Vec<T> {
        let per_row = self.cols / per;
        let mut out = vec![zero; self.rows * per_row];
        if per_row > 0 {
            out.par_chunks_mut(per_row).enumerate().for_each_init(
                || vec![0.0f32; self.cols],
                |buf, (r, dst)| {
                    self.row_into(r, buf);
                    f(buf, dst);
                },
            );
        }
        out
    }

    /// [`Weight::from_gguf_bytes`] in the layout `isa`'s kernels read ([`Weight::for_isa`]).
    /// Formats that get interleaved are packed straight from `bytes` (e.g. the mmap) when
    /// they are aligned for the block type, without the intermediate copy.
    pub fn from_gguf_bytes_for(
        isa: Isa,
        ggml: u32,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Weight, TensorError> {
        Weight::from_gguf_parts_for(isa, ggml, cols, &[(rows, bytes)])
    }

    /// [`Weight::from_gguf_parts`] in the layout `isa`'s kernels read, packed straight from the
    /// parts where [`Weight::from_gguf_bytes_for`] would pack one matrix: stacking costs no
    /// copy beyond the one loading each part would.
    pub fn from_gguf_parts_for(
        isa: Isa,
        ggml: u32,
        cols: usize,
        parts: &[(usize, &[u8])],
    ) -> Result<Weight, TensorError> {
        fn direct<B: Interleaved>(
            cols: usize,
            parts: &[(usize, &[u8])],
        ) -> Result<Option<Vec<B>>, TensorError> {
            let mut plain = Vec::with_capacity(parts.len());
            for &(rows, bytes) in parts {
                check_blocks::<B::Plain>(rows, cols, bytes)?;
                match quant::blocks_view::<B::Plain>(bytes) {
                    Some(blocks) => plain.push(blocks),
                    None => return Ok(None),
                }
            }
            Ok(Some(quant::pack_matrix(&plain, cols / B::Plain::BLOCK)))
        }
        let rows = parts.iter().map(|p| p.0).sum();
        if isa.0 == IsaKind::Avx512Vnni && parts.iter().all(|p| p.0.is_multiple_of(quant::ROWS)) {
            let data = match ggml {
                ggml_type::Q8_0 => direct(cols, parts)?.map(WeightData::Q8_0x16),
                ggml_type::Q4_0 => direct(cols, parts)?.map(WeightData::Q4_0x16),
                ggml_type::Q5_0 => direct(cols, parts)?.map(WeightData::Q5_0x16),
                ggml_type::Q4_K => direct(cols, parts)?.map(WeightData::Q4Kx16),
                ggml_type::Q6_K => direct(cols, parts)?.map(WeightData::Q6Kx16),
                _ => None,
            };
            if let Some(data) = data {
                return Ok(Weight::new(rows, cols, data));
            }
        }
        Ok(Weight::from_gguf_parts(ggml, cols, parts)?.for_isa(isa))
    }

    /// Matrices with the same columns and storage joined row-wise into one `[Σ rows_i, cols]`
    /// (a copy), so that projections of one input run as one matmul; the parts come back
    /// unchanged when their storages differ, or for FP8, whose scale blocks may straddle parts.
    pub fn stack_rows(parts: Vec<Weight>) -> Result<Weight, Vec<Weight>> {
        fn join<T: Clone>(
            parts: &[Weight],
            get: impl Fn(&WeightData) -> Option<&Vec<T>>,
        ) -> Option<Vec<T>> {
            let mut all = Vec::new();
            for p in parts {
                all.extend_from_slice(get(&p.data)?);
            }
            Some(all)
        }
        let Some(first) = parts.first() else {
            return Err(parts);
        };
        if parts.iter().any(|p| p.cols != first.cols) {
            return Err(parts);
        }
        macro_rules! joined {
            ($($variant:ident),*) => {
                match &first.data {
                    $(WeightData::$variant(_) => join(&parts, |d| match d {
                        WeightData::$variant(v) => Some(v),
                        _ => None,
                    })
                    .map(WeightData::$variant),)*
                    WeightData::Fp8Block { .. } => None,
                }
            };
        }
        let data = joined!(
            F32, F16, Bf16, Q8_0, Q4_0, Q5_0, Q4K, Q6K, Q8_0x16, Q4_0x16, Q5_0x16, Q4Kx16, Q6Kx16
        );
        match data {
            Some(data) => Ok(Weight::new(
                parts.iter().map(|p| p.rows).sum(),
                first.cols,
                data,
            )),
            None => Err(parts),
        }
    }

    /// Short name of the storage type, for messages and `inspect`.
    pub fn storage_name(&self) -> &'static str {
        match self.data {
            WeightData::F32(_) => "f32",
            WeightData::F16(_) => "f16",
            WeightData::Bf16(_) => "bf16",
            WeightData::Fp8Block { .. } => "fp8-block",
            WeightData::Q8_0(_) => BlockQ8_0::NAME,
            WeightData::Q4_0(_) => BlockQ4_0::NAME,
            WeightData::Q5_0(_) => BlockQ5_0::NAME,
            WeightData::Q4K(_) => BlockQ4K::NAME,
            WeightData::Q6K(_) => BlockQ6K::NAME,
            WeightData::Q8_0x16(_) => BlockQ8_0::NAME,
            WeightData::Q4_0x16(_) => BlockQ4_0::NAME,
            WeightData::Q5_0x16(_) => BlockQ5_0::NAME,
            WeightData::Q4Kx16(_) => BlockQ4K::NAME,
            WeightData::Q6Kx16(_) => BlockQ6K::NAME,
        }
    }

    /// Bytes the weight occupies in memory (for block formats, exactly its GGUF size).
    pub fn storage_bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(v) => v.len() * 4,
            WeightData::F16(v) => v.len() * 2,
            WeightData::Bf16(v) => v.len() * 2,
            WeightData::Fp8Block { values, scales, .. } => values.len() + scales.len() * 4,
            WeightData::Q8_0(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q4_0(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q5_0(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q4K(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q6K(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q8_0x16(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q4_0x16(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q5_0x16(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q4Kx16(v) => std::mem::size_of_val(v.as_slice()),
            WeightData::Q6Kx16(v) => std::mem::size_of_val(v.as_slice()),
        }
    }

    /// The ggml type id and raw bytes of a block-quantized weight, exactly as a GGUF file stores
    /// them; `None` for other storage (and for interleaved rows).
    pub fn gguf_block_bytes(&self) -> Option<(u32, &[u8])> {
        fn raw<B: GgmlType>(v: &[B]) -> Option<(u32, &[u8])> {
            Some((B::GGML_TYPE, quant::blocks_as_bytes(v)))
        }
        match &self.data {
            WeightData::Q8_0(v) => raw(v),
            WeightData::Q4_0(v) => raw(v),
            WeightData::Q5_0(v) => raw(v),
            WeightData::Q4K(v) => raw(v),
            WeightData::Q6K(v) => raw(v),
            _ => None,
        }
    }

    /// Decodes row `r` into `out` (`out.len() == cols`).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.cols);
        let span = r * self.cols..(r + 1) * self.cols;
        fn row<B: GgmlType>(v: &[B], r: usize, cols: usize, out: &mut [f32]) {
            let per_row = cols / B::BLOCK;
            B::dequantize(&v[r * per_row..(r + 1) * per_row], out);
        }
        fn row16<B: Interleaved>(v: &[B], r: usize, cols: usize, out: &mut [f32]) {
            B::Plain::dequantize(&quant::unpack_row(v, cols / B::Plain::BLOCK, r), out);
        }
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
            WeightData::Q8_0(v) => row(v, r, self.cols, out),
            WeightData::Q4_0(v) => row(v, r, self.cols, out),
            WeightData::Q5_0(v) => row(v, r, self.cols, out),
            WeightData::Q4K(v) => row(v, r, self.cols, out),
            WeightData::Q6K(v) => row(v, r, self.cols, out),
            WeightData::Q8_0x16(v) => row16(v, r, self.cols, out),
            WeightData::Q4_0x16(v) => row16(v, r, self.cols, out),
            WeightData::Q5_0x16(v) => row16(v, r, self.cols, out),
            WeightData::Q4Kx16(v) => row16(v, r, self.cols, out),
            WeightData::Q6Kx16(v) => row16(v, r, self.cols, out),
        }
    }

    /// The same weight in the layout `isa`'s fastest kernels read: with AVX-512 VNNI, block
    /// matrices whose row count is a multiple of 16 get their rows interleaved (a lossless
    /// repack, done once at load, in parallel); everything else is returned as it is.
    pub fn for_isa(self, isa: Isa) -> Weight {
        if isa.0 != IsaKind::Avx512Vnni {
            return self;
        }
        self.interleaved()
    }

    /// Block formats with a multiple of 16 rows in their interleaved layout, whatever the CPU
    /// (tests run the interleaved reference path everywhere); other weights unchanged.
    pub(crate) fn interleaved(self) -> Weight {
        fn pack<B: Interleaved>(v: &[B::Plain], cols: usize) -> Vec<B> {
            quant::pack_matrix(&[v], cols / B::Plain::BLOCK)
        }
        if !self.rows.is_multiple_of(quant::ROWS) {
            return self;
        }
        let cols = self.cols;
        let data = match &self.data {
            WeightData::Q8_0(v) => WeightData::Q8_0x16(pack(v, cols)),
            WeightData::Q4_0(v) => WeightData::Q4_0x16(pack(v, cols)),
            WeightData::Q5_0(v) => WeightData::Q5_0x16(pack(v, cols)),
            WeightData::Q4K(v) => WeightData::Q4Kx16(pack(v, cols)),
            WeightData::Q6K(v) => WeightData::Q6Kx16(pack(v, cols)),
            _ => return self,
        };
        Weight::new(self.rows, cols, data)
    }

    /// The whole matrix as `f32`, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, row);
        }
        out
    }
}

/// `bytes` hold exactly a `[rows, cols]` matrix of `dtype` (`expected` bytes).
fn check(
    dtype: &'static str,
    rows: usize,
    cols: usize,
    expected: usize,
    got: usize,
) -> Result<(), TensorError> {
    if expected == got {
        Ok(())
    } else {
        Err(TensorError::ByteLength {
            dtype,
            rows,
            cols,
            expected,
            got,
        })
    }
}

/// `bytes` hold exactly a `[rows, cols]` matrix of `B` blocks, each row whole blocks.
fn check_blocks<B: GgmlType>(rows: usize, cols: usize, bytes: &[u8]) -> Result<(), TensorError> {
    if !cols.is_multiple_of(B::BLOCK) {
        return Err(TensorError::BlockMisfit {
            quant: B::NAME,
            block: B::BLOCK,
            rows,
            cols,
        });
    }
    check(
        B::NAME,
        rows,
        cols,
        rows * cols / B::BLOCK * size_of::<B>(),
        bytes.len(),
    )
}

fn decode<T: Copy>(src: &[T], out: &mut [f32], f: impl Fn(T) -> f32) {
    for (o, &s) in out.iter_mut().zip(src) {
        *o = f(s);
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
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
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
    fn quantize_rejects_rows_that_are_not_whole_blocks() {
        let w = Weight::from_f32(2, 1408, values(2 * 1408, 3));
        let err = w.quantize(QuantType::Q4K).unwrap_err();
        assert!(
            matches!(
                err,
                TensorError::BlockMisfit {
                    block: 256,
                    cols: 1408,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("q4_k"));
        assert!(w.quantize(QuantType::Q4_0).is_ok());
    }

    #[test]
    fn quantize_from_any_storage_decodes_first() {
        let (rows, cols) = (3, 512);
        let wf = values(rows * cols, 4);
        let bf: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
        let w_bf = Weight::new(rows, cols, WeightData::Bf16(bf));
        let w_f = Weight::from_f32(rows, cols, w_bf.to_f32());
        for q in QuantType::ALL {
            let a = w_bf.quantize(q).unwrap();
            let b = w_f.quantize(q).unwrap();
            assert_eq!(a.storage_name(), q.name());
            assert_eq!(a.to_f32(), b.to_f32(), "{q}");
            // Same values in, same bytes out, whatever storage they came from.
            if q != QuantType::F32 && q != QuantType::Bf16 {
                assert_eq!(a.gguf_block_bytes(), b.gguf_block_bytes());
            }
        }
    }

    #[test]
    fn gguf_bytes_round_trip_and_sizes() {
        use crate::quant::ggml_type;
        let (rows, cols) = (4, 256);
        let w = Weight::from_f32(rows, cols, values(rows * cols, 5));
        for (q, bytes_per_block, block) in [
            (QuantType::Q8_0, 34, 32),
            (QuantType::Q4_0, 18, 32),
            (QuantType::Q4K, 144, 256),
            (QuantType::Q6K, 210, 256),
        ] {
            let qw = w.quantize(q).unwrap();
            assert_eq!(
                qw.storage_bytes(),
                rows * cols / block * bytes_per_block,
                "{q}"
            );
            let (ty, bytes) = qw.gguf_block_bytes().unwrap();
            let back = Weight::from_gguf_bytes(ty, rows, cols, bytes).unwrap();
            assert_eq!(back.gguf_block_bytes().unwrap().1, bytes);
            assert_eq!(back.to_f32(), qw.to_f32());
            assert!(Weight::from_gguf_bytes(ty, rows, cols, &bytes[1..]).is_err());
        }
        let le: Vec<u8> = w.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect();
        let back = Weight::from_gguf_bytes(ggml_type::F32, rows, cols, &le).unwrap();
        assert_eq!(back.to_f32(), w.to_f32());
        let err = Weight::from_gguf_bytes(3, rows, cols, &le).unwrap_err(); // Q4_1
        assert!(matches!(err, TensorError::UnsupportedGgmlType(3)));
    }

    /// Matrices stacked from GGUF parts (packed straight from the bytes where interleaved) or
    /// joined after loading hold the parts' rows in order, and a matmul over the stack gives
    /// each part's outputs bit for bit: every ISA, interleaved and plain layouts.
    #[test]
    fn stacked_parts_equal_their_parts() {
        use crate::matmul::matmul_with;
        use crate::quant::ggml_type;
        let (cols, t) = (256, 3);
        let x = values(t * cols, 9);
        let a = Weight::from_f32(16, cols, values(16 * cols, 6));
        let b = Weight::from_f32(32, cols, values(32 * cols, 7));
        let f32_bytes =
            |w: &Weight| -> Vec<u8> { w.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect() };
        let mut cases = vec![(ggml_type::F32, f32_bytes(&a), f32_bytes(&b))];
        for q in [
            QuantType::Q8_0,
            QuantType::Q4_0,
            QuantType::Q4K,
            QuantType::Q6K,
        ] {
            let (qa, qb) = (a.quantize(q).unwrap(), b.quantize(q).unwrap());
            let (ty, ba) = qa.gguf_block_bytes().unwrap();
            cases.push((ty, ba.to_vec(), qb.gguf_block_bytes().unwrap().1.to_vec()));
        }
        for isa in Isa::available() {
            for (ty, ba, bb) in &cases {
                let parts = [(16, &ba[..]), (32, &bb[..])];
                let stacked = Weight::from_gguf_parts_for(isa, *ty, cols, &parts).unwrap();
                let pa = Weight::from_gguf_bytes_for(isa, *ty, 16, cols, ba).unwrap();
                let pb = Weight::from_gguf_bytes_for(isa, *ty, 32, cols, bb).unwrap();
                assert_eq!(stacked.rows, 48);
                assert_eq!(stacked.storage_name(), pa.storage_name(), "{isa:?} {ty}");
                let want_f32 = [pa.to_f32(), pb.to_f32()].concat();
                assert_eq!(stacked.to_f32(), want_f32, "{isa:?} {ty}");
                let joined = Weight::stack_rows(vec![pa.clone(), pb.clone()]).unwrap();
                assert_eq!(joined.to_f32(), want_f32, "{isa:?} {ty}");

                let mut got = vec![0.0; t * 48];
                matmul_with(isa, &mut got, &x, &stacked, t);
                let (mut ya, mut yb) = (vec![0.0; t * 16], vec![0.0; t * 32]);
                matmul_with(isa, &mut ya, &x, &pa, t);
                matmul_with(isa, &mut yb, &x, &pb, t);
                for s in 0..t {
                    let want = [&ya[s * 16..(s + 1) * 16], &yb[s * 32..(s + 1) * 32]].concat();
                    assert_eq!(
                        &got[s * 48..(s + 1) * 48],
                        &want[..],
                        "{isa:?} {ty} token {s}"
                    );
                }
                // A part whose bytes are not its rows is an error, not a shorter matrix.
                let short = [(16, &ba[..]), (32, &bb[1..])];
                assert!(Weight::from_gguf_parts_for(isa, *ty, cols, &short).is_err());
            }
        }
        // Different storages stay apart.
        let mixed = vec![a.quantize(QuantType::Q8_0).unwrap(), b.clone()];
        assert_eq!(Weight::stack_rows(mixed).unwrap_err().len(), 2);
    }

    #[test]
    fn fp8_block_dequant_uses_edge_blocks() {
        // 3×5 matrix with 2×2 blocks: scales [2, 3], last row/col blocks partial.
        let values: Vec<u8> = vec![0x38; 15]; // every element 1.0 before scaling
        let scales = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = Weight::new(
            3,
            5,
            WeightData::Fp8Block {
                values,
                scales,
                block: [2, 2],
            },
        );
        let dense = w.to_f32();
        assert_eq!(&dense[0..5], &[1.0, 1.0, 2.0, 2.0, 3.0]);
        assert_eq!(&dense[10..15], &[4.0, 4.0, 5.0, 5.0, 6.0]);
    }
}
