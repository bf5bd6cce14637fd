//! Q4_K and Q6_K super-blocks with sixteen rows interleaved, for the AVX-512 VNNI kernels
//! (the idea is [`super::x16`]'s: one 64-byte line holds four consecutive levels of each of
//! sixteen rows, so `vpdpbusd` with broadcast activations gives every row's sum lane by lane).
//!
//! The sub-block scales, which ggml packs per row, are stored here as one byte per row side by
//! side, so a single widening load gives the sixteen rows' scales of a sub-block as a vector.
//! Both formats are dotted with Q8_K activations like their row-major originals, and repacking
//! is lossless ([`Interleaved::unpack`] gives ggml's blocks back).

use half::f16;

use super::x16::{dot_unpacked, interleave, tile_acts, Interleaved, ROWS};
use super::{q4k_scales_mins, BlockQ4K, BlockQ6K, BlockQ8K, QK_K};
use crate::kernels::{Isa, IsaKind};

/// Sixteen Q4_K super-blocks: 2,368 bytes, 64 more than the sixteen blocks (the 6-bit scales
/// and mins unpacked to bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4Kx16 {
    pub d: [f16; ROWS],
    pub dmin: [f16; ROWS],
    /// `scales[16·j + r]` is row r's scale of sub-block j (32 values).
    pub scales: [u8; 8 * ROWS],
    /// `mins[32·k + 2·r + i]` is row r's min of sub-block `2·k + i`: pairs, as `vpdpwssd`
    /// multiplies them with pairs of activation sums once widened to 16 bits.
    pub mins: [u8; 8 * ROWS],
    /// `qs[512·c + 64·l + 4·r + k]` is row r's byte `32·c + 4·l + k` of ggml's `qs`: elements
    /// `64·c + 4·l + k` (low nibble) and `64·c + 32 + 4·l + k` (high nibble).
    pub qs: [u8; QK_K / 2 * ROWS],
}

/// Sixteen Q6_K super-blocks: 3,360 bytes, as many as the sixteen blocks.
///
/// Line `L` (0..64) stands for elements `4·L..4·L + 4` of every row, and each 16-value sub-block
/// `g` is four lines stored in three: bytes holding the 6-bit levels of lines `4g`, `4g + 1`,
/// `4g + 2` in their low bits and, in their top two bits, two bits each of line `4g + 3`'s
/// levels. Taking a sub-block's lines back is an AND per stored line and three shifts, two
/// bit-selects and an AND for the fourth, about half the work of ggml's split into a 4-bit and
/// a 2-bit array (compute-bound Q6_K matmuls 8–9% faster; bench/RESULTS.md §1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6Kx16 {
    pub d: [f16; ROWS],
    /// `scales[16·g + r]` is row r's scale of sub-block g (16 values).
    pub scales: [i8; 16 * ROWS],
    /// `qs[192·g + 64·i + 4·r + k]`, i < 3: bits 0–5 are row r's level of element
    /// `16·g + 4·i + k`, bits 6–7 are bits `2i, 2i + 1` of its level of element `16·g + 12 + k`.
    pub qs: [u8; 3 * QK_K / 4 * ROWS],
}

const _: () = assert!(std::mem::size_of::<BlockQ4Kx16>() == ROWS * 144 + 64);
const _: () = assert!(std::mem::size_of::<BlockQ6Kx16>() == ROWS * 210);

impl Interleaved for BlockQ4Kx16 {
    type Plain = BlockQ4K;
    type Tile = Vec<BlockQ8K>;
    /// Sixteen unpacked lines, two scale vectors and `2·N` accumulators: past four tokens the
    /// accumulators spill (measured in L1: 26.1 ns per block for 8 tokens, 24.8 for 2 × 4).
    const TILE: usize = 4;

    fn pack(rows: [&BlockQ4K; ROWS]) -> Self {
        let unpacked = rows.map(|b| q4k_scales_mins(&b.scales));
        let mut qs = [0u8; QK_K / 2 * ROWS];
        // Line i = 8·c + l of the 32 (c: 64-value chunk, l: line within it), row r.
        interleave(
            |i| {
                let (line, r) = (i / ROWS, i % ROWS);
                let (c, l) = (line / 8, line % 8);
                std::array::from_fn(|k| rows[r].qs[32 * c + 4 * l + k])
            },
            &mut qs,
        );
        BlockQ4Kx16 {
            d: rows.map(|b| b.d),
            dmin: rows.map(|b| b.dmin),
            scales: std::array::from_fn(|i| unpacked[i % ROWS].0[i / ROWS]),
            mins: std::array::from_fn(|i| {
                let (k, r, half) = (i / 32, (i % 32) / 2, i % 2);
                unpacked[r].1[2 * k + half]
            }),
            qs,
        }
    }

    fn unpack(&self, r: usize) -> BlockQ4K {
        let sc: [u8; 8] = std::array::from_fn(|j| self.scales[ROWS * j + r]);
        let m: [u8; 8] = std::array::from_fn(|j| self.mins[32 * (j / 2) + 2 * r + j % 2]);
        BlockQ4K {
            d: self.d[r],
            dmin: self.dmin[r],
            scales: super::q4_k::pack_scales_mins(&sc, &m),
            qs: std::array::from_fn(|e| {
                let (c, rest) = (e / 32, e % 32);
                self.qs[512 * c + 64 * (rest / 4) + 4 * r + rest % 4]
            }),
        }
    }

    fn tile(_: Isa, acts: &[BlockQ8K], len: usize, rows: &[usize]) -> Vec<BlockQ8K> {
        tile_acts(acts, len, rows)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: &Vec<BlockQ8K>) -> [[f32; ROWS]; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` holds `Avx512Vnni` only if `Isa::detect` found its features.
            IsaKind::Avx512Vnni => unsafe { crate::kernels::avx512::dot_q4_kx16(w, a) },
            _ => dot_unpacked(isa, w, a),
        }
    }
}

impl Interleaved for BlockQ6Kx16 {
    type Plain = BlockQ6K;
    type Tile = Vec<BlockQ8K>;

    fn pack(rows: [&BlockQ6K; ROWS]) -> Self {
        // 6-bit levels n (0..64) of every row in element order.
        let levels = rows.map(|b| b.levels().map(|v| (v + 32) as u8));
        let mut qs = [0u8; 3 * QK_K / 4 * ROWS];
        // Stored line i = 3·g + j (j < 3) of sub-block g, row r.
        interleave(
            |i| {
                let (line, r) = (i / ROWS, i % ROWS);
                let (g, j) = (line / 3, line % 3);
                std::array::from_fn(|k| {
                    let fourth = levels[r][16 * g + 12 + k];
                    levels[r][16 * g + 4 * j + k] | ((fourth >> (2 * j)) & 3) << 6
                })
            },
            &mut qs,
        );
        BlockQ6Kx16 {
            d: rows.map(|b| b.d),
            scales: std::array::from_fn(|i| rows[i % ROWS].scales[i / ROWS]),
            qs,
        }
    }

    fn unpack(&self, r: usize) -> BlockQ6K {
        let byte = |g: usize, j: usize, k: usize| self.qs[192 * g + 64 * j + 4 * r + k];
        let levels: [u8; QK_K] = std::array::from_fn(|e| {
            let (g, line, k) = (e / 16, (e % 16) / 4, e % 4);
            if line < 3 {
                byte(g, line, k) & 0x3F
            } else {
                (0..3).fold(0, |acc, j| acc | (byte(g, j, k) >> 6) << (2 * j))
            }
        });
        let mut b = BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: std::array::from_fn(|g| self.scales[ROWS * g + r]),
            d: self.d[r],
        };
        b.set_levels(&levels);
        b
    }

    fn tile(_: Isa, acts: &[BlockQ8K], len: usize, rows: &[usize]) -> Vec<BlockQ8K> {
        tile_acts(acts, len, rows)
    }

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: &Vec<BlockQ8K>) -> [[f32; ROWS]; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` holds `Avx512Vnni` only if `Isa::detect` found its features.
            IsaKind::Avx512Vnni => unsafe { crate::kernels::avx512::dot_q6_kx16(w, a) },
            _ => dot_unpacked(isa, w, a),
        }
    }
}
