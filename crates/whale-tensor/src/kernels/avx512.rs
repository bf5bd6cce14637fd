//! AVX-512 VNNI kernels for weights interleaved sixteen rows to a block ([`crate::quant::x16`],
//! [`crate::quant::x16_k`] for the K-quants).
//! Each is an `unsafe fn` compiled with AVX-512 F/BW/VNNI (and AVX2/FMA/F16C); callers go
//! through [`super::Isa`], which holds `Avx512Vnni` only when the CPU reported all of them.
//!
//! Per Q8_0/Q4_0/Q5_0 block column and token: eight `vpdpbusd`, each multiplying one 64-byte
//! line of weights (four levels of sixteen rows) by four activation bytes broadcast to every
//! lane, accumulate the sixteen rows' integer dot products lane by lane; the stored offset is
//! removed by starting the sum at `−OFFSET · Σ a` (the tile's sums, scaled when the tile was
//! built: [`crate::quant::Q8Tile`]); one convert and one FMA apply the sixteen
//! `d_w · d_a`. Up to eight tokens share each unpacked weight block (31 of the 32 registers hold
//! the tile). The K-quant kernels do the same per sub-block and apply its scales lane-wise.

use std::arch::x86_64::*;

use super::prefetch_ahead;

use crate::quant::{
    BlockQ4Kx16, BlockQ4_0x16, BlockQ5_0x16, BlockQ6Kx16, BlockQ8K, BlockQ8_0x16, BlockQ8_0x8,
    BlockedTile, ROWS,
};

/// Q8_0 activation blocks per group.
const GROUP: usize = 8;

/// The Q8_0-family kernels, two per format, one per [`crate::quant::Q8Tile`] layout:
/// `$name` reads [`BlockedTile`] words (two or more tokens: prefill and batched decode),
/// `$grouped` ggml's groups (one token). `$line(b, j)` is line `j` of block `b`'s weights.
macro_rules! x16_dot {
    ($name:ident, $grouped:ident, $wt:ty, line: $line:expr $(,)?) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $name<const N: usize>(w: &[$wt], a: &[i32]) -> [[f32; ROWS]; N] {
            let line = $line;
            let stride = BlockedTile::stride(N);
            assert!(a.len() >= stride * w.len(), "activation tile length");
            let mut acc = [_mm512_setzero_ps(); N];
            for (b, wb) in w.iter().enumerate() {
                prefetch_block::<_, 1>(w, b, 0);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.d.as_ptr().cast()));
                let l: [__m512i; 8] = std::array::from_fn(|j| line(wb, j));
                // SAFETY (the reads below): column b's words, in bounds by the assert.
                let column = a.as_ptr().add(b * stride);
                for t in 0..N {
                    let q = column.add(8 * t);
                    let y = |j: usize| _mm512_set1_epi32(*q.add(j));
                    // The sums are already −OFFSET · Σ a (`Q8Tile`).
                    let mut p0 = _mm512_set1_epi32(*column.add(8 * N + t));
                    let sums = if N < 4 {
                        // Two chains halve the dependency latency when few tokens interleave.
                        let mut p1 = _mm512_setzero_si512();
                        for j in (0..8).step_by(2) {
                            p0 = _mm512_dpbusd_epi32(p0, l[j], y(j));
                            p1 = _mm512_dpbusd_epi32(p1, l[j + 1], y(j + 1));
                        }
                        _mm512_add_epi32(p0, p1)
                    } else {
                        for (j, lj) in l.iter().enumerate() {
                            p0 = _mm512_dpbusd_epi32(p0, *lj, y(j));
                        }
                        p0
                    };
                    let sums = _mm512_cvtepi32_ps(sums);
                    let da = *column.add(9 * N + t).cast::<f32>();
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(da));
                    acc[t] = _mm512_fmadd_ps(sums, d, acc[t]);
                }
            }
            let mut out = [[0.0f32; ROWS]; N];
            for t in 0..N {
                _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
            }
            out
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $grouped<const N: usize>(w: &[$wt], a: &[BlockQ8_0x8]) -> [[f32; ROWS]; N] {
            let line = $line;
            assert_eq!(
                a.len(),
                N * w.len().div_ceil(GROUP),
                "activation tile length"
            );
            let mut acc = [_mm512_setzero_ps(); N];
            for (b, wb) in w.iter().enumerate() {
                let (g, i) = (b / GROUP, b % GROUP);
                // The tile's N blocks of group g, side by side: one pointer, constant offsets.
                let tile = a.as_ptr().add(g * N);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.d.as_ptr().cast()));
                // `sums` is already −OFFSET · Σ a (`Q8Tile`). Two chains per token.
                // SAFETY (tile reads): g · N + t < a.len() (length checked above).
                let mut p0: [__m512i; N] =
                    std::array::from_fn(|t| _mm512_set1_epi32((*tile.add(t)).sums[i]));
                let mut p1 = [_mm512_setzero_si512(); N];
                // Two lines at a time, each pair after a quarter of the block's prefetches,
                // pinned in that order (`schedule_point`). Left to itself the compiler chose
                // between interleaving them and hoisting every prefetch and load to the top of
                // the block depending on unrelated code in the crate, and this memory-bound
                // loop (one token: single-stream decode) ran 3–5% slower the second way.
                for k in 0..4 {
                    prefetch_block::<_, 4>(w, b, k);
                    schedule_point();
                    let (la, lb) = (line(wb, 2 * k), line(wb, 2 * k + 1));
                    for t in 0..N {
                        let q = (*tile.add(t)).qs[i].as_ptr().cast::<i32>();
                        let y = |j: usize| _mm512_set1_epi32(q.add(j).read_unaligned());
                        p0[t] = _mm512_dpbusd_epi32(p0[t], la, y(2 * k));
                        p1[t] = _mm512_dpbusd_epi32(p1[t], lb, y(2 * k + 1));
                    }
                }
                for t in 0..N {
                    let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(p0[t], p1[t]));
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps((*tile.add(t)).d[i]));
                    acc[t] = _mm512_fmadd_ps(sums, d, acc[t]);
                }
            }
            let mut out = [[0.0f32; ROWS]; N];
            for t in 0..N {
                _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
            }
            out
        }
    };
}

// Eight lines of 64 bytes, stored as they are used.
x16_dot!(dot_q8_0x16, dot_q8_0x16_grouped, BlockQ8_0x16, line: |b: &BlockQ8_0x16, j: usize| {
    _mm512_loadu_si512(b.qs.as_ptr().add(64 * j).cast())
});

// Four lines of nibbles: the low ones are elements 0..16 (lines 0..4), the high ones 16..32.
x16_dot!(dot_q4_0x16, dot_q4_0x16_grouped, BlockQ4_0x16, line: |b: &BlockQ4_0x16, j: usize| {
    let raw = _mm512_loadu_si512(b.qs.as_ptr().add(64 * (j % 4)).cast());
    let mask = _mm512_set1_epi8(0x0F);
    if j < 4 {
        _mm512_and_si512(raw, mask)
    } else {
        _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask)
    }
});

// Q4_0's nibble lines with the fifth bits added from their byte masks.
x16_dot!(dot_q5_0x16, dot_q5_0x16_grouped, BlockQ5_0x16, line: |b: &BlockQ5_0x16, j: usize| {
    let raw = _mm512_loadu_si512(b.qs.as_ptr().add(64 * (j % 4)).cast());
    let mask = _mm512_set1_epi8(0x0F);
    let n = if j < 4 {
        _mm512_and_si512(raw, mask)
    } else {
        _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask)
    };
    _mm512_mask_add_epi8(n, b.qh[j], n, _mm512_set1_epi8(0x10))
});

/// Per super-block and row, `d·d_a·Σ_j sc_j·(n_j · a_j) − dmin·d_a·Σ_j m_j·Σ a_j`: the
/// sixteen rows' sub-block dot products from `vpdpbusd`, converted to f32 and scaled lane-wise
/// by their 6-bit scales in one FMA (an integer `vpmulld` instead, two port-0 µops, competed
/// with `vpdpbusd` for that port: prefill was 1–3% slower), and the mins against the
/// activation sums in pairs (`vpdpwssd`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q4_kx16<const N: usize>(w: &[BlockQ4Kx16], a: &[BlockQ8K]) -> [[f32; ROWS]; N] {
    assert_eq!(a.len(), N * w.len(), "activation tile length");
    let m4 = _mm512_set1_epi8(0x0F);
    let m4_high = _mm512_set1_epi8(0xF0u8 as i8);
    let mut acc = [_mm512_setzero_ps(); N];
    for (b, wb) in w.iter().enumerate() {
        // The tile's N activation blocks for this super-block, side by side.
        let tile = a.as_ptr().add(b * N);
        let mut sumi = [_mm512_setzero_ps(); N];
        for c in 0..4 {
            prefetch_block::<_, 4>(w, b, c);
            let p = wb.qs.as_ptr().add(512 * c);
            // Plain loops: `array::map` here was compiled out of line (profiled), with the
            // vectors passed through memory.
            let (mut lo, mut hi) = ([_mm512_setzero_si512(); 8], [_mm512_setzero_si512(); 8]);
            // The high nibbles stay in place, as 16·n, and the 1/16 goes into their scales
            // (exact in f32): a shift per line saved on port 0, beside `vpdpbusd` (Q4_K matmul
            // +5% stand-alone). The sums stay exact: 8 lines · 4 · 240 · 128 < 2^20.
            for l in 0..8 {
                let raw = _mm512_loadu_si512(p.add(64 * l).cast());
                lo[l] = _mm512_and_si512(raw, m4);
                hi[l] = _mm512_and_si512(raw, m4_high);
            }
            let sc = wb.scales.as_ptr().add(32 * c);
            let sc_lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(sc.cast())));
            let sc_hi = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(sc.add(16).cast()))),
                _mm512_set1_ps(1.0 / 16.0),
            );
            for (t, sumi) in sumi.iter_mut().enumerate() {
                // SAFETY: b · N + t < a.len() (checked above); 64c + 64 ≤ 256.
                let q = (*tile.add(t)).qs.as_ptr().add(64 * c).cast::<i32>();
                let y = |j: usize| _mm512_set1_epi32(q.add(j).read_unaligned());
                let (mut p_lo, mut p_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for l in 0..8 {
                    p_lo = _mm512_dpbusd_epi32(p_lo, lo[l], y(l));
                    p_hi = _mm512_dpbusd_epi32(p_hi, hi[l], y(8 + l));
                }
                *sumi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_lo), sc_lo, *sumi);
                *sumi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_hi), sc_hi, *sumi);
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.d.as_ptr().cast()));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(wb.dmin.as_ptr().cast()));
        let mins: [__m512i; 4] = std::array::from_fn(|k| {
            _mm512_cvtepu8_epi16(_mm256_loadu_si256(wb.mins.as_ptr().add(32 * k).cast()))
        });
        for t in 0..N {
            // SAFETY: as above.
            let ab = &*tile.add(t);
            // Sub-blocks 2k and 2k + 1's activation sums as one i32: low half, high half.
            let pairs = ab.sums32.as_ptr().cast::<i32>();
            let mut m = _mm512_setzero_si512();
            for (k, &mins) in mins.iter().enumerate() {
                let pair = _mm512_set1_epi32(pairs.add(k).read_unaligned());
                m = _mm512_dpwssd_epi32(m, mins, pair);
            }
            let da = _mm512_set1_ps(ab.d);
            acc[t] = _mm512_fmadd_ps(sumi[t], _mm512_mul_ps(dw, da), acc[t]);
            acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(dmin, da), acc[t]);
        }
    }
    let mut out = [[0.0f32; ROWS]; N];
    for t in 0..N {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
    out
}

/// Per super-block and row, `d·d_a·Σ_g sc_g·(n_g · a_g − 32·Σ a_g)`: each 16-value
/// sub-block's chain starts at the offset term (`−32·bsums`, widened once per token and
/// super-block), takes four `vpdpbusd`, and is scaled lane-wise by its i8 scales in f32 (one
/// convert and FMA instead of `vpmulld`'s two port-0 µops and an add). A sub-block's four lines
/// come from its three stored ones ([`BlockQ6Kx16`]): their low six bits, and the fourth line's
/// bits gathered from their top two.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q6_kx16<const N: usize>(w: &[BlockQ6Kx16], a: &[BlockQ8K]) -> [[f32; ROWS]; N] {
    assert_eq!(a.len(), N * w.len(), "activation tile length");
    let low6 = _mm512_set1_epi8(0x3F);
    let low2 = _mm512_set1_epi8(0x03);
    let low4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut offsets = [[0i32; 16]; N];
    for (b, wb) in w.iter().enumerate() {
        // The tile's N activation blocks for this super-block, side by side.
        let tile = a.as_ptr().add(b * N);
        for (t, offsets) in offsets.iter_mut().enumerate() {
            // SAFETY: b · N + t < a.len() (checked above).
            let bsums = _mm256_loadu_si256((*tile.add(t)).bsums.as_ptr().cast());
            let scaled = _mm512_slli_epi32(_mm512_cvtepi16_epi32(bsums), 5);
            let negated = _mm512_sub_epi32(_mm512_setzero_si512(), scaled);
            _mm512_storeu_si512(offsets.as_mut_ptr().cast(), negated);
        }
        let mut sums = [_mm512_setzero_ps(); N];
        #[allow(clippy::needless_range_loop)] // g also addresses the weights and activations
        for g in 0..16 {
            // A sixteenth of the block's prefetches per sub-block: spread this thin, one token's
            // lm_head matmul (102,400 rows) ran 6% faster and eight tokens' 7% than in quarters.
            prefetch_block::<_, 16>(w, b, g);
            let p = wb.qs.as_ptr().add(192 * g);
            // Plain loads, not `array::from_fn`: a closure does not inherit the target features.
            let stored = [
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(64).cast()),
                _mm512_loadu_si512(p.add(128).cast()),
            ];
            // The fourth line: bits 6–7 of stored line j moved to bits 2j, 2j + 1. The 16-bit
            // shifts carry the neighbouring byte's bits in above them; the selects (ternary
            // logic 0xCA: first operand ? second : third) and the last mask drop those.
            let x = _mm512_srli_epi16(stored[0], 6);
            let y = _mm512_srli_epi16(stored[1], 4);
            let z = _mm512_srli_epi16(stored[2], 2);
            let xy = _mm512_ternarylogic_epi32(low2, x, y, 0xCA);
            let xyz = _mm512_ternarylogic_epi32(low4, xy, z, 0xCA);
            let lines = [
                _mm512_and_si512(stored[0], low6),
                _mm512_and_si512(stored[1], low6),
                _mm512_and_si512(stored[2], low6),
                _mm512_and_si512(xyz, low6),
            ];
            let sc_p = wb.scales.as_ptr().add(16 * g);
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(sc_p.cast())));
            for (t, sum) in sums.iter_mut().enumerate() {
                // SAFETY: b · N + t < a.len() (checked above); 16g + 16 ≤ 256.
                let q = (*tile.add(t)).qs.as_ptr().add(16 * g).cast::<i32>();
                let mut p = _mm512_set1_epi32(offsets[t][g]);
                for (k, &line) in lines.iter().enumerate() {
                    p = _mm512_dpbusd_epi32(p, line, _mm512_set1_epi32(q.add(k).read_unaligned()));
                }
                *sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc, *sum);
            }
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.d.as_ptr().cast()));
        for t in 0..N {
            // SAFETY: as above.
            let da = _mm512_set1_ps((*tile.add(t)).d);
            acc[t] = _mm512_fmadd_ps(sums[t], _mm512_mul_ps(dw, da), acc[t]);
        }
    }
    let mut out = [[0.0f32; ROWS]; N];
    for t in 0..N {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
    out
}

/// A point the compiler may not move memory accesses across (an empty `asm!` that may read or
/// write memory): pins a memory-bound loop's prefetches and loads in the order written.
#[inline(always)]
fn schedule_point() {
    // SAFETY: an empty instruction sequence; it touches no registers, stack or flags.
    unsafe { std::arch::asm!("", options(nostack, preserves_flags)) }
}

/// [`prefetch_ahead`] for block `b` of `w`, or for its part `part` of `PARTS`: the K-quant
/// blocks are 2–3 KB, and spreading their 40–50 prefetches over the block's work (Q4_K_M decode
/// +8%) keeps them from filling the load buffers all at once.
#[inline(always)]
fn prefetch_block<T, const PARTS: usize>(w: &[T], b: usize, part: usize) {
    let size = std::mem::size_of::<T>();
    let len = size.div_ceil(PARTS);
    prefetch_ahead(w, b * size + part * len, len);
}

/// One f32 row · `N` f32 rows (attention scores over the latent cache, the per-head absorbed
/// projections): AVX2's kernel at twice the width, 32 columns per step in two chains per token,
/// the tail through a lane mask.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn dot_f32<const N: usize>(w: &[f32], a: [&[f32]; N]) -> [f32; N] {
    for row in &a {
        assert_eq!(row.len(), w.len(), "activation row length");
    }
    let n = w.len();
    let (wp, ap) = (w.as_ptr(), a.map(|r| r.as_ptr()));
    let mut acc0 = [_mm512_setzero_ps(); N];
    let mut acc1 = [_mm512_setzero_ps(); N];
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 ≤ n, the length of w and of every a[t].
        let (w0, w1) = (_mm512_loadu_ps(wp.add(i)), _mm512_loadu_ps(wp.add(i + 16)));
        for t in 0..N {
            acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(ap[t].add(i)), acc0[t]);
            acc1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(ap[t].add(i + 16)), acc1[t]);
        }
        i += 32;
    }
    while i < n {
        let k: __mmask16 = if n - i >= 16 { !0 } else { (1 << (n - i)) - 1 };
        // SAFETY: the mask covers only lanes below n.
        let w0 = _mm512_maskz_loadu_ps(k, wp.add(i));
        for t in 0..N {
            acc0[t] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(k, ap[t].add(i)), acc0[t]);
        }
        i += 16;
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
    }
    out
}

/// Four f32 rows · `N` (≤ 4) f32 rows: a 4 × `N` tile of sums in registers, so each 16-column
/// step loads `4 + N` vectors for `4·N` multiply-adds (the one-row tile loads `1 + N` for `N`).
/// What attention scores over a cache need: few queries against many cached rows.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn dot_f32_rows<const N: usize>(w: [&[f32]; 4], a: [&[f32]; N]) -> [[f32; N]; 4] {
    let n = w[0].len();
    for row in w.iter().chain(a.iter()) {
        assert_eq!(row.len(), n, "row length");
    }
    let (wp, ap) = (w.map(|r| r.as_ptr()), a.map(|r| r.as_ptr()));
    let mut acc = [[_mm512_setzero_ps(); N]; 4];
    // The four rows' vectors are loaded first and each query vector once per step, so
    // 4 + 1 + 4·N registers are live (loading all queries first spilled an accumulator on
    // every step; a helper closure for the step was not inlined).
    let mut i = 0;
    while i < n {
        let k: __mmask16 = if n - i >= 16 { !0 } else { (1 << (n - i)) - 1 };
        // SAFETY: the mask covers only lanes below n, the length of every row.
        let wr = [
            _mm512_maskz_loadu_ps(k, wp[0].add(i)),
            _mm512_maskz_loadu_ps(k, wp[1].add(i)),
            _mm512_maskz_loadu_ps(k, wp[2].add(i)),
            _mm512_maskz_loadu_ps(k, wp[3].add(i)),
        ];
        for t in 0..N {
            let x = _mm512_maskz_loadu_ps(k, ap[t].add(i));
            for r in 0..4 {
                acc[r][t] = _mm512_fmadd_ps(wr[r], x, acc[r][t]);
            }
        }
        i += 16;
    }
    // Plain loops: a closure here was compiled out of line, with the tile passed in memory.
    let mut out = [[0.0f32; N]; 4];
    for r in 0..4 {
        for t in 0..N {
            out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
    out
}

/// `acc[t][c] += Σ_j p[j][t] · w[j][c]`: AVX2's register-tiled kernel at twice the width and
/// two 16-column strips per pass, so each broadcast weight feeds two multiply-adds; the last
/// columns through a lane mask.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn weighted_rows<const N: usize>(acc: &mut [f32], p: &[f32], w: &[f32], stride: usize) {
    let cols = acc.len() / N;
    let rows = p.len() / N;
    assert!(
        rows == 0 || w.len() >= (rows - 1) * stride + cols,
        "weighted_rows matrix length"
    );
    let (a, wp, pp) = (acc.as_mut_ptr(), w.as_ptr(), p.as_ptr());
    let mut c = 0;
    while c + 32 <= cols {
        // SAFETY (this loop): c + 32 ≤ cols, so every access is inside `acc`, `w` (asserted
        // above) and `p` (j < rows).
        let mut s0: [__m512; N] = std::array::from_fn(|t| _mm512_loadu_ps(a.add(t * cols + c)));
        let mut s1: [__m512; N] =
            std::array::from_fn(|t| _mm512_loadu_ps(a.add(t * cols + c + 16)));
        for j in 0..rows {
            let r0 = _mm512_loadu_ps(wp.add(j * stride + c));
            let r1 = _mm512_loadu_ps(wp.add(j * stride + c + 16));
            for t in 0..N {
                let pt = _mm512_set1_ps(*pp.add(j * N + t));
                s0[t] = _mm512_fmadd_ps(pt, r0, s0[t]);
                s1[t] = _mm512_fmadd_ps(pt, r1, s1[t]);
            }
        }
        for t in 0..N {
            _mm512_storeu_ps(a.add(t * cols + c), s0[t]);
            _mm512_storeu_ps(a.add(t * cols + c + 16), s1[t]);
        }
        c += 32;
    }
    while c < cols {
        let k: __mmask16 = if cols - c >= 16 {
            !0
        } else {
            (1 << (cols - c)) - 1
        };
        // SAFETY: the mask covers only columns below cols.
        let mut s: [__m512; N] =
            std::array::from_fn(|t| _mm512_maskz_loadu_ps(k, a.add(t * cols + c)));
        for j in 0..rows {
            let r = _mm512_maskz_loadu_ps(k, wp.add(j * stride + c));
            for (t, st) in s.iter_mut().enumerate() {
                *st = _mm512_fmadd_ps(_mm512_set1_ps(*pp.add(j * N + t)), r, *st);
            }
        }
        for (t, st) in s.iter().enumerate() {
            _mm512_mask_storeu_ps(a.add(t * cols + c), k, *st);
        }
        c += 16;
    }
}
