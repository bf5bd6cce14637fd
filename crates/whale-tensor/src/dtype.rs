//! Storage dtypes found in checkpoints and their exact conversion to `f32`.

use half::{bf16, f16};

/// Element types whale can read from a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// `float8_e4m3fn`: 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities.
    F8E4M3,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::F8E4M3 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::Bf16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
        }
    }
}

/// Decodes one `float8_e4m3fn` byte exactly. 0x7F/0xFF are NaN; there is no infinity.
pub const fn fp8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0f32 };
    let exp = ((b >> 3) & 0x0F) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0F && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // Subnormal: 2^-6 · m/8.
        return sign * man / 8.0 / 64.0;
    }
    // Normal: 2^(e-7) · (1 + m/8). Built by multiplication so it stays a `const fn`.
    let mut scale = 1.0f32;
    let mut e = exp - 7;
    while e > 0 {
        scale *= 2.0;
        e -= 1;
    }
    while e < 0 {
        scale /= 2.0;
        e += 1;
    }
    sign * scale * (1.0 + man / 8.0)
}

/// All 256 FP8 values, so decoding a weight is one table lookup per element.
pub static FP8_E4M3_LUT: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = fp8_e4m3_to_f32(i as u8);
        i += 1;
    }
    t
};

/// Little-endian bytes of `dtype` → `f32` values (FP8 without its block scale).
pub fn bytes_to_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::F8E4M3 => out.extend(bytes.iter().map(|&b| FP8_E4M3_LUT[b as usize])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_known_values() {
        assert_eq!(fp8_e4m3_to_f32(0x00), 0.0);
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0); // e=7, m=0
        assert_eq!(fp8_e4m3_to_f32(0xB8), -1.0);
        assert_eq!(fp8_e4m3_to_f32(0x7E), 448.0); // max finite
        assert_eq!(fp8_e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(fp8_e4m3_to_f32(0x08), 2f32.powi(-6)); // smallest normal
        assert!(fp8_e4m3_to_f32(0x7F).is_nan());
        assert!(fp8_e4m3_to_f32(0xFF).is_nan());
        assert_eq!(FP8_E4M3_LUT[0x3C], 1.5);
    }

    #[test]
    fn bf16_and_f16_decode() {
        let mut out = Vec::new();
        bytes_to_f32(DType::Bf16, &bf16::from_f32(-2.5).to_le_bytes(), &mut out);
        assert_eq!(out, vec![-2.5]);
        bytes_to_f32(DType::F16, &f16::from_f32(0.125).to_le_bytes(), &mut out);
        assert_eq!(out, vec![0.125]);
    }
}
