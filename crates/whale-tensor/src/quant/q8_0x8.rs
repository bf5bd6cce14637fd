//! Q8_0 activations eight blocks to a group: the values of ggml's Q8_0 (its f16-rounded scale,
//! its rounding), with the scales widened to f32 and each block's `d·Σq` stored beside them, so
//! a kernel loads eight scales in one instruction (the layout idea of ik_llama.cpp's q8_0_x4).
//!
//! `d·Σq` lets Q4_0 weights use their levels `n` unsigned: Σ (n − 8)·q = Σ n·q − 8·Σq.

use half::f16;

use super::{ActBlock, BlockQ8_0, GgmlType};
use crate::kernels::{self, Isa, IsaKind};

/// Blocks per group.
pub const GROUP: usize = 8;

/// Eight Q8_0 activation blocks (256 values); a row's last group is zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0x8 {
    /// Each block's scale: ggml's f16 `d`, widened.
    pub d: [f32; GROUP],
    /// Each block's `d · Σ qs`.
    pub s: [f32; GROUP],
    /// Each block's `Σ qs` (for kernels that correct an integer offset before scaling).
    pub sums: [i32; GROUP],
    pub qs: [[i8; 32]; GROUP],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0x8>() == 96 + 256);

impl Default for BlockQ8_0x8 {
    fn default() -> Self {
        BlockQ8_0x8 {
            d: [0.0; GROUP],
            s: [0.0; GROUP],
            sums: [0; GROUP],
            qs: [[0; 32]; GROUP],
        }
    }
}

impl BlockQ8_0x8 {
    /// Stores Q8_0 block `b` of `x` as member `i`.
    fn set(&mut self, i: usize, b: &BlockQ8_0) {
        let d = b.d.to_f32();
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        self.d[i] = d;
        self.s[i] = d * sum as f32;
        self.sums[i] = sum;
        self.qs[i] = b.qs;
    }

    /// Member `i` as a ggml Q8_0 block.
    pub fn block(&self, i: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: f16::from_f32(self.d[i]),
            qs: self.qs[i],
        }
    }

    /// Groups `x` (a multiple of 32 values) into `out`, quantizing each block with `quantize`.
    fn quantize_with(x: &[f32], out: &mut [Self], quantize: impl Fn(&[f32], &mut [BlockQ8_0])) {
        debug_assert_eq!(x.len() % 32, 0);
        debug_assert_eq!(out.len(), Self::row_len(x.len()));
        let mut blocks = [BlockQ8_0::default(); GROUP];
        for (g, chunk) in out.iter_mut().zip(x.chunks(32 * GROUP)) {
            let n = chunk.len() / 32;
            quantize(chunk, &mut blocks[..n]);
            *g = BlockQ8_0x8::default();
            for (i, b) in blocks[..n].iter().enumerate() {
                g.set(i, b);
            }
        }
    }
}

impl ActBlock for BlockQ8_0x8 {
    const VALUES: usize = 32 * GROUP;

    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        Self::quantize_with(x, out, <BlockQ8_0 as GgmlType>::quantize);
    }

    fn quantize_act(isa: Isa, x: &[f32], out: &mut [Self]) {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2 | IsaKind::Avx512Vnni => Self::quantize_with(x, out, |x, b| {
                // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
                unsafe { kernels::avx2::quantize_q8_0(x, b) }
            }),
            _ => Self::quantize_ref(x, out),
        }
    }

    fn dequantize_act(groups: &[Self], out: &mut [f32]) {
        for (i, chunk) in out.chunks_exact_mut(32).enumerate() {
            let g = &groups[i / GROUP];
            for (o, &q) in chunk.iter_mut().zip(&g.qs[i % GROUP]) {
                *o = q as f32 * g.d[i % GROUP];
            }
        }
    }
}
