//! [`GgufWriter`]: builds a GGUF v3 file in memory — used by tests to make (and break) files.

use std::io::Write;
use std::path::Path;

use crate::error::GgufError;
use crate::reader::GgufFile;
use crate::types::GgmlType;
use crate::value::Value;
use crate::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC};

/// Metadata and tensors to write, in order.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    /// `(name, dims in ggml order, type, bytes)`.
    pub tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything `file` holds, ready to be changed and written again.
    pub fn from_file(file: &GgufFile) -> Self {
        GgufWriter {
            metadata: file.metadata().to_vec(),
            tensors: file
                .tensors()
                .iter()
                .map(|t| {
                    let bytes = file.tensor_bytes(t).to_vec();
                    (t.name.clone(), t.dims.clone(), t.ggml_type, bytes)
                })
                .collect(),
        }
    }

    /// Sets `key` (replacing an existing value in place).
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, bytes));
        self
    }

    /// The file's bytes. Tensor bytes are written as given, even when they do not match the
    /// dims (tests use that to make broken files).
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self
            .metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        for (name, dims, ty, bytes) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.0.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + bytes.len()).next_multiple_of(alignment);
        }
        for (_, _, _, bytes) in &self.tensors {
            out.resize(out.len().next_multiple_of(alignment), 0);
            out.extend_from_slice(bytes);
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<(), GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::create(path).map_err(io)?;
        f.write_all(&self.to_bytes()).map_err(io)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            // Elements carry no type of their own; a nested array starts with its element
            // type and length, as gguf-py writes it.
            for item in items {
                put_value(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::ValueType;

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("deepseek2".into()))
            .set("deepseek2.block_count", Value::U32(2))
            .set("deepseek2.rope.freq_base", Value::F32(10000.0))
            .set(
                "tokenizer.ggml.tokens",
                Value::Array(
                    ValueType::String,
                    vec![Value::String("a".into()), Value::String("ä b".into())],
                ),
            )
            .set(
                "nested",
                Value::Array(
                    ValueType::Array,
                    vec![Value::Array(ValueType::I32, vec![Value::I32(-1)])],
                ),
            );
        let q8: Vec<u8> = (0..2 * 34).map(|i| i as u8).collect();
        w.add_tensor("a.weight", &[3, 2], GgmlType::F32, vec![0; 24])
            .add_tensor("b.weight", &[32, 2], GgmlType::Q8_0, q8);
        w
    }

    fn write(w: &GgufWriter) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, w.to_bytes()).unwrap();
        (dir, path)
    }

    #[test]
    fn round_trip() {
        let w = sample();
        let (_dir, path) = write(&w);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.metadata(), &w.metadata[..]);
        assert_eq!(
            f.get("deepseek2.block_count").and_then(Value::as_u64),
            Some(2)
        );
        let b = f.tensor("b.weight").unwrap();
        assert_eq!(
            (b.dims.clone(), b.ggml_type, b.size),
            (vec![32, 2], GgmlType::Q8_0, 68)
        );
        assert_eq!(b.offset % 32, 0);
        assert_eq!(f.tensor_bytes(b), &w.tensors[1].3[..]);
        assert_eq!(f.data_offset() % 32, 0);
        let again = GgufWriter::from_file(&f).to_bytes();
        assert_eq!(again, std::fs::read(&path).unwrap());
    }

    #[test]
    fn custom_alignment() {
        let mut w = sample();
        w.set(ALIGNMENT_KEY, Value::U32(64));
        let (_dir, path) = write(&w);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        assert_eq!(f.tensor("b.weight").unwrap().offset, 64);
        assert_eq!(
            f.tensor_bytes(f.tensor("b.weight").unwrap()),
            &w.tensors[1].3[..]
        );
    }

    fn open_err(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, bytes).unwrap();
        let msg = GgufFile::open(&path)
            .err()
            .expect("should fail")
            .to_string();
        assert!(msg.contains("bad.gguf"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    #[test]
    fn every_truncation_is_an_error_naming_what_was_cut() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            let msg = open_err(&bytes[..cut]);
            assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
        }
        let msg = open_err(&bytes[..60]);
        assert!(msg.contains("`general.architecture`"), "{msg}");
        let msg = open_err(&bytes[..bytes.len() - 1]);
        assert!(
            msg.contains("`b.weight`") && msg.contains("past the end"),
            "{msg}"
        );
    }

    #[test]
    fn bad_headers() {
        let mut bytes = sample().to_bytes();
        bytes[0] = b'X';
        assert!(open_err(&bytes).contains("not a GGUF file"));
        let mut bytes = sample().to_bytes();
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(open_err(&bytes).contains("unsupported GGUF version 1"));
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(open_err(&bytes).contains("big-endian"));
        let mut bytes = sample().to_bytes();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.gguf");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(GgufFile::open(&path).unwrap().version(), 2);
    }

    #[test]
    fn bad_tensors() {
        let mut w = sample();
        w.tensors[1].2 = GgmlType(77);
        let msg = open_err(&w.to_bytes());
        assert!(
            msg.contains("`b.weight`") && msg.contains("unknown ggml type id 77"),
            "{msg}"
        );
        let mut w = sample();
        w.tensors[1].1 = vec![48, 2];
        let msg = open_err(&w.to_bytes());
        assert!(msg.contains("not whole 32-value blocks"), "{msg}");
        let mut w = sample();
        w.tensors[0].1 = vec![1, 1, 1, 1, 1];
        assert!(open_err(&w.to_bytes()).contains("at most 4"));
        let mut w = sample();
        w.set(ALIGNMENT_KEY, Value::U32(3));
        assert!(open_err(&w.to_bytes()).contains("`general.alignment`"));
        let mut w = sample();
        w.tensors[1].0 = "a.weight".into();
        assert!(open_err(&w.to_bytes()).contains("appears twice"));
    }

    #[test]
    fn bad_values() {
        let mut w = GgufWriter::new();
        w.set("flag", Value::Bool(true));
        let mut bytes = w.to_bytes();
        *bytes.last_mut().unwrap() = 7;
        assert!(open_err(&bytes).contains("`flag`: bool byte 7"));
        let mut w = GgufWriter::new();
        w.set("k", Value::String("ab".into()));
        let mut bytes = w.to_bytes();
        *bytes.last_mut().unwrap() = 0xff;
        assert!(open_err(&bytes).contains("`k`: invalid UTF-8"));
        // A huge array count is reported as truncation, without allocating for it.
        let mut w = GgufWriter::new();
        w.set("arr", Value::Array(ValueType::U8, vec![]));
        let mut bytes = w.to_bytes();
        let n = bytes.len();
        bytes[n - 8..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(open_err(&bytes).contains("`arr`"));
    }
}
