//! ggml tensor types: id, name, values per block and bytes per block — enough to size and slice
//! any tensor, whether or not whale can compute with its type.

use std::fmt;

/// A ggml tensor type id (`enum ggml_type` in `ggml.h`), as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// Name and block layout of a ggml type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlTypeInfo {
    pub name: &'static str,
    /// Values per block (1 for plain element types).
    pub block: u64,
    /// Bytes per block.
    pub bytes: u64,
}

const QK_K: u64 = 256;

/// `(id, name, values per block, bytes per block)`, from ggml's type traits
/// (`GGML_QUANT_SIZES` in gguf-py). Ids 4, 5 and 31–33, 36–38 were removed from ggml.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 2 + 16),
    (3, "Q4_1", 32, 2 + 2 + 16),
    (6, "Q5_0", 32, 2 + 4 + 16),
    (7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (8, "Q8_0", 32, 2 + 32),
    (9, "Q8_1", 32, 2 + 2 + 32),
    (10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
    (11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
    (12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    (13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
    (14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
    (15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    (16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    (17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
    (18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
    (19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    (20, "IQ4_NL", 32, 2 + 16),
    (21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    (22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    (23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", QK_K, 2 + 4 * 13),
    (35, "TQ2_0", QK_K, 2 + 64),
    (39, "MXFP4", 32, 1 + 16),
    (40, "NVFP4", 64, 4 + 32),
    (41, "Q1_0", 128, 2 + 16),
    (42, "Q2_0", 64, 2 + 16),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    /// Block layout, or `None` for an id ggml does not define.
    pub fn info(self) -> Option<GgmlTypeInfo> {
        TYPES
            .iter()
            .find(|t| t.0 == self.0)
            .map(|&(_, name, block, bytes)| GgmlTypeInfo { name, block, bytes })
    }

    /// Bytes of one row of `values` values, or `None` for an unknown type or a row that is not
    /// a whole number of blocks.
    pub fn row_bytes(self, values: u64) -> Option<u64> {
        let info = self.info()?;
        if !values.is_multiple_of(info.block) {
            return None;
        }
        (values / info.block).checked_mul(info.bytes)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.info() {
            Some(i) => f.write_str(i.name),
            None => write!(f, "unknown type {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        // The block sizes whale's own structs pin (`size_of::<BlockQ4K>() == 144`, ...).
        assert_eq!(GgmlType::Q8_0.row_bytes(64), Some(68));
        assert_eq!(GgmlType::Q4_0.row_bytes(32), Some(18));
        assert_eq!(GgmlType::Q4_K.row_bytes(256), Some(144));
        assert_eq!(GgmlType::Q6_K.row_bytes(512), Some(420));
        assert_eq!(GgmlType::BF16.row_bytes(3), Some(6));
        assert_eq!(GgmlType::Q8_0.row_bytes(48), None);
        assert_eq!(GgmlType(4).info(), None);
        assert_eq!(GgmlType(12).to_string(), "Q4_K");
        assert_eq!(GgmlType(99).to_string(), "unknown type 99");
    }
}
