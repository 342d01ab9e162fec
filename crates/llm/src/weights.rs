//! `WeightSource`: named f32 tensors from a GGUF file or Hugging Face safetensors (single file
//! or sharded with `model.safetensors.index.json`). Names are the GGUF file's own or the
//! checkpoint's own; the model file that consumes them holds the mapping table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::gguf::{Gguf, GgufError};

/// Errors while reading weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A tensor the model needs is absent.
    #[error("{source_name}: tensor '{name}' is missing")]
    Missing {
        /// Where we looked.
        source_name: String,
        /// The tensor.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("{source_name}: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Where it came from.
        source_name: String,
        /// The tensor.
        name: String,
        /// Its shape in the file.
        found: Vec<usize>,
        /// The shape the configuration implies.
        expected: Vec<usize>,
    },
    /// A tensor has a data type we do not read.
    #[error("{source_name}: tensor '{name}' has unsupported dtype {dtype}")]
    Dtype {
        /// Where it came from.
        source_name: String,
        /// The tensor.
        name: String,
        /// The dtype.
        dtype: String,
    },
    /// The GGUF reader failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// A dense f32 tensor in row-major order.
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Values.
    pub data: Vec<f32>,
    /// Row-major shape.
    pub shape: Vec<usize>,
}

/// Anything that yields named tensors as f32 (shared across threads: loaders read several
/// tensors at once).
pub trait WeightSource: Sync {
    /// A short description for error messages (the file path).
    fn source_name(&self) -> String;
    /// Whether a tensor exists.
    fn contains(&self, name: &str) -> bool;
    /// Reads and converts a tensor to f32.
    fn load(&self, name: &str) -> Result<HostTensor, WeightError>;

    /// The tensor's bytes in a GGUF block encoding, when the source stores it that way (so that
    /// the CPU decode path can use it without dequantizing); `None` otherwise.
    fn raw(&self, _name: &str) -> Option<RawTensor<'_>> {
        None
    }

    /// Reads a tensor and checks its shape.
    fn load_shaped(&self, name: &str, expected: &[usize]) -> Result<HostTensor, WeightError> {
        let t = self.load(name)?;
        if t.shape != expected {
            return Err(WeightError::Shape {
                source_name: self.source_name(),
                name: name.into(),
                found: t.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }
}

/// A tensor still in its file encoding.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Block type.
    pub ty: crate::quant::GgmlType,
    /// Row-major shape.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// The encoded rows.
    pub bytes: &'a [u8],
}

/// A GGUF file as a weight source (tensors dequantized on load).
pub struct GgufWeights<'a> {
    /// The parsed file.
    pub gguf: &'a Gguf,
    /// Its path, for messages.
    pub path: PathBuf,
}

impl WeightSource for GgufWeights<'_> {
    fn source_name(&self) -> String {
        self.path.display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.gguf.tensor_info(name).is_some()
    }
    fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
        if !self.contains(name) {
            return Err(WeightError::Missing { source_name: self.source_name(), name: name.into() });
        }
        let (data, shape) = self.gguf.dequantize(name)?;
        Ok(HostTensor { data, shape })
    }
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        let info = self.gguf.tensor_info(name)?;
        let shape = info.shape();
        let cols = *shape.last()?;
        Some(RawTensor { ty: info.ggml_type, rows: info.n_elements() / cols.max(1), cols, bytes: self.gguf.tensor_bytes(info) })
    }
}

/// Hugging Face safetensors: one `model.safetensors`, or shards listed by an index file.
pub struct SafetensorsWeights {
    dir: PathBuf,
    /// Tensor name → shard file.
    map: BTreeMap<String, PathBuf>,
    shards: BTreeMap<PathBuf, memmap2::Mmap>,
}

impl SafetensorsWeights {
    /// Opens the safetensors weights in a model folder.
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let file_err = |path: &Path, reason: String| WeightError::File { path: path.to_path_buf(), reason };
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| file_err(&index, e.to_string()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(&index, e.to_string()))?;
            let wm = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| file_err(&index, "no 'weight_map' object".into()))?;
            let mut files: Vec<PathBuf> = Vec::new();
            for f in wm.values() {
                let f = f.as_str().ok_or_else(|| file_err(&index, "'weight_map' values must be file names".into()))?;
                let p = dir.join(f);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files
        } else if single.exists() {
            vec![single]
        } else {
            return Err(file_err(dir, "no model.safetensors or model.safetensors.index.json".into()));
        };
        let mut map = BTreeMap::new();
        let mut shards = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| file_err(&path, e.to_string()))?;
            // SAFETY: read-only map of a file we do not modify.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_err(&path, e.to_string()))?;
            let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| file_err(&path, e.to_string()))?;
            for name in meta.tensors().keys() {
                map.insert(name.clone(), path.clone());
            }
            shards.insert(path, mmap);
        }
        Ok(SafetensorsWeights { dir: dir.to_path_buf(), map, shards })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }
}

impl WeightSource for SafetensorsWeights {
    fn source_name(&self) -> String {
        self.dir.display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
        let path = self
            .map
            .get(name)
            .ok_or_else(|| WeightError::Missing { source_name: self.source_name(), name: name.into() })?;
        let st = SafeTensors::deserialize(&self.shards[path])
            .map_err(|e| WeightError::File { path: path.clone(), reason: e.to_string() })?;
        let view = st.tensor(name).map_err(|e| WeightError::File { path: path.clone(), reason: e.to_string() })?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(WeightError::Dtype { source_name: path.display().to_string(), name: name.into(), dtype: format!("{other:?}") });
            }
        };
        Ok(HostTensor { data, shape: view.shape().to_vec() })
    }
}
