//! The readers of model files that users hand in, in one place so they are easy to find and to
//! check: GGUF ([`gguf`]), PyTorch zip and legacy pickles ([`torch`]), safetensors
//! ([`safetensors`]), the shard indexes that list a sharded checkpoint's files
//! ([`shard_index`]), capped reads of regular files ([`capped`]) and the optional fields of JSON
//! configurations ([`fields`]), and [`path_io`], the I/O error that names its file, which the
//! other crates use too. Every size, offset and count read from a file is checked before it is
//! used, and a refusal names the file and the field. The readers' one error type is
//! [`WeightError`] (also `weights::WeightError`).

pub mod capped;
pub mod fields;
pub mod gguf;
pub mod path_io;
pub mod safetensors;
pub mod shard_index;
pub mod torch;

use std::path::{Path, PathBuf};

/// The readers' one error: the GGUF, safetensors, PyTorch and shard-index readers, the capped
/// reads of regular files ([`capped`]) and the fields of JSON configurations ([`fields`]) all
/// return it; every message names the file (or leaves it to a caller that does), and the
/// tensor, key, field or opcode.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// A file could not be read or is malformed.
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
    /// A file could not be opened, mapped or read.
    #[error(transparent)]
    Io(#[from] path_io::PathIoError),
    /// A folder, FIFO, socket or device where a file was expected.
    #[error("{path}: not a regular file (a folder, FIFO or device); expected a file")]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// A file with more bytes than its cap.
    #[error("{path}: larger than the limit of {cap} bytes{}", capped::raise_hint(*raise))]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap in bytes.
        cap: u64,
        /// The environment variable that raises the cap, when one does ([`capped::Cap`]).
        raise: Option<&'static str>,
    },
    /// An environment variable meant to raise a size cap does not hold a number of bytes.
    #[error("{var}={value:?}: expected a whole number of bytes")]
    Limit {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// GGUF: the file does not start with the GGUF magic.
    #[error("not a GGUF file (magic {0:?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    /// GGUF: the version is not 2 or 3.
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// GGUF: the file ended while reading something.
    #[error("file truncated while reading {what} at byte {offset}")]
    Truncated {
        /// What was being read (a key, a tensor info, …).
        what: String,
        /// Where the read started.
        offset: usize,
    },
    /// GGUF: a metadata value had an unknown type tag.
    #[error("metadata key '{key}': unknown value type {tag}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type tag found.
        tag: u32,
    },
    /// GGUF: a string was not UTF-8.
    #[error("{what}: string is not valid UTF-8")]
    BadString {
        /// What was being read.
        what: String,
    },
    /// GGUF: a tensor had an unknown or unsupported data type.
    #[error("tensor '{name}': unknown GGML type {tag}")]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The type tag.
        tag: u32,
    },
    /// GGUF: a tensor's declared shape or data is inconsistent with the file.
    #[error("tensor '{name}': {reason}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// GGUF: a metadata key was missing or had the wrong type.
    #[error("metadata key '{key}': {reason}")]
    BadMetadata {
        /// The key.
        key: String,
        /// What was expected.
        reason: String,
    },
    /// A field of a JSON configuration is present but unusable (its file is named by the caller).
    #[error("{field} {reason}")]
    Field {
        /// The field, with its path inside the file (`vision_config.patch_size`).
        field: String,
        /// What is wrong, starting with the value found (`is 0; expected a positive integer`).
        reason: String,
    },
}

impl WeightError {
    /// Whether a file does not exist (callers often treat that as "absent", not as an error).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io(e) if e.is_not_found())
    }

    /// The file the error names, when it names one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io(e) => Some(&e.path),
            Self::File { path, .. } | Self::NotRegular { path } | Self::TooLarge { path, .. } => Some(path),
            _ => None,
        }
    }

    /// What went wrong, without the path (for callers whose own message names the file).
    pub fn reason(&self) -> String {
        match self {
            Self::Io(e) => e.error.to_string(),
            Self::File { reason, .. } => reason.clone(),
            Self::NotRegular { .. } => "not a regular file (a folder, FIFO or device); expected a file".into(),
            Self::TooLarge { cap, raise, .. } => format!("larger than the limit of {cap} bytes{}", capped::raise_hint(*raise)),
            other => other.to_string(),
        }
    }
}
