//! Every SIMD kernel against its scalar reference, at odd lengths and every tile width, on each
//! instruction set this CPU has (on a CPU without AVX2 these compare scalar with itself).

use half::{bf16, f16};

use super::*;
use crate::quant::{
    ActBlock, BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_0x8, GgmlType,
};

/// Block counts to test: one, a few, odd counts around SIMD and tile boundaries, and large.
const BLOCK_COUNTS: [usize; 7] = [1, 2, 3, 7, 31, 33, 1023];

/// Float dot products may differ only by summation order: relative to Σ|wᵢ·xᵢ|.
const FLOAT_DOT_REL: f32 = 1e-5;

/// Integer block kernels differ only in the order of the per-block float multiply-adds (and
/// whether they fuse): relative to Σ|block contributions|, bounded here by Σ|w|·|x| in f32.
const QUANT_DOT_REL: f32 = 2e-5;

/// Deterministic values in [−1, 1) with a few larger ones, from an LCG.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if i % 97 == 5 {
                u * 8.0
            } else {
                u
            }
        })
        .collect()
}

fn simd() -> Option<Isa> {
    Isa::available().into_iter().find(|&i| i != Isa::SCALAR)
}

fn assert_close(got: f32, want: f32, scale: f32, rel: f32, what: &str) {
    assert!(
        (got - want).abs() <= rel * scale.max(1e-30),
        "{what}: {got} vs {want} (scale {scale})"
    );
}

fn check_float<W: VecDot<Act = f32> + Copy>(
    name: &str,
    from: impl Fn(f32) -> W,
    to: impl Fn(W) -> f32,
) {
    let Some(isa) = simd() else { return };
    for n in [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1023] {
        let w: Vec<W> = values(n, 1).into_iter().map(&from).collect();
        let ws: Vec<Vec<W>> = (0..4)
            .map(|r| values(n, 20 + r).into_iter().map(&from).collect())
            .collect();
        let xs: Vec<Vec<f32>> = (0..4).map(|t| values(n, 10 + t)).collect();
        let scale = |t: usize| {
            w.iter()
                .zip(&xs[t])
                .map(|(&a, b)| (to(a) * b).abs())
                .sum::<f32>()
        };
        macro_rules! tile {
            ($($t:literal),*) => {{
                let got = W::dot_tile(isa, &w, [$(xs[$t].as_slice()),*]);
                let want = W::dot_tile(Isa::SCALAR, &w, [$(xs[$t].as_slice()),*]);
                for t in 0..got.len() {
                    assert_close(got[t], want[t], scale(t), FLOAT_DOT_REL, &format!("{name} n={n} token {t}/{}", got.len()));
                }
                // The four-row tile against the scalar kernel row by row.
                let rows = [ws[0].as_slice(), ws[1].as_slice(), ws[2].as_slice(), ws[3].as_slice()];
                let got = W::dot_rows(isa, rows, [$(xs[$t].as_slice()),*]);
                for (r, got) in got.iter().enumerate() {
                    let want = W::dot_tile(Isa::SCALAR, rows[r], [$(xs[$t].as_slice()),*]);
                    for t in 0..got.len() {
                        let scale: f32 = rows[r].iter().zip(&xs[t]).map(|(&a, b)| (to(a) * b).abs()).sum();
                        assert_close(got[t], want[t], scale, FLOAT_DOT_REL, &format!("{name} rows n={n} row {r} token {t}/{}", got.len()));
                    }
                }
            }};
        }
        tile!(0);
        tile!(0, 1);
        tile!(0, 1, 2);
        tile!(0, 1, 2, 3);
    }
}

#[test]
fn f32_bf16_f16_dots_match_scalar() {
    check_float::<f32>("f32", |v| v, |v| v);
    check_float::<bf16>("bf16", bf16::from_f32, bf16::to_f32);
    check_float::<f16>("f16", f16::from_f32, f16::to_f32);
}

#[test]
fn scalar_dot_matches_f64_sum() {
    for n in [0, 1, 3, 7, 8, 9, 31, 33, 1023] {
        let a = values(n, 3);
        let b = values(n, 4);
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        for isa in Isa::available() {
            let [got] = f32::dot_tile(isa, &a, [&b]);
            assert!((got as f64 - want).abs() < 1e-4, "{} n={n}", isa.name());
        }
    }
}

fn quantize<B: GgmlType>(x: &[f32]) -> Vec<B> {
    let mut out = vec![crate::quant::blank::<B>(); x.len() / B::BLOCK];
    B::quantize(x, &mut out);
    out
}

fn quantize_act<A: ActBlock>(isa: Isa, x: &[f32]) -> Vec<A> {
    let mut out = vec![A::default(); A::row_len(x.len())];
    A::quantize_act(isa, x, &mut out);
    out
}

fn check_quant<B: GgmlType>() {
    let Some(isa) = simd() else { return };
    for blocks in BLOCK_COUNTS {
        let n = blocks * B::BLOCK;
        let w = quantize::<B>(&values(n, 5));
        let wf = {
            let mut v = vec![0.0f32; n];
            B::dequantize(&w, &mut v);
            v
        };
        let xs: Vec<Vec<f32>> = (0..4).map(|t| values(n, 20 + t)).collect();
        let acts: Vec<Vec<B::Act>> = xs.iter().map(|x| quantize_act(Isa::SCALAR, x)).collect();
        let scale = |t: usize| {
            wf.iter()
                .zip(&xs[t])
                .map(|(a, b)| (a * b).abs())
                .sum::<f32>()
        };
        macro_rules! tile {
            ($($t:literal),*) => {{
                let got = B::dot_tile(isa, &w, [$(acts[$t].as_slice()),*]);
                let want = B::dot_tile(Isa::SCALAR, &w, [$(acts[$t].as_slice()),*]);
                for t in 0..got.len() {
                    let what = format!("{} blocks={blocks} token {t}/{}", B::NAME, got.len());
                    assert_close(got[t], want[t], scale(t), QUANT_DOT_REL, &what);
                }
            }};
        }
        tile!(0);
        tile!(0, 1);
        tile!(0, 1, 2);
        tile!(0, 1, 2, 3);
    }
}

#[test]
fn q8_0_dot_matches_scalar() {
    check_quant::<BlockQ8_0>();
}

#[test]
fn q4_0_dot_matches_scalar() {
    check_quant::<BlockQ4_0>();
}

#[test]
fn q5_0_dot_matches_scalar() {
    check_quant::<crate::quant::BlockQ5_0>();
}

#[test]
fn q4_k_dot_matches_scalar() {
    check_quant::<BlockQ4K>();
}

#[test]
fn q6_k_dot_matches_scalar() {
    check_quant::<BlockQ6K>();
}

/// The scalar integer kernels equal the float dot product of the dequantized operands, up to
/// float rounding: this pins what "scalar reference" means for each format.
#[test]
fn scalar_quant_dots_equal_dequantized_dots() {
    fn check<B: GgmlType>() {
        let n = 7 * 256;
        let w = quantize::<B>(&values(n, 8));
        let a: Vec<B::Act> = quantize_act(Isa::SCALAR, &values(n, 9));
        let (mut wf, mut af) = (vec![0.0f32; n], vec![0.0f32; n]);
        B::dequantize(&w, &mut wf);
        <B::Act as ActBlock>::dequantize_act(&a, &mut af);
        let want: f64 = wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum();
        let scale: f64 = wf
            .iter()
            .zip(&af)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        let [got] = B::dot_tile(Isa::SCALAR, &w, [&a]);
        assert!(
            (got as f64 - want).abs() <= 1e-5 * scale,
            "{}: {got} vs {want}",
            B::NAME
        );
    }
    check::<BlockQ8_0>();
    check::<BlockQ4_0>();
    check::<BlockQ4K>();
    check::<BlockQ6K>();
}

/// The SIMD activation quantizers are bit-identical to ggml's reference ones, including exact
/// rounding ties, zero blocks and a repeated largest magnitude with both signs.
#[test]
fn activation_quantizers_are_bit_exact() {
    let Some(isa) = simd() else { return };
    let mut x = values(1023 * 256, 11);
    // Ties: k + 0.5 after scaling by 127 / amax with amax = 127 in the first blocks.
    for (i, v) in x[..512].iter_mut().enumerate() {
        *v = (i % 255) as f32 - 127.0 + if i % 2 == 0 { 0.5 } else { 0.0 };
    }
    x[0] = 127.0;
    x[256] = 127.0;
    x[512..768].fill(0.0);
    x[800] = -9.0; // −9 then +9: the first of equal magnitudes sets the sign
    x[900] = 9.0;
    let a = quantize_act::<BlockQ8_0x8>(isa, &x);
    let b = quantize_act::<BlockQ8_0x8>(Isa::SCALAR, &x);
    assert!(a == b, "q8_0 activation blocks differ");
    // ... and hold exactly ggml's Q8_0 blocks.
    let ggml = quantize::<BlockQ8_0>(&x);
    for (i, want) in ggml.iter().enumerate() {
        assert_eq!(&a[i / 8].block(i % 8), want, "block {i}");
        let sum: i32 = want.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(a[i / 8].s[i % 8], want.d.to_f32() * sum as f32);
    }
    // A row of 3 blocks: one group, zero-padded.
    let short = quantize_act::<BlockQ8_0x8>(isa, &x[..96]);
    assert_eq!(short.len(), 1);
    assert!(
        short[0].d[3..].iter().all(|&d| d == 0.0)
            && short[0].qs[3..].iter().flatten().all(|&q| q == 0)
    );
    let a = quantize_act::<BlockQ8K>(isa, &x);
    let b = quantize_act::<BlockQ8K>(Isa::SCALAR, &x);
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        assert!(p == q, "q8_k block {i} differs");
    }
}

#[test]
fn q8_0_rounding_trick_equals_round_for_all_fractions() {
    // trunc(v + copysign(0.5⁻, v)) == round(v): check exhaustively on a fine grid near ties.
    let Some(isa) = simd() else { return };
    let mut x = Vec::new();
    for k in -128..128 {
        for f in [
            -0.5000001f32,
            -0.5,
            -0.4999999,
            0.0,
            0.4999999,
            0.5,
            0.5000001,
        ] {
            x.push(k as f32 + f);
        }
    }
    x.resize(x.len().div_ceil(32) * 32, 0.0);
    // Every block gets amax = 127 exactly so `id` = 1 and the values are rounded as they are.
    for chunk in x.chunks_exact_mut(32) {
        chunk[31] = 127.0;
        for v in chunk.iter_mut() {
            *v = v.clamp(-127.0, 127.0);
        }
    }
    assert!(quantize_act::<BlockQ8_0x8>(isa, &x) == quantize_act::<BlockQ8_0x8>(Isa::SCALAR, &x));
}

#[test]
fn avx2_f16_scale_conversion_is_exact() {
    if simd().map(|i| i.0) != Some(IsaKind::Avx2) {
        return;
    }
    for bits in 0..=0xffffu16 {
        let h = f16::from_bits(bits);
        if !h.is_finite() {
            continue;
        }
        // SAFETY: AVX2, FMA and F16C were detected (simd() == Avx2).
        let got = unsafe { super::avx2::f16_to_f32_for_tests(h) };
        assert_eq!(got.to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
    }
}

/// [`crate::quant::Interleaved::dot_tile`] on separate activation rows, interleaved into the
/// tile it reads.
fn x16_tile<B: crate::quant::Interleaved, const N: usize>(
    isa: Isa,
    w: &[B],
    a: [&[crate::quant::Act<B>]; N],
) -> [[f32; crate::quant::ROWS]; N] {
    let len = a[0].len();
    let flat: Vec<_> = a.iter().flat_map(|row| row.iter().copied()).collect();
    let rows: Vec<usize> = (0..N).collect();
    B::dot_tile::<N>(isa, w, &B::tile(isa, &flat, len, &rows))
}

/// The interleaved kernels on every instruction set (AVX-512 VNNI where present, otherwise the
/// unpack-and-dot reference) against ggml's row-major scalar kernel, row by row, for every tile
/// width 1–8 and block counts that leave partial activation groups.
fn check_x16<B: crate::quant::Interleaved>() {
    use crate::quant::{pack_matrix, unpack_row, Act, ROWS};
    for blocks in [1, 2, 7, 8, 9, 31, 64] {
        let n = blocks * B::Plain::BLOCK;
        let plain = quantize::<B::Plain>(&values(ROWS * n, 7));
        let packed = pack_matrix::<B>(&[&plain], blocks);
        for r in 0..ROWS {
            let row = unpack_row(&packed, blocks, r);
            let (got, want) = (&row[..], &plain[r * blocks..(r + 1) * blocks]);
            assert!(crate::quant::blocks_as_bytes(got) == crate::quant::blocks_as_bytes(want));
        }
        let acts: Vec<Vec<Act<B>>> = (0..8)
            .map(|t| quantize_act(Isa::SCALAR, &values(n, 40 + t)))
            .collect();
        macro_rules! tile {
            ($($t:literal),*) => {{
                let a = [$(acts[$t].as_slice()),*];
                for isa in Isa::available() {
                    let got = x16_tile::<B, _>(isa, &packed, a);
                    for r in 0..ROWS {
                        let row = &plain[r * blocks..(r + 1) * blocks];
                        let want = B::Plain::dot_tile(Isa::SCALAR, row, a);
                        let wf = {
                            let mut v = vec![0.0f32; n];
                            B::Plain::dequantize(row, &mut v);
                            v
                        };
                        for t in 0..a.len() {
                            let mut x = vec![0.0f32; acts[t].len() * Act::<B>::VALUES];
                            Act::<B>::dequantize_act(&acts[t], &mut x);
                            let scale: f32 = wf.iter().zip(&x).map(|(w, x)| (w * x).abs()).sum();
                            let what = format!("{} x16 {} blocks={blocks} row {r} token {t}/{}",
                                B::Plain::NAME, isa.name(), a.len());
                            assert_close(got[t][r], want[t], scale, QUANT_DOT_REL, &what);
                        }
                    }
                }
            }};
        }
        tile!(0);
        tile!(0, 1);
        tile!(0, 1, 2);
        tile!(0, 1, 2, 3);
        tile!(0, 1, 2, 3, 4);
        tile!(0, 1, 2, 3, 4, 5);
        tile!(0, 1, 2, 3, 4, 5, 6);
        tile!(0, 1, 2, 3, 4, 5, 6, 7);
    }
}

#[test]
fn q8_0x16_dot_matches_scalar() {
    check_x16::<crate::quant::BlockQ8_0x16>();
}

#[test]
fn q4_0x16_dot_matches_scalar() {
    check_x16::<crate::quant::BlockQ4_0x16>();
}

#[test]
fn q5_0x16_dot_matches_scalar() {
    check_x16::<crate::quant::BlockQ5_0x16>();
}

#[test]
fn q4_kx16_dot_matches_scalar() {
    check_x16::<crate::quant::BlockQ4Kx16>();
}

#[test]
fn q6_kx16_dot_matches_scalar() {
    check_x16::<crate::quant::BlockQ6Kx16>();
}

/// The FMA axpy equals the scalar one up to the rounding FMA skips (one per element), at odd
/// lengths around the 8-lane boundary.
#[test]
fn axpy_matches_scalar() {
    for n in [0, 1, 7, 8, 9, 31, 513] {
        let x = values(n, 11);
        let y0 = values(n, 12);
        let mut want = y0.clone();
        scalar::axpy(&mut want, 0.37, &x);
        let mut got = y0.clone();
        axpy(&mut got, 0.37, &x);
        for i in 0..n {
            let scale = y0[i].abs() + (0.37 * x[i]).abs();
            assert_close(got[i], want[i], scale, 1e-6, &format!("axpy n={n} i={i}"));
        }
    }
}

/// The register-tiled weighted row sums on every instruction set against the scalar loop, for
/// every tile height 1–8 and column counts around the 8-lane strips.
#[test]
fn weighted_rows_match_scalar() {
    fn check<const N: usize>() {
        for (rows, cols, stride) in [
            (1, 1, 1),
            (5, 8, 8),
            (64, 13, 20),
            (7, 45, 50),
            (3, 100, 100),
            (33, 512, 576),
        ] {
            let p = values(rows * N, 13);
            let w = values(rows * stride, 14);
            let start = values(N * cols, 15);
            let mut want = start.clone();
            weighted_rows::<N>(Isa::SCALAR, &mut want, &p, &w, stride);
            for isa in Isa::available() {
                let mut got = start.clone();
                weighted_rows::<N>(isa, &mut got, &p, &w, stride);
                for (i, (&g, &v)) in got.iter().zip(&want).enumerate() {
                    let (t, c) = (i / cols, i % cols);
                    let scale: f32 = start[i].abs()
                        + (0..rows)
                            .map(|j| (p[j * N + t] * w[j * stride + c]).abs())
                            .sum::<f32>();
                    let what = format!(
                        "weighted_rows N={N} {} rows={rows} cols={cols} i={i}",
                        isa.name()
                    );
                    assert_close(g, v, scale, FLOAT_DOT_REL, &what);
                }
            }
        }
    }
    check::<1>();
    check::<2>();
    check::<3>();
    check::<4>();
    check::<5>();
    check::<6>();
    check::<7>();
    check::<8>();
}

/// `n` values spread over `[top − width, top]` in a scrambled order (step 37 of 101).
fn spread(n: usize, top: f32, width: f32) -> Vec<f32> {
    (0..n)
        .map(|i| top - width * ((i * 37 % 101) as f32 / 100.0))
        .collect()
}

#[test]
fn softmax_exponentials_match_libm() {
    for isa in Isa::available() {
        for n in [1, 7, 8, 9, 31, 1000] {
            // Scores spread over [m − 100, m] so some fall below the cutoff.
            let x = spread(n, 3.0, 100.0);
            let mut got = x.clone();
            let sum = exp_sub_sum(isa, &mut got, 3.0);
            let mut want_sum = 0.0f64;
            for (&g, &v) in got.iter().zip(&x) {
                let y = (v - 3.0) as f64;
                if y < scalar::EXP_MIN as f64 {
                    assert_eq!(g, 0.0, "{isa:?}: exp({y}) below the cutoff");
                    continue;
                }
                let want = y.exp();
                want_sum += want;
                // Cephes' polynomial is within 2 ulp; 4 ulp of slack for the range reduction.
                assert!(
                    ((g as f64 - want) / want).abs() < 4.0 * f32::EPSILON as f64,
                    "{isa:?}: exp({y}) = {g}, want {want}"
                );
            }
            assert!(
                ((sum as f64 - want_sum) / want_sum).abs() < 1e-6,
                "{isa:?} sum"
            );
        }
    }
}

#[test]
fn swiglu_matches_f64() {
    for isa in Isa::available() {
        for n in [1, 7, 8, 9, 31, 1000] {
            // Gates over [−120, 120]: both tails of the exponential, and the clamp past 88.
            let gate = spread(n, 120.0, 240.0);
            let up: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
            let mut got = gate.clone();
            swiglu(isa, &mut got, &up);
            for ((&g, &x), &u) in got.iter().zip(&gate).zip(&up) {
                let want = x as f64 / (1.0 + (-x as f64).exp()) * u as f64;
                // exp within 4 ulp (as above), one rounding each for ·, + and ÷: 8 ulp of the
                // result, or an absolute 1e-30 where the exact value is below f32's normal range.
                let err = (g as f64 - want).abs();
                assert!(
                    err <= 8.0 * f32::EPSILON as f64 * want.abs() || err < 1e-30,
                    "{isa:?}: swiglu({x}, {u}) = {g}, want {want}"
                );
            }
        }
    }
}
