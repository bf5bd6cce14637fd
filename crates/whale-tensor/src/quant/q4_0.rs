//! Q4_0: 32 values as `d · (n − 8)` with one f16 scale and 4-bit `n` (18 bytes). Byte `j` holds
//! element `j` in its low nibble and element `j + 16` in its high nibble.

use half::f16;

use super::{BlockQ8_0x8, GgmlType};
use crate::kernels::{self, Isa, IsaKind, VecDot};

/// ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale: `max / −8`, where `max` is the element of largest magnitude (with its sign).
    pub d: f16,
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl BlockQ4_0 {
    /// `quantize_row_q4_0_ref`: the largest-magnitude element maps exactly to nibble 0 (−8), the
    /// rest to `trunc(x / d + 8.5)` clamped to 15.
    fn quantize_block(x: &[f32]) -> Self {
        let d = super::signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let nibble = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = nibble(x[j]) | (nibble(x[j + 16]) << 4);
        }
        BlockQ4_0 {
            d: f16::from_f32(d),
            qs,
        }
    }
}

// SAFETY: `#[repr(C)]` of an f16 and 16 u8, 18 bytes, no padding (pinned above): any bytes are a
// valid value; field order is ggml's.
unsafe impl GgmlType for BlockQ4_0 {
    const BLOCK: usize = 32;
    const GGML_TYPE: u32 = super::ggml_type::Q4_0;
    const NAME: &'static str = "q4_0";

    fn quantize(x: &[f32], out: &mut [Self]) {
        debug_assert_eq!(x.len(), out.len() * Self::BLOCK);
        for (b, chunk) in out.iter_mut().zip(x.chunks_exact(Self::BLOCK)) {
            *b = Self::quantize_block(chunk);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, chunk) in blocks.iter().zip(out.chunks_exact_mut(Self::BLOCK)) {
            let d = b.d.to_f32();
            for (j, &q) in b.qs.iter().enumerate() {
                chunk[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                chunk[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ4_0 {
    type Act = BlockQ8_0x8;

    fn act_len(w_len: usize) -> usize {
        w_len.div_ceil(8)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: [&[BlockQ8_0x8]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { kernels::avx2::dot_q4_0(w, a) },
            _ => kernels::scalar::dot_q4_0(w, a),
        }
    }
}
