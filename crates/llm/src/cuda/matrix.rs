//! Weight matrices on the device: in the engine's float type, or in GGML's Q4_0 / Q8_0 blocks
//! split into a quant array and a scale array, the layout the quantized matrix-vector kernels
//! read with one 16-byte load per block (see `gemv_q` in kernels.cu).

use std::sync::Arc;

use cudarc::driver::CudaStream;
use rayon::prelude::*;

use super::CudaError;
use super::kernels::Buf;
use crate::quant::{quantize_block_q4_0, quantize_block_q8_0};

/// A block format the engine keeps weights in (`--quant`); values per block: 32, as in GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightQuant {
    /// 4-bit quants with an f16 scale per 32 values (4.5 bits per weight).
    Q4_0,
    /// 8-bit quants with an f16 scale per 32 values (8.5 bits per weight).
    Q8_0,
}

impl WeightQuant {
    /// Bits of one quant (4 or 8): the `QT` of the kernels and their names' `q4` / `q8`.
    pub fn bits(self) -> usize {
        match self {
            WeightQuant::Q4_0 => 4,
            WeightQuant::Q8_0 => 8,
        }
    }

    /// Bytes per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        (self.bits() * 32 + 16) as f64 / 8.0 / 32.0
    }
}

/// A `[rows, cols]` row-major weight on the device.
pub enum Matrix {
    /// In the engine's float type.
    Plain(Buf),
    /// Quantized: `q` the quants (`rows × cols · bits / 8` bytes), `d` the f16 scales
    /// (`rows × cols / 32`).
    Quant {
        /// The quants.
        q: Buf,
        /// The scales.
        d: Buf,
        /// Their format.
        ty: WeightQuant,
    },
}

/// A [`Matrix`] prepared on the host (converted or quantized), so that many can be prepared in
/// parallel and then uploaded one after the other.
pub enum HostMatrix {
    /// f32 values.
    F32(Vec<f32>),
    /// f16 values as bits.
    F16(Vec<u16>),
    /// Quants and f16 scale bits, as [`Matrix::Quant`] holds them.
    Quant {
        /// The quants.
        q: Vec<u8>,
        /// The scales.
        d: Vec<u16>,
        /// Their format.
        ty: WeightQuant,
    },
}

impl HostMatrix {
    /// Copies it to the device.
    pub fn upload(self, stream: &Arc<CudaStream>) -> Result<Matrix, CudaError> {
        Ok(match self {
            HostMatrix::F32(v) => Matrix::Plain(Buf::upload(stream, &v)?),
            HostMatrix::F16(v) => Matrix::Plain(Buf::upload(stream, &v)?),
            HostMatrix::Quant { q, d, ty } => Matrix::Quant { q: Buf::upload(stream, &q)?, d: Buf::upload(stream, &d)?, ty },
        })
    }

    /// Copies it to page-locked host memory mapped into the device's address space (read by
    /// the kernels over the bus; for tables of which a step reads a row or two).
    pub fn map_on_host(self, stream: &Arc<CudaStream>) -> Result<Matrix, CudaError> {
        Ok(match self {
            HostMatrix::F32(v) => Matrix::Plain(Buf::mapped_host(stream, &v)?),
            HostMatrix::F16(v) => Matrix::Plain(Buf::mapped_host(stream, &v)?),
            HostMatrix::Quant { q, d, ty } => Matrix::Quant { q: Buf::mapped_host(stream, &q)?, d: Buf::mapped_host(stream, &d)?, ty },
        })
    }

    /// Quantizes `data` (`[rows, cols]`, cols a multiple of 32) to `ty` as ggml's reference
    /// quantizer does.
    pub fn quantize(data: &[f32], cols: usize, ty: WeightQuant) -> Result<Self, CudaError> {
        if !cols.is_multiple_of(32) || !data.len().is_multiple_of(cols) {
            return Err(CudaError::Unsupported(format!("{ty:?} needs rows whose length is a multiple of 32, not {cols}")));
        }
        let blocks = data.len() / 32;
        let block_bytes = 32 * ty.bits() / 8;
        let mut q = vec![0u8; blocks * block_bytes];
        let mut d = vec![0u16; blocks];
        q.par_chunks_mut(block_bytes).zip(d.par_iter_mut()).zip(data.par_chunks(32)).for_each(|((q, d), x)| {
            let x: &[f32; 32] = x.try_into().expect("blocks of 32");
            let scale = match ty {
                WeightQuant::Q4_0 => {
                    let (s, b) = quantize_block_q4_0(x);
                    q.copy_from_slice(&b);
                    s
                }
                WeightQuant::Q8_0 => {
                    let (s, b) = quantize_block_q8_0(x);
                    q.iter_mut().zip(b).for_each(|(q, b)| *q = b as u8);
                    s
                }
            };
            *d = scale.to_bits();
        });
        Ok(HostMatrix::Quant { q, d, ty })
    }
}

impl Matrix {
    /// Bytes on the device (none for a matrix mapped from host memory).
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Plain(b) => b.device_bytes(),
            Matrix::Quant { q, d, .. } => q.device_bytes() + d.device_bytes(),
        }
    }
}
