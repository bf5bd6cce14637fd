//! Block-quantized weights with sixteen rows interleaved, the layout of the AVX-512 VNNI
//! kernels: Q8_0, Q4_0 and Q5_0 here, the K-quants in [`super::x16_k`].
//!
//! In ggml's row-major layout a kernel must reduce each block's products across SIMD lanes
//! before it can apply the block's scale, once per block and token. Here one 64-byte line holds
//! four consecutive levels of the same block from each of sixteen rows, so `vpdpbusd` with four
//! activation bytes broadcast accumulates all sixteen rows' dot products lane by lane (lane =
//! row) and the scales apply lane-wise: no horizontal work at all. The values are ggml's
//! exactly (repacking is lossless, [`Interleaved::unpack`] gives the original blocks back).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, and the broadcast operand must be the signed
//! one (the activations), so weight levels are stored unsigned with an offset that the kernel
//! removes through the activation blocks' integer sums: Q8_0's `q + 128`, Q4_0's nibbles `n`
//! and Q5_0's five-bit levels (whose offsets 8 and 16 are already ggml's).

use half::f16;

use super::{BlockQ4_0, BlockQ5_0, BlockQ8_0, BlockQ8_0x8, GgmlType};
use crate::kernels::{Isa, IsaKind, VecDot};

/// Rows interleaved in one block.
pub const ROWS: usize = 16;

/// One block column (one ggml block per row) of sixteen rows.
pub trait Interleaved: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The row-major block this interleaves.
    type Plain: GgmlType;
    fn pack(rows: [&Self::Plain; ROWS]) -> Self;
    fn unpack(&self, r: usize) -> Self::Plain;

    /// A token tile's activations as this format's kernels read them.
    type Tile: Send + Sync;

    /// Activation rows `rows` of `acts` (each `len` blocks) as the tile [`Self::dot_tile`]
    /// reads with `isa`: made once per matmul, so the kernels find each token's block of a
    /// block column next to the others' ([`tile_acts`], [`BlockedTile`]).
    fn tile(isa: Isa, acts: &[Act<Self>], len: usize, rows: &[usize]) -> Self::Tile;

    /// `out[t][r] = w_r · a_t` for the sixteen rows of `w` (a row group's blocks, one per block
    /// column) and the `N` activation rows of a tile made by [`Self::tile`] for the same `isa`
    /// (with a pointer per token the 8-token Q8_0 kernel ran out of registers: 2.27 against
    /// 1.69 ns per 16-row block and token, measured alone).
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: &Self::Tile) -> [[f32; ROWS]; N];

    /// Tokens per tile in a matmul (at most 8): as many as the kernel's registers hold. For
    /// the Q8_0/Q4_0/Q5_0 kernels, eight lines of weights, the scales and eight accumulators
    /// fit AVX-512's 32 registers beside the per-token temporaries.
    const TILE: usize = 8;
}

/// The activation blocks an interleaved format is dotted with: its plain block's.
pub type Act<B> = <<B as Interleaved>::Plain as VecDot>::Act;

/// Activation rows `rows` (each `len` blocks of `acts`) interleaved block by block, as
/// [`Interleaved::dot_tile`] reads them: block `i` of the `t`-th row at `i · rows.len() + t`.
pub fn tile_acts<A: Copy>(acts: &[A], len: usize, rows: &[usize]) -> Vec<A> {
    (0..len)
        .flat_map(|i| rows.iter().map(move |&r| acts[r * len + i]))
        .collect()
}

/// A token tile of Q8_0 activation blocks for the Q8_0/Q4_0/Q5_0 kernels.
pub enum Q8Tile {
    /// ggml's blocks token-interleaved ([`tile_acts`]): the reference path's layout, and the
    /// AVX-512 kernels' for a single token, whose reads already lie close together (there the
    /// sums are multiplied by `−offset`, as in [`BlockedTile`]). One-token matmuls from a
    /// blocked tile were 1.5% slower (a 102400 × 2048 Q8_0 matmul, both layouts alternating in
    /// one process: the grouped one faster in 45 of 60 rounds).
    Grouped(Vec<BlockQ8_0x8>),
    /// Two or more tokens for the AVX-512 kernels.
    Blocked(BlockedTile),
}

/// A tile of `n` tokens' Q8_0 blocks, block column by block column: each column takes `10·n`
/// words, the tokens' 32 quants (eight words each), then their sums, then their scales (f32
/// bits). Everything a kernel reads for one column lies within 320 bytes of its start, so its
/// broadcasts encode one-byte displacements; from [`tile_acts`]' layout (each token's group of
/// eight blocks 352 bytes after the previous token's) most took four-byte ones, and the
/// 8-token Q8_0/Q4_0 kernels ran ~10% slower stand-alone (Q4_0 512-token prefill +9–10%).
/// The sums are multiplied by the weights' `−offset` (Q8_0's bytes are stored +128, Q4_0's
/// nibbles +8, Q5_0's +16): the value each integer dot product starts from.
pub struct BlockedTile {
    pub(crate) words: Vec<i32>,
}

impl BlockedTile {
    /// Words per block column for `n` tokens.
    pub(crate) const fn stride(n: usize) -> usize {
        10 * n
    }

    fn new(acts: &[BlockQ8_0x8], len: usize, rows: &[usize], offset: i32) -> Self {
        let n = rows.len();
        let mut words = vec![0i32; Self::stride(n) * 8 * len];
        for (b, column) in words.chunks_exact_mut(Self::stride(n)).enumerate() {
            let (q, rest) = column.split_at_mut(8 * n);
            let (sums, scales) = rest.split_at_mut(n);
            for (t, &r) in rows.iter().enumerate() {
                let group = &acts[r * len + b / 8];
                let i = b % 8;
                for (word, four) in q[8 * t..8 * t + 8]
                    .iter_mut()
                    .zip(group.qs[i].chunks_exact(4))
                {
                    *word = i32::from_le_bytes(std::array::from_fn(|k| four[k] as u8));
                }
                sums[t] = -offset * group.sums[i];
                scales[t] = group.d[i].to_bits() as i32;
            }
        }
        BlockedTile { words }
    }
}

impl Q8Tile {
    fn new(isa: Isa, acts: &[BlockQ8_0x8], len: usize, rows: &[usize], offset: i32) -> Self {
        if isa.0 != IsaKind::Avx512Vnni {
            return Q8Tile::Grouped(tile_acts(acts, len, rows));
        }
        if rows.len() > 1 {
            return Q8Tile::Blocked(BlockedTile::new(acts, len, rows, offset));
        }
        let mut tile = tile_acts(acts, len, rows);
        for block in &mut tile {
            for s in &mut block.sums {
                *s *= -offset;
            }
        }
        Q8Tile::Grouped(tile)
    }

    fn grouped(&self) -> &[BlockQ8_0x8] {
        match self {
            Q8Tile::Grouped(v) => v,
            Q8Tile::Blocked(_) => panic!("a blocked tile is for the AVX-512 kernels"),
        }
    }
}

/// `$kernel` (an AVX-512 Q8_0-family kernel, `$grouped` its grouped-layout twin) on `w` and
/// the tile `a` of `N` tokens, whichever layout it holds.
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_dot {
    ($kernel:ident, $grouped:ident, $w:expr, $a:expr, $n:ident) => {
        match $a {
            // SAFETY: the caller holds `Avx512Vnni`, so `Isa::detect` found the kernels'
            // features; they check the tile's length against `w` themselves.
            Q8Tile::Grouped(v) => unsafe { crate::kernels::avx512::$grouped::<$n>($w, v) },
            Q8Tile::Blocked(t) => unsafe { crate::kernels::avx512::$kernel::<$n>($w, &t.words) },
        }
    };
}

/// Sixteen Q8_0 blocks: 544 bytes, as many as the sixteen blocks they hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0x16 {
    pub d: [f16; ROWS],
    /// `qs[64·j + 4·r + k] = q_r[4·j + k] + 128` (as `u8`).
    pub qs: [u8; 32 * ROWS],
}

/// Sixteen Q4_0 blocks: 288 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0x16 {
    pub d: [f16; ROWS],
    /// `qs[64·j + 4·r + k]` is row r's byte `4·j + k`: element `4·j + k` in the low nibble,
    /// element `16 + 4·j + k` in the high one.
    pub qs: [u8; 16 * ROWS],
}

/// Sixteen Q5_0 blocks: 352 bytes. The nibbles are Q4_0x16's; the fifth bits are regrouped
/// as the kernel's byte masks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_0x16 {
    pub d: [f16; ROWS],
    /// Bit `4·r + k` of `qh[j]` is the fifth bit of row r's element `4·j + k` (j < 4) or
    /// `16 + 4·(j − 4) + k` (j ≥ 4): the bytes of the kernel's j-th line of levels.
    pub qh: [u64; 8],
    pub qs: [u8; 16 * ROWS],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0x16>() == ROWS * 34);
const _: () = assert!(std::mem::size_of::<BlockQ4_0x16>() == ROWS * 18);
const _: () = assert!(std::mem::size_of::<BlockQ5_0x16>() == ROWS * 22);

/// The element of a 32-value block held by byte `k` of line `j` (low nibble line `j < 4`, high
/// nibble line `j ≥ 4`) in the nibble layouts.
fn nibble_line_element(j: usize, k: usize) -> usize {
    if j < 4 {
        4 * j + k
    } else {
        16 + 4 * (j - 4) + k
    }
}

/// Row `r`'s bytes in a block of `per_row` bytes per row, taken four at a time.
pub(super) fn interleave<const LEN: usize>(bytes: impl Fn(usize) -> [u8; 4], out: &mut [u8; LEN]) {
    for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
        // i = 16·j + r: line j, row r.
        chunk.copy_from_slice(&bytes(i));
    }
}

/// The 16-byte nibble arrays of Q4_0 and Q5_0 (same layout), four bytes per row per line.
fn interleave_nibbles(rows: [&[u8; 16]; ROWS]) -> [u8; 16 * ROWS] {
    let mut qs = [0u8; 16 * ROWS];
    interleave(
        |i| {
            let (j, r) = (i / ROWS, i % ROWS);
            std::array::from_fn(|k| rows[r][4 * j + k])
        },
        &mut qs,
    );
    qs
}

/// Row `r`'s nibble bytes back from [`interleave_nibbles`].
fn unpack_nibbles(qs: &[u8; 16 * ROWS], r: usize) -> [u8; 16] {
    std::array::from_fn(|e| qs[64 * (e / 4) + 4 * r + e % 4])
}

impl Interleaved for BlockQ8_0x16 {
    type Plain = BlockQ8_0;
    type Tile = Q8Tile;

    fn pack(rows: [&BlockQ8_0; ROWS]) -> Self {
        let mut qs = [0u8; 32 * ROWS];
        interleave(
            |i| {
                let (j, r) = (i / ROWS, i % ROWS);
                std::array::from_fn(|k| (rows[r].qs[4 * j + k] as u8) ^ 0x80)
            },
            &mut qs,
        );
        BlockQ8_0x16 {
            d: std::array::from_fn(|r| rows[r].d),
            qs,
        }
    }

    fn unpack(&self, r: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: self.d[r],
            qs: std::array::from_fn(|e| (self.qs[64 * (e / 4) + 4 * r + e % 4] ^ 0x80) as i8),
        }
    }

    fn tile(isa: Isa, acts: &[BlockQ8_0x8], len: usize, rows: &[usize]) -> Q8Tile {
        Q8Tile::new(isa, acts, len, rows, 128)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: &Q8Tile) -> [[f32; ROWS]; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512Vnni => avx512_dot!(dot_q8_0x16, dot_q8_0x16_grouped, w, a, N),
            _ => dot_unpacked(isa, w, a.grouped()),
        }
    }
}

impl Interleaved for BlockQ4_0x16 {
    type Plain = BlockQ4_0;
    type Tile = Q8Tile;

    fn pack(rows: [&BlockQ4_0; ROWS]) -> Self {
        let qs = interleave_nibbles(rows.map(|b| &b.qs));
        BlockQ4_0x16 {
            d: std::array::from_fn(|r| rows[r].d),
            qs,
        }
    }

    fn unpack(&self, r: usize) -> BlockQ4_0 {
        BlockQ4_0 {
            d: self.d[r],
            qs: unpack_nibbles(&self.qs, r),
        }
    }

    fn tile(isa: Isa, acts: &[BlockQ8_0x8], len: usize, rows: &[usize]) -> Q8Tile {
        Q8Tile::new(isa, acts, len, rows, 8)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: &Q8Tile) -> [[f32; ROWS]; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512Vnni => avx512_dot!(dot_q4_0x16, dot_q4_0x16_grouped, w, a, N),
            _ => dot_unpacked(isa, w, a.grouped()),
        }
    }
}

impl Interleaved for BlockQ5_0x16 {
    type Plain = BlockQ5_0;
    type Tile = Q8Tile;

    fn pack(rows: [&BlockQ5_0; ROWS]) -> Self {
        let qs = interleave_nibbles(rows.map(|b| &b.qs));
        let qh = std::array::from_fn(|j| {
            let mut m = 0u64;
            for (r, row) in rows.iter().enumerate() {
                let bits = u32::from_le_bytes(row.qh);
                for k in 0..4 {
                    m |= (((bits >> nibble_line_element(j, k)) & 1) as u64) << (4 * r + k);
                }
            }
            m
        });
        BlockQ5_0x16 {
            d: std::array::from_fn(|r| rows[r].d),
            qh,
            qs,
        }
    }

    fn unpack(&self, r: usize) -> BlockQ5_0 {
        let mut bits = 0u32;
        for (j, &m) in self.qh.iter().enumerate() {
            for k in 0..4 {
                bits |= (((m >> (4 * r + k)) & 1) as u32) << nibble_line_element(j, k);
            }
        }
        BlockQ5_0 {
            d: self.d[r],
            qh: bits.to_le_bytes(),
            qs: unpack_nibbles(&self.qs, r),
        }
    }

    fn tile(isa: Isa, acts: &[BlockQ8_0x8], len: usize, rows: &[usize]) -> Q8Tile {
        Q8Tile::new(isa, acts, len, rows, 16)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: &Q8Tile) -> [[f32; ROWS]; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512Vnni => avx512_dot!(dot_q5_0x16, dot_q5_0x16_grouped, w, a, N),
            _ => dot_unpacked(isa, w, a.grouped()),
        }
    }
}

/// The reference: each row unpacked to ggml's blocks and dotted with that format's kernel.
pub(super) fn dot_unpacked<B: Interleaved, const N: usize>(
    isa: Isa,
    w: &[B],
    a: &[Act<B>],
) -> [[f32; ROWS]; N] {
    let rows: Vec<Vec<Act<B>>> = (0..N)
        .map(|t| a.iter().skip(t).step_by(N).copied().collect())
        .collect();
    let a: [&[Act<B>]; N] = std::array::from_fn(|t| rows[t].as_slice());
    let mut out = [[0.0; ROWS]; N];
    let mut row = Vec::with_capacity(w.len());
    for r in 0..ROWS {
        row.clear();
        row.extend(w.iter().map(|b| b.unpack(r)));
        for (o, d) in out.iter_mut().zip(B::Plain::dot_tile(isa, &row, a)) {
            o[r] = d;
        }
    }
    out
}

/// Interleaves row-major `[rows_i, blocks_per_row]` block matrices stacked row-wise (each
/// `rows_i % 16 == 0`; one part for a single matrix): block `g · blocks_per_row + b` of the
/// result holds block column `b` of the stack's rows `16·g..16·g + 16`.
pub fn pack_matrix<B: Interleaved>(parts: &[&[B::Plain]], blocks_per_row: usize) -> Vec<B> {
    use rayon::prelude::*;
    let group_len = ROWS * blocks_per_row.max(1);
    let groups: Vec<&[B::Plain]> = parts
        .iter()
        .flat_map(|part| {
            assert_eq!(part.len() % group_len, 0, "parts hold whole 16-row groups");
            part.chunks_exact(group_len)
        })
        .collect();
    (0..groups.len() * blocks_per_row)
        .into_par_iter()
        .map(|i| {
            let (g, b) = (i / blocks_per_row, i % blocks_per_row);
            B::pack(std::array::from_fn(|r| &groups[g][r * blocks_per_row + b]))
        })
        .collect()
}

/// Row `r`'s blocks of an interleaved matrix, as ggml stores them.
pub fn unpack_row<B: Interleaved>(packed: &[B], blocks_per_row: usize, r: usize) -> Vec<B::Plain> {
    let group = &packed[(r / ROWS) * blocks_per_row..(r / ROWS + 1) * blocks_per_row];
    group.iter().map(|b| b.unpack(r % ROWS)).collect()
}
