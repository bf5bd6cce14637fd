//! AVX2 + FMA + F16C kernels. Each is an `unsafe fn` compiled with those features; callers go
//! through [`super::Isa`], which holds `Avx2` only when the CPU reported all three, and that is
//! the safety condition of every function here.
//!
//! Integer kernels follow ggml's AVX2 scheme: `maddubs` multiplies unsigned by signed bytes into
//! i16 pairs, `madd` widens to i32 (folding in a per-sub-block scale where there is one), and the
//! i32 sums are converted and scaled into f32 accumulators once per K-quant super-block, or once
//! per group of eight Q8_0/Q4_0 blocks. Every kernel takes a tile of `N` activation rows, so a
//! weight block is loaded and unpacked once for all of them.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::prefetch_ahead;

use crate::quant::{
    q4k_scales_mins, BlockQ4K, BlockQ4_0, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_0x8,
    QK_K,
};

/// Q8_0 activation blocks per group.
const GROUP: usize = 8;

// ---------------------------------------------------------------------------------------------
// Helpers

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    hsum_ps128(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_ps(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// One f16 scale to f32 with integer operations. A normal f16's exponent and mantissa, shifted
/// into an f32's, need only the exponent bias added; a subnormal one is `mantissa · 2⁻²⁴`,
/// exact as an int-to-float conversion and a power-of-two scaling. (Scales are never inf/NaN.)
///
/// Not `vcvtph2ps` on one lane: LLVM then inserts the value into whatever register is free —
/// often an accumulator — and serialises the loop on it. Not a multiply of a denormal f32 by
/// 2¹¹² either: Q6_K scales of typical weights are f16 subnormals, and denormal operands take a
/// slow path (that cost this kernel 3× in the matmul benchmark).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_to_f32(h: f16) -> f32 {
    let b = h.to_bits() as u32;
    let sign = (b & 0x8000) << 16;
    let magnitude = b & 0x7fff;
    let abs = if magnitude >= 0x0400 {
        f32::from_bits((magnitude << 13) + (112 << 23))
    } else {
        magnitude as f32 * (1.0 / 16_777_216.0)
    };
    f32::from_bits(abs.to_bits() | sign)
}

#[cfg(test)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_to_f32_for_tests(h: f16) -> f32 {
    f16_to_f32(h)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_i8x32(p: &[i8; 32]) -> __m256i {
    _mm256_loadu_si256(p.as_ptr().cast())
}

/// Asserts every activation row has the weight row's length, so unchecked indexing is sound.
#[inline]
fn check_lengths<W, A, const N: usize>(w: &[W], a: &[&[A]; N]) {
    for row in a {
        assert_eq!(row.len(), w.len(), "activation row length");
    }
}

// ---------------------------------------------------------------------------------------------
// Float weights: f32, bf16 and f16 rows against f32 activations.

/// Generates a float-weight tile kernel from the expression that widens 8 weights to f32.
macro_rules! float_dot {
    ($name:ident, $t:ty, |$p:ident| $widen8:expr) => {
        /// One weight row · `N` f32 activation rows, 16 columns per step with two accumulator
        /// chains per token (hides the FMA latency when `N` = 1).
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name<const N: usize>(w: &[$t], a: [&[f32]; N]) -> [f32; N] {
            check_lengths(w, &a);
            let n = w.len();
            let widen = |$p: *const $t| $widen8;
            let mut acc0 = [_mm256_setzero_ps(); N];
            let mut acc1 = [_mm256_setzero_ps(); N];
            let mut i = 0;
            while i + 16 <= n {
                prefetch_ahead(
                    w,
                    i * std::mem::size_of::<$t>(),
                    16 * std::mem::size_of::<$t>(),
                );
                // SAFETY (this loop and the next): i + 16 ≤ n = len of w and of every a[t].
                let w0 = widen(w.as_ptr().add(i));
                let w1 = widen(w.as_ptr().add(i + 8));
                for t in 0..N {
                    acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a[t].as_ptr().add(i)), acc0[t]);
                    acc1[t] =
                        _mm256_fmadd_ps(w1, _mm256_loadu_ps(a[t].as_ptr().add(i + 8)), acc1[t]);
                }
                i += 16;
            }
            if i + 8 <= n {
                let w0 = widen(w.as_ptr().add(i));
                for t in 0..N {
                    acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a[t].as_ptr().add(i)), acc0[t]);
                }
                i += 8;
            }
            let mut out = [0.0f32; N];
            for t in 0..N {
                let mut s = hsum_ps(_mm256_add_ps(acc0[t], acc1[t]));
                for j in i..n {
                    s += w[j].to_f32() * a[t][j];
                }
                out[t] = s;
            }
            out
        }
    };
}

trait ToF32: Copy {
    fn to_f32(self) -> f32;
}
impl ToF32 for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}
impl ToF32 for bf16 {
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
impl ToF32 for f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

float_dot!(dot_f32, f32, |p| _mm256_loadu_ps(p));

/// `acc[t][c] += Σ_j p[j][t] · w[j][c]` for `N` rows of sums (`p`: `rows × N`, row `j` of `w`
/// at `j · stride`): eight columns of all `N` sums stay in registers while the rows pass, so
/// each row segment is loaded once for all `N` (attention's probability-weighted values).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_rows<const N: usize>(acc: &mut [f32], p: &[f32], w: &[f32], stride: usize) {
    let cols = acc.len() / N;
    let rows = p.len() / N;
    assert!(
        rows == 0 || w.len() >= (rows - 1) * stride + cols,
        "weighted_rows matrix length"
    );
    let full = cols / 8 * 8;
    for c in (0..full).step_by(8) {
        let mut s: [__m256; N] =
            std::array::from_fn(|t| _mm256_loadu_ps(acc.as_ptr().add(t * cols + c)));
        for j in 0..rows {
            // SAFETY: j < rows and c + 8 <= cols, inside `w` (asserted above) and `p`.
            let r = _mm256_loadu_ps(w.as_ptr().add(j * stride + c));
            let pj = p.as_ptr().add(j * N);
            for (t, st) in s.iter_mut().enumerate() {
                *st = _mm256_fmadd_ps(_mm256_set1_ps(*pj.add(t)), r, *st);
            }
        }
        for (t, st) in s.iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(t * cols + c), *st);
        }
    }
    for c in full..cols {
        for t in 0..N {
            for j in 0..rows {
                acc[t * cols + c] += p[j * N + t] * w[j * stride + c];
            }
        }
    }
}

/// `y += a · x`, eight lanes at a time with FMA (attention's weighted sums of value rows).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let av = _mm256_set1_ps(a);
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within both slices.
        let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(yp.add(i)));
        _mm256_storeu_ps(yp.add(i), v);
        i += 8;
    }
    for j in i..n {
        y[j] += a * x[j];
    }
}
// bf16 is the top half of an f32: zero-extend each to 32 bits and shift left by 16.
float_dot!(dot_bf16, bf16, |p| _mm256_castsi256_ps(_mm256_slli_epi32(
    _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
    16
)));
float_dot!(dot_f16, f16, |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())));

// ---------------------------------------------------------------------------------------------
// Q8_0 and Q4_0 weights against Q8_0 activations grouped eight blocks at a time.

/// Generates a 32-value-block kernel. Per group of eight weight blocks: the eight scales are
/// converted at once, each block's integer dot product (eight i32 lanes) is reduced by an
/// `hadd` tree so the eight block sums land in one register, and one FMA applies the eight
/// `d_w·d_a`. `unpack` turns a weight block into the unsigned `maddubs` operand plus a sign
/// source, `product` multiplies that with activation bytes into i16 pairs, and `OFFSET·d_w·s`
/// corrects for an offset stored in the weight levels (Q4_0's −8, via the activation sums).
macro_rules! block32_dot {
    ($name:ident, $wt:ty, offset: $offset:expr, unpack: $unpack:expr, product: $product:expr $(,)?) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name<const N: usize>(w: &[$wt], a: [&[BlockQ8_0x8]; N]) -> [f32; N] {
            const OFFSET: f32 = $offset;
            let unpack = $unpack;
            let product = $product;
            for row in &a {
                assert_eq!(row.len(), w.len().div_ceil(GROUP), "activation row length");
            }
            let ones = _mm256_set1_epi16(1);
            let block_sum = |q: (__m256i, __m256i), y: &[i8; 32]| {
                _mm256_madd_epi16(product(q, load_i8x32(y)), ones)
            };
            let mut acc = [_mm256_setzero_ps(); N];
            let mut acc_s = [_mm256_setzero_ps(); N];
            let groups = w.len() / GROUP;
            for g in 0..groups {
                // SAFETY (all unchecked indexing below): g < groups, so blocks 8g..8g + 8 exist
                // in `w`, and group g exists in every activation row (length checked above).
                let wg = w.get_unchecked(GROUP * g..GROUP * g + GROUP);
                prefetch_ahead(w, std::mem::size_of_val(wg) * g, std::mem::size_of_val(wg));
                let bits = |i: usize| wg[i].d.to_bits() as i16;
                let dw = _mm256_cvtph_ps(_mm_setr_epi16(
                    bits(0),
                    bits(1),
                    bits(2),
                    bits(3),
                    bits(4),
                    bits(5),
                    bits(6),
                    bits(7),
                ));
                let mut quads = [[_mm256_setzero_si256(); 2]; N];
                for half in 0..2 {
                    let mut pairs = [[_mm256_setzero_si256(); 2]; N];
                    for pair in 0..2 {
                        let b = 4 * half + 2 * pair;
                        let (q0, q1) = (unpack(&wg[b]), unpack(&wg[b + 1]));
                        for t in 0..N {
                            let ag = a[t].get_unchecked(g);
                            let (p0, p1) = (block_sum(q0, &ag.qs[b]), block_sum(q1, &ag.qs[b + 1]));
                            // Lanes: [b: 01 23 | b+1: 01 23] low, same for 45 67 high.
                            pairs[t][pair] = _mm256_hadd_epi32(p0, p1);
                        }
                    }
                    for t in 0..N {
                        // Lanes: the low- and high-half sums of blocks 4·half + 0..4.
                        quads[t][half] = _mm256_hadd_epi32(pairs[t][0], pairs[t][1]);
                    }
                }
                for t in 0..N {
                    let ag = a[t].get_unchecked(g);
                    let [lo, hi] = quads[t];
                    let sums = _mm256_add_epi32(
                        _mm256_permute2x128_si256(lo, hi, 0x20),
                        _mm256_permute2x128_si256(lo, hi, 0x31),
                    );
                    let d = _mm256_mul_ps(dw, _mm256_loadu_ps(ag.d.as_ptr()));
                    acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sums), acc[t]);
                    if OFFSET != 0.0 {
                        acc_s[t] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(ag.s.as_ptr()), acc_s[t]);
                    }
                }
            }
            let mut out = [0.0f32; N];
            for t in 0..N {
                let mut tail = 0.0f32;
                for b in GROUP * groups..w.len() {
                    // SAFETY: b < w.len() and b / GROUP < a[t].len() (checked above).
                    let (wb, ag) = (w.get_unchecked(b), a[t].get_unchecked(b / GROUP));
                    let i = b % GROUP;
                    let sum = hsum_ps(_mm256_cvtepi32_ps(block_sum(unpack(wb), &ag.qs[i])));
                    let dw = f16_to_f32(wb.d);
                    tail += dw * ag.d[i] * sum + OFFSET * dw * ag.s[i];
                }
                out[t] = hsum_ps(acc[t]) + OFFSET * hsum_ps(acc_s[t]) + tail;
            }
            out
        }
    };
}

// Σ x·y for signed x: |x| as the unsigned operand, x's sign moved onto y.
block32_dot!(
    dot_q8_0,
    BlockQ8_0,
    offset: 0.0,
    unpack: |b: &BlockQ8_0| {
        let q = load_i8x32(&b.qs);
        (_mm256_sign_epi8(q, q), q)
    },
    product: |(abs, sign): (__m256i, __m256i), y: __m256i| _mm256_maddubs_epi16(abs, _mm256_sign_epi8(y, sign)),
);

// Σ (n − 8)·y = Σ n·y − 8·Σ y with the 4-bit levels n unsigned: one `maddubs` per block.
block32_dot!(
    dot_q4_0,
    BlockQ4_0,
    offset: -8.0,
    unpack: |b: &BlockQ4_0| {
        let n = nibbles_to_bytes(&b.qs);
        (n, n)
    },
    product: |(n, _): (__m256i, __m256i), y: __m256i| _mm256_maddubs_epi16(n, y),
);

// Σ (n − 16)·y with the 5-bit levels n unsigned: Q4_0's nibbles plus each element's fifth bit.
block32_dot!(
    dot_q5_0,
    BlockQ5_0,
    offset: -16.0,
    unpack: |b: &BlockQ5_0| {
        let n = _mm256_or_si256(nibbles_to_bytes(&b.qs), fifth_bits(b.qh));
        (n, n)
    },
    product: |(n, _): (__m256i, __m256i), y: __m256i| _mm256_maddubs_epi16(n, y),
);

/// Bit `e` of the little-endian `qh` → `0x10` in byte `e` (0 otherwise).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
    // Byte e gets qh's byte e / 8; OR-ing every bit but bit e % 8 makes it all-ones iff set.
    let bytes = _mm256_shuffle_epi8(
        _mm256_set1_epi32(i32::from_le_bytes(qh)),
        _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        ),
    );
    let set = _mm256_cmpeq_epi8(
        _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
        _mm256_set1_epi64x(-1),
    );
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// 16 bytes of nibbles → 32 bytes 0..15: low nibbles first (elements 0..15), then high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_to_bytes(q: &[u8; 16]) -> __m256i {
    let lo = _mm_loadu_si128(q.as_ptr().cast());
    let hi = _mm_srli_epi16(lo, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

// ---------------------------------------------------------------------------------------------
// K-quant weights against Q8_K activations.

/// The eight sums of the activations' 32-value sub-blocks as i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bsum_pairs(ab: &BlockQ8K) -> __m128i {
    _mm_loadu_si128(ab.sums32.as_ptr().cast())
}

/// Per super-block `d·d_a·Σ_j sc_j·Σ n·a_q − dmin·d_a·Σ_j m_j·bsum_pair_j`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k<const N: usize>(w: &[BlockQ4K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    check_lengths(w, &a);
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut acc_m = [_mm_setzero_ps(); N];
    for (i, wb) in w.iter().enumerate() {
        prefetch_ahead(w, i * std::mem::size_of_val(wb), std::mem::size_of_val(wb));
        let (sc, m) = q4k_scales_mins(&wb.scales);
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(m.as_ptr().cast()));
        let (d, dmin) = (f16_to_f32(wb.d), f16_to_f32(wb.dmin));
        let mut sumi = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            // Byte l of the j-th 32: element 64j + l (low nibble), 64j + 32 + l (high nibble).
            let bits = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * j).cast());
            let q_lo = _mm256_and_si256(bits, m4);
            let q_hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            let sc_lo = _mm256_set1_epi16(sc[2 * j] as i16);
            let sc_hi = _mm256_set1_epi16(sc[2 * j + 1] as i16);
            for t in 0..N {
                // SAFETY: i < w.len() == a[t].len() (checked above); 64j + 64 ≤ QK_K.
                let q8 = a[t].get_unchecked(i).qs.as_ptr().add(64 * j);
                let p_lo = _mm256_maddubs_epi16(q_lo, _mm256_loadu_si256(q8.cast()));
                let p_hi = _mm256_maddubs_epi16(q_hi, _mm256_loadu_si256(q8.add(32).cast()));
                let p = _mm256_add_epi32(
                    _mm256_madd_epi16(p_lo, sc_lo),
                    _mm256_madd_epi16(p_hi, sc_hi),
                );
                sumi[t] = _mm256_add_epi32(sumi[t], p);
            }
        }
        for t in 0..N {
            // SAFETY: as above.
            let ab = a[t].get_unchecked(i);
            acc[t] = _mm256_fmadd_ps(
                _mm256_set1_ps(d * ab.d),
                _mm256_cvtepi32_ps(sumi[t]),
                acc[t],
            );
            let pm = _mm_madd_epi16(mins, bsum_pairs(ab));
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(-dmin * ab.d), _mm_cvtepi32_ps(pm), acc_m[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(acc[t]) + hsum_ps128(acc_m[t]);
    }
    out
}

/// Byte-shuffle masks broadcasting scale `2p` to bytes 0..8 and `2p + 1` to bytes 8..16, so a
/// sign-extension gives the i16 scale vector of a 32-value register covering groups 2p, 2p + 1.
static SCALE_PAIR_SHUFFLE: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut p = 0;
    while p < 8 {
        let mut b = 0;
        while b < 16 {
            t[p][b] = (2 * p + b / 8) as u8;
            b += 1;
        }
        p += 1;
    }
    t
};

/// Per super-block `d·d_a·(Σ_g sc_g·Σ n·a_q − 32·Σ_g sc_g·bsum_g)`: the 6-bit levels `n` are
/// unsigned for `maddubs`, and the −32 offset meets the activations only through `bsums`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k<const N: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    check_lengths(w, &a);
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(0x03);
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, wb) in w.iter().enumerate() {
        prefetch_ahead(w, i * std::mem::size_of_val(wb), std::mem::size_of_val(wb));
        let scales = _mm_loadu_si128(wb.scales.as_ptr().cast());
        let scales16 = _mm256_cvtepi8_epi16(scales);
        let d = f16_to_f32(wb.d);
        let mut sumi = [_mm256_setzero_si256(); N];
        for h in 0..2 {
            let qh = _mm256_loadu_si256(wb.qh.as_ptr().add(32 * h).cast());
            let ql0 = _mm256_loadu_si256(wb.ql.as_ptr().add(64 * h).cast());
            let ql1 = _mm256_loadu_si256(wb.ql.as_ptr().add(64 * h + 32).cast());
            let high = |k: i32| match k {
                0 => _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4),
                1 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4),
                2 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4),
                _ => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4),
            };
            // Element 128h + 32k + l for k = 0..4: the layout of `BlockQ6K`.
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), high(1)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(3)),
            ];
            let mut sc = [_mm256_setzero_si256(); 4];
            for (k, s) in sc.iter_mut().enumerate() {
                let mask = _mm_loadu_si128(SCALE_PAIR_SHUFFLE[4 * h + k].as_ptr().cast());
                *s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, mask));
            }
            for t in 0..N {
                // SAFETY: i < w.len() == a[t].len() (checked above); 128h + 128 ≤ QK_K.
                let q8 = a[t].get_unchecked(i).qs.as_ptr().add(128 * h);
                for k in 0..4 {
                    let y = _mm256_loadu_si256(q8.add(32 * k).cast());
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], y), sc[k]);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        for t in 0..N {
            // SAFETY: as above.
            let ab = a[t].get_unchecked(i);
            let bsums = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales16, bsums), 5);
            let s = _mm256_sub_epi32(sumi[t], offset);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum_ps(acc[t]);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers, bit-identical to the reference ones.

/// Packs 32 i32 (in four registers, in order) to 32 i8 in order. `packs` interleaves the
/// 128-bit lanes, which the final dword permutation undoes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32x32_to_i8(v: [__m256i; 4], out: *mut i8) {
    let a = _mm256_packs_epi32(v[0], v[1]);
    let b = _mm256_packs_epi32(v[2], v[3]);
    let bytes = _mm256_packs_epi16(a, b);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out.cast(), ordered);
}

/// `quantize_row_q8_0_ref` with SIMD: `round` (ties away from zero) is `trunc(v + copysign(0.5⁻,
/// v))` with 0.5⁻ the float just below one half — the sum of 0.5⁻ and an exact tie rounds up.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), out.len() * 32);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let half_down = _mm256_set1_ps(0.499_999_97);
    for (b, chunk) in out.iter_mut().zip(x.chunks_exact(32)) {
        let mut v = [_mm256_setzero_ps(); 4];
        let mut vmax = _mm256_setzero_ps();
        for (k, v) in v.iter_mut().enumerate() {
            // SAFETY: chunk has 32 values.
            *v = _mm256_loadu_ps(chunk.as_ptr().add(8 * k));
            vmax = _mm256_max_ps(vmax, _mm256_and_ps(*v, abs_mask));
        }
        let d = hmax_ps(vmax) / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        b.d = f16::from_f32(d);
        let mut q = [_mm256_setzero_si256(); 4];
        for (q, &v) in q.iter_mut().zip(&v) {
            let p = _mm256_mul_ps(v, id);
            let bias = _mm256_or_ps(half_down, _mm256_and_ps(p, sign_mask));
            let r = _mm256_round_ps(
                _mm256_add_ps(p, bias),
                _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC,
            );
            *q = _mm256_cvtps_epi32(r);
        }
        pack_i32x32_to_i8(q, b.qs.as_mut_ptr());
    }
}

/// `quantize_row_q8_K_ref` with SIMD. `cvtps_epi32` rounds ties to even like `nearest_int`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (b, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
        let p = chunk.as_ptr();
        let mut vmax = _mm256_setzero_ps();
        for k in 0..32 {
            // SAFETY (every load of `p` below): chunk has 256 values, read 8 at a time.
            vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(p.add(8 * k)), abs_mask));
        }
        let amax = hmax_ps(vmax);
        if amax == 0.0 {
            *b = BlockQ8K::default();
            continue;
        }
        // The reference takes the sign of the *first* element of largest magnitude.
        let target = _mm256_set1_ps(amax);
        let mut first = 0;
        for k in 0..32 {
            let abs = _mm256_and_ps(_mm256_loadu_ps(p.add(8 * k)), abs_mask);
            let hit = _mm256_movemask_ps(_mm256_cmp_ps(abs, target, _CMP_EQ_OQ));
            if hit != 0 {
                first = 8 * k + hit.trailing_zeros() as usize;
                break;
            }
        }
        let iscale = -127.0 / chunk[first];
        let vscale = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        for g in 0..8 {
            let mut q = [_mm256_setzero_si256(); 4];
            for (k, q) in q.iter_mut().enumerate() {
                let v = _mm256_loadu_ps(p.add(32 * g + 8 * k));
                *q = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, vscale)), cap);
            }
            pack_i32x32_to_i8(q, b.qs.as_mut_ptr().add(32 * g));
        }
        b.fill_bsums();
        b.d = 1.0 / iscale;
    }
}

/// `x[i] = exp(x[i] − m)`, returning their sum: softmax's exponentials eight at a time
/// (Cephes' single-precision `expf` polynomial after `exp(y) = 2ⁿ·exp(r)`, within 2 ulp of libm's
/// result). Arguments below −86 give 0 (the 2ⁿ scaling would leave the normal range; relative
/// to a softmax's largest term such values are far below f32 resolution).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let p = x.as_mut_ptr();
    let vm = _mm256_set1_ps(m);
    let mut sum = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n, the length of x.
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
        _mm256_storeu_ps(p.add(i), e);
        sum = _mm256_add_ps(sum, e);
        i += 8;
    }
    let mut total = hsum_ps(sum);
    for v in &mut x[i..] {
        *v = super::scalar::exp_clamped(*v - m);
        total += *v;
    }
    total
}

/// `gate[i] = silu(gate[i]) · up[i]` eight at a time: `g · u / (1 + exp(−g))` with [`exp8`]
/// (libm's scalar `expf` took ~4% of a prefill). Where `exp8` clamps (−g above 88) the quotient
/// is below 10⁻³⁶ · |g| instead of the exact value, which is smaller still: both are zero to
/// any later sum.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let (gp, up_) = (gate.as_mut_ptr(), up.as_ptr());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n, within both slices.
        let g = _mm256_loadu_ps(gp.add(i));
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let s = _mm256_div_ps(
            _mm256_mul_ps(g, _mm256_loadu_ps(up_.add(i))),
            _mm256_add_ps(one, e),
        );
        _mm256_storeu_ps(gp.add(i), s);
        i += 8;
    }
    super::scalar::swiglu(&mut gate[i..n], &up[i..n]);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp8(y: __m256) -> __m256 {
    let low = _mm256_set1_ps(super::scalar::EXP_MIN);
    let underflow = _mm256_cmp_ps(y, low, _CMP_LT_OQ);
    let y = _mm256_min_ps(_mm256_max_ps(y, low), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps(
        _mm256_mul_ps(y, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // r = y − n·ln 2, with ln 2 split so that n·LN2_HI is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::scalar::LN2_HI), y);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::scalar::LN2_LO), r);
    let c = super::scalar::EXP_POLY;
    let mut q = _mm256_set1_ps(c[0]);
    for &k in &c[1..] {
        q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(k));
    }
    let e = _mm256_fmadd_ps(
        q,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // × 2ⁿ by adding n to the exponent field (n ∈ [−124, 127] keeps the result normal).
    let scaled = _mm256_add_epi32(
        _mm256_castps_si256(e),
        _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23),
    );
    _mm256_andnot_ps(underflow, _mm256_castsi256_ps(scaled))
}
