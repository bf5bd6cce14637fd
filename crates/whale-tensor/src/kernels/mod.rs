//! Dot-product kernels: a scalar reference for every weight format and AVX2/FMA versions chosen
//! at run time.
//!
//! The instruction set is detected once ([`Isa::detect`]) and passed down explicitly, so a
//! benchmark or test can run the scalar path beside the SIMD one in the same process. Every
//! kernel computes a *tile*: one weight row against `N` (1–4) activation rows, so that in
//! prefill each weight block is decoded once for several tokens.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub(crate) mod scalar;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use half::{bf16, f16};

/// How far ahead of the weights being read the block kernels ask for more. A single stream per
/// core with only the hardware prefetcher reads about 25 GB/s on the test machine, and 31 GB/s
/// with software prefetches 8–64 KB ahead into L2 (measured with a plain read loop); at 2 KB into
/// L1, as before, AVX-512 decode ran 7–13% slower (Q4_0, Q8_0).
#[cfg(target_arch = "x86_64")]
const PREFETCH_DISTANCE: usize = 32 << 10;

/// Asks now, into L2, for the cache lines of `w`'s bytes `start..start + len` moved
/// [`PREFETCH_DISTANCE`] ahead, so that decode keeps enough reads in flight to stream weights at
/// DRAM speed. Past the end of `w` the addresses are the matrix's next rows (or nothing: a
/// prefetch never faults), hence the wrapping arithmetic instead of in-bounds pointers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(w: &[T], start: usize, len: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    let base = w.as_ptr().cast::<i8>();
    let start = start + PREFETCH_DISTANCE;
    for off in (start..start + len).step_by(64) {
        // SAFETY: a prefetch is a hint; it reads nothing and never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(off)) };
    }
}

/// An instruction set with its own kernels, as detected on this CPU. Only [`Isa::detect`] and
/// [`Isa::available`] can produce a SIMD value, so holding one proves the CPU supports it and
/// the safe kernel entry points may call `#[target_feature]` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa(pub(crate) IsaKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IsaKind {
    /// Portable Rust; the reference every SIMD kernel is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell, Zen and later).
    Avx2,
    /// AVX2's features plus AVX-512 F/BW/VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later):
    /// the block-quantized kernels (Q8_0, Q4_0, Q5_0, Q4_K, Q6_K) on sixteen interleaved rows
    /// and the f32 kernels of attention; the bf16/f16 weight kernels are AVX2's.
    Avx512Vnni,
}

impl Isa {
    /// The portable reference kernels, available everywhere.
    pub const SCALAR: Isa = Isa(IsaKind::Scalar);

    /// The best instruction set this CPU supports, detected on first call and cached.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                    && std::env::var_os("WHALE_NO_AVX512").is_none()
                {
                    return Isa(IsaKind::Avx512Vnni);
                }
                return Isa(IsaKind::Avx2);
            }
            Isa::SCALAR
        })
    }

    /// Every instruction set this CPU can run, scalar first (for tests and benchmarks).
    pub fn available() -> Vec<Isa> {
        let kinds = [IsaKind::Scalar, IsaKind::Avx2, IsaKind::Avx512Vnni];
        let best = kinds
            .iter()
            .position(|&k| k == Isa::detect().0)
            .unwrap_or(0);
        kinds[..=best].iter().map(|&k| Isa(k)).collect()
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            IsaKind::Scalar => "scalar",
            IsaKind::Avx2 => "avx2",
            IsaKind::Avx512Vnni => "avx512vnni",
        }
    }
}

/// A weight element type (a scalar or a quantized block) that knows how to take dot products of
/// one of its rows with rows of its activation type.
pub trait VecDot: Sized + Sync {
    /// What activations are converted to before the dot product (`f32` for float weights).
    type Act: Sync;

    /// Elements of `Self::Act` that cover the values of `w_len` elements of `Self`.
    fn act_len(w_len: usize) -> usize {
        w_len
    }

    /// `out[t] = w · a[t]` for `N` activation rows covering the same values as `w`
    /// (`a[t].len() == act_len(w.len())`).
    fn dot_tile<const N: usize>(isa: Isa, w: &[Self], a: [&[Self::Act]; N]) -> [f32; N];

    /// `out[r][t] = w[r] · a[t]` for four weight rows at once; row by row unless a kernel
    /// keeps a 4 × `N` tile of sums in registers (each load then feeds more multiplies).
    #[inline]
    fn dot_rows<const N: usize>(isa: Isa, w: [&[Self]; 4], a: [&[Self::Act]; N]) -> [[f32; N]; 4] {
        w.map(|w| Self::dot_tile(isa, w, a))
    }
}

impl VecDot for f32 {
    type Act = f32;

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[f32], a: [&[f32]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` holds `Avx2` or `Avx512Vnni` only if `Isa::detect` found AVX2, FMA and F16C.
            IsaKind::Avx2 => unsafe { avx2::dot_f32(w, a) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512Vnni` is detected only with AVX-512 F (and AVX2, FMA).
            IsaKind::Avx512Vnni => unsafe { avx512::dot_f32(w, a) },
            _ => a.map(|a| scalar::dot_f32(w, a)),
        }
    }

    #[inline]
    fn dot_rows<const N: usize>(isa: Isa, w: [&[f32]; 4], a: [&[f32]; N]) -> [[f32; N]; 4] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512Vnni` is detected only with AVX-512 F (and AVX2, FMA).
            IsaKind::Avx512Vnni => unsafe { avx512::dot_f32_rows(w, a) },
            _ => w.map(|w| Self::dot_tile(isa, w, a)),
        }
    }
}

impl VecDot for bf16 {
    type Act = f32;

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[bf16], a: [&[f32]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` holds `Avx2` or `Avx512Vnni` only if `Isa::detect` found AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { avx2::dot_bf16(w, a) },
            _ => a.map(|a| scalar::dot_bf16(w, a)),
        }
    }
}

impl VecDot for f16 {
    type Act = f32;

    #[inline]
    fn dot_tile<const N: usize>(isa: Isa, w: &[f16], a: [&[f32]; N]) -> [f32; N] {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` holds `Avx2` or `Avx512Vnni` only if `Isa::detect` found AVX2, FMA and F16C.
            IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { avx2::dot_f16(w, a) },
            _ => a.map(|a| scalar::dot_f16(w, a)),
        }
    }
}

/// `a · b` with the detected instruction set (what [`crate::ops::dot`] calls).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let [d] = f32::dot_tile(Isa::detect(), a, [b]);
    d
}

/// `acc[t][c] += Σ_j p[j][t] · w[j][c]` for `N` sums of `acc.len() / N` columns, `p` holding
/// `N` weights per row (`rows × N`) and row `j` of `w` starting at `j · stride`.
#[inline]
pub fn weighted_rows<const N: usize>(
    isa: Isa,
    acc: &mut [f32],
    p: &[f32],
    w: &[f32],
    stride: usize,
) {
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
        IsaKind::Avx2 => unsafe { avx2::weighted_rows::<N>(acc, p, w, stride) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512Vnni` is detected only with AVX-512 F (and AVX2, FMA).
        IsaKind::Avx512Vnni => unsafe { avx512::weighted_rows::<N>(acc, p, w, stride) },
        _ => scalar::weighted_rows::<N>(acc, p, w, stride),
    }
}

/// `x[i] = exp(x[i] − m)` for `x[i] ≤ m` (softmax after its max), returning the sum; values
/// more than 86 below `m` give 0.
#[inline]
pub fn exp_sub_sum(isa: Isa, x: &mut [f32], m: f32) -> f32 {
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
        IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { avx2::exp_sub_sum(x, m) },
        _ => scalar::exp_sub_sum(x, m),
    }
}

/// SwiGLU gating in place, `gate[i] = silu(gate[i]) · up[i]`, with `isa`'s kernel.
pub fn swiglu(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu lengths");
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
        IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { avx2::swiglu(gate, up) },
        _ => scalar::swiglu(gate, up),
    }
}

/// [`weighted_rows`] for `n` ≤ 8 sums chosen at run time (`p`: `rows × n`).
#[inline]
pub fn weighted_rows_dyn(isa: Isa, n: usize, acc: &mut [f32], p: &[f32], w: &[f32], stride: usize) {
    match n {
        1 => weighted_rows::<1>(isa, acc, p, w, stride),
        2 => weighted_rows::<2>(isa, acc, p, w, stride),
        3 => weighted_rows::<3>(isa, acc, p, w, stride),
        4 => weighted_rows::<4>(isa, acc, p, w, stride),
        5 => weighted_rows::<5>(isa, acc, p, w, stride),
        6 => weighted_rows::<6>(isa, acc, p, w, stride),
        7 => weighted_rows::<7>(isa, acc, p, w, stride),
        8 => weighted_rows::<8>(isa, acc, p, w, stride),
        _ => panic!("weighted_rows_dyn: {n} sums (at most 8)"),
    }
}

/// `y += a · x` with the detected instruction set (what [`crate::ops::axpy`] calls).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    match Isa::detect().0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` and `Avx512Vnni` are detected only with AVX2, FMA and F16C.
        IsaKind::Avx2 | IsaKind::Avx512Vnni => unsafe { avx2::axpy(y, a, x) },
        _ => scalar::axpy(y, a, x),
    }
}
