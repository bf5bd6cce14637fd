//! Block-quantized weight formats, bit-compatible with GGUF/ggml, and the traits that tie a
//! weight block to its activation block and dot-product kernels.
//!
//! Every format stores `BLOCK` consecutive values of a row in one `#[repr(C)]` struct whose
//! bytes are exactly ggml's (`ggml-common.h`), so a GGUF tensor is a slice of these structs.
//! Quantization follows ggml's *reference* algorithms (`quantize_row_*_ref` in
//! `ggml-quants.c`, the path `llama-quantize` takes without an importance matrix), so whale and
//! llama.cpp produce the same bytes from the same `f32` input. Dequantization is ggml's exactly.
//!
//! A matmul against a quantized weight quantizes the activations once (to Q8_0 blocks, grouped
//! eight at a time as [`BlockQ8_0x8`], for Q8_0/Q4_0 weights; to [`BlockQ8K`] for the K-quants) and then takes integer dot products
//! block by block; [`GgmlType::Act`] names that pairing, as candle's `GgmlType::VecDotType` does.

mod q4_0;
mod q4_k;
mod q5_0;
mod q6_k;
mod q8_0;
mod q8_0x8;
mod q8_k;
mod x16;
mod x16_k;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use q4_0::BlockQ4_0;
pub use q4_k::BlockQ4K;
pub use q5_0::BlockQ5_0;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;
pub use q8_0x8::BlockQ8_0x8;
pub use q8_k::BlockQ8K;
pub use x16::{
    pack_matrix, tile_acts, unpack_row, Act, BlockQ4_0x16, BlockQ5_0x16, BlockQ8_0x16, BlockedTile,
    Interleaved, Q8Tile, ROWS,
};
pub use x16_k::{BlockQ4Kx16, BlockQ6Kx16};

pub(crate) use q4_k::scales_mins as q4k_scales_mins;

use crate::error::TensorError;
use crate::kernels::{Isa, VecDot};

/// Values per K-quant super-block (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// An activation block format: what `f32` activations are quantized to before the integer dot
/// products. Quantized once per matmul, so [`ActBlock::quantize_act`] may use SIMD.
pub trait ActBlock: Copy + Default + Send + Sync + 'static {
    /// Values per block.
    const VALUES: usize;
    /// Blocks holding a row of `cols` values (the last one zero-padded where allowed).
    fn row_len(cols: usize) -> usize {
        cols.div_ceil(Self::VALUES)
    }
    /// ggml's reference quantization (`quantize_row_q8_*_ref`) of one row;
    /// `out.len() == row_len(x.len())`.
    fn quantize_ref(x: &[f32], out: &mut [Self]);
    /// Same result as [`ActBlock::quantize_ref`], bit for bit, with the fastest kernel `isa` has.
    fn quantize_act(isa: Isa, x: &[f32], out: &mut [Self]);
    /// The block's values as `f32` (for tests and error bounds).
    fn dequantize_act(blocks: &[Self], out: &mut [f32]);
}

/// A GGUF/ggml block-quantized weight format.
///
/// # Safety
/// Implementors are `#[repr(C)]` structs of `u8`/`i8`/`i16`/`f16`/`f32` fields and arrays with
/// no padding and ggml's exact field order, so that any `size_of::<Self>()` bytes are a valid
/// value and a GGUF tensor's bytes can be reinterpreted as `[Self]` (see [`blocks_from_bytes`]).
pub unsafe trait GgmlType:
    VecDot<Act: ActBlock> + Copy + Send + Sync + fmt::Debug + 'static
{
    /// Values per block.
    const BLOCK: usize;
    /// `enum ggml_type` id as stored in GGUF tensor infos.
    const GGML_TYPE: u32;
    /// Lower-case name, as in `--quant`.
    const NAME: &'static str;
    /// ggml's reference quantization; `x.len() == out.len() * BLOCK`.
    fn quantize(x: &[f32], out: &mut [Self]);
    /// ggml's dequantization; `out.len() == blocks.len() * BLOCK`.
    fn dequantize(blocks: &[Self], out: &mut [f32]);
}

/// ggml type ids of the formats whale reads from GGUF (`enum ggml_type` in `ggml.h`).
pub mod ggml_type {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q5_0: u32 = 6;
    pub const Q8_0: u32 = 8;
    pub const Q4_K: u32 = 12;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;
}

/// Storage a weight can be converted to with [`crate::Weight::quantize`] (`--quant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    F32,
    Bf16,
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
}

impl QuantType {
    pub const ALL: [QuantType; 6] = [
        QuantType::F32,
        QuantType::Bf16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4K,
        QuantType::Q6K,
    ];

    /// The name `--quant` accepts and [`crate::Weight::storage_name`] reports.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::F32 => "f32",
            QuantType::Bf16 => "bf16",
            QuantType::Q8_0 => BlockQ8_0::NAME,
            QuantType::Q4_0 => BlockQ4_0::NAME,
            QuantType::Q4K => BlockQ4K::NAME,
            QuantType::Q6K => BlockQ6K::NAME,
        }
    }

    /// Values per block: a row's length must be a multiple of it.
    pub fn block_size(self) -> usize {
        match self {
            QuantType::F32 | QuantType::Bf16 => 1,
            QuantType::Q8_0 => <BlockQ8_0 as GgmlType>::BLOCK,
            QuantType::Q4_0 => BlockQ4_0::BLOCK,
            QuantType::Q4K => BlockQ4K::BLOCK,
            QuantType::Q6K => BlockQ6K::BLOCK,
        }
    }

    /// Whether a row of `cols` values can be stored in this format.
    pub fn fits(self, cols: usize) -> bool {
        cols.is_multiple_of(self.block_size())
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantType {
    type Err = TensorError;

    /// Parses `q8_0|q4_0|q4_k|q6_k|bf16|f32` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        QuantType::ALL
            .into_iter()
            .find(|q| q.name() == lower)
            .ok_or_else(|| TensorError::UnknownQuantType(s.to_string()))
    }
}

/// Rounds to the nearest integer, ties to even, as ggml's `nearest_int` does by adding
/// 1.5·2²³ (valid for |x| ≤ 2²² — quantization only meets small values).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The element of largest magnitude, with its sign (the first of equal magnitudes), as ggml's
/// Q4_0/Q5_0 reference quantizers pick it.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Quantizes a row-major `[rows, cols]` matrix row by row (rows in parallel).
pub(crate) fn quantize_matrix<B: GgmlType>(values: &[f32], cols: usize) -> Vec<B> {
    use rayon::prelude::*;
    let per_row = cols / B::BLOCK;
    let mut out = vec![blank::<B>(); values.len() / B::BLOCK];
    if per_row == 0 {
        return out;
    }
    out.par_chunks_mut(per_row)
        .zip(values.par_chunks(cols))
        .for_each(|(blocks, row)| B::quantize(row, blocks));
    out
}

/// An all-zero block, the value a freshly allocated buffer holds.
pub(crate) fn blank<B: GgmlType>() -> B {
    // SAFETY: `GgmlType` guarantees every byte pattern, zero included, is a valid block.
    unsafe { std::mem::zeroed() }
}

/// Copies GGUF tensor bytes (one or more parts, in order) into blocks. A copy because the
/// caller's bytes (an mmap) need not be aligned for `B` and a `Vec` owns its data; a borrowed,
/// zero-copy view is future work.
pub(crate) fn blocks_from_bytes<'a, B: GgmlType>(
    parts: impl Iterator<Item = &'a [u8]> + Clone,
) -> Vec<B> {
    let size = std::mem::size_of::<B>();
    let n: usize = parts.clone().map(|p| p.len() / size).sum();
    let mut out: Vec<B> = Vec::with_capacity(n);
    for bytes in parts {
        debug_assert_eq!(bytes.len() % size, 0);
        let k = bytes.len() / size;
        // SAFETY: `out` has capacity for all `n` blocks and holds the previous parts' blocks
        // only, the regions do not overlap, and `GgmlType` guarantees any bytes are a valid
        // `B`, so setting the length after the copy exposes only initialised, valid values.
        unsafe {
            let dst = out.as_mut_ptr().add(out.len()).cast::<u8>();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, k * size);
            out.set_len(out.len() + k);
        }
    }
    out
}

/// `bytes` seen as blocks without a copy, when they are aligned for `B` (`None` otherwise).
pub(crate) fn blocks_view<B: GgmlType>(bytes: &[u8]) -> Option<&[B]> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>())
    {
        return None;
    }
    // SAFETY: aligned (checked), the length is a whole number of blocks within `bytes`, and
    // `GgmlType` guarantees any bytes are a valid `B`; the borrow keeps `bytes` alive.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) })
}

/// The bytes of a block slice, as they would be written to a GGUF file.
pub(crate) fn blocks_as_bytes<B: GgmlType>(blocks: &[B]) -> &[u8] {
    // SAFETY: `GgmlType` blocks are `#[repr(C)]` with no padding, so all their bytes are
    // initialised; `u8` has alignment 1 and the length covers exactly the slice.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}
