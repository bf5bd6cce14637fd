//! Q8_0: 32 values as `d · q` with one f16 scale `d` and 32 signed bytes `q` (34 bytes).
//! A weight format, and (grouped as [`super::BlockQ8_0x8`]) what activations are quantized to
//! for Q8_0 and Q4_0 weights.

use half::f16;

use super::{BlockQ8_0x8, GgmlType};
use crate::kernels::{self, Isa, IsaKind, VecDot};

/// ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale: `amax / 127`.
    pub d: f16,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    /// `quantize_row_q8_0_ref`: `d = amax / 127`, `q = round(x / d)` (ties away from zero).
    fn quantize_block(x: &[f32]) -> Self {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs,
        }
    }
}

// SAFETY: `#[repr(C)]` of an f16 and 32 i8, 34 bytes, no padding (pinned above): any bytes are
// a valid value; field order is ggml's.
unsafe impl GgmlType for BlockQ8_0 {
    const BLOCK: usize = 32;
    const GGML_TYPE: u32 = super::ggml_type::Q8_0;
    const NAME: &'static str = "q8_0";

    fn quantize(x: &[f32], out: &mut [Self]) {
        debug_assert_eq!(x.len(), out.len() * Self::BLOCK);
        for (b, chunk) in out.iter_mut().zip(x.chunks_exact(Self::BLOCK)) {
            *b = Self::quantize_block(chunk);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, chunk) in blocks.iter().zip(out.chunks_exact_mut(Self::BLOCK)) {
            let d = b.d.to_f32();
            for (o, &q) in chunk.iter_mut().zip(&b.qs) {
                *o = q as f32 * d;
            }
        }
    }
}

impl VecDot for BlockQ8_0 {
    type Act = BlockQ8_0x8;

    fn act_len(w_len: usize) -> usize {
        w_len.div_ceil(8)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: [&[BlockQ8_0x8]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { kernels::avx2::dot_q8_0(w, a) },
            _ => kernels::scalar::dot_q8_0(w, a),
        }
    }
}
