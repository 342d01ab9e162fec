//! Transformer encoders on the GPU (image towers: EVA-ViT-g, CLIP's ViT, the Q-Former): cuBLAS
//! products between a few fused kernels (`encoder.cu`), a whole batch of images at once.
//!
//! [`EncoderRuntime`] holds the stream, cuBLAS and the kernels, and runs the building blocks on
//! raw device addresses: [`EncoderRuntime::layer_norm`], [`EncoderRuntime::product`] (then
//! [`EncoderRuntime::bias_act`] or [`EncoderRuntime::residual_add`]) and
//! [`EncoderRuntime::attention`] (scores and weighted sums as batched products, one softmax
//! kernel between). [`VitTower`] is a whole pre-LN ViT made of them; the model crates assemble
//! the rest (the Q-Former) from the same blocks. The residual stream stays f32; the products'
//! inputs are in the runtime's [`EngineDtype`] with f32 accumulation (no TF32 in f32).

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, sys as blas};
use cudarc::driver::{CudaContext, CudaStream};

use super::CudaError;
use super::engine::EngineDtype;
use super::kernels::{Arg, Buf, Kernels, open_device};
use super::lt::{LtProducts, LtShape};
use super::matrix::{HostMatrix, Matrix};
use crate::weights::{WeightError, WeightSource};

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

/// Attention key counts are padded to a multiple of this, so the batched products' rows stay
/// aligned for the tensor cores.
const KEY_PAD: usize = 8;

/// Seconds and calls per part of the work, for `XC_ENCODER_PROFILE`.
#[derive(Default)]
struct Profile {
    parts: std::sync::Mutex<std::collections::BTreeMap<&'static str, (f64, usize)>>,
}

impl Drop for EncoderRuntime {
    fn drop(&mut self) {
        let Some(profile) = &self.profile else { return };
        let parts = profile.parts.lock().unwrap_or_else(|e| e.into_inner());
        let total: f64 = parts.values().map(|p| p.0).sum();
        eprintln!("encoder profile ({:?}, stream synchronised around each part):", self.dtype);
        eprintln!("| part | calls | ms | share |\n|---|---|---|---|");
        for (part, (secs, calls)) in parts.iter() {
            eprintln!("| {part} | {calls} | {:.1} | {:.1} % |", secs * 1e3, 100.0 * secs / total.max(1e-12));
        }
    }
}

/// Which attention kernel runs where the fused one can (`XC_ENCODER_ATTENTION=batched` picks
/// the batched products at start, for comparison).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `attention_mma_64/96`: one tensor-core kernel.
    Fused,
    /// Split heads, two strided-batched products around a softmax, merged heads.
    Batched,
}

/// Query rows per block of the fused attention kernel (`FA_Q` in `encoder.cu`).
const FUSED_QUERY_ROWS: usize = 64;

/// The widest row `add_layer_norm_h8` holds in registers (32 lanes × `LN_CHUNKS` × 8 values).
const WARP_NORM_MAX_DIM: usize = 32 * 8 * 8;

/// The head width (64 or 96) of the fused attention kernel that runs heads of `hd` values in
/// `dtype`, if one does (f16, `hd` ≤ 96 and a multiple of 8, for its 16-byte loads).
fn fused_head_width(dtype: EngineDtype, hd: usize) -> Option<usize> {
    if dtype != EngineDtype::F16 || !hd.is_multiple_of(8) {
        return None;
    }
    [64, 96].into_iter().find(|&w| hd <= w)
}

/// The activation after a feed-forward product (the kernels' `ACT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None.
    Identity = 0,
    /// Exact GELU (erf), as PyTorch's `nn.GELU()` and BERT's `gelu`.
    Gelu = 1,
    /// CLIP's `x · sigmoid(1.702 x)`.
    QuickGelu = 2,
}

/// A linear layer on the host: `weight` `[out, in]` row-major as checkpoints store it.
pub struct HostLinear {
    /// `[out, in]`.
    pub weight: Vec<f32>,
    /// `[out]`, when the layer has one.
    pub bias: Option<Vec<f32>>,
    /// Output width.
    pub out: usize,
    /// Input width.
    pub inp: usize,
}

impl HostLinear {
    /// `{name}.weight` `[out, inp]` and, with `bias`, `{name}.bias` from a checkpoint.
    pub fn load(src: &dyn WeightSource, name: &str, inp: usize, out: usize, bias: bool) -> Result<Self, WeightError> {
        let weight = src.load_shaped(&format!("{name}.weight"), &[out, inp])?.data;
        let bias = if bias { Some(src.load_shaped(&format!("{name}.bias"), &[out])?.data) } else { None };
        Ok(HostLinear { weight, bias, out, inp })
    }
}

/// A LayerNorm on the host.
pub struct HostNorm {
    /// γ.
    pub weight: Vec<f32>,
    /// β.
    pub bias: Vec<f32>,
    /// ε.
    pub eps: f64,
}

impl HostNorm {
    /// `{name}.weight` and `{name}.bias` (`[dim]` each) from a checkpoint.
    pub fn load(src: &dyn WeightSource, name: &str, dim: usize, eps: f64) -> Result<Self, WeightError> {
        Ok(HostNorm { weight: src.load_shaped(&format!("{name}.weight"), &[dim])?.data, bias: src.load_shaped(&format!("{name}.bias"), &[dim])?.data, eps })
    }
}

/// A linear layer on the device: the weight in the runtime's type, the bias in f32.
pub struct DevLinear {
    weight: Matrix,
    bias: Option<Buf>,
    /// Output width.
    pub out: usize,
    /// Input width.
    pub inp: usize,
}

impl DevLinear {
    /// The bias address (0 for none).
    pub fn bias(&self) -> u64 {
        self.bias.as_ref().map_or(0, |b| b.ptr)
    }
}

/// A LayerNorm on the device.
pub struct DevNorm {
    weight: Buf,
    bias: Buf,
    eps: f32,
    /// Width.
    pub dim: usize,
}

/// Where an attention input's heads are: columns `col0 .. col0 + heads · hd` of a product's f32
/// output `y` (row stride `ld`), plus the product's bias (0 for none) — the bias add, the
/// split into heads and, for queries, the 1/√hd scale happen in one kernel.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// The product output.
    pub y: u64,
    /// Its row stride in floats.
    pub ld: usize,
    /// The first column.
    pub col0: usize,
    /// The product's whole bias (indexed from column 0), or 0.
    pub bias: u64,
}

/// Stream, cuBLAS handle and kernels for encoders, and a stack of scratch buffers reused from
/// call to call (grown when a larger batch needs more).
pub struct EncoderRuntime {
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    lt: LtProducts,
    kernels: Kernels,
    dtype: EngineDtype,
    scratch: Vec<Buf>,
    next: usize,
    attention: AttentionKernel,
    profile: Option<Profile>,
}

impl EncoderRuntime {
    /// A runtime on CUDA device 0 computing in `dtype` (its kernels compiled or read from the
    /// PTX cache).
    pub fn new(dtype: EngineDtype) -> Result<Self, CudaError> {
        let (ctx, stream) = open_device()?;
        let kernels = Kernels::compile_base(&ctx, stream.clone())?;
        let blas = CudaBlas::new(stream.clone())?;
        let lt = LtProducts::new(stream.clone())?;
        let attention = match std::env::var("XC_ENCODER_ATTENTION").as_deref() {
            Ok("batched") => AttentionKernel::Batched,
            _ => AttentionKernel::Fused,
        };
        let profile = std::env::var_os("XC_ENCODER_PROFILE").map(|_| Profile::default());
        Ok(EncoderRuntime { _ctx: ctx, stream, blas, lt, kernels, dtype, scratch: vec![], next: 0, attention, profile })
    }

    /// Runs `f`; when profiling (`XC_ENCODER_PROFILE` set) waits for the stream before and
    /// after and adds the time to `part`'s total (printed when the runtime is dropped).
    fn timed<R>(&self, part: &'static str, f: impl FnOnce() -> Result<R, CudaError>) -> Result<R, CudaError> {
        let Some(profile) = &self.profile else { return f() };
        self.stream.synchronize()?;
        let start = std::time::Instant::now();
        let r = f()?;
        self.stream.synchronize()?;
        let mut parts = profile.parts.lock().unwrap_or_else(|e| e.into_inner());
        let e = parts.entry(part).or_default();
        e.0 += start.elapsed().as_secs_f64();
        e.1 += 1;
        Ok(r)
    }

    /// Bytes of one value of the runtime's type.
    pub fn elem(&self) -> usize {
        self.dtype.bytes()
    }

    /// Copies a linear layer to the device (the weight converted to the runtime's type).
    pub fn linear(&self, h: HostLinear) -> Result<DevLinear, CudaError> {
        if h.weight.len() != h.out * h.inp || h.bias.as_ref().is_some_and(|b| b.len() != h.out) {
            return Err(CudaError::Unsupported(format!("a linear layer [{}, {}] with {} weights", h.out, h.inp, h.weight.len())));
        }
        let weight = self.dtype.host_matrix(h.weight).upload(&self.stream)?;
        let bias = h.bias.map(|b| Buf::upload(&self.stream, &b)).transpose()?;
        Ok(DevLinear { weight, bias, out: h.out, inp: h.inp })
    }

    /// Copies a LayerNorm to the device.
    pub fn norm(&self, h: HostNorm) -> Result<DevNorm, CudaError> {
        if h.weight.len() != h.bias.len() {
            return Err(CudaError::Unsupported(format!("a LayerNorm with {} weights and {} biases", h.weight.len(), h.bias.len())));
        }
        Ok(DevNorm { dim: h.weight.len(), weight: Buf::upload(&self.stream, &h.weight)?, bias: Buf::upload(&self.stream, &h.bias)?, eps: h.eps as f32 })
    }

    /// A copy of f32 values on the device (positions, class tokens, queries).
    pub fn upload_f32(&self, data: &[f32]) -> Result<Buf, CudaError> {
        Buf::upload(&self.stream, data)
    }

    /// Copies `data` to the device in the runtime's type (f16 or f32).
    pub fn upload_typed(&self, data: &[f32]) -> Result<Buf, CudaError> {
        match self.dtype {
            EngineDtype::F16 => Buf::upload(&self.stream, &data.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect::<Vec<u16>>()),
            EngineDtype::F32 => Buf::upload(&self.stream, data),
        }
    }

    /// Copies `n` values of the runtime's type at `src` back to the host as f32 (waits for the stream).
    pub fn download_typed(&self, src: u64, n: usize) -> Result<Vec<f32>, CudaError> {
        if self.dtype == EngineDtype::F32 {
            return self.download_f32(src, n);
        }
        let mut out = vec![0u16; n];
        // SAFETY: `src` holds at least `n` f16 values; the stream is synchronised before return.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut out, src, self.stream.cu_stream())? };
        self.stream.synchronize()?;
        Ok(out.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect())
    }

    /// Chooses the attention kernel where the fused one applies (for comparison and tests).
    pub fn set_attention(&mut self, kernel: AttentionKernel) {
        self.attention = kernel;
    }

    /// Copies `n` f32 values at `src` back to the host (waits for the stream).
    pub fn download_f32(&self, src: u64, n: usize) -> Result<Vec<f32>, CudaError> {
        let mut out = vec![0f32; n];
        // SAFETY: `src` holds at least `n` floats; the stream is synchronised before return.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut out, src, self.stream.cu_stream())? };
        self.stream.synchronize()?;
        Ok(out)
    }

    /// Copies host f32 values to the device address `dst` (which holds at least as many).
    pub fn upload_to(&self, dst: u64, data: &[f32]) -> Result<(), CudaError> {
        // SAFETY: the destination is a scratch buffer sized by the caller; pageable host memory
        // is staged before the call returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, data, self.stream.cu_stream())? };
        Ok(())
    }

    /// The stack position, to give back with [`EncoderRuntime::release`].
    pub fn mark(&self) -> usize {
        self.next
    }

    /// Gives back every scratch buffer taken since `mark` (work already queued on them still
    /// runs first: the stream orders it).
    pub fn release(&mut self, mark: usize) {
        self.next = mark;
    }

    /// A scratch buffer of at least `bytes`, valid until released.
    pub fn scratch(&mut self, bytes: usize) -> Result<u64, CudaError> {
        let i = self.next;
        if i == self.scratch.len() {
            self.scratch.push(Buf::zeros::<u8>(&self.stream, bytes)?);
        } else if self.scratch[i].bytes < bytes {
            self.scratch[i] = Buf::zeros::<u8>(&self.stream, bytes)?;
        }
        self.next += 1;
        Ok(self.scratch[i].ptr)
    }

    fn launch_1d(&self, name: &str, total: usize, args: &[Arg]) -> Result<(), CudaError> {
        self.kernels.launch(name, (total.div_ceil(BLOCK as usize) as u32, 1, 1), BLOCK, args)
    }

    fn typed(&self, name: &str) -> String {
        format!("{name}_{}", self.dtype.suffix())
    }

    /// LayerNorm of `rows` rows of `x` (f32, row stride `stride` floats) into `out` (runtime
    /// type) and, unless 0, into `out_f` (f32; may be `x`).
    pub fn layer_norm(&self, x: u64, stride: usize, norm: &DevNorm, out: u64, out_f: u64, rows: usize) -> Result<(), CudaError> {
        if self.warp_norm(norm, stride, &[x, out, out_f]) {
            return self.timed("layer norm", || self.add_layer_norm(x, stride, 0, 0, norm, out, out_f, rows));
        }
        let args = [Arg::P(x), Arg::L(stride as i64), Arg::P(norm.weight.ptr), Arg::P(norm.bias.ptr), Arg::P(out), Arg::P(out_f), Arg::I(norm.dim as i32), Arg::F(norm.eps)];
        self.timed("layer norm", || self.kernels.launch(&self.typed("layer_norm"), (rows as u32, 1, 1), 256, &args))
    }

    /// `y[rows, out] = x[rows, inp] · Wᵀ` in the runtime's type, no bias (the next kernel adds it).
    pub fn product(&self, x: u64, rows: usize, lin: &DevLinear, y: u64) -> Result<(), CudaError> {
        self.product_as(x, rows, lin, y, self.dtype.blas_type())
    }

    /// [`EncoderRuntime::product`] with an f32 output (for outputs read back or added to f32 rows).
    pub fn product_f32(&self, x: u64, rows: usize, lin: &DevLinear, y: u64) -> Result<(), CudaError> {
        self.product_as(x, rows, lin, y, blas::cudaDataType::CUDA_R_32F)
    }

    fn product_as(&self, x: u64, rows: usize, lin: &DevLinear, y: u64, c_type: blas::cudaDataType) -> Result<(), CudaError> {
        let Matrix::Plain(w) = &lin.weight else {
            return Err(CudaError::Unsupported("quantized encoder weights".into()));
        };
        let g = Gemm { m: lin.out, n: rows, k: lin.inp, a: w.ptr, lda: lin.inp, a_t: true, b: x, ldb: lin.inp, c: y, ldc: lin.out, c_type, batch: 1, strides: [0; 3] };
        self.timed("products", || self.gemm(&g, self.dtype.blas_type()))
    }

    /// `out = act(y + bias)` over `rows × n`, both in the runtime's type (bias 0 for none; `out`
    /// may be `y`).
    pub fn bias_act(&self, y: u64, bias: u64, out: u64, rows: usize, n: usize, act: Activation) -> Result<(), CudaError> {
        if self.dtype == EngineDtype::F16 && n.is_multiple_of(8) && y.is_multiple_of(16) && out.is_multiple_of(16) {
            let args = [Arg::P(y), Arg::P(bias), Arg::P(out), Arg::L(rows as i64), Arg::I(n as i32), Arg::I(act as i32)];
            return self.timed("bias + activation", || self.launch_1d("bias_act_h8", rows * n / 8, &args));
        }
        self.timed("bias + activation", || self.launch_1d(&self.typed("bias_act"), rows * n, &[Arg::P(y), Arg::P(bias), Arg::P(out), Arg::L(rows as i64), Arg::I(n as i32), Arg::I(act as i32)]))
    }

    /// `h += y + bias` over `rows × n` (h f32, y a product's output in the runtime's type; bias 0
    /// for none).
    pub fn residual_add(&self, h: u64, y: u64, bias: u64, rows: usize, n: usize) -> Result<(), CudaError> {
        if self.dtype == EngineDtype::F16 && n.is_multiple_of(8) && y.is_multiple_of(16) && h.is_multiple_of(16) {
            let args = [Arg::P(h), Arg::P(y), Arg::P(bias), Arg::L(rows as i64), Arg::I(n as i32)];
            return self.timed("residual add", || self.launch_1d("residual_add_h8", rows * n / 8, &args));
        }
        self.timed("residual add", || self.launch_1d(&self.typed("residual_add_t"), rows * n, &[Arg::P(h), Arg::P(y), Arg::P(bias), Arg::L(rows as i64), Arg::I(n as i32)]))
    }

    /// `h += y + bias`, then the LayerNorm of `h` into `out` (runtime type; may be `y`) and,
    /// unless 0, `out_f` (f32; may be `h`): [`EncoderRuntime::residual_add`] and [`EncoderRuntime::layer_norm`] in
    /// one pass over the stream where the rows allow it.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_add_norm(&self, h: u64, y: u64, bias: u64, rows: usize, norm: &DevNorm, out: u64, out_f: u64) -> Result<(), CudaError> {
        if !self.warp_norm(norm, norm.dim, &[h, y, out, out_f]) {
            self.residual_add(h, y, bias, rows, norm.dim)?;
            return self.layer_norm(h, norm.dim, norm, out, out_f, rows);
        }
        self.timed("residual add + layer norm", || self.add_layer_norm(h, norm.dim, y, bias, norm, out, out_f, rows))
    }

    /// Whether `add_layer_norm_h8` (a warp per row held in registers, 16-byte loads) takes rows
    /// of `norm.dim` values `stride` floats apart at these addresses (0 = unused).
    fn warp_norm(&self, norm: &DevNorm, stride: usize, ptrs: &[u64]) -> bool {
        self.dtype == EngineDtype::F16 && norm.dim.is_multiple_of(8) && norm.dim <= WARP_NORM_MAX_DIM && stride.is_multiple_of(4) && ptrs.iter().all(|p| p.is_multiple_of(16))
    }

    #[allow(clippy::too_many_arguments)]
    fn add_layer_norm(&self, h: u64, stride: usize, y: u64, bias: u64, norm: &DevNorm, out: u64, out_f: u64, rows: usize) -> Result<(), CudaError> {
        let args = [Arg::P(h), Arg::L(stride as i64), Arg::P(y), Arg::P(bias), Arg::P(norm.weight.ptr), Arg::P(norm.bias.ptr), Arg::P(out), Arg::P(out_f), Arg::I(rows as i32), Arg::I(norm.dim as i32), Arg::F(norm.eps)];
        let warps = BLOCK as usize / 32;
        self.kernels.launch("add_layer_norm_h8", (rows.div_ceil(warps) as u32, 1, 1), BLOCK, &args)
    }

    /// `y += bias` over `rows × n` (f32).
    pub fn add_bias(&self, y: u64, bias: u64, rows: usize, n: usize) -> Result<(), CudaError> {
        if bias == 0 {
            return Ok(());
        }
        self.launch_1d("add_bias_f", rows * n, &[Arg::P(y), Arg::P(bias), Arg::I(rows as i32), Arg::I(n as i32)])
    }

    /// Multi-head attention without a mask: for each of `batch` items, `nq` query rows attend to
    /// `nk` key rows; `out` gets `[batch · nq, heads · hd]` in the runtime's type. In f16 with
    /// heads of at most 96 values (a multiple of 8, with 16-byte aligned rows) this is one
    /// tensor-core kernel (`attention_mma_*`); otherwise (f32, for parity runs, or when turned
    /// off with `XC_ENCODER_ATTENTION=batched`) it runs as batched products around a softmax.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(&mut self, q: Heads, k: Heads, v: Heads, batch: usize, nq: usize, nk: usize, heads: usize, hd: usize, out: u64) -> Result<(), CudaError> {
        let aligned = [q, k, v].iter().all(|h| h.ld.is_multiple_of(8) && h.col0.is_multiple_of(8) && h.y.is_multiple_of(16)) && out.is_multiple_of(16);
        match fused_head_width(self.dtype, hd) {
            Some(width) if self.attention != AttentionKernel::Batched && aligned => self.timed("attention (fused)", || self.attention_fused(width, [q, k, v], batch, nq, nk, heads, hd, out)),
            _ => self.attention_batched(q, k, v, batch, nq, nk, heads, hd, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_fused(&self, width: usize, qkv: [Heads; 3], batch: usize, nq: usize, nk: usize, heads: usize, hd: usize, out: u64) -> Result<(), CudaError> {
        // The keys' bias is left out: it shifts each query's scores by one constant.
        let [q, k, v] = qkv;
        let mut args = vec![Arg::P(q.y), Arg::I(q.ld as i32), Arg::I(q.col0 as i32), Arg::P(q.bias), Arg::P(k.y), Arg::I(k.ld as i32), Arg::I(k.col0 as i32)];
        args.extend([Arg::P(v.y), Arg::I(v.ld as i32), Arg::I(v.col0 as i32), Arg::P(v.bias)]);
        args.extend([Arg::P(out), Arg::I(nq as i32), Arg::I(nk as i32), Arg::I(heads as i32), Arg::I(hd as i32), Arg::F(1.0 / (hd as f32).sqrt())]);
        let grid = (nq.div_ceil(FUSED_QUERY_ROWS) as u32, heads as u32, batch as u32);
        self.kernels.launch(&format!("attention_mma_{width}"), grid, 128, &args)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_batched(&mut self, q: Heads, k: Heads, v: Heads, batch: usize, nq: usize, nk: usize, heads: usize, hd: usize, out: u64) -> Result<(), CudaError> {
        let mark = self.mark();
        let (e, nkp, bh) = (self.elem(), nk.next_multiple_of(KEY_PAD), batch * heads);
        let (qh, kh, vh) = (self.scratch(bh * nq * hd * e)?, self.scratch(bh * nkp * hd * e)?, self.scratch(bh * nkp * hd * e)?);
        self.timed("attention: split heads", || {
            self.split_heads(q, qh, batch, nq, nq, heads, hd, 1.0 / (hd as f32).sqrt())?;
            self.split_heads(k, kh, batch, nk, nkp, heads, hd, 1.0)?;
            self.split_heads(v, vh, batch, nk, nkp, heads, hd, 1.0)
        })?;
        let (p, o) = (self.scratch(bh * nq * nkp * e)?, self.scratch(bh * nq * hd * e)?);
        let t = self.dtype.blas_type();
        // Scores: per (item, head), S[nq, nkp] = Q Kᵀ (keys as the transposed operand), then
        // softmax in place into the weights P.
        let scores = Gemm { m: nkp, n: nq, k: hd, a: kh, lda: hd, a_t: true, b: qh, ldb: hd, c: p, ldc: nkp, c_type: t, batch: bh, strides: [nkp * hd, nq * hd, nq * nkp] };
        self.timed("attention: scores product", || self.gemm(&scores, t))?;
        let rows = bh * nq;
        let warps = (BLOCK / 32) as usize;
        let softmax = [Arg::P(p), Arg::P(p), Arg::L(rows as i64), Arg::I(nk as i32), Arg::I(nkp as i32)];
        self.timed("attention: softmax", || self.kernels.launch(&self.typed("softmax_rows"), (rows.div_ceil(warps) as u32, 1, 1), BLOCK, &softmax))?;
        // Weighted sums: O[nq, hd] = P V, i.e. Oᵀ = Vᵀ Pᵀ in cuBLAS's column-major view.
        let sums = Gemm { m: hd, n: nq, k: nkp, a: vh, lda: hd, a_t: false, b: p, ldb: nkp, c: o, ldc: hd, c_type: t, batch: bh, strides: [nkp * hd, nq * nkp, nq * hd] };
        self.timed("attention: sums product", || self.gemm(&sums, t))?;
        let merge = [Arg::P(o), Arg::P(out), Arg::I(batch as i32), Arg::I(nq as i32), Arg::I(heads as i32), Arg::I(hd as i32)];
        self.timed("attention: merge heads", || self.launch_1d(&self.typed("merge_heads"), rows * hd, &merge))?;
        self.release(mark);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn split_heads(&self, at: Heads, out: u64, batch: usize, n: usize, n_pad: usize, heads: usize, hd: usize, scale: f32) -> Result<(), CudaError> {
        let args = [Arg::P(at.y), Arg::I(at.ld as i32), Arg::I(at.col0 as i32), Arg::P(at.bias), Arg::F(scale), Arg::P(out), Arg::I(batch as i32), Arg::I(n as i32), Arg::I(n_pad as i32), Arg::I(heads as i32), Arg::I(hd as i32)];
        self.launch_1d(&self.typed("split_heads"), batch * heads * n_pad * hd, &args)
    }

    /// `out[b · g² + y · g + x, :]` = the (channel, row, column) values of each `p × p` patch of
    /// `pixels` (`[batch, 3, img, img]` f32), in the runtime's type.
    pub fn patches(&self, pixels: u64, out: u64, batch: usize, img: usize, p: usize) -> Result<(), CudaError> {
        let total = batch * (img / p).pow(2) * 3 * p * p;
        self.launch_1d(&self.typed("patches"), total, &[Arg::P(pixels), Arg::P(out), Arg::I(batch as i32), Arg::I(img as i32), Arg::I(p as i32)])
    }

    /// `h[b · n + t, :] = rows[t, :]` for each of `batch` items (`n × d` f32 rows).
    pub fn repeat_rows(&self, rows: u64, h: u64, batch: usize, n: usize, d: usize) -> Result<(), CudaError> {
        self.launch_1d("repeat_rows_f", batch * n * d, &[Arg::P(rows), Arg::P(h), Arg::I(batch as i32), Arg::I(n as i32), Arg::I(d as i32)])
    }

    /// One (strided batched) product in cuBLAS's column-major terms: `C[m, n] = op(A)[m, k] ·
    /// B[k, n]`, `op(A) = Aᵀ` when `a_t`; A and B in `ab`, C in `g.c_type`, f32 accumulation.
    /// Single products go through cuBLASLt, batches through cuBLAS.
    fn gemm(&self, g: &Gemm, ab: blas::cudaDataType) -> Result<(), CudaError> {
        let (alpha, beta) = (1f32, 0f32);
        let op = |t: bool| if t { blas::cublasOperation_t::CUBLAS_OP_T } else { blas::cublasOperation_t::CUBLAS_OP_N };
        if g.batch == 1 {
            let f16 = ab == blas::cudaDataType::CUDA_R_16F;
            let c_f32 = g.c_type == blas::cudaDataType::CUDA_R_32F;
            let shape = LtShape { m: g.m, n: g.n, k: g.k, lda: g.lda, ldb: g.ldb, ldc: g.ldc, a_t: g.a_t, f16, c_f32 };
            return self.lt.matmul(shape, g.a, g.b, g.c);
        }
        // SAFETY: every operand is a live device buffer of the runtime holding the extents the
        // call sites give (each checks its own shapes), and all work is on the runtime's stream.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(g.a_t),
                blas::cublasOperation_t::CUBLAS_OP_N,
                g.m as i32,
                g.n as i32,
                g.k as i32,
                &alpha as *const f32 as *const _,
                g.a as *const _,
                ab,
                g.lda as i32,
                g.strides[0] as i64,
                g.b as *const _,
                ab,
                g.ldb as i32,
                g.strides[1] as i64,
                &beta as *const f32 as *const _,
                g.c as *mut _,
                g.c_type,
                g.ldc as i32,
                g.strides[2] as i64,
                g.batch as i32,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }
}

/// A cuBLAS product's operands (see [`EncoderRuntime::gemm`]); `strides` are A's, B's and C's
/// between batch items, in elements.
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    a: u64,
    lda: usize,
    a_t: bool,
    b: u64,
    ldb: usize,
    c: u64,
    ldc: usize,
    c_type: blas::cudaDataType,
    batch: usize,
    strides: [usize; 3],
}

/// One pre-LN transformer block on the host: `x + proj(attn(ln1 x))`, then `x + fc2(act(fc1(ln2 x)))`.
pub struct HostPreNormBlock {
    /// The first LayerNorm.
    pub norm1: HostNorm,
    /// q, k and v stacked: `[3d, d]` (a missing bias part as zeros).
    pub qkv: HostLinear,
    /// The attention output.
    pub proj: HostLinear,
    /// The second LayerNorm.
    pub norm2: HostNorm,
    /// The feed-forward up product.
    pub fc1: HostLinear,
    /// The feed-forward down product.
    pub fc2: HostLinear,
}

/// A [`HostPreNormBlock`] on the device.
pub struct PreNormBlock {
    norm1: DevNorm,
    qkv: DevLinear,
    proj: DevLinear,
    norm2: DevNorm,
    fc1: DevLinear,
    fc2: DevLinear,
}

impl PreNormBlock {
    /// Uploads a block.
    pub fn upload(rt: &EncoderRuntime, h: HostPreNormBlock) -> Result<Self, CudaError> {
        Ok(PreNormBlock { norm1: rt.norm(h.norm1)?, qkv: rt.linear(h.qkv)?, proj: rt.linear(h.proj)?, norm2: rt.norm(h.norm2)?, fc1: rt.linear(h.fc1)?, fc2: rt.linear(h.fc2)? })
    }

    /// Runs the block on the residual stream `h` (`[batch · n, d]` f32, updated in place). `xn`
    /// (`[batch · n, d]` in the runtime's type) holds this block's first LayerNorm of `h` on entry
    /// and, when `next` is given, that LayerNorm of the output on return (the last residual add
    /// and the next block's norm in one pass).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(&self, rt: &mut EncoderRuntime, h: u64, xn: u64, batch: usize, n: usize, heads: usize, act: Activation, next: Option<&DevNorm>) -> Result<(), CudaError> {
        let (d, f, rows, e) = (self.norm1.dim, self.fc1.out, batch * n, rt.elem());
        let mark = rt.mark();
        let att = rt.scratch(rows * d * e)?;
        let y = rt.scratch(rows * (3 * d).max(f) * e)?;
        rt.product(xn, rows, &self.qkv, y)?;
        let at = |col0| Heads { y, ld: 3 * d, col0, bias: self.qkv.bias() };
        rt.attention(at(0), at(d), at(2 * d), batch, n, n, heads, d / heads, att)?;
        rt.product(att, rows, &self.proj, xn)?;
        rt.residual_add_norm(h, xn, self.proj.bias(), rows, &self.norm2, att, 0)?;
        rt.product(att, rows, &self.fc1, y)?;
        rt.bias_act(y, self.fc1.bias(), y, rows, f, act)?;
        rt.product(y, rows, &self.fc2, xn)?;
        match next {
            Some(norm) => rt.residual_add_norm(h, xn, self.fc2.bias(), rows, norm, xn, 0)?,
            None => rt.residual_add(h, xn, self.fc2.bias(), rows, d)?,
        }
        rt.release(mark);
        Ok(())
    }
}

/// A ViT on the host: a stride-`patch` convolution (as a `[d, 3·p·p]` linear layer), a class
/// token, learned positions, an optional LayerNorm before the blocks (CLIP's `pre_layrnorm`),
/// and pre-LN blocks.
pub struct HostVit {
    /// The patch convolution's weight, flattened.
    pub patch: HostLinear,
    /// `[d]`.
    pub cls: Vec<f32>,
    /// `[1 + patches, d]`.
    pub pos: Vec<f32>,
    /// A LayerNorm on the embeddings before the blocks.
    pub pre_norm: Option<HostNorm>,
    /// The blocks.
    pub blocks: Vec<HostPreNormBlock>,
    /// Input side in pixels.
    pub img: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Attention heads.
    pub heads: usize,
    /// The feed-forward activation.
    pub act: Activation,
}

/// A [`HostVit`] on the device.
pub struct VitTower {
    patch: DevLinear,
    cls: Buf,
    pos: Buf,
    pre_norm: Option<DevNorm>,
    blocks: Vec<PreNormBlock>,
    img: usize,
    patch_size: usize,
    heads: usize,
    act: Activation,
}

impl VitTower {
    /// Uploads a ViT, checking its sizes agree.
    pub fn upload(rt: &EncoderRuntime, h: HostVit) -> Result<Self, CudaError> {
        let (d, p) = (h.patch.out, h.patch_size);
        let tokens = (h.img / p).pow(2) + 1;
        if h.patch.inp != 3 * p * p || h.cls.len() != d || h.pos.len() != tokens * d || !h.img.is_multiple_of(p) || !d.is_multiple_of(h.heads) {
            return Err(CudaError::Unsupported(format!("a ViT of width {d}, {} heads, patch {p} on {} pixels with a [{}, {}] patch weight", h.heads, h.img, h.patch.out, h.patch.inp)));
        }
        Ok(VitTower {
            patch: rt.linear(h.patch)?,
            cls: rt.upload_f32(&h.cls)?,
            pos: rt.upload_f32(&h.pos)?,
            pre_norm: h.pre_norm.map(|n| rt.norm(n)).transpose()?,
            blocks: h.blocks.into_iter().map(|b| PreNormBlock::upload(rt, b)).collect::<Result<_, _>>()?,
            img: h.img,
            patch_size: p,
            heads: h.heads,
            act: h.act,
        })
    }

    /// Width.
    pub fn dim(&self) -> usize {
        self.patch.out
    }

    /// Positions per image: the class token and the patches.
    pub fn tokens(&self) -> usize {
        (self.img / self.patch_size).pow(2) + 1
    }

    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        self.img
    }

    /// Runs the tower on `pixels` (`[batch, 3, img, img]` f32 on the device) into `h`
    /// (`[batch · tokens, d]` f32): the last block's output.
    pub fn forward(&self, rt: &mut EncoderRuntime, pixels: u64, batch: usize, h: u64) -> Result<(), CudaError> {
        let (d, p, np) = (self.dim(), self.patch_size, self.tokens() - 1);
        let mark = rt.mark();
        let cols = rt.scratch(batch * np * 3 * p * p * rt.elem())?;
        let y = rt.scratch(batch * np * d * 4)?;
        rt.patches(pixels, cols, batch, self.img, p)?;
        rt.product_f32(cols, batch * np, &self.patch, y)?;
        let args = [Arg::P(y), Arg::P(self.patch.bias()), Arg::P(self.cls.ptr), Arg::P(self.pos.ptr), Arg::P(h), Arg::I(batch as i32), Arg::I(np as i32), Arg::I(d as i32)];
        rt.launch_1d("vit_embed_f", batch * (np + 1) * d, &args)?;
        if let Some(norm) = &self.pre_norm {
            // The normalised rows go back into h (their copy in the runtime's type is not used).
            let unused = rt.scratch(batch * (np + 1) * d * rt.elem())?;
            rt.layer_norm(h, d, norm, unused, h, batch * (np + 1))?;
        }
        rt.release(mark);
        let Some(first) = self.blocks.first() else { return Ok(()) };
        let (rows, mark) = (batch * (np + 1), rt.mark());
        let xn = rt.scratch(rows * d * rt.elem())?;
        rt.layer_norm(h, d, &first.norm1, xn, 0, rows)?;
        for (i, b) in self.blocks.iter().enumerate() {
            b.forward(rt, h, xn, batch, np + 1, self.heads, self.act, self.blocks.get(i + 1).map(|b| &b.norm1))?;
        }
        rt.release(mark);
        Ok(())
    }
}

impl EngineDtype {
    /// f32 values as a weight in this type, on the host.
    pub(super) fn host_matrix(self, data: Vec<f32>) -> HostMatrix {
        use rayon::prelude::*;
        match self {
            EngineDtype::F32 => HostMatrix::F32(data),
            EngineDtype::F16 => HostMatrix::F16(data.par_iter().map(|&x| half::f16::from_f32(x).to_bits()).collect()),
        }
    }
}
