//! The CUDA decode engine (feature `cuda`): a llama-family decoder run by its own kernels
//! (`kernels.cu`, compiled by NVRTC at load) instead of burn's per-operation dispatch, which
//! costs far more per decoded token than the token's weight reads.
//!
//! Per layer and step, 5 launches: the q/k/v matrix-vector product with the RMSNorm folded in,
//! the biases, RoPE and the KV append in its epilogue; attention over spans of keys merged by the
//! last span block; the output projection with the residual add fused; gate/up with the RMSNorm
//! and SwiGLU fused; the down projection with the residual add fused. Each weight is read once per
//! step for up to [`MAX_SEQS`] sequences (beams), a step is replayed from a captured CUDA graph,
//! and beams share their common history through a slot table. Prompt prefill uses cuBLAS. Greedy
//! choices and beam candidates are made on the device and only ids and scores come back.
//!
//! With `EngineOptions::quant` the weights are kept in Q4_0 or Q8_0 blocks (quantized at load as
//! ggml does) and the products' inputs are quantized to signed bytes per block of 32, so each
//! block's dot product is integer dp4a instructions; prefill expands weight slices to f16 for
//! cuBLAS.
//!
//! The image encoders run on [`encoder`]: cuBLAS products between a few fused kernels.
//! burn keeps everything else (the CPU path).

pub mod encoder;
mod engine;
mod kernels;
mod lt;
mod matrix;

pub use engine::{CACHE_STEP, CudaDecoder, EngineDtype, EngineLoadTimes, EngineOptions, MAX_SEQS, TOPK_MAX};
pub use kernels::Buf;
pub use matrix::WeightQuant;

use crate::beam::StepDecoder;
use crate::weights::WeightError;

/// The free memory of CUDA device `ordinal` in bytes, as the driver reports it (what a model
/// split across GPUs may place there).
pub fn free_memory(ordinal: usize) -> Result<u64, CudaError> {
    let ctx = cudarc::driver::CudaContext::new(ordinal)?;
    ctx.bind_to_thread()?;
    let (free, _total) = cudarc::driver::result::mem_get_info()?;
    Ok(free as u64)
}

/// How many CUDA devices the driver sees.
pub fn device_count() -> Result<usize, CudaError> {
    Ok(cudarc::driver::CudaContext::device_count()?.max(0) as usize)
}

/// Errors of the CUDA engine.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver refused a call (no device, out of memory, a failed launch).
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// NVRTC could not compile the kernels.
    #[error("compiling the CUDA engine's kernels: {0}")]
    Compile(String),
    /// cuBLAS refused a call.
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    /// cuBLASLt refused a call.
    #[error("cuBLASLt: {0}")]
    BlasLt(#[from] cudarc::cublaslt::result::CublasError),
    /// A weight is missing or mis-shaped.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The model or the request is outside what the engine runs.
    #[error("{0}")]
    Unsupported(String),
    /// A prompt plus its answer would not fit the model's context.
    #[error("the prompt and answer need {needed} positions but the model's context holds {max}")]
    Context {
        /// Positions asked for.
        needed: usize,
        /// The model's context length.
        max: usize,
    },
}

/// A prompt (input embeddings, row-major f32) to decode after on a [`CudaDecoder`].
pub struct EngineSteps<'a> {
    /// The engine.
    pub engine: &'a mut CudaDecoder,
    /// `len × hidden` prompt embeddings.
    pub prompt: &'a [f32],
}

impl StepDecoder for EngineSteps<'_> {
    type Error = CudaError;

    fn prefill(&mut self) -> Result<(), CudaError> {
        self.engine.prefill(self.prompt)
    }

    fn logits(&mut self) -> Result<Vec<Vec<f32>>, CudaError> {
        self.engine.logits()
    }

    fn reorder(&mut self, rows: &[usize]) -> Result<(), CudaError> {
        self.engine.reorder(rows)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<(), CudaError> {
        self.engine.step(tokens)
    }

    fn greedy_token(&mut self, seq: &[u32], penalty: f32) -> Result<u32, CudaError> {
        self.engine.greedy_token(seq, penalty)
    }

    fn top_logprobs(&mut self, seqs: &[Vec<u32>], penalty: f32, k: usize) -> Result<Vec<Vec<(f32, u32)>>, CudaError> {
        self.engine.top_logprobs(seqs, penalty, k)
    }
}
