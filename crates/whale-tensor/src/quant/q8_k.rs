//! Q8_K: the activation format for K-quant weights — 256 values as `d · q` with an f32 scale,
//! 256 signed bytes and the sums of each 16 consecutive `q` (which fold the K-quants' per-block
//! minimum or offset into one multiply per 16 values).

use super::{nearest_int, ActBlock, QK_K};
use crate::kernels::{self, Isa, IsaKind};

/// ggml's `block_q8_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// `bsums[g] = Σ qs[16g .. 16g + 16]`.
    pub bsums: [i16; QK_K / 16],
    /// `sums32[j] = Σ qs[32j .. 32j + 32]` (the `bsums` added in pairs), for Q4_K's 32-value
    /// sub-blocks: read two at a time as the i32 lanes `vpdpwssd` takes, they save the AVX-512
    /// kernel building those pairs per row group and token (4% of a Q4_K prefill matmul). Not
    /// in ggml's block, which whale never reads or writes as bytes.
    pub sums32: [i16; QK_K / 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 4 + 256 + 32 + 16);

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
            sums32: [0; QK_K / 32],
        }
    }
}

impl BlockQ8K {
    /// `quantize_row_q8_K_ref`: the largest-magnitude element maps to −127 (`iscale = −127 /
    /// max`), the rest to `nearest_int(iscale · x)` capped at 127; `d = 1 / iscale`.
    pub(crate) fn quantize_block(x: &[f32]) -> Self {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = BlockQ8K::default();
        if amax == 0.0 {
            return b;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        b.fill_bsums();
        b.d = 1.0 / iscale;
        b
    }

    pub(crate) fn fill_bsums(&mut self) {
        for (s, group) in self.bsums.iter_mut().zip(self.qs.chunks_exact(16)) {
            *s = group.iter().map(|&q| q as i16).sum();
        }
        for (s, pair) in self.sums32.iter_mut().zip(self.bsums.chunks_exact(2)) {
            *s = pair[0] + pair[1];
        }
    }
}

impl ActBlock for BlockQ8K {
    const VALUES: usize = QK_K;

    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        assert_eq!(
            x.len(),
            out.len() * QK_K,
            "Q8_K rows are whole super-blocks"
        );
        for (b, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            *b = Self::quantize_block(chunk);
        }
    }

    fn quantize_act(isa: Isa, x: &[f32], out: &mut [Self]) {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { kernels::avx2::quantize_q8_k(x, out) },
            _ => Self::quantize_ref(x, out),
        }
    }

    fn dequantize_act(blocks: &[Self], out: &mut [f32]) {
        for (b, chunk) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            for (o, &q) in chunk.iter_mut().zip(&b.qs) {
                *o = b.d * q as f32;
            }
        }
    }
}
