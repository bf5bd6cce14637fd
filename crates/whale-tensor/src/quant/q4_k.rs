//! Q4_K: 256-value super-blocks of 8 sub-blocks of 32, each value `d·sc_j·n − dmin·m_j` with a
//! 4-bit `n`, 6-bit sub-block scale `sc_j` and min `m_j`, and f16 super-block scales `d`,
//! `dmin` (144 bytes, 4.5 bits per value). What most of a Q4_K_M file holds.

use half::f16;

use super::{nearest_int, BlockQ8K, GgmlType, QK_K};
use crate::kernels::{self, Isa, IsaKind, VecDot};

/// ggml's `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    /// Super-block scale of the 6-bit sub-block scales.
    pub d: f16,
    /// Super-block scale of the 6-bit sub-block mins.
    pub dmin: f16,
    /// 8 scales and 8 mins of 6 bits each, packed as [`scales_mins`] reads them.
    pub scales: [u8; 12],
    /// Byte `32i + l` holds element `64i + l` (low nibble) and `64i + 32 + l` (high nibble).
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// Unpacks the 6-bit scales and mins (ggml's `get_scale_min_k4` for all eight `j` at once).
///
/// Bytes 0–3 hold `sc[0..4]` in their low 6 bits, bytes 4–7 `m[0..4]`; bytes 8–11 hold the low
/// nibbles of `sc[4..8]` and (high nibble) `m[4..8]`, whose top two bits sit in the spare high
/// bits of bytes 0–3 (scales) and 4–7 (mins). Done on 32-bit words, four lanes at a time.
#[inline]
pub fn scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let sc_lo = w0 & LOW6;
    let sc_hi = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let m_lo = w1 & LOW6;
    let m_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    m[..4].copy_from_slice(&m_lo.to_le_bytes());
    m[4..].copy_from_slice(&m_hi.to_le_bytes());
    (sc, m)
}

/// Inverse of [`scales_mins`] for values < 64.
pub(super) fn pack_scales_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut p = [0u8; 12];
    for j in 0..4 {
        p[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        p[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        p[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
    p
}

/// ggml's `make_qkx2_quants`: fits `x ≈ scale·L − min` (L in 0..=nmax, min ≥ 0) minimising the
/// weighted squared error, trying `nstep + 1` candidate scales `(nmax + rmin + rdelta·is) /
/// (max − min)` and solving least squares for scale and min at each. Returns `(scale, min)`.
/// Float operations are in ggml's order so the chosen levels are the same bit for bit.
#[allow(clippy::too_many_arguments)] // the reference's parameter list, kept for comparison
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

impl BlockQ4K {
    /// `quantize_row_q4_K_ref`: fit each sub-block with `make_qkx2_quants` (weights `rms + |x|`),
    /// quantize the eight scales and mins to 6 bits against their maxima, then requantize the
    /// values with the rounded scales.
    fn quantize_block(x: &[f32]) -> Self {
        let mut levels = [0u8; QK_K];
        let mut scales = [0.0f32; 8];
        let mut mins = [0.0f32; 8];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        let mut weights = [0.0f32; 32];
        for j in 0..8 {
            let xs = &x[32 * j..32 * j + 32];
            let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (scale, min) = make_qkx2_quants(
                15,
                xs,
                &weights,
                &mut levels[32 * j..32 * j + 32],
                -1.0,
                0.1,
                20,
            );
            scales[j] = scale;
            mins[j] = min;
            max_scale = if scale > max_scale { scale } else { max_scale };
            max_min = if min > max_min { min } else { max_min };
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        for j in 0..8 {
            ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
        }
        let d = f16::from_f32(max_scale / 63.0);
        let dmin = f16::from_f32(max_min / 63.0);
        for j in 0..8 {
            let dj = d.to_f32() * ls[j] as f32;
            if dj == 0.0 {
                continue; // keep make_qkx2_quants' levels, as ggml does
            }
            let mj = dmin.to_f32() * lm[j] as f32;
            for i in 32 * j..32 * j + 32 {
                levels[i] = nearest_int((x[i] + mj) / dj).clamp(0, 15) as u8;
            }
        }
        let mut qs = [0u8; QK_K / 2];
        for (chunk, l) in qs.chunks_exact_mut(32).zip(levels.chunks_exact(64)) {
            for i in 0..32 {
                chunk[i] = l[i] | (l[i + 32] << 4);
            }
        }
        BlockQ4K {
            d,
            dmin,
            scales: pack_scales_mins(&ls, &lm),
            qs,
        }
    }
}

// SAFETY: `#[repr(C)]` of two f16 and u8 arrays, 144 bytes, no padding (pinned above): any bytes
// are a valid value; field order is ggml's.
unsafe impl GgmlType for BlockQ4K {
    const BLOCK: usize = QK_K;
    const GGML_TYPE: u32 = super::ggml_type::Q4_K;
    const NAME: &'static str = "q4_k";

    fn quantize(x: &[f32], out: &mut [Self]) {
        debug_assert_eq!(x.len(), out.len() * QK_K);
        for (b, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            *b = Self::quantize_block(chunk);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
            let (sc, m) = scales_mins(&b.scales);
            for (i, (q, y)) in
                b.qs.chunks_exact(32)
                    .zip(y.chunks_exact_mut(64))
                    .enumerate()
            {
                let (d1, m1) = (d * sc[2 * i] as f32, dmin * m[2 * i] as f32);
                let (d2, m2) = (d * sc[2 * i + 1] as f32, dmin * m[2 * i + 1] as f32);
                for l in 0..32 {
                    y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                    y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
    }
}

impl VecDot for BlockQ4K {
    type Act = BlockQ8K;

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: [&[BlockQ8K]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { kernels::avx2::dot_q4_k(w, a) },
            _ => kernels::scalar::dot_q4_k(w, a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_packing_round_trips() {
        let sc = [0, 1, 17, 63, 32, 5, 48, 63];
        let m = [63, 0, 2, 40, 15, 16, 31, 1];
        assert_eq!(scales_mins(&pack_scales_mins(&sc, &m)), (sc, m));
    }
}
