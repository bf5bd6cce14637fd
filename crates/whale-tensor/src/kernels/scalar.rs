//! Scalar reference kernels (ggml's `_generic` ones): the definition each SIMD kernel is tested
//! against, and the fallback on CPUs without AVX2. Integer sums per block, one float multiply
//! per block, as ggml does, so they are exact up to float summation order.

use half::{bf16, f16};

use crate::quant::{
    q4k_scales_mins, BlockQ4K, BlockQ4_0, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_0x8,
};

/// Q8_0 activation blocks per group.
const GROUP: usize = 8;

/// Dot product with eight independent accumulators, so the compiler can keep them in one SIMD
/// register without reassociating a single running sum.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `acc[t][c] += Σ_j p[j][t] · w[j][c]` (`p`: `rows × N`, row `j` of `w` at `j · stride`).
pub fn weighted_rows<const N: usize>(acc: &mut [f32], p: &[f32], w: &[f32], stride: usize) {
    let cols = acc.len() / N;
    for (j, pj) in p.chunks_exact(N).enumerate() {
        let row = &w[j * stride..][..cols];
        for (t, &pt) in pj.iter().enumerate() {
            axpy(&mut acc[t * cols..(t + 1) * cols], pt, row);
        }
    }
}

/// `y += a · x` (separate multiply and add, as written).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// bf16 is the top half of an f32, so widening is a 16-bit shift.
#[inline]
pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    dot_widened(w, x, |v| f32::from_bits((v.to_bits() as u32) << 16))
}

#[inline]
pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    dot_widened(w, x, f16::to_f32)
}

/// Dot product of 16-bit floats widened by `widen` with f32 values, summed like `dot_f32`.
#[inline]
fn dot_widened<T: Copy>(w: &[T], x: &[f32], widen: impl Fn(T) -> f32) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut acc = [0.0f32; 8];
    let (wc, wr) = w.split_at(w.len() / 8 * 8);
    let (xc, xr) = x.split_at(wc.len());
    for (a, b) in wc.chunks_exact(8).zip(xc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += widen(a[i]) * b[i];
        }
    }
    let mut tail = 0.0;
    for (&a, b) in wr.iter().zip(xr) {
        tail += widen(a) * b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Σ_blocks d_w·d_a·Σ w_q·a_q (activation block `b` is member `b % 8` of group `b / 8`).
pub fn dot_q8_0<const N: usize>(w: &[BlockQ8_0], a: [&[BlockQ8_0x8]; N]) -> [f32; N] {
    a.map(|a| {
        assert_eq!(a.len(), w.len().div_ceil(GROUP));
        let mut sum = 0.0f32;
        for (b, wb) in w.iter().enumerate() {
            let (g, i) = (&a[b / GROUP], b % GROUP);
            let sumi: i32 = wb
                .qs
                .iter()
                .zip(&g.qs[i])
                .map(|(&x, &y)| x as i32 * y as i32)
                .sum();
            sum += sumi as f32 * (wb.d.to_f32() * g.d[i]);
        }
        sum
    })
}

/// Σ_blocks d_w·d_a·Σ (n − 16)·a_q over Q5_0's 5-bit levels.
pub fn dot_q5_0<const N: usize>(w: &[BlockQ5_0], a: [&[BlockQ8_0x8]; N]) -> [f32; N] {
    a.map(|a| {
        assert_eq!(a.len(), w.len().div_ceil(GROUP));
        let mut sum = 0.0f32;
        for (b, wb) in w.iter().enumerate() {
            let (g, i) = (&a[b / GROUP], b % GROUP);
            let sumi: i32 = (0..32)
                .map(|e| (wb.level(e) as i32 - 16) * g.qs[i][e] as i32)
                .sum();
            sum += sumi as f32 * (wb.d.to_f32() * g.d[i]);
        }
        sum
    })
}

/// Σ_blocks d_w·d_a·Σ (n − 8)·a_q, nibble `j` low = element `j`, high = element `j + 16`.
pub fn dot_q4_0<const N: usize>(w: &[BlockQ4_0], a: [&[BlockQ8_0x8]; N]) -> [f32; N] {
    a.map(|a| {
        assert_eq!(a.len(), w.len().div_ceil(GROUP));
        let mut sum = 0.0f32;
        for (b, wb) in w.iter().enumerate() {
            let (g, i) = (&a[b / GROUP], b % GROUP);
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += ((wb.qs[j] & 0x0F) as i32 - 8) * g.qs[i][j] as i32;
                sumi += ((wb.qs[j] >> 4) as i32 - 8) * g.qs[i][j + 16] as i32;
            }
            sum += sumi as f32 * (wb.d.to_f32() * g.d[i]);
        }
        sum
    })
}

/// Per super-block: `d·d_a·Σ_j sc_j·Σ n·a_q − dmin·d_a·Σ_j m_j·(bsum_{2j} + bsum_{2j+1})` —
/// the mins meet the activations only through their 16-value sums.
pub fn dot_q4_k<const N: usize>(w: &[BlockQ4K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    a.map(|a| {
        assert_eq!(w.len(), a.len());
        let mut sum = 0.0f32;
        for (wb, ab) in w.iter().zip(a) {
            let (sc, m) = q4k_scales_mins(&wb.scales);
            let mut sumi = 0i32;
            let mut summ = 0i32;
            for j in 0..8 {
                let (q, shift) = (&wb.qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
                let act = &ab.qs[32 * j..32 * j + 32];
                let s: i32 = q
                    .iter()
                    .zip(act)
                    .map(|(&q, &y)| ((q >> shift) & 0x0F) as i32 * y as i32)
                    .sum();
                sumi += sc[j] as i32 * s;
                summ += m[j] as i32 * (ab.bsums[2 * j] as i32 + ab.bsums[2 * j + 1] as i32);
            }
            sum += wb.d.to_f32() * ab.d * sumi as f32 - wb.dmin.to_f32() * ab.d * summ as f32;
        }
        sum
    })
}

/// Per super-block: `d·d_a·Σ_g sc_g·Σ (n − 32)·a_q` over the 16 groups of 16.
pub fn dot_q6_k<const N: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    a.map(|a| {
        assert_eq!(w.len(), a.len());
        let mut sum = 0.0f32;
        for (wb, ab) in w.iter().zip(a) {
            let levels = wb.levels();
            let mut sumi = 0i32;
            for (g, (n, y)) in levels
                .chunks_exact(16)
                .zip(ab.qs.chunks_exact(16))
                .enumerate()
            {
                let s: i32 = n.iter().zip(y).map(|(&n, &y)| n as i32 * y as i32).sum();
                sumi += wb.scales[g] as i32 * s;
            }
            sum += wb.d.to_f32() * ab.d * sumi as f32;
        }
        sum
    })
}

/// Below this, [`exp_clamped`] and the SIMD softmax exponentials give 0.
pub const EXP_MIN: f32 = -86.0;
/// ln 2 in two parts (Cephes): the high part has few enough bits that `n · LN2_HI` is exact.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial for `(exp(r) − 1 − r) / r²` on |r| ≤ ln 2 / 2, highest degree first.
pub const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `exp(y)`, 0 below [`EXP_MIN`] as the SIMD kernels give.
#[inline]
pub fn exp_clamped(y: f32) -> f32 {
    if y < EXP_MIN {
        0.0
    } else {
        y.exp()
    }
}

/// `gate[i] = silu(gate[i]) · up[i]` (the reference for the SIMD version).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = crate::ops::silu(*g) * u;
    }
}

/// `x[i] = exp(x[i] − m)`, returning their sum (the reference for the SIMD versions).
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_clamped(*v - m);
        sum += *v;
    }
    sum
}
