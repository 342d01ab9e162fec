//! `WeightSource`: named f32 tensors from a GGUF file, Hugging Face safetensors (single file
//! or sharded with `model.safetensors.index.json`) or a PyTorch checkpoint; the readers are in
//! [`crate::readers`]. Names are the file's own; the model file that consumes them holds the
//! mapping table.

use std::path::PathBuf;

use crate::gguf::Gguf;
pub use crate::readers::WeightError;
pub use crate::readers::safetensors::SafetensorsWeights;

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

    /// Says that the bytes [`WeightSource::raw`] gave for `name` have been copied and will not be
    /// read again, so that a mapped file can let their pages go (a load's peak memory).
    fn release(&self, _name: &str) {}

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
    fn release(&self, name: &str) {
        if let Some(info) = self.gguf.tensor_info(name) {
            reclaim_pages(self.gguf.tensor_bytes(info));
        }
    }
}

/// Asks the kernel to reclaim the memory pages lying wholly inside `bytes` (`MADV_PAGEOUT`): the
/// pages of a mapped file leave this process's resident memory (read from the file again if
/// touched), anonymous memory keeps its contents (at most paged out to swap). A hint: a kernel
/// without it (before Linux 5.4) or another OS changes nothing.
fn reclaim_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
        let (first, last) = (start.next_multiple_of(page), end / page * page);
        if last > first {
            // SAFETY: the range is inside `bytes` (whole pages only), which stays valid; PAGEOUT
            // never changes what a later read of these addresses returns.
            unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_PAGEOUT) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}
