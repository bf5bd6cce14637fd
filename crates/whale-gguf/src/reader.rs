//! [`GgufFile`]: a mapped GGUF file with its metadata and tensor infos parsed and validated.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::GgufError;
use crate::types::GgmlType;
use crate::value::{Value, ValueType};
use crate::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};

/// Where one tensor is and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (`ne0`) is the contiguous dimension, the columns of a matrix.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Byte length.
    pub size: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A memory-mapped GGUF file. Opening validates everything, so the accessors cannot fail.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and whale never writes model files; a file truncated
        // underneath a running process is the hazard every mmap loader accepts.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let p = Parser {
            path,
            bytes: &mmap,
            pos: 0,
        }
        .file()?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: p.version,
            metadata: p.metadata,
            keys: p.keys,
            tensors: p.tensors,
            by_name: p.by_name,
            alignment: p.alignment,
            data_offset: p.data_offset,
            mmap,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `key` converted by `as_type`: `Ok(None)` when absent, and when present with another
    /// type `Err("expected {what}, got {value}")` for the caller to report under the key.
    pub fn get_as<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        as_type: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_type(v)
                .map(Some)
                .ok_or_else(|| format!("expected {what}, got {v}")),
        }
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file (its place was checked at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.mmap[start..start + t.size as usize]
    }
}

/// Everything [`Parser::file`] reads: a [`GgufFile`] without its mapping.
struct Parsed {
    version: u32,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// A read cursor that turns running out of bytes into [`GgufError::Truncated`] naming `what`.
struct Parser<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                len: self.bytes.len() as u64,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string; `invalid` builds the error for bad UTF-8.
    fn string(
        &mut self,
        what: &dyn Fn() -> String,
        invalid: &dyn Fn(String) -> GgufError,
    ) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| invalid(format!("invalid UTF-8: {e}")))
    }

    fn metadata_err(&self, key: &str, message: String) -> GgufError {
        metadata_err(self.path, key, message)
    }

    fn tensor_err(&self, tensor: &str, message: String) -> GgufError {
        tensor_err(self.path, tensor, message)
    }

    fn file(mut self) -> Result<Parsed, GgufError> {
        let path = self.path;
        let magic: [u8; 4] = self.array(&|| "the header".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: magic.to_vec(),
            });
        }
        let version = self.u32(&|| "the header".into())?;
        if version != 2 && version != 3 {
            // A big-endian file (gguf-py `--bigendian`) shows its version byte-swapped.
            let hint = match version.swap_bytes() {
                2 | 3 => "; this file is big-endian",
                _ if version == 1 => "; version 1 predates 64-bit counts",
                _ => "",
            };
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                hint,
            });
        }
        let n_tensors = self.u64(&|| "the header".into())?;
        let n_kv = self.u64(&|| "the header".into())?;

        // Counts come from the file: never reserve more than the bytes left could hold.
        let cap = |n: u64, min_bytes: u64, left: usize| n.min(left as u64 / min_bytes) as usize;
        let mut metadata = Vec::with_capacity(cap(n_kv, 12, self.bytes.len()));
        let mut keys = HashMap::new();
        for i in 0..n_kv {
            let after = |v: &Vec<(String, Value)>| match v.last() {
                Some((k, _)) => format!(", after `{k}`"),
                None => String::new(),
            };
            let context = after(&metadata);
            let key = self.string(
                &|| format!("the key of metadata entry {i} of {n_kv}{context}"),
                &|m| metadata_err(path, &format!("#{i}{context}"), m),
            )?;
            let ty = self.u32(&|| format!("metadata key `{key}`"))?;
            let value = self.value(&key, ty, 0)?;
            if keys.insert(key.clone(), metadata.len()).is_some() {
                return Err(self.metadata_err(&key, "appears twice".into()));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(self
                        .metadata_err(ALIGNMENT_KEY, format!("must be a power of two, got {v}")))
                }
            },
        };

        let mut tensors = Vec::with_capacity(cap(n_tensors, 24, self.bytes.len() - self.pos));
        let mut by_name = HashMap::new();
        for i in 0..n_tensors {
            let name = self.string(
                &|| format!("the name of tensor info {i} of {n_tensors}"),
                &|m| tensor_err(path, &format!("#{i}"), m),
            )?;
            let what = || format!("tensor info `{name}`");
            let n_dims = self.u32(&what)? as usize;
            if n_dims > MAX_DIMS {
                return Err(self.tensor_err(
                    &name,
                    format!("{n_dims} dims (ggml allows at most {MAX_DIMS})"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(self.u64(&what)?);
            }
            let ggml_type = GgmlType(self.u32(&what)?);
            let offset = self.u64(&what)?;
            let Some(info) = ggml_type.info() else {
                return Err(self.tensor_err(&name, format!("unknown ggml type id {}", ggml_type.0)));
            };
            let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let ne0 = dims.first().copied().unwrap_or(1);
            let size = match elements {
                None => return Err(self.tensor_err(&name, format!("dims {dims:?} overflow"))),
                Some(_) if ne0 % info.block != 0 => {
                    return Err(self.tensor_err(
                        &name,
                        format!(
                            "{} rows of {ne0} values are not whole {}-value blocks",
                            info.name, info.block
                        ),
                    ))
                }
                Some(n) => (n / info.block).checked_mul(info.bytes),
            };
            let Some(size) = size else {
                return Err(self.tensor_err(&name, format!("dims {dims:?} overflow")));
            };
            if offset % alignment != 0 {
                return Err(self.tensor_err(
                    &name,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(self.tensor_err(&name, "appears twice".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                size,
            });
        }

        let data_offset = (self.pos as u64).next_multiple_of(alignment);
        let len = self.bytes.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size));
            if !matches!(end, Some(e) if e <= len) {
                return Err(self.tensor_err(
                    &t.name,
                    format!(
                        "data (offset {} + {} bytes after the data section at {data_offset}) runs past the end of the {len}-byte file (truncated?)",
                        t.offset, t.size
                    ),
                ));
            }
        }

        Ok(Parsed {
            version,
            metadata,
            keys,
            tensors,
            by_name,
            alignment,
            data_offset,
        })
    }

    /// One value of type id `ty` for `key`; `depth` bounds nested arrays.
    fn value(&mut self, key: &str, ty: u32, depth: u32) -> Result<Value, GgufError> {
        let what = || format!("metadata key `{key}`");
        let Some(ty) = ValueType::from_id(ty) else {
            return Err(self.metadata_err(key, format!("unknown value type id {ty}")));
        };
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(self.metadata_err(key, format!("bool byte {b} is neither 0 nor 1")))
                }
            },
            ValueType::String => {
                let path = self.path;
                Value::String(self.string(&what, &|m| metadata_err(path, key, m))?)
            }
            ValueType::Array => {
                if depth >= 4 {
                    return Err(self.metadata_err(key, "arrays nested too deeply".into()));
                }
                let elem_id = self.u32(&what)?;
                let n = self.u64(&what)?;
                let Some(elem) = ValueType::from_id(elem_id) else {
                    return Err(
                        self.metadata_err(key, format!("unknown array element type id {elem_id}"))
                    );
                };
                // Every element takes at least one byte: a count beyond the bytes left is a
                // truncated (or corrupt) file, found before allocating for it.
                let left = (self.bytes.len() - self.pos) as u64;
                if n > left {
                    return Err(GgufError::Truncated {
                        path: self.path.to_path_buf(),
                        what: format!("metadata key `{key}` ({n} array elements)"),
                        offset: self.pos as u64,
                        len: self.bytes.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(key, elem_id, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

fn metadata_err(path: &Path, key: &str, message: String) -> GgufError {
    GgufError::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    }
}

fn tensor_err(path: &Path, tensor: &str, message: String) -> GgufError {
    GgufError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message,
    }
}
