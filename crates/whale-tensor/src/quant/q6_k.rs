//! Q6_K: 256-value super-blocks of 16 sub-blocks of 16, each value `d·sc_g·(n − 32)` with a
//! 6-bit `n` split into 4 low bits (`ql`) and 2 high bits (`qh`), an i8 sub-block scale `sc_g`
//! and an f16 super-block scale `d` (210 bytes, 6.5625 bits per value).

use half::f16;

use super::{nearest_int, BlockQ8K, GgmlType, QK_K};
use crate::kernels::{self, Isa, IsaKind, VecDot};

/// ggml's `block_q6_K`.
///
/// Per 128-value half `h` (ql offset `64h`, qh offset `32h`), for `l` in 0..32: elements `l`,
/// `l + 32`, `l + 64`, `l + 96` have low nibbles `ql[l] & 15`, `ql[l + 32] & 15`, `ql[l] >> 4`,
/// `ql[l + 32] >> 4` and high bit pairs 0–1, 2–3, 4–5, 6–7 of `qh[l]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    /// Scale of each 16 consecutive values.
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// Below this magnitude a group is treated as all zeros (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights: symmetric levels
/// `L − nmax` in `−nmax..nmax`, weights `x²`, trying scales `−(nmax + 0.1·is) / max` for
/// `is` in −9..=9 and keeping the least-squares best. Writes `L` (offset by `nmax`) and returns
/// the scale. Float operations are in ggml's order.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (dst, &v) in levels.iter_mut().zip(x) {
        *dst = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (dst, &v) in levels.iter_mut().zip(x) {
                *dst = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

impl BlockQ6K {
    /// `quantize_row_q6_K_ref`: fit each 16-value group with `make_qx_quants`, quantize the 16
    /// scales to i8 against the largest-magnitude one (which maps to −128), then requantize the
    /// values with the rounded scales.
    fn quantize_block(x: &[f32]) -> Self {
        let mut levels = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for (g, s) in scales.iter_mut().enumerate() {
            *s = make_qx_quants(
                32,
                &x[16 * g..16 * g + 16],
                &mut levels[16 * g..16 * g + 16],
            );
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        let mut b = BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: f16::ZERO,
        };
        if max_abs_scale < GROUP_MAX_EPS {
            return b;
        }
        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for (dst, &s) in b.scales.iter_mut().zip(&scales) {
            *dst = nearest_int(iscale * s).min(127) as i8;
        }
        for g in 0..16 {
            let d = b.d.to_f32() * b.scales[g] as f32;
            if d == 0.0 {
                continue; // keep make_qx_quants' levels, as ggml does
            }
            for i in 16 * g..16 * g + 16 {
                levels[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        b.set_levels(&levels.map(|v| v as u8));
        b
    }

    /// Stores the 6-bit levels `n` (0..64, element order) into `ql` and `qh`.
    pub(crate) fn set_levels(&mut self, levels: &[u8; QK_K]) {
        for h in 0..2 {
            let l = &levels[128 * h..128 * h + 128];
            let (ql, qh) = (
                &mut self.ql[64 * h..64 * h + 64],
                &mut self.qh[32 * h..32 * h + 32],
            );
            for i in 0..32 {
                let [q1, q2, q3, q4] = [l[i], l[i + 32], l[i + 64], l[i + 96]];
                ql[i] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
                ql[i + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
                qh[i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }

    /// All 256 values as signed levels `n − 32`, in element order.
    #[inline]
    pub(crate) fn levels(&self) -> [i8; QK_K] {
        let mut out = [0i8; QK_K];
        for h in 0..2 {
            let (ql, qh) = (&self.ql[64 * h..64 * h + 64], &self.qh[32 * h..32 * h + 32]);
            let y = &mut out[128 * h..128 * h + 128];
            for l in 0..32 {
                y[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                y[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        out
    }
}

// SAFETY: `#[repr(C)]` of u8/i8 arrays and an f16, 210 bytes, no padding (pinned above): any
// bytes are a valid value; field order is ggml's.
unsafe impl GgmlType for BlockQ6K {
    const BLOCK: usize = QK_K;
    const GGML_TYPE: u32 = super::ggml_type::Q6_K;
    const NAME: &'static str = "q6_k";

    fn quantize(x: &[f32], out: &mut [Self]) {
        debug_assert_eq!(x.len(), out.len() * QK_K);
        for (b, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            *b = Self::quantize_block(chunk);
        }
    }

    fn dequantize(blocks: &[Self], out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            for (i, (y, &n)) in y.iter_mut().zip(&b.levels()).enumerate() {
                *y = d * b.scales[i / 16] as f32 * n as f32;
            }
        }
    }
}

impl VecDot for BlockQ6K {
    type Act = BlockQ8K;

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: [&[BlockQ8K]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { kernels::avx2::dot_q6_k(w, a) },
            _ => kernels::scalar::dot_q6_k(w, a),
        }
    }
}
