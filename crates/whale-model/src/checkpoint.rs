//! Safetensors checkpoints (single file or sharded) read through mmap, and the typed
//! loader that checks every tensor's name, shape and dtype before the model runs — from a
//! safetensors checkpoint or, through [`TensorSource`], a GGUF file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use whale_tensor::{dtype::bytes_to_f32, DType, Isa, QuantType, Weight, WeightData};

use crate::error::{ModelError, Result};
use crate::gguf::GgufCheckpoint;

/// One tensor's location inside a mapped file.
#[derive(Debug)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The safetensors files of a model folder, mapped and indexed by tensor name.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    tensors: HashMap<String, Entry>,
}

impl Checkpoint {
    /// Opens `model.safetensors.index.json` (sharded) or `model.safetensors`, or failing
    /// both every `*.safetensors` file in `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        let (paths, index) = if index_path.exists() {
            let index = read_index(&index_path)?;
            let files: Vec<PathBuf> = index
                .values()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|f| dir.join(f))
                .collect();
            (files, Some(index))
        } else if dir.join("model.safetensors").exists() {
            (vec![dir.join("model.safetensors")], None)
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| ModelError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(ModelError::Checkpoint {
                    path: dir.to_path_buf(),
                    message:
                        "no model.safetensors, model.safetensors.index.json or *.safetensors file"
                            .into(),
                });
            }
            (files, None)
        };

        let mut ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        for path in paths {
            ckpt.add_file(path)?;
        }
        if let Some(index) = index {
            for (name, file) in &index {
                let found = ckpt
                    .tensors
                    .get(name)
                    .map(|e| ckpt.files[e.file].0.file_name() == Some(std::ffi::OsStr::new(file)));
                if found != Some(true) {
                    return Err(ModelError::Checkpoint {
                        path: dir.join("model.safetensors.index.json"),
                        message: format!(
                            "tensor `{name}` is mapped to {file} but that file does not hold it"
                        ),
                    });
                }
            }
        }
        Ok(ckpt)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the mapping is read-only and the files are not modified while whale
        // runs; a file truncated underneath us is the same hazard every mmap loader has.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let bad = |message: String| ModelError::Checkpoint {
            path: path.clone(),
            message,
        };
        // `deserialize` validates the header: its length, the JSON, and that the data
        // offsets are contiguous, match each dtype × shape and fit inside the file.
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| bad(format!("invalid safetensors file: {e}")))?;
        let file_idx = self.files.len();
        let base = mmap.as_ptr() as usize;
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::Bf16,
                Dtype::F8_E4M3 => DType::F8E4M3,
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` has unsupported dtype {other:?}"
                    )))
                }
            };
            let start = view.data().as_ptr() as usize - base;
            let entry = Entry {
                file: file_idx,
                dtype,
                shape: view.shape().to_vec(),
                start,
                end: start + view.data().len(),
            };
            if let Some(prev) = self.tensors.insert(name.clone(), entry) {
                return Err(bad(format!(
                    "tensor `{name}` also appears in {}",
                    self.files[prev.file].0.display()
                )));
            }
        }
        drop(st);
        self.files.push((path, mmap));
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.files[e.file].1[e.start..e.end]
    }
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(index.weight_map)
}

/// Where a model's tensors come from. The loader asks for every tensor by its Hugging Face
/// name; a GGUF file translates the name to llama.cpp's (see [`crate::gguf`]).
#[derive(Clone, Copy)]
pub enum TensorSource<'a> {
    Safetensors(&'a Checkpoint),
    Gguf(&'a GgufCheckpoint),
}

impl TensorSource<'_> {
    /// The folder or file, for messages.
    pub fn path(&self) -> &Path {
        match self {
            TensorSource::Safetensors(c) => c.dir(),
            TensorSource::Gguf(g) => g.path(),
        }
    }

    /// Whether the tensor with this Hugging Face name is stored.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            TensorSource::Safetensors(c) => c.contains(name),
            TensorSource::Gguf(g) => g.contains(name),
        }
    }

    /// Names as stored (GGUF names for a GGUF file).
    fn stored_names(&self) -> Vec<String> {
        match self {
            TensorSource::Safetensors(c) => c.tensor_names().map(str::to_string).collect(),
            TensorSource::Gguf(g) => g.tensor_names(),
        }
    }
}

impl<'a> From<&'a Checkpoint> for TensorSource<'a> {
    fn from(c: &'a Checkpoint) -> Self {
        TensorSource::Safetensors(c)
    }
}

impl<'a> From<&'a GgufCheckpoint> for TensorSource<'a> {
    fn from(g: &'a GgufCheckpoint) -> Self {
        TensorSource::Gguf(g)
    }
}

/// Builds typed weights from a checkpoint, collecting every problem (missing tensor,
/// wrong shape, missing FP8 scale) so they are all reported in one error.
pub struct WeightLoader<'a> {
    source: TensorSource<'a>,
    fp8_block: [usize; 2],
    problems: Vec<String>,
    /// Stored names read so far (GGUF names for a GGUF file).
    used: HashSet<String>,
    quant: Option<QuantType>,
}

impl<'a> WeightLoader<'a> {
    pub fn new(source: impl Into<TensorSource<'a>>, fp8_block: Option<[usize; 2]>) -> Self {
        WeightLoader {
            source: source.into(),
            fp8_block: fp8_block.unwrap_or([128, 128]),
            problems: Vec::new(),
            used: HashSet::new(),
            quant: None,
        }
    }

    /// Re-encode projection matrices to `quant` as they load (`--quant`).
    pub fn with_quant(mut self, quant: Option<QuantType>) -> Self {
        self.quant = quant;
        self
    }

    /// A projection matrix, re-encoded to the `--quant` type when one is set, in the layout
    /// this CPU's kernels read fastest ([`Weight::for_isa`]). Rows that are
    /// not a whole number of the type's blocks (e.g. V2-Lite's 1408-wide expert rows in a
    /// 256-value K-quant) fall back to a 32-value type of at least the same precision, as
    /// llama.cpp does: Q6_K → Q8_0, Q4_K → Q4_0 → Q8_0.
    pub fn projection(&mut self, name: &str, rows: usize, cols: usize) -> Weight {
        let target = self.quant;
        self.reencoded(name, rows, cols, target)
            .for_isa(Isa::detect())
    }

    /// Projections of one input (`rows` each) stacked row-wise into one matrix, so that one
    /// matmul computes them all (an MLP's gate and up): packed straight from a GGUF file's
    /// parts, otherwise each loaded as by [`Self::projection`] and joined (a copy). `Err` hands
    /// them back apart when their storages differ (a mixed-format file, FP8).
    pub fn stacked_projections(
        &mut self,
        names: &[&str],
        rows: usize,
        cols: usize,
    ) -> Result<Weight, Vec<Weight>> {
        if let (TensorSource::Gguf(g), None) = (&self.source, self.quant) {
            if let Some(got) = g.stacked(names, rows, cols, &mut self.used) {
                return Ok(got.unwrap_or_else(|problem| {
                    self.record(problem);
                    placeholder()
                }));
            }
        }
        let parts = names
            .iter()
            .map(|name| self.projection(name, rows, cols))
            .collect();
        Weight::stack_rows(parts)
    }

    /// The output head (`lm_head`): llama.cpp's mixes keep it at Q6_K under the 4-bit types,
    /// since every token's distribution passes through it; Q8_0 and wider stay as asked.
    pub fn output_projection(&mut self, name: &str, rows: usize, cols: usize) -> Weight {
        let target = match self.quant {
            Some(QuantType::Q4_0 | QuantType::Q4K) => Some(QuantType::Q6K),
            other => other,
        };
        self.reencoded(name, rows, cols, target)
            .for_isa(Isa::detect())
    }

    fn reencoded(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        target: Option<QuantType>,
    ) -> Weight {
        let w = self.matrix(name, rows, cols);
        let Some(target) = target else { return w };
        if w.rows == 0 {
            return w; // failed to load; the problem is recorded
        }
        let fallbacks: &[QuantType] = match target {
            QuantType::Q6K => &[QuantType::Q6K, QuantType::Q8_0],
            QuantType::Q4K => &[QuantType::Q4K, QuantType::Q4_0, QuantType::Q8_0],
            QuantType::Q4_0 => &[QuantType::Q4_0, QuantType::Q8_0],
            QuantType::Q8_0 => &[QuantType::Q8_0],
            QuantType::Bf16 => &[QuantType::Bf16],
            QuantType::F32 => &[QuantType::F32],
        };
        match fallbacks.iter().copied().find(|q| q.fits(cols)) {
            Some(q) => match w.quantize(q) {
                Ok(quantized) => quantized,
                Err(e) => {
                    self.problems.push(format!("tensor `{name}`: {e}"));
                    placeholder()
                }
            },
            None => w,
        }
    }

    /// A `[rows, cols]` matrix in its stored dtype (FP8 with its block scales; a GGUF block
    /// format as those blocks).
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Weight {
        let got = match self.source {
            TensorSource::Safetensors(c) => self.safetensors_matrix(c, name, rows, cols),
            TensorSource::Gguf(g) => g.matrix(name, rows, cols, &mut self.used),
        };
        got.unwrap_or_else(|problem| {
            self.record(problem);
            placeholder()
        })
    }

    /// A vector (norm weights, router bias) decoded to `f32`.
    pub fn vector(&mut self, name: &str, len: usize) -> Vec<f32> {
        let got = match self.source {
            TensorSource::Safetensors(c) => self.safetensors_vector(c, name, len),
            TensorSource::Gguf(g) => g.vector(name, len, &mut self.used),
        };
        got.unwrap_or_else(|problem| {
            self.record(problem);
            vec![0.0; len]
        })
    }

    /// Notes a problem once (all experts of a fused GGUF tensor share its problem).
    fn record(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// Looks up `name` and checks its shape.
    fn entry(
        &mut self,
        c: &'a Checkpoint,
        name: &str,
        shape: &[usize],
    ) -> Result<&'a Entry, String> {
        let Some(e) = c.tensors.get(name) else {
            return Err(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            ));
        };
        self.used.insert(name.to_string());
        if e.shape != shape {
            return Err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                e.shape
            ));
        }
        Ok(e)
    }

    fn safetensors_matrix(
        &mut self,
        c: &'a Checkpoint,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Weight, String> {
        let e = self.entry(c, name, &[rows, cols])?;
        let bytes = c.bytes(e);
        let data = match e.dtype {
            DType::F32 => WeightData::F32(to_f32(DType::F32, bytes)),
            DType::F16 => WeightData::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::Bf16 => WeightData::Bf16(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::F8E4M3 => {
                let block = self.fp8_block;
                let scale_name = format!("{name}_scale_inv");
                let scale_shape = [rows.div_ceil(block[0]), cols.div_ceil(block[1])];
                let s = self.entry(c, &scale_name, &scale_shape)?;
                if s.dtype == DType::F8E4M3 {
                    return Err(format!(
                        "scale tensor `{scale_name}` must be a float type, not FP8"
                    ));
                }
                let scales = to_f32(s.dtype, c.bytes(s));
                if let Some(bad) = scales.iter().find(|v| !v.is_finite()) {
                    return Err(format!(
                        "scale tensor `{scale_name}` holds a non-finite value {bad}"
                    ));
                }
                WeightData::Fp8Block {
                    values: bytes.to_vec(),
                    scales,
                    block,
                }
            }
        };
        Ok(Weight::new(rows, cols, data))
    }

    fn safetensors_vector(
        &mut self,
        c: &'a Checkpoint,
        name: &str,
        len: usize,
    ) -> Result<Vec<f32>, String> {
        let e = self.entry(c, name, &[len])?;
        if e.dtype == DType::F8E4M3 {
            return Err(format!("tensor `{name}` is FP8; only matrices may be FP8"));
        }
        Ok(to_f32(e.dtype, c.bytes(e)))
    }

    /// Fails with every recorded problem. Tensors never asked for are returned (by their stored
    /// names) so the caller can decide which are deliberately ignored.
    pub fn finish(self) -> Result<Vec<String>> {
        if !self.problems.is_empty() {
            return Err(ModelError::Tensors {
                dir: self.source.path().to_path_buf(),
                problems: self.problems,
            });
        }
        let mut unused: Vec<String> = self
            .source
            .stored_names()
            .into_iter()
            .filter(|n| !self.used.contains(n))
            .collect();
        unused.sort();
        Ok(unused)
    }
}

fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    bytes_to_f32(dtype, bytes, &mut out);
    out
}

/// Stands in for a tensor that failed to load; never used because `finish` then errors.
fn placeholder() -> Weight {
    Weight::from_f32(0, 0, Vec::new())
}
