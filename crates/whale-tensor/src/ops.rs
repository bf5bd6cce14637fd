//! Element-wise and reduction kernels on `f32` activations.

/// `a · b`, with AVX2/FMA where the CPU has it ([`crate::kernels`]).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::kernels::dot_f32(a, b)
}

/// `out = w ⊙ x / sqrt(mean(x²) + eps)`, one row.
pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let mean_sq = dot(x, x) / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * inv);
    }
}

/// RMSNorm applied to each `w.len()`-wide row of `x` in place.
pub fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    let mut tmp = vec![0.0; w.len()];
    for row in x.chunks_exact_mut(w.len()) {
        rms_norm(&mut tmp, row, w, eps);
        row.copy_from_slice(&tmp);
    }
}

/// Numerically stable softmax in place (max subtracted first).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = crate::kernels::exp_sub_sum(crate::Isa::detect(), x, max);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// SwiGLU gating in place: `gate[i] = silu(gate[i]) · up[i]`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    crate::kernels::swiglu(crate::Isa::detect(), gate, up)
}

/// `y += a · x`, with AVX2/FMA where the CPU has it ([`crate::kernels`]).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    crate::kernels::axpy(y, a, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_sum_at_odd_lengths() {
        for n in [0, 1, 3, 7, 8, 9, 31, 33, 1023] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_is_shift_invariant() {
        let mut a = vec![1.0, 2.0, 3.0, 1000.0];
        softmax(&mut a);
        assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(a[3] > 0.999);
        let mut b = vec![0.5, -0.5];
        let mut c = vec![100.5, 99.5];
        softmax(&mut b);
        softmax(&mut c);
        assert!((b[0] - c[0]).abs() < 1e-6);
    }

    #[test]
    fn rms_norm_unit_rms() {
        let x = [3.0, -4.0];
        let mut out = [0.0; 2];
        rms_norm(&mut out, &x, &[1.0, 2.0], 0.0);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6);
        assert!((out[1] + 8.0 / rms).abs() < 1e-6);
    }
}
