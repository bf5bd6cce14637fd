//! Single-pass attention of a few queries over many cached rows ("flash decoding"): what a
//! decode step of absorbed MLA needs, where every head of a token shares one latent cache.
//!
//! The two-pass form (all scores, softmax, then the weighted sum) reads each cached row twice
//! from memory, and at a few thousand positions a layer's cache (9 MB as f32 for
//! DeepSeek-V2-Lite at 4096 positions) is far larger than the caches. Here the rows are taken a
//! block at a time: the block's scores for every query, an online-softmax update (running max
//! and sum, earlier sums rescaled when the max grows), and the block's weighted sum, while the
//! block is still in L2. Rows are split into chunks over the threads, each with its own running
//! state, merged at the end. Rows stored as bf16 or Q8_0 are decoded one block at a time, once
//! for all queries.

use rayon::prelude::*;

use crate::kernels::{self, Isa, VecDot};
use crate::rows::Rows;
use crate::threads;

/// Rows per block: 64 rows of 576 f32 values (147 KB) stay in L2 between the scores and the
/// weighted sum.
const BLOCK: usize = 64;

/// Rows below which a chunk is not worth a task of its own.
const MIN_CHUNK: usize = 256;

/// `out[i] = Σ_j softmax_j(scale · q[i]·k[j]) · v[j]` over rows `j < visible[i]` of `kv`, where
/// `k[j]` is the first `k_cols` values of row `j` and `v[j]` its first `v_cols` values (MQA over a
/// latent cache: keys and values are the same rows). `q`: `[visible.len(), k_cols]`, `out`:
/// `[visible.len(), v_cols]`. A query that sees no rows gets zeros.
pub fn attend_rows(
    out: &mut [f32],
    q: &[f32],
    kv: Rows,
    visible: &[usize],
    k_cols: usize,
    v_cols: usize,
    scale: f32,
) {
    let nq = visible.len();
    assert_eq!(q.len(), nq * k_cols, "attend_rows query length");
    assert_eq!(out.len(), nq * v_cols, "attend_rows output length");
    let total = visible.iter().copied().max().unwrap_or(0);
    assert!(
        kv.holds(total, k_cols.max(v_cols)),
        "attend_rows cache rows"
    );
    if nq == 0 {
        return;
    }
    let isa = Isa::detect();
    let chunks = (2 * threads::threads())
        .min(total.div_ceil(MIN_CHUNK))
        .max(1);
    let per_chunk = total.div_ceil(chunks).div_ceil(BLOCK) * BLOCK;
    let states: Vec<State> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let rows = (c * per_chunk).min(total)..((c + 1) * per_chunk).min(total);
            let mut s = State::new(nq, v_cols);
            s.run(isa, q, kv, visible, rows, k_cols, scale);
            s
        })
        .collect();
    // Merge: each chunk's sums rescaled to the overall max.
    for (i, o) in out.chunks_exact_mut(v_cols).enumerate() {
        let m = states
            .iter()
            .map(|s| s.max[i])
            .fold(f32::NEG_INFINITY, f32::max);
        o.fill(0.0);
        if m == f32::NEG_INFINITY {
            continue; // no visible rows
        }
        let mut l = 0.0;
        for s in &states {
            if s.max[i] == f32::NEG_INFINITY {
                continue;
            }
            let f = (s.max[i] - m).exp();
            l += f * s.sum[i];
            kernels::axpy(o, f, &s.acc[i * v_cols..(i + 1) * v_cols]);
        }
        let inv = 1.0 / l;
        for v in o.iter_mut() {
            *v *= inv;
        }
    }
}

/// One chunk's online-softmax state per query: running max of the scaled scores, sum of
/// `exp(score − max)`, and the weighted value sums relative to that max.
struct State {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

impl State {
    fn new(nq: usize, v_cols: usize) -> State {
        State {
            max: vec![f32::NEG_INFINITY; nq],
            sum: vec![0.0; nq],
            acc: vec![0.0; nq * v_cols],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        isa: Isa,
        q: &[f32],
        kv: Rows,
        visible: &[usize],
        rows: std::ops::Range<usize>,
        k_cols: usize,
        scale: f32,
    ) {
        let nq = visible.len();
        let v_cols = self.acc.len() / nq;
        let width = k_cols.max(v_cols);
        let mut decoded = Vec::new();
        let mut scores = vec![0.0f32; nq * BLOCK]; // [query, row of block]
        let mut pt = vec![0.0f32; BLOCK * 8]; // [row of block, 8 queries]
        for jb in rows.clone().step_by(BLOCK) {
            let je = (jb + BLOCK).min(rows.end);
            let nb = je - jb;
            // The block's rows as f32 with row stride `stride`.
            let (block, stride) = match kv.as_f32() {
                Some(v) => (&v[jb * kv.width..], kv.width),
                None => {
                    decoded.resize(nb * width, 0.0);
                    kv.decode(jb, je, width, &mut decoded);
                    (&decoded[..], width)
                }
            };
            let row = |j: usize| &block[j * stride..][..k_cols];
            // Scores: four rows × four queries per kernel call.
            for i0 in (0..nq).step_by(4) {
                let ni = 4.min(nq - i0);
                let qi = |i: usize| &q[(i0 + i.min(ni - 1)) * k_cols..][..k_cols];
                let mut j = 0;
                while j < nb {
                    let dots = if j + 4 <= nb {
                        f32::dot_rows::<4>(
                            isa,
                            std::array::from_fn(|r| row(j + r)),
                            std::array::from_fn(qi),
                        )
                    } else {
                        let mut d = [[0.0f32; 4]; 4];
                        for (r, dr) in d.iter_mut().enumerate().take(nb - j) {
                            *dr = f32::dot_tile::<4>(isa, row(j + r), std::array::from_fn(qi));
                        }
                        d
                    };
                    for (r, dr) in dots.iter().enumerate().take((nb - j).min(4)) {
                        for (i, &d) in dr.iter().enumerate().take(ni) {
                            scores[(i0 + i) * BLOCK + j + r] = d;
                        }
                    }
                    j += 4;
                }
            }
            // Online softmax: new max per query, earlier sums rescaled, p = exp(s − max).
            for i in 0..nq {
                let seen = visible[i].saturating_sub(jb).min(nb);
                let s = &mut scores[i * BLOCK..][..nb];
                if seen == 0 {
                    s.fill(0.0);
                    continue;
                }
                let mut m = self.max[i];
                for v in &mut s[..seen] {
                    *v *= scale;
                    m = m.max(*v);
                }
                if m > self.max[i] {
                    let f = (self.max[i] - m).exp(); // 0 on the first visible block
                    self.sum[i] *= f;
                    for a in &mut self.acc[i * v_cols..(i + 1) * v_cols] {
                        *a *= f;
                    }
                    self.max[i] = m;
                }
                self.sum[i] += kernels::exp_sub_sum(isa, &mut s[..seen], m);
                s[seen..].fill(0.0);
            }
            // Weighted sums, eight queries at a time over the block's rows.
            for g0 in (0..nq).step_by(8) {
                let m = 8.min(nq - g0);
                if (g0..g0 + m).all(|i| visible[i] <= jb) {
                    continue;
                }
                pt.clear();
                for j in 0..nb {
                    pt.extend((g0..g0 + m).map(|i| scores[i * BLOCK + j]));
                }
                let a = &mut self.acc[g0 * v_cols..(g0 + m) * v_cols];
                kernels::weighted_rows_dyn(isa, m, a, &pt, block, stride);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;
    use crate::rows::{push_q8_0_row, RowData};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005) | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Two-pass attention in f64 over rows already decoded to f32.
    fn reference(
        q: &[f32],
        rows: &[f32],
        width: usize,
        visible: &[usize],
        kc: usize,
        vc: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; visible.len() * vc];
        for (i, &vis) in visible.iter().enumerate().filter(|(_, &v)| v > 0) {
            let s: Vec<f64> = (0..vis)
                .map(|j| {
                    let k = &rows[j * width..][..kc];
                    scale as f64
                        * k.iter()
                            .zip(&q[i * kc..][..kc])
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for c in 0..vc {
                let v: f64 = (0..vis).map(|j| e[j] * rows[j * width + c] as f64).sum();
                out[i * vc + c] = (v / l) as f32;
            }
        }
        out
    }

    fn check(kv: Rows, decoded: &[f32], visible: &[usize], kc: usize, vc: usize) {
        let q = values(visible.len() * kc, 7);
        // Scores of a few units, as attention has after scaling.
        let scale = 3.0 / (kc as f32).sqrt();
        let want = reference(&q, decoded, kv.width, visible, kc, vc, scale);
        let mut got = vec![f32::NAN; visible.len() * vc];
        attend_rows(&mut got, &q, kv, visible, kc, vc, scale);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // f32 sums of a few hundred products against f64: a few ulps of the largest terms.
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "query {} col {}: {g} vs {w}",
                i / vc,
                i % vc
            );
        }
    }

    #[test]
    fn matches_two_pass_attention_for_every_row_type() {
        let (kc, vc) = (72, 40); // values are the first 40 of 72
        for (n, visible) in [
            (1, vec![1]),
            (300, vec![300; 5]),
            (700, (0..19).map(|i| 700 - 37 * i).collect::<Vec<_>>()),
            (130, vec![0, 130, 64, 65]),
        ] {
            let f = values(n * kc, n as u64);
            check(Rows::f32(&f, kc), &f, &visible, kc, vc);
            let b: Vec<bf16> = f.iter().map(|&v| bf16::from_f32(v)).collect();
            let bd: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            check(
                Rows {
                    data: RowData::Bf16(&b),
                    width: kc,
                },
                &bd,
                &visible,
                kc,
                vc,
            );
            let mut q8 = Vec::new();
            for r in f.chunks(kc) {
                push_q8_0_row(&mut q8, r);
            }
            let rows = Rows {
                data: RowData::Q8_0(&q8),
                width: kc,
            };
            let mut qd = vec![0.0f32; n * kc];
            rows.decode(0, n, kc, &mut qd);
            check(rows, &qd, &visible, kc, vc);
        }
    }
}
