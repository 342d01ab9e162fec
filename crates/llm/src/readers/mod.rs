//! The readers of model files that users hand in, in one place so they are easy to find and to
//! check: GGUF ([`gguf`]), PyTorch zip and legacy pickles ([`torch`]), safetensors
//! ([`safetensors`]), the shard indexes that list a sharded checkpoint's files
//! ([`shard_index`]), capped reads of regular files ([`capped`]) and the optional fields of JSON
//! configurations ([`fields`]), and [`path_io`], the I/O error that names its file, which the
//! other crates use too. Every size, offset and count read from a file is checked before it is
//! used, and a refusal names the file and the field. The readers' error is [`WeightError`]
//! (also `weights::WeightError`).

pub mod capped;
pub mod fields;
pub mod gguf;
pub mod path_io;
pub mod safetensors;
pub mod shard_index;
pub mod torch;

use std::path::PathBuf;

/// The readers' error: the safetensors, PyTorch and shard-index readers return it, and the
/// errors of GGUF files ([`gguf::GgufError`]) and capped reads ([`capped::CappedReadError`])
/// convert into it; every message names the file, and the tensor, key or opcode.
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
    /// A file could not be opened or read (missing, not a regular file, over a size limit).
    #[error(transparent)]
    Read(#[from] capped::CappedReadError),
    /// The GGUF reader failed.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
}
