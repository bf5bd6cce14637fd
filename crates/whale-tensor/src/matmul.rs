//! `out = x · Wᵀ` for every weight storage: the only `match` on a dtype in whale, and the one
//! place where tiling and threading are written.
//!
//! Work is split over output rows on the persistent rayon pool ([`crate::threads`]). Activations
//! are converted once per call (quantized to the weight's activation block type for block
//! formats), never per row. Within a task, rows are taken `ROW_GROUP` at a time and every token
//! tile (`TILE` tokens) passes over the group while it sits in L1: each weight block is fetched
//! from memory once per call and decoded once per `TILE` tokens.

use rayon::prelude::*;

use crate::kernels::{self, Isa, VecDot};
use crate::quant::{Act, ActBlock, GgmlType, Interleaved, ROWS};
use crate::rows::{RowData, Rows};
use crate::threads;
use crate::weight::{Weight, WeightData};

/// Tokens per tile: the most whose accumulators fit in AVX2's 16 registers next to a decoded
/// weight block.
const TILE: usize = 4;

/// Weight rows kept in L1 while every token tile passes over them: the weight is streamed from
/// memory once, and the activations once per group rather than once per row.
const ROW_GROUP: usize = 4;

/// Rows of a borrowed matrix ([`Rows`]) taken a block at a time: decoded when not f32, and
/// kept in L2 while the sums pass over them.
const ROW_BLOCK: usize = 64;

/// Multiply-adds below which splitting into tasks costs more than it saves.
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// `out[t, rows] = x[t, cols] · wᵀ` for `n_tokens` input rows, with the detected ISA.
pub fn matmul(out: &mut [f32], x: &[f32], w: &Weight, n_tokens: usize) {
    matmul_with(Isa::detect(), out, x, w, n_tokens);
}

/// [`matmul`] with an explicit instruction set (`Isa::SCALAR` is the reference path; benchmarks
/// and tests compare the two in one process).
pub fn matmul_with(isa: Isa, out: &mut [f32], x: &[f32], w: &Weight, n_tokens: usize) {
    heads_with(isa, out, x, w, 1, n_tokens);
}

/// A batched matmul over heads: `w` stacks `heads` matrices of `w.rows / heads` rows each,
/// `x` is `[t, heads, cols]` and `out[t, g, ·] = x[t, g, ·] · W_gᵀ`, so `out` is `[t, heads,
/// w.rows / heads]`. One parallel region for all heads instead of one small matmul per head
/// (MLA's absorbed per-head projections: sixteen 70 KB matrices per layer and token).
/// Interleaved weights need `w.rows / heads` to be a multiple of 16 (see [`Weight::for_isa`]).
pub fn matmul_heads(out: &mut [f32], x: &[f32], w: &Weight, heads: usize, n_tokens: usize) {
    heads_with(Isa::detect(), out, x, w, heads, n_tokens);
}

fn heads_with(isa: Isa, out: &mut [f32], x: &[f32], w: &Weight, heads: usize, n_tokens: usize) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(
        heads >= 1 && rows % heads == 0,
        "{rows} rows in {heads} heads"
    );
    assert_eq!(x.len(), n_tokens * heads * cols, "matmul input length");
    assert_eq!(out.len(), n_tokens * rows, "matmul output length");
    if n_tokens == 0 || rows == 0 {
        return;
    }
    threads::threads(); // build the pool with its default size before rayon's first use
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let shape = Shape {
        rows,
        cols,
        n_tokens,
        heads,
    };
    match &w.data {
        WeightData::F32(v) => tiled(isa, shape, v, x, out),
        WeightData::F16(v) => tiled(isa, shape, v, x, out),
        WeightData::Bf16(v) => tiled(isa, shape, v, x, out),
        WeightData::Fp8Block { .. } => decoded(isa, shape, w, x, out),
        WeightData::Q8_0(v) => quantized(isa, shape, v, x, out),
        WeightData::Q4_0(v) => quantized(isa, shape, v, x, out),
        WeightData::Q5_0(v) => quantized(isa, shape, v, x, out),
        WeightData::Q4K(v) => quantized(isa, shape, v, x, out),
        WeightData::Q6K(v) => quantized(isa, shape, v, x, out),
        WeightData::Q8_0x16(v) => interleaved(isa, shape, v, x, out),
        WeightData::Q4_0x16(v) => interleaved(isa, shape, v, x, out),
        WeightData::Q5_0x16(v) => interleaved(isa, shape, v, x, out),
        WeightData::Q4Kx16(v) => interleaved(isa, shape, v, x, out),
        WeightData::Q6Kx16(v) => interleaved(isa, shape, v, x, out),
    }
}

/// `out[t, rows] = x[t, cols] · wᵀ` for the first `rows` rows of a borrowed matrix (e.g. an
/// attention cache, each row's first `cols` values): each row of `w` is read once for all
/// `n_tokens` rows of `x`, tiled and threaded as [`matmul`]. Whole Q8_0 rows are scored with
/// integer dot products against the queries quantized to Q8_0; other rows not stored as f32
/// are decoded `ROW_BLOCK` at a time into an f32 block that stays in cache while it is used.
pub fn matmul_rows(out: &mut [f32], x: &[f32], w: Rows, rows: usize, cols: usize, n_tokens: usize) {
    assert_eq!(x.len(), n_tokens * cols, "matmul_rows input length");
    assert_eq!(out.len(), n_tokens * rows, "matmul_rows output length");
    assert!(w.holds(rows, cols), "matmul_rows matrix length");
    if n_tokens == 0 || rows == 0 {
        return;
    }
    threads::threads();
    let isa = Isa::detect();
    if let (Some(v), true) = (w.as_f32(), cols == w.width) {
        let shape = Shape {
            rows,
            cols,
            n_tokens,
            heads: 1,
        };
        return tiled(isa, shape, &v[..rows * cols], x, out);
    }
    if let (RowData::Q8_0(v), true) = (w.data, cols == w.width) {
        // Whole Q8_0 rows: the queries quantized once and integer dot products, as llama.cpp
        // scores a q8_0 cache (the rows' zero padding meets zero-padded queries).
        let padded = cols.div_ceil(32) * 32;
        let mut xp = vec![0.0f32; n_tokens * padded];
        for (d, s) in xp.chunks_exact_mut(padded).zip(x.chunks_exact(cols)) {
            d[..cols].copy_from_slice(s);
        }
        let shape = Shape {
            rows,
            cols: padded,
            n_tokens,
            heads: 1,
        };
        return quantized(isa, shape, &v[..rows * padded / 32], &xp, out);
    }
    let parts: Vec<Vec<f32>> = (0..rows)
        .into_par_iter()
        .step_by(ROW_BLOCK)
        .map(|j0| {
            let j1 = (j0 + ROW_BLOCK).min(rows);
            let mut block = vec![0.0f32; (j1 - j0) * cols];
            w.decode(j0, j1, cols, &mut block);
            let mut part = vec![0.0f32; n_tokens * (j1 - j0)];
            let shape = Shape {
                rows: j1 - j0,
                cols,
                n_tokens,
                heads: 1,
            };
            tiled(isa, shape, &block, x, &mut part);
            part
        })
        .collect();
    for (b, part) in parts.iter().enumerate() {
        let (j0, n) = (b * ROW_BLOCK, part.len() / n_tokens);
        for (t, p) in part.chunks_exact(n).enumerate() {
            out[t * rows + j0..][..n].copy_from_slice(p);
        }
    }
}

/// `out[t, :cols] = Σ_j p[t, j] · w[j, :cols]` for `t < n` (`p`: `[n, rows]`, `w`: at least
/// `rows` rows, their first `cols` values used): probability-weighted sums of matrix rows, as
/// attention sums values.
/// Every row is read once per eight sums by a register-tiled kernel. With few `t` (decode: one
/// token's heads, whose sums fit in L2) the rows are split across threads and the partial sums
/// added at the end; with many, each task owns eight `t` and skips the rows after their last
/// nonzero weight (masked positions).
pub fn weighted_rows(out: &mut [f32], p: &[f32], w: Rows, rows: usize, cols: usize) {
    let n = p.len() / rows.max(1);
    assert_eq!(out.len(), n * cols, "weighted_rows output length");
    assert!(w.holds(rows, cols), "weighted_rows matrix length");
    if rows == 0 || cols == 0 {
        out.fill(0.0);
        return;
    }
    // Rows in blocks (ROW_BLOCK) that stay in L2 while every 8-column strip of the sums passes
    // over them; the block's weights transposed to [row, t] so each row's N weights sit
    // together. Rows not stored as f32 are decoded a block at a time.
    let isa = Isa::detect();
    // Sums for t in ts over rows js, added into acc ([ts.len(), cols]): each block of rows
    // is read once for all of ts, eight sums at a time.
    let accumulate = |acc: &mut [f32], ts: std::ops::Range<usize>, js: std::ops::Range<usize>| {
        let mut pt = Vec::with_capacity(ROW_BLOCK * 8);
        let mut decoded = Vec::new();
        for jb in js.clone().step_by(ROW_BLOCK) {
            let je = (jb + ROW_BLOCK).min(js.end);
            let (wb, stride) = match w.as_f32() {
                Some(v) => (&v[jb * w.width..], w.width),
                None => {
                    decoded.resize((je - jb) * cols, 0.0);
                    w.decode(jb, je, cols, &mut decoded);
                    (&decoded[..], cols)
                }
            };
            for g0 in ts.clone().step_by(8) {
                let m = 8.min(ts.end - g0);
                pt.clear();
                for j in jb..je {
                    pt.extend((g0..g0 + m).map(|t| p[t * rows + j]));
                }
                let a = &mut acc[(g0 - ts.start) * cols..(g0 - ts.start + m) * cols];
                kernels::weighted_rows_dyn(isa, m, a, &pt, wb, stride);
            }
        }
    };
    let threads = threads::threads();
    // Many sums (prefill): each task owns eight of them, so every row is read once per eight.
    // Per-task accumulators for every t must stay cache-resident for the row split to pay.
    if n * cols > 64 * 1024 {
        out.fill(0.0);
        out.par_chunks_mut(8 * cols).enumerate().for_each(|(g, o)| {
            let ts = 8 * g..8 * g + o.len() / cols;
            // Rows past every sum's last nonzero weight (the causal mask) are skipped.
            let end = ts
                .clone()
                .map(|t| p[t * rows..(t + 1) * rows].iter().rposition(|&v| v != 0.0))
                .max()
                .flatten()
                .map_or(0, |j| j + 1);
            accumulate(o, ts, 0..end);
        });
        return;
    }
    let per_task = rows.div_ceil(threads * 2).max(64);
    let partials: Vec<Vec<f32>> = (0..rows)
        .into_par_iter()
        .step_by(per_task)
        .map(|j0| {
            let mut acc = vec![0.0f32; n * cols];
            accumulate(&mut acc, 0..n, j0..(j0 + per_task).min(rows));
            acc
        })
        .collect();
    out.fill(0.0);
    for part in partials {
        crate::ops::axpy(out, 1.0, &part);
    }
}

#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    cols: usize,
    n_tokens: usize,
    /// Row blocks with their own activation rows ([`matmul_heads`]); 1 for a plain matmul.
    heads: usize,
}

impl Shape {
    /// Rows per head.
    fn head_rows(self) -> usize {
        self.rows / self.heads
    }

    /// Index of the activation row that token `t` uses for weight row `r`.
    fn act_row(self, t: usize, r: usize) -> usize {
        t * self.heads + r / self.head_rows()
    }

    /// Rows per parallel task: about eight tasks per thread (balance on a shared machine), at
    /// least 16 rows, and everything in one task when the product is small.
    fn rows_per_task(self) -> usize {
        let work = self.rows * self.cols * self.n_tokens;
        if work < MIN_PARALLEL_WORK {
            return self.rows;
        }
        self.rows.div_ceil(threads::threads() * 8).max(16)
    }
}

/// Quantizes the activations to `B::Act` blocks once, then runs the tiled integer kernels.
fn quantized<B: GgmlType>(isa: Isa, s: Shape, w: &[B], x: &[f32], out: &mut [f32]) {
    let acts = quantize_acts::<B::Act>(isa, s, x);
    tiled(isa, s, w, &acts, out);
}

/// Each token's activations as `A` blocks (tokens in parallel).
fn quantize_acts<A: ActBlock>(isa: Isa, s: Shape, x: &[f32]) -> Vec<A> {
    let per_token = A::row_len(s.cols);
    let mut acts = vec![A::default(); s.n_tokens * s.heads * per_token];
    if s.n_tokens * s.heads == 1 {
        A::quantize_act(isa, x, &mut acts);
    } else {
        acts.par_chunks_mut(per_token)
            .zip(x.par_chunks(s.cols))
            .for_each(|(a, x)| A::quantize_act(isa, x, a));
    }
    acts
}

/// The widest token tile the interleaved matmul instantiates (the `match` below); a format's
/// [`Interleaved::TILE`] may ask for less where its kernel's registers run out sooner.
const TILE_X16: usize = 8;

/// Sixteen-row groups of interleaved blocks against every token, [`Interleaved::TILE`] tokens
/// at a time; the group (16 rows × cols) stays in L1/L2 while the tiles pass over it.
fn interleaved<B: Interleaved>(isa: Isa, s: Shape, w: &[B], x: &[f32], out: &mut [f32]) {
    assert_eq!(
        s.head_rows() % ROWS,
        0,
        "interleaved heads need whole row groups"
    );
    let acts = quantize_acts::<Act<B>>(isa, s, x);
    let a_len = acts.len() / (s.n_tokens * s.heads);
    let per_row = s.cols / B::Plain::BLOCK;
    let groups = s.rows / ROWS;
    let out = SharedOut::new(out);
    let groups_per_task = s.rows_per_task().div_ceil(ROWS);
    // The token tiles' activations, interleaved once per matmul as the kernels read them:
    // `tiles[k · heads + h]` is tile k (tokens `tile·k ..`) against head h's rows.
    let tile = B::TILE.min(TILE_X16);
    let tiles: Vec<B::Tile> = (0..s.n_tokens.div_ceil(tile))
        .flat_map(|k| {
            let tokens = k * tile..(k * tile + tile).min(s.n_tokens);
            (0..s.heads).map(move |h| (tokens.clone(), h))
        })
        .map(|(tokens, h)| {
            let rows: Vec<usize> = tokens.map(|t| s.act_row(t, h * s.head_rows())).collect();
            B::tile(isa, &acts, a_len, &rows)
        })
        .collect();
    let task = |first: usize| {
        for g in first..(first + groups_per_task).min(groups) {
            let wg = &w[g * per_row..(g + 1) * per_row];
            let head = g * ROWS / s.head_rows();
            for (k, t0) in (0..s.n_tokens).step_by(tile).enumerate() {
                let n = tile.min(s.n_tokens - t0);
                let a = &tiles[k * s.heads + head];
                let put = |dots: &[[f32; ROWS]]| {
                    for (i, d) in dots.iter().enumerate() {
                        // SAFETY: rows 16g..16g + 16 belong to this task alone.
                        unsafe { out.write_slice((t0 + i) * s.rows + g * ROWS, d) };
                    }
                };
                match n {
                    1 => put(&B::dot_tile::<1>(isa, wg, a)),
                    2 => put(&B::dot_tile::<2>(isa, wg, a)),
                    3 => put(&B::dot_tile::<3>(isa, wg, a)),
                    4 => put(&B::dot_tile::<4>(isa, wg, a)),
                    5 => put(&B::dot_tile::<5>(isa, wg, a)),
                    6 => put(&B::dot_tile::<6>(isa, wg, a)),
                    7 => put(&B::dot_tile::<7>(isa, wg, a)),
                    _ => put(&B::dot_tile::<8>(isa, wg, a)),
                }
            }
        }
    };
    if groups_per_task >= groups {
        task(0);
    } else {
        threads::for_each_task(groups.div_ceil(groups_per_task), |i| {
            task(i * groups_per_task)
        });
    }
}

/// The output written by disjoint row ranges from several tasks at once.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write disjoint indices (each owns its rows), and the borrow of the slice behind
// `ptr` outlives the parallel region that uses it.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(out: &mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// # Safety
    /// No other thread may access index `i` during the parallel region.
    #[inline]
    unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        // SAFETY: in bounds (asserted), and exclusive by the caller's contract.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// Writes `v` at indices `i..i + v.len()` as one copy (a row group's sixteen sums for a
    /// token: element by element, those stores were 4% of a prefill's cycles).
    ///
    /// # Safety
    /// No other thread may access those indices during the parallel region.
    #[inline]
    unsafe fn write_slice(&self, i: usize, v: &[f32]) {
        assert!(i + v.len() <= self.len);
        // SAFETY: in bounds (asserted), and exclusive by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(i), v.len()) }
    }
}

/// Writes a four-row tile of dot products: `dots[i][k]` is row `group + i` for token `t0 + k`
/// of an output with `rows` columns per token.
fn write_rows<const N: usize>(
    out: &SharedOut,
    (rows, t0, group): (usize, usize, usize),
    dots: [[f32; N]; ROW_GROUP],
) {
    for (i, d) in dots.iter().enumerate() {
        for (k, &v) in d.iter().enumerate() {
            // SAFETY: the rows of a group belong to one task alone.
            unsafe { out.write((t0 + k) * rows + group + i, v) };
        }
    }
}

/// Rows of `w` (each `w.len() / rows` elements) against token rows of `acts`, tiled over tokens.
fn tiled<W: VecDot>(isa: Isa, s: Shape, w: &[W], acts: &[W::Act], out: &mut [f32]) {
    let w_len = w.len() / s.rows;
    let a_len = acts.len() / (s.n_tokens * s.heads);
    let out = SharedOut::new(out);
    let rows_per_task = s.rows_per_task();
    let task = |first: usize| {
        let last = (first + rows_per_task).min(s.rows);
        let mut group = first;
        while group < last {
            // A group never spans two heads: its rows share their activation rows.
            let head_end = (group / s.head_rows() + 1) * s.head_rows();
            let group_end = (group + ROW_GROUP).min(last).min(head_end);
            let mut t0 = 0;
            while t0 < s.n_tokens {
                let n = TILE.min(s.n_tokens - t0);
                let act = |i: usize| &acts[s.act_row(t0 + i, group) * a_len..][..a_len];
                if group_end - group == ROW_GROUP {
                    let rows = std::array::from_fn(|i| &w[(group + i) * w_len..][..w_len]);
                    let at = (s.rows, t0, group);
                    match n {
                        1 => write_rows(&out, at, W::dot_rows(isa, rows, [act(0)])),
                        2 => write_rows(&out, at, W::dot_rows(isa, rows, [act(0), act(1)])),
                        3 => write_rows(&out, at, W::dot_rows(isa, rows, [act(0), act(1), act(2)])),
                        _ => write_rows(
                            &out,
                            at,
                            W::dot_rows::<TILE>(isa, rows, std::array::from_fn(act)),
                        ),
                    }
                    t0 += n;
                    continue;
                }
                for r in group..group_end {
                    let wr = &w[r * w_len..(r + 1) * w_len];
                    let put = |dots: &[f32]| {
                        for (i, &d) in dots.iter().enumerate() {
                            // SAFETY: row r belongs to this task alone.
                            unsafe { out.write((t0 + i) * s.rows + r, d) };
                        }
                    };
                    match n {
                        1 => put(&W::dot_tile(isa, wr, [act(0)])),
                        2 => put(&W::dot_tile(isa, wr, [act(0), act(1)])),
                        3 => put(&W::dot_tile(isa, wr, [act(0), act(1), act(2)])),
                        _ => put(&W::dot_tile(isa, wr, [act(0), act(1), act(2), act(3)])),
                    }
                }
                t0 += n;
            }
            group = group_end;
        }
    };
    if rows_per_task >= s.rows {
        task(0);
    } else {
        threads::for_each_task(s.rows.div_ceil(rows_per_task), |i| task(i * rows_per_task));
    }
}

/// Weights without a direct kernel (FP8 blocks): each row decoded to `f32` once per call into a
/// per-task buffer, then dotted with every token.
fn decoded(isa: Isa, s: Shape, w: &Weight, x: &[f32], out: &mut [f32]) {
    let out = SharedOut::new(out);
    let rows_per_task = s.rows_per_task();
    let dot = |a: &[f32], b: &[f32]| f32::dot_tile(isa, a, [b])[0];
    (0..s.rows)
        .into_par_iter()
        .step_by(rows_per_task)
        .for_each_init(
            || vec![0.0f32; s.cols],
            |row, first| {
                for r in first..(first + rows_per_task).min(s.rows) {
                    w.row_into(r, row);
                    for t in 0..s.n_tokens {
                        let d = dot(row, &x[s.act_row(t, r) * s.cols..][..s.cols]);
                        // SAFETY: row r belongs to this task alone.
                        unsafe { out.write(t * s.rows + r, d) };
                    }
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{BlockQ8_0, QuantType};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                // Sum of two uniforms: bell-ish, in (−1, 1).
                ((s & 0xffff) as f32 + (s >> 16) as f32) / 65536.0 - 1.0
            })
            .collect()
    }

    fn f64_matmul(x: &[f32], w: &[f32], t: usize, rows: usize, cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; t * rows];
        for i in 0..t {
            for r in 0..rows {
                out[i * rows + r] = (0..cols)
                    .map(|k| x[i * cols + k] as f64 * w[r * cols + k] as f64)
                    .sum();
            }
        }
        out
    }

    fn relative_error(got: &[f32], want: &[f64]) -> f64 {
        let err: f64 = got
            .iter()
            .zip(want)
            .map(|(&g, &w)| (g as f64 - w).powi(2))
            .sum();
        let norm: f64 = want.iter().map(|w| w * w).sum();
        (err / norm).sqrt()
    }

    /// ‖y_quant − y_f32‖ / ‖y_f32‖ bounds with a quantized weight *and* quantized activations
    /// (uniform-sum test data). Measured: f32 2e-7, bf16 0.16%, Q8_0 0.67% (weight and
    /// activation errors add), Q6_K 1.6%, Q4_K 6.6%, Q4_0 7.5%; bounds sit ~30% above.
    const MATMUL_REL: [(QuantType, f64); 6] = [
        (QuantType::F32, 1e-6),
        (QuantType::Bf16, 0.0022),
        (QuantType::Q8_0, 0.0088),
        (QuantType::Q6K, 0.021),
        (QuantType::Q4K, 0.086),
        (QuantType::Q4_0, 0.098),
    ];

    #[test]
    fn quantized_matmul_is_close_to_f32() {
        let (t, rows, cols) = (5, 96, 1024);
        let wf = values(rows * cols, 1);
        let x = values(t * cols, 2);
        let want = f64_matmul(&x, &wf, t, rows, cols);
        let w32 = Weight::from_f32(rows, cols, wf);
        for (q, bound) in MATMUL_REL {
            let w = w32.quantize(q).unwrap();
            for isa in Isa::available() {
                let mut got = vec![0.0; t * rows];
                matmul_with(isa, &mut got, &x, &w, t);
                let err = relative_error(&got, &want);
                assert!(
                    err < bound,
                    "{q} on {}: relative error {err} ≥ {bound}",
                    isa.name()
                );
            }
        }
    }

    /// The tiled, threaded matmul equals the dequantized weight times the dequantized
    /// activations for every token count (tiles 1–4 and remainders) and row count (one task and
    /// many), on every instruction set.
    #[test]
    fn matmul_matches_dequantized_reference_at_odd_shapes() {
        use crate::quant::{ActBlock, BlockQ8K, BlockQ8_0x8};
        for &(t, rows, cols) in &[
            (1, 1, 256),
            (2, 3, 512),
            (3, 17, 256),
            (5, 33, 768),
            (9, 130, 512),
            (1, 700, 256),
        ] {
            let wf = values(rows * cols, 3);
            let x = values(t * cols, 4);
            for q in [
                QuantType::Q8_0,
                QuantType::Q4_0,
                QuantType::Q4K,
                QuantType::Q6K,
            ] {
                let w = Weight::from_f32(rows, cols, wf.clone())
                    .quantize(q)
                    .unwrap();
                // What the kernels see: dequantized weights, and activations through their format.
                let mut xa = vec![0.0f32; x.len()];
                for (x, xa) in x.chunks(cols).zip(xa.chunks_mut(cols)) {
                    if q.block_size() == 32 {
                        let mut a = vec![BlockQ8_0x8::default(); BlockQ8_0x8::row_len(cols)];
                        BlockQ8_0x8::quantize_ref(x, &mut a);
                        BlockQ8_0x8::dequantize_act(&a, xa);
                    } else {
                        let mut a = vec![BlockQ8K::default(); BlockQ8K::row_len(cols)];
                        BlockQ8K::quantize_ref(x, &mut a);
                        BlockQ8K::dequantize_act(&a, xa);
                    }
                }
                let want = f64_matmul(&xa, &w.to_f32(), t, rows, cols);
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; t * rows];
                    matmul_with(isa, &mut got, &x, &w, t);
                    let err = relative_error(&got, &want);
                    assert!(
                        err < 1e-5,
                        "{q} {}: t={t} rows={rows} cols={cols}: {err}",
                        isa.name()
                    );
                }
            }
        }
    }

    /// A batched matmul over heads equals one matmul per head, bit for bit, for float,
    /// row-major and interleaved block weights (heads of 6 rows split the four-row groups of
    /// the row-major path; heads of 32 and 48 rows are whole interleaved groups), every ISA.
    #[test]
    fn matmul_heads_equals_a_matmul_per_head() {
        let to = |q: Option<QuantType>, rows: usize, cols: usize, v: &[f32], x16: bool| {
            let w = Weight::from_f32(rows, cols, v.to_vec());
            let w = match q {
                Some(q) => w.quantize(q).unwrap(),
                None => w,
            };
            if x16 {
                w.interleaved()
            } else {
                w
            }
        };
        for &(t, heads, head_rows, cols) in &[(1, 3, 6, 64), (5, 4, 32, 64), (9, 2, 48, 256)] {
            let rows = heads * head_rows;
            let wf = values(rows * cols, 21);
            let x = values(t * heads * cols, 22);
            for (q, x16) in [
                (None, false),
                (Some(QuantType::Bf16), false),
                (Some(QuantType::Q8_0), false),
                (Some(QuantType::Q8_0), true),
                (Some(QuantType::Q4K), true),
            ] {
                if (x16 && head_rows % 16 != 0) || q.is_some_and(|q| !q.fits(cols)) {
                    continue;
                }
                let w = to(q, rows, cols, &wf, x16);
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; t * rows];
                    heads_with(isa, &mut got, &x, &w, heads, t);
                    for g in 0..heads {
                        let wg = &wf[g * head_rows * cols..(g + 1) * head_rows * cols];
                        let wg = to(q, head_rows, cols, wg, x16);
                        let xg: Vec<f32> = (0..t)
                            .flat_map(|s| &x[(s * heads + g) * cols..][..cols])
                            .copied()
                            .collect();
                        let mut want = vec![f32::NAN; t * head_rows];
                        matmul_with(isa, &mut want, &xg, &wg, t);
                        for s in 0..t {
                            assert_eq!(
                                &got[(s * heads + g) * head_rows..][..head_rows],
                                &want[s * head_rows..][..head_rows],
                                "{q:?} x16={x16} {}: t={t} head {g}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }

    /// Interleaved block formats (every tile width 1–8, remainders, one task and many) give
    /// the row-major weight's results on every instruction set.
    #[test]
    fn interleaved_matmul_equals_row_major() {
        let q5_0 = |rows: usize, cols: usize, wf: &[f32]| {
            let mut v = vec![crate::quant::BlockQ5_0::default(); rows * cols / 32];
            crate::quant::BlockQ5_0::quantize(wf, &mut v);
            Weight::new(rows, cols, WeightData::Q5_0(v))
        };
        for &(t, rows, cols) in &[
            (1, 16, 256),
            (3, 48, 512),
            (8, 32, 256),
            (13, 160, 768),
            (1, 1024, 512),
        ] {
            let wf = values(rows * cols, 8);
            let x = values(t * cols, 9);
            let plains = [
                QuantType::Q8_0,
                QuantType::Q4_0,
                QuantType::Q4K,
                QuantType::Q6K,
            ]
            .map(|q| {
                Weight::from_f32(rows, cols, wf.clone())
                    .quantize(q)
                    .unwrap()
            });
            for plain in plains.into_iter().chain([q5_0(rows, cols, &wf)]) {
                let q = plain.storage_name();
                let mut want = vec![f32::NAN; t * rows];
                matmul_with(Isa::SCALAR, &mut want, &x, &plain, t);
                let x16 = plain.clone().interleaved();
                assert!(matches!(
                    x16.data,
                    WeightData::Q8_0x16(_)
                        | WeightData::Q4_0x16(_)
                        | WeightData::Q5_0x16(_)
                        | WeightData::Q4Kx16(_)
                        | WeightData::Q6Kx16(_)
                ));
                assert_eq!(x16.to_f32(), plain.to_f32());
                // Only Q4_K grows: its 6-bit scales and mins unpacked, 4 bytes per block.
                let grown = if q == "q4_k" {
                    rows * cols / 256 * 4
                } else {
                    0
                };
                assert_eq!(x16.storage_bytes(), plain.storage_bytes() + grown, "{q}");
                let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; t * rows];
                    matmul_with(isa, &mut got, &x, &x16, t);
                    let err = relative_error(&got, &want64);
                    assert!(
                        err < 1e-6,
                        "{q} x16 {}: t={t} rows={rows} cols={cols}: {err}",
                        isa.name()
                    );
                }
            }
        }
    }

    /// The cache's storage types for a matrix of `rows` rows of `width` values.
    fn stored(values: &[f32], width: usize) -> (Vec<f32>, Vec<half::bf16>, Vec<BlockQ8_0>) {
        let bf: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let mut q8 = Vec::new();
        for row in values.chunks(width) {
            crate::rows::push_q8_0_row(&mut q8, row);
        }
        (values.to_vec(), bf, q8)
    }

    /// Both strategies (rows split across threads with the register-tiled kernel, and eight
    /// sums per task) against an f64 reference, at strides wider than the columns and odd
    /// sizes, for rows stored as f32, bf16 and Q8_0 (reference: the decoded values).
    #[test]
    fn weighted_rows_match_f64() {
        for &(n, rows, cols, stride) in &[
            (1, 1, 8, 8),
            (16, 300, 512, 576),
            (3, 1000, 70, 80),
            (9, 65, 13, 13),
            (200, 130, 512, 576),
        ] {
            let p = values(n * rows, 10);
            let (f, b, q) = stored(&values(rows * stride, 11), stride);
            for data in [RowData::F32(&f), RowData::Bf16(&b), RowData::Q8_0(&q)] {
                let w = Rows {
                    data,
                    width: stride,
                };
                let mut wd = vec![0.0f32; rows * cols];
                w.decode(0, rows, cols, &mut wd);
                let mut got = vec![f32::NAN; n * cols];
                weighted_rows(&mut got, &p, w, rows, cols);
                let want: Vec<f64> = (0..n * cols)
                    .map(|i| {
                        let (t, c) = (i / cols, i % cols);
                        (0..rows)
                            .map(|j| p[t * rows + j] as f64 * wd[j * cols + c] as f64)
                            .sum()
                    })
                    .collect();
                let err = relative_error(&got, &want);
                assert!(err < 1e-5, "{data:?} n={n} rows={rows} cols={cols}: {err}");
            }
        }
    }

    /// Scores over a borrowed matrix in each storage type equal the f64 products with its
    /// decoded values (whole rows, padded Q8_0 rows, and the first columns of wider rows).
    #[test]
    fn matmul_rows_match_f64() {
        for &(n, rows, cols, width) in &[
            (1, 1, 8, 8),
            (16, 300, 576, 576),
            (5, 70, 40, 80),
            (3, 33, 80, 80),
        ] {
            let x = values(n * cols, 12);
            let (f, b, q) = stored(&values(rows * width, 13), width);
            for data in [RowData::F32(&f), RowData::Bf16(&b), RowData::Q8_0(&q)] {
                let w = Rows { data, width };
                let mut wd = vec![0.0f32; rows * cols];
                w.decode(0, rows, cols, &mut wd);
                let want = f64_matmul(&x, &wd, n, rows, cols);
                let mut got = vec![f32::NAN; n * rows];
                matmul_rows(&mut got, &x, w, rows, cols, n);
                if let (RowData::Q8_0(_), true) = (data, cols == width) {
                    // Whole Q8_0 rows are scored against Q8_0-quantized queries: each query
                    // value moves by at most half a step (block amax / 127) plus its f16
                    // scale's rounding (2⁻¹¹ relative), so each score by at most Σ |w| times
                    // that; nothing else is approximate.
                    for t in 0..n {
                        let xt = &x[t * cols..][..cols];
                        for r in 0..rows {
                            let wr = &wd[r * cols..][..cols];
                            let bound: f64 = (0..cols)
                                .map(|j| {
                                    let block = &xt[j / 32 * 32..(j / 32 * 32 + 32).min(cols)];
                                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                                    let dx = amax / 127.0 * 0.5 + xt[j].abs() / 2048.0;
                                    (wr[j].abs() * dx) as f64
                                })
                                .sum::<f64>()
                                * 1.001
                                + 1e-6;
                            let diff = (got[t * rows + r] as f64 - want[t * rows + r]).abs();
                            assert!(diff <= bound, "q8_0 rows t={t} r={r}: {diff} > {bound}");
                        }
                    }
                    continue;
                }
                let err = relative_error(&got, &want);
                assert!(err < 1e-6, "{data:?} n={n} rows={rows} cols={cols}: {err}");
            }
        }
    }

    #[test]
    fn float_weights_match_on_every_isa() {
        for &(t, rows, cols) in &[
            (1, 1, 1),
            (3, 7, 31),
            (5, 33, 17),
            (2, 130, 257),
            (6, 300, 300),
        ] {
            let x = values(t * cols, 5);
            let wf = values(rows * cols, 6);
            let want = f64_matmul(&x, &wf, t, rows, cols);
            let w32 = Weight::from_f32(rows, cols, wf);
            let w16 = Weight::new(
                rows,
                cols,
                WeightData::F16(
                    w32.to_f32()
                        .iter()
                        .map(|&v| half::f16::from_f32(v))
                        .collect(),
                ),
            );
            for (w, bound) in [(&w32, 1e-6), (&w16, 2e-3)] {
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; t * rows];
                    matmul_with(isa, &mut got, &x, w, t);
                    assert!(
                        relative_error(&got, &want) < bound,
                        "{} {}",
                        w.storage_name(),
                        isa.name()
                    );
                }
            }
        }
    }
}
