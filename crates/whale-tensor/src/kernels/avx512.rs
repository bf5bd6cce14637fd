//! AVX-512 VNNI kernels for weights interleaved sixteen rows to a block ([`crate::quant::x16`]).
//! Each is an `unsafe fn` compiled with AVX-512 F/BW/VNNI (and AVX2/FMA/F16C); callers go
//! through [`super::Isa`], which holds `Avx512Vnni` only when the CPU reported all of them.
//!
//! Per block column and token: eight `vpdpbusd`, each multiplying one 64-byte line of weights
//! (four levels of sixteen rows) by four activation bytes broadcast to every lane, accumulate
//! the sixteen rows' integer dot products lane by lane; the stored offset is removed by starting
//! the sum at `−OFFSET · Σ a`; one convert and one FMA apply the sixteen `d_w · d_a`. Up to
//! eight tokens share each unpacked weight block (31 of the 32 registers hold the tile).

use std::arch::x86_64::*;

use crate::quant::{BlockQ4_0x16, BlockQ8_0x16, BlockQ8_0x8, Interleaved, ROWS};

/// Q8_0 activation blocks per group.
const GROUP: usize = 8;

macro_rules! x16_dot {
    ($name:ident, $wt:ty, lines: $lines:expr $(,)?) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $name<const N: usize>(w: &[$wt], a: [&[BlockQ8_0x8]; N]) -> [[f32; ROWS]; N] {
            let lines = $lines;
            for row in &a {
                assert_eq!(row.len(), w.len().div_ceil(GROUP), "activation row length");
            }
            let mut acc = [_mm512_setzero_ps(); N];
            for (b, wb) in w.iter().enumerate() {
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(wb.d.as_ptr().cast()));
                let l: [__m512i; 8] = lines(wb);
                let (g, i) = (b / GROUP, b % GROUP);
                for t in 0..N {
                    // SAFETY: g < a[t].len() (length checked above).
                    let ag = a[t].get_unchecked(g);
                    let q = ag.qs[i].as_ptr().cast::<i32>();
                    let y = |j: usize| _mm512_set1_epi32(q.add(j).read_unaligned());
                    // Two chains halve the dependency latency when N is small.
                    let mut p0 = _mm512_set1_epi32(-<$wt>::OFFSET * ag.sums[i]);
                    let mut p1 = _mm512_setzero_si512();
                    for j in (0..8).step_by(2) {
                        p0 = _mm512_dpbusd_epi32(p0, l[j], y(j));
                        p1 = _mm512_dpbusd_epi32(p1, l[j + 1], y(j + 1));
                    }
                    let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(p0, p1));
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(ag.d[i]));
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
x16_dot!(dot_q8_0x16, BlockQ8_0x16, lines: |b: &BlockQ8_0x16| {
    let p = b.qs.as_ptr();
    std::array::from_fn(|j| _mm512_loadu_si512(p.add(64 * j).cast()))
});

// Four lines of nibbles: the low ones are elements 0..16 (lines 0..4), the high ones 16..32.
x16_dot!(dot_q4_0x16, BlockQ4_0x16, lines: |b: &BlockQ4_0x16| {
    let p = b.qs.as_ptr();
    let mask = _mm512_set1_epi8(0x0F);
    let raw: [__m512i; 4] = std::array::from_fn(|j| _mm512_loadu_si512(p.add(64 * j).cast()));
    std::array::from_fn(|j| {
        if j < 4 {
            _mm512_and_si512(raw[j], mask)
        } else {
            _mm512_and_si512(_mm512_srli_epi16(raw[j - 4], 4), mask)
        }
    })
});
