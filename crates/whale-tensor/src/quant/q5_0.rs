//! Q5_0: 32 values as `d · (n − 16)` with one f16 scale and 5-bit `n` (22 bytes): the low four
//! bits packed as Q4_0's nibbles (byte `j`: element `j` low, element `j + 16` high), the fifth
//! bit of element `e` in bit `e` of `qh`. llama.cpp's Q4_K_M mixes use it where a row is not a
//! whole number of 256-value super-blocks (V2-Lite's 1408-wide expert rows, `attn_k_b`).

use half::f16;

use super::{BlockQ8_0x8, GgmlType};
use crate::kernels::{self, Isa, IsaKind, VecDot};

/// ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale: `max / −16`, where `max` is the element of largest magnitude (with its sign).
    pub d: f16,
    /// Fifth bits, element `e` in bit `e` (little-endian u32).
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl BlockQ5_0 {
    /// The 5-bit level of element `e` (0..32).
    #[inline]
    pub fn level(&self, e: usize) -> u8 {
        let qh = u32::from_le_bytes(self.qh);
        let low = if e < 16 {
            self.qs[e] & 0x0F
        } else {
            self.qs[e - 16] >> 4
        };
        low | ((((qh >> e) & 1) as u8) << 4)
    }

    /// `quantize_row_q5_0_ref`: the largest-magnitude element maps exactly to level 0 (−16),
    /// the rest to `trunc(x / d + 16.5)` clamped to 31.
    fn quantize_block(x: &[f32]) -> Self {
        let d = super::signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let level = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
        let (mut qs, mut qh) = ([0u8; 16], 0u32);
        for j in 0..16 {
            let (l0, l1) = (level(x[j]), level(x[j + 16]));
            qs[j] = (l0 & 0x0F) | ((l1 & 0x0F) << 4);
            qh |= ((l0 as u32 >> 4) & 1) << j;
            qh |= ((l1 as u32 >> 4) & 1) << (j + 16);
        }
        BlockQ5_0 {
            d: f16::from_f32(d),
            qh: qh.to_le_bytes(),
            qs,
        }
    }
}

// SAFETY: `#[repr(C)]` of an f16 and 20 u8, 22 bytes, no padding (pinned above): any bytes are
// a valid value; field order is ggml's.
unsafe impl GgmlType for BlockQ5_0 {
    const BLOCK: usize = 32;
    const GGML_TYPE: u32 = super::ggml_type::Q5_0;
    const NAME: &'static str = "q5_0";

    fn quantize(x: &[f32], out: &mut [Self]) {
        debug_assert_eq!(x.len(), out.len() * Self::BLOCK);
        for (b, chunk) in out.iter_mut().zip(x.chunks_exact(Self::BLOCK)) {
            *b = Self::quantize_block(chunk);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, chunk) in blocks.iter().zip(out.chunks_exact_mut(Self::BLOCK)) {
            let d = b.d.to_f32();
            for (e, o) in chunk.iter_mut().enumerate() {
                *o = (b.level(e) as i32 - 16) as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ5_0 {
    type Act = BlockQ8_0x8;

    fn act_len(w_len: usize) -> usize {
        w_len.div_ceil(8)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: [&[BlockQ8_0x8]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { kernels::avx2::dot_q5_0(w, a) },
            _ => kernels::scalar::dot_q5_0(w, a),
        }
    }
}
