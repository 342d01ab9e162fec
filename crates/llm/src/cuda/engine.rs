//! [`CudaDecoder`]: a llama-family decoder (InternLM's included) run by its own fused kernels,
//! for decoding at the speed of the GPU's memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas::{CudaBlas, sys as blas};
use std::collections::HashMap;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaGraph, CudaStream};
use rayon::prelude::*;

use super::CudaError;
use super::kernels::{Arg, Buf, Kernels, open_device};
use super::matrix::{HostMatrix, Matrix, WeightQuant};
use crate::config::DecoderConfig;
use crate::decoder::{KeyStyle, rope_cos_sin, unpermute_rows};
use crate::weights::WeightSource;

/// Most sequences decoded together (the matrix-vector kernels are instantiated for 1..=8 rows).
pub const MAX_SEQS: usize = 8;

/// Keys per block of the attention kernel when launched directly.
const ATT_SPAN: usize = 32;

/// Keys per block the span counts of long contexts aim at (not a limit of the kernel, which
/// reads the slot table a chunk of keys at a time).
const ATT_SPAN_MAX: usize = 256;

/// Positions the KV cache grows by (it holds what the sequences need, up to the context).
pub const CACHE_STEP: usize = 256;

/// Layers read and converted at once while loading (bounds the host memory: about 1.2 GB per
/// InternLM-7B layer in flight).
const LOAD_GROUP: usize = 8;

/// Prompt rows per block of `attention_rows8` (they read each key and value once for all).
const ATT_ROW_GROUP: usize = 8;

/// Prompt rows per block of `attention_prefill_mma_{D}` (FA_Q: 16 a warp).
const PREFILL_MMA_ROWS: usize = 64;

/// Key spans of the attention launch in a captured decode step of `rows` sequences (fixed, as a
/// graph's grid is): at the full context each span holds at most [`ATT_SPAN_MAX`] keys, and one
/// sequence gets 16 (its only parallelism besides the heads); several share those 16 blocks per
/// head, so that they launch no more blocks than the GPU holds at once.
/// `XC_BEAM_SPANS=N` sets the spans of each of several sequences instead (to measure others).
fn graph_spans(context: usize, rows: usize) -> usize {
    let set = std::env::var("XC_BEAM_SPANS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0 && rows > 1);
    set.unwrap_or_else(|| context.div_ceil(ATT_SPAN_MAX).max(16usize.div_ceil(rows.max(1))))
}

/// Key spans of an attention launched directly over `rows` rows, the last of which sees `keys`
/// keys: for a decode step, [`ATT_SPAN`] keys per span per sequence (one sequence's few rows need
/// the spans' parallelism; several sequences bring their own, so each of their spans holds
/// `rows` times as many keys, at most [`ATT_SPAN_MAX`]); [`ATT_SPAN_MAX`] for prefill (its rows
/// give the parallelism, and fewer spans leave fewer partials to merge).
fn direct_spans(rows: usize, keys: usize) -> usize {
    if rows <= MAX_SEQS { keys.div_ceil(ATT_SPAN * rows.max(1)) } else { keys.div_ceil(ATT_SPAN_MAX) }
}

/// Values of a key row each lane of `attention_dec{E}` holds, where that kernel is built for the
/// head size and type: `E = head_dim / 32` of 1, 2, 4 or 8, at most 16 bytes a lane.
fn warp_attention_lanes(hd: usize, dtype: EngineDtype) -> Option<usize> {
    let e = hd / 32;
    (hd.is_multiple_of(32) && matches!(e, 1 | 2 | 4 | 8) && e * dtype.bytes() <= 16).then_some(e)
}

/// Floats of attention partials for any launch (see [`Scratch::part`]); a prompt's attention
/// on the tensor cores writes none.
fn partial_floats(c: &DecoderConfig, chunk: usize, prefill_mma: Option<usize>) -> usize {
    let ctx = c.max_position.max(1);
    let decode = (1..=MAX_SEQS).map(|rows| rows * direct_spans(rows, ctx).max(graph_spans(ctx, rows))).max().unwrap_or(0);
    let prefill = if prefill_mma.is_some() { 0 } else { chunk * direct_spans(chunk, ctx) };
    decode.max(prefill) * c.num_heads * (c.head_dim + 2)
}

/// The head size `attention_prefill_mma_{D}` is compiled for that runs a prompt's attention on
/// the tensor cores: f16 heads of at most 128 values in whole 16-byte vectors; `None` (the rows
/// go eight to a block through `attention_rows8`) otherwise, or when
/// `XC_PREFILL_ATTENTION=cuda-cores` asks for that kernel (to compare the two).
fn prefill_mma_width(dtype: EngineDtype, hd: usize) -> Option<usize> {
    let off = std::env::var("XC_PREFILL_ATTENTION").is_ok_and(|v| v == "cuda-cores");
    let width = [64, 128].into_iter().find(|&w| hd <= w)?;
    (dtype == EngineDtype::F16 && hd.is_multiple_of(8) && hd > 0 && !off).then_some(width)
}

/// The type the engine keeps weights, normalised activations and the KV cache in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineDtype {
    /// Half precision (the 7B model's own).
    F16,
    /// Single precision, with true f32 matrix products (no TF32): for parity runs.
    F32,
}

impl EngineDtype {
    pub(super) fn bytes(self) -> usize {
        match self {
            EngineDtype::F16 => 2,
            EngineDtype::F32 => 4,
        }
    }

    /// `n` zeroed elements of this type.
    fn zeros(self, stream: &Arc<CudaStream>, n: usize) -> Result<Buf, CudaError> {
        match self {
            EngineDtype::F16 => Buf::zeros::<u16>(stream, n),
            EngineDtype::F32 => Buf::zeros::<f32>(stream, n),
        }
    }

    /// cuBLAS's name of this type.
    pub(super) fn blas_type(self) -> blas::cudaDataType {
        match self {
            EngineDtype::F16 => blas::cudaDataType::CUDA_R_16F,
            EngineDtype::F32 => blas::cudaDataType::CUDA_R_32F,
        }
    }

    pub(super) fn suffix(self) -> &'static str {
        match self {
            EngineDtype::F16 => "h",
            EngineDtype::F32 => "f",
        }
    }
}

/// How the engine is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineOptions {
    /// Weight and cache type.
    pub dtype: EngineDtype,
    /// Prompt positions run per prefill pass (bounds the scratch memory).
    pub prefill_chunk: usize,
    /// Decode steps replayed from a captured CUDA graph (one launch per step instead of one per
    /// kernel); off, every kernel is launched from the host.
    pub cuda_graphs: bool,
    /// Weights quantized at load to this block format (f16 engine only; an untied LM head goes
    /// to Q8_0, a tied one is the embeddings'); `None` keeps them in `dtype`.
    pub quant: Option<WeightQuant>,
    /// Products of 2–[`MAX_SEQS`] rows (beams) on the tensor cores, quantized weights expanded
    /// to f16 in registers; off, on the CUDA cores as a single row's are.
    pub tensor_cores: bool,
    /// Positions the KV cache can hold per sequence (at most the model's context, which is the
    /// default); longer inputs are refused.
    pub max_positions: Option<usize>,
    /// Positions the KV cache grows by as the sequences lengthen ([`CACHE_STEP`]; at least 1).
    pub cache_step: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { dtype: EngineDtype::F16, prefill_chunk: 512, cuda_graphs: true, quant: None, tensor_cores: true, max_positions: None, cache_step: CACHE_STEP }
    }
}

/// One layer's weights; the RMSNorm weights are folded into the columns of the products that
/// follow them (`qkv`, `gate_up`), whose inputs are then normalised with unit weights.
struct LayerWeights {
    /// q, k and v stacked: `[(nh + 2 nkv)·hd, d]`.
    qkv: Matrix,
    qkv_bias: Option<Buf>,
    o: Matrix,
    o_bias: Option<Buf>,
    /// gate and up stacked: `[2 ff, d]`.
    gate_up: Matrix,
    down: Matrix,
}

/// Keys and values `[layers, capacity, positions, kv_width]`: `capacity` slots, each a
/// sequence's own positions; which slot holds a position of a sequence is in `Scratch::paths`
/// (`[MAX_SEQS, positions]`, the same stride).
struct Cache {
    k: Buf,
    v: Buf,
    capacity: usize,
    positions: usize,
}

/// Scratch buffers sized for one prefill chunk.
struct Scratch {
    /// The residual stream, f32.
    h: Buf,
    /// The residual stream in the weight type: the matrix-vector kernels' normalised input.
    hx: Buf,
    /// Normalised rows for cuBLAS and the LM head.
    xn: Buf,
    qkv: Buf,
    q: Buf,
    att: Buf,
    tmp: Buf,
    act: Buf,
    /// Attention partials `[rows, heads, spans, head_dim + 2]`.
    part: Buf,
    /// Finished spans per (row, head) of the attention kernel (it resets them to 0).
    done: Buf,
    logits: Buf,
    seen: Buf,
    ids: Buf,
    token: Buf,
    /// The position a decode step writes (read by the kernels of a replayed graph).
    pos: Buf,
    /// The cache slot of each position of each sequence, `[MAX_SEQS, context]` i32, and the
    /// spare table a reorder writes.
    paths: Buf,
    paths_spare: Buf,
    /// Per-row repetition flags `[MAX_SEQS, vocab]` and the best candidates of beam search.
    beam_seen: Buf,
    top_v: Buf,
    top_i: Buf,
    /// Beam candidates by share of each row (see `beam_lse`, `beam_topk`): each share's max and
    /// exp-sum, its best candidates, and each row's count of finished shares.
    share_m: Buf,
    share_s: Buf,
    cand_v: Buf,
    cand_i: Buf,
    topk_done: Buf,
    /// The greedy choice's best logit and id of each block, and its count of finished blocks.
    arg_v: Buf,
    arg_i: Buf,
    arg_done: Buf,
    /// Quantized engines: the inputs of a matrix-vector product in blocks of 32 (`[MAX_SEQS, K]`
    /// signed bytes, `[MAX_SEQS, K/32]` scales and scaled sums; see `quantize_x`), and a
    /// weight slice expanded to f16 for cuBLAS (`[WTMP_ROWS, K]`).
    xq: Buf,
    xd: Buf,
    xs: Buf,
    wtmp: Buf,
}

/// Logits of a row each block of the beam candidates reads, and most blocks a row.
const TOPK_SHARE: usize = 4096;
const TOPK_SHARES: usize = 64;

/// Logits each block of the greedy choice reads (256 threads, 4 each), and most blocks.
const ARGMAX_SHARE: usize = 1024;
const ARGMAX_BLOCKS: usize = 1024;

/// Rows of a quantized weight expanded to f16 at a time for a prefill product.
const WTMP_ROWS: usize = 2048;

/// Most candidates per row [`CudaDecoder::top_logprobs`] returns (`TOPK_MAX` in kernels.cu).
pub const TOPK_MAX: usize = 16;

/// Which rows a forward pass runs: row r is position `pos0 + r·pos_step` of sequence `r·seq_step`;
/// with `pos_dev` (a device address, 0 for none) the kernels read `pos0` from there, so a
/// captured graph replays at any position.
#[derive(Clone, Copy)]
struct RowGeometry {
    rows: usize,
    pos0: usize,
    pos_step: usize,
    seq_step: usize,
    pos_dev: u64,
}

/// The launches of one layer, in order.
#[derive(Clone, Copy)]
enum Part {
    AttnNorm,
    Qkv,
    Rope,
    Attention,
    Out,
    FfnNorm,
    GateUp,
    Down,
}

impl Part {
    const ALL: [Part; 8] = [Part::AttnNorm, Part::Qkv, Part::Rope, Part::Attention, Part::Out, Part::FfnNorm, Part::GateUp, Part::Down];

    /// The parts that launch anything for `rows` rows: the matrix-vector path (at most
    /// [`MAX_SEQS`] rows) folds the norms into the products and RoPE into the q/k/v product.
    fn launched(rows: usize) -> impl Iterator<Item = Part> {
        Part::ALL.into_iter().filter(move |p| rows > MAX_SEQS || !matches!(p, Part::AttnNorm | Part::Rope | Part::FfnNorm))
    }

    fn name(self, rows: usize) -> &'static str {
        let fused = rows <= MAX_SEQS;
        match self {
            Part::AttnNorm => "attention norm",
            Part::Qkv if fused => "norm + q/k/v + bias + RoPE + KV append",
            Part::Qkv => "q/k/v projection + bias",
            Part::Rope => "RoPE + KV append",
            Part::Attention => "attention (spans + merge)",
            Part::Out => "output projection + residual",
            Part::FfnNorm => "ffn norm",
            Part::GateUp if fused => "norm + gate/up + SwiGLU",
            Part::GateUp => "gate/up + SwiGLU",
            Part::Down => "down projection + residual",
        }
    }
}

/// What a projection does with its product.
enum Epilogue {
    /// `out = x·Wᵀ + bias`, f32.
    Store { out: u64, bias: u64 },
    /// `out += x·Wᵀ + bias` (the residual), f32; the matrix-vector kernel also writes the new
    /// rows to `hx` in the weight type.
    Add { out: u64, bias: u64 },
    /// `out = silu(x·Gᵀ) ⊙ x·Uᵀ` in the weight type, the weight being `[G; U]`; the
    /// matrix-vector kernel normalises its input rows.
    SwiGlu { out: u64 },
    /// Matrix-vector path only: normalised input, q/k/v with bias and RoPE, q into `q` and k/v
    /// appended to the layer's cache at the rows' positions.
    Rope { bias: u64, kc: u64, vc: u64, at: RowGeometry },
}

/// A captured decode step.
struct StepGraph(CudaGraph);

// SAFETY: a CUDA graph may be used from any thread as long as calls on it are serialised; the
// engine owns its graphs and launches them only from `&mut self` methods.
unsafe impl Send for StepGraph {}

/// A decoder on one CUDA device with a preallocated KV cache, fused decode kernels (one
/// weight read per step for up to [`MAX_SEQS`] sequences) and cuBLAS for prompt prefill.
pub struct CudaDecoder {
    /// The configuration it was built from.
    pub config: DecoderConfig,
    dtype: EngineDtype,
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    embed: Matrix,
    lm_head: Option<Matrix>,
    norm: Buf,
    layers: Vec<LayerWeights>,
    cos: Buf,
    sin: Buf,
    cache: Option<Cache>,
    s: Scratch,
    chunk: usize,
    /// Captured decode steps by sequence count (they name the cache's addresses: dropped
    /// whenever the cache is reallocated); `None` when graphs are off.
    graphs: Option<HashMap<usize, StepGraph>>,
    /// The head size of the tensor-core kernel a prompt's attention runs on (see
    /// [`prefill_mma_width`]); `None`: `attention_rows8`.
    prefill_mma: Option<usize>,
    /// Whether products of several rows run on the tensor cores.
    tensor_cores: bool,
    /// The decode attention's kernel: `attention_dec{E}` (a warp per share of a span's keys)
    /// where the head size allows it (see [`warp_attention_lanes`]), else `attention`.
    warp_attention: bool,
    /// Sequences in the cache and positions each holds.
    seqs: usize,
    len: usize,
    /// Tokens of the current sequence flagged for the repetition penalty.
    flagged: usize,
    /// Positions the KV cache grows by.
    cache_step: usize,
    /// Where the load's time went.
    pub load_times: EngineLoadTimes,
}

/// Where [`CudaDecoder::load`]'s time went (the kernels compile while the weights load).
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineLoadTimes {
    /// NVRTC compiling and loading the kernels, on threads beside the weights.
    pub compile: Duration,
    /// The whole load, wall time.
    pub total: Duration,
}

/// The matrices [`upload_weights`] put on the device.
struct UploadedWeights {
    embed: Matrix,
    lm_head: Option<Matrix>,
    layers: Vec<LayerWeights>,
    norm: Buf,
}

/// Whether the decode attention runs on the warp kernel, as `XC_DECODE_ATTENTION` (a
/// measurement switch) asks: see [`warp_attention`].
fn warp_attention_from_env() -> Result<bool, CudaError> {
    warp_attention(std::env::var("XC_DECODE_ATTENTION").ok().as_deref())
}

/// `warp` (also when unset) or `tile`; any other value is refused, naming the variable.
fn warp_attention(value: Option<&str>) -> Result<bool, CudaError> {
    match value {
        None | Some("warp") => Ok(true),
        Some("tile") => Ok(false),
        Some(other) => Err(CudaError::Unsupported(format!("XC_DECODE_ATTENTION={other:?}: expected \"warp\" (the default) or \"tile\""))),
    }
}

/// Reads, converts and quantizes the embeddings and LM head, then the layers [`LOAD_GROUP`] at a
/// time, in parallel on the host, and uploads each in turn; then the final norm.
fn upload_weights(c: &DecoderConfig, src: &dyn WeightSource, style: KeyStyle, opts: EngineOptions, stream: &Arc<CudaStream>) -> Result<UploadedWeights, CudaError> {
    let w = WeightLoader { src, style, dtype: opts.dtype, quant: opts.quant, permuted: matches!(style, KeyStyle::Gguf { permuted_qk: true }) };
    // An untied LM head keeps 8 bits when the rest goes to 4 (the embeddings, and a tied head
    // with them, follow the layers, as in llama.cpp's Q4_0 files).
    let head = WeightLoader { quant: opts.quant.map(|_| WeightQuant::Q8_0), ..w };
    let d = c.hidden_size;
    let (embed, lm_head) = rayon::join(
        || w.host_matrix(&[("model.embed_tokens.weight", c.vocab_size, None)], 0, d, None),
        || (!c.tie_word_embeddings).then(|| head.host_matrix(&[("lm_head.weight", c.vocab_size, None)], 0, d, None)).transpose(),
    );
    // Untied embeddings are only looked up (a row per token): they stay in host memory the
    // kernels read over the bus, leaving the device's to the layers and the cache.
    let embed = if c.tie_word_embeddings { embed?.upload(stream)? } else { embed?.map_on_host(stream)? };
    let lm_head = lm_head?.map(|m| m.upload(stream)).transpose()?;
    let mut layers = Vec::with_capacity(c.num_layers);
    let ids: Vec<usize> = (0..c.num_layers).collect();
    for group in ids.chunks(LOAD_GROUP) {
        let host: Vec<Result<HostLayer, CudaError>> = group.par_iter().map(|&l| w.host_layer(c, l)).collect();
        for layer in host {
            layers.push(layer?.upload(stream)?);
        }
    }
    let norm = Buf::upload(stream, &w.host_vector(&[("model.norm.weight", d)], 0)?)?;
    Ok(UploadedWeights { embed, lm_head, layers, norm })
}

impl CudaDecoder {
    /// Loads the decoder's weights from `src` (names as `style` spells them) onto CUDA device 0.
    pub fn load(config: DecoderConfig, src: &dyn WeightSource, style: KeyStyle, opts: EngineOptions) -> Result<Self, CudaError> {
        let c = &config;
        let warp_attention = warp_attention_from_env()?;
        if !c.head_dim.is_multiple_of(2) || c.head_dim > 256 || c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return Err(CudaError::Unsupported(format!(
                "head_dim {} with {} heads over {} kv heads (the engine needs an even head_dim ≤ 256 and whole query groups)",
                c.head_dim, c.num_heads, c.num_kv_heads
            )));
        }
        check_quant(c, opts)?;
        let config = match opts.max_positions {
            Some(0) => return Err(CudaError::Unsupported("a KV cache of 0 positions (max_positions must be at least 1)".into())),
            Some(n) => DecoderConfig { max_position: c.max_position.min(n), ..config },
            None => config,
        };
        let c = &config;
        let start = Instant::now();
        let (ctx, stream) = open_device()?;
        // NVRTC compiles the kernels on threads of its own while the weights are read and uploaded.
        let (kernels, compile, weights) = std::thread::scope(|scope| {
            let compiling = scope.spawn(|| {
                let t = Instant::now();
                Kernels::compile(&ctx, stream.clone()).map(|k| (k, t.elapsed()))
            });
            let weights = upload_weights(c, src, style, opts, &stream);
            let (kernels, compile) = compiling.join().unwrap_or_else(|_| Err(CudaError::Compile("NVRTC panicked".into())))?;
            Ok::<_, CudaError>((kernels, compile, weights?))
        })?;
        let UploadedWeights { embed, lm_head, layers, norm } = weights;
        let blas = CudaBlas::new(stream.clone())?;
        let chunk = opts.prefill_chunk.max(MAX_SEQS + 1);
        let (cos, sin) = rope_cos_sin(c);
        let (cos, sin) = (Buf::upload(&stream, &cos)?, Buf::upload(&stream, &sin)?);
        let prefill_mma = prefill_mma_width(opts.dtype, c.head_dim);
        let s = Scratch::new(&stream, c, opts, chunk, prefill_mma)?;
        stream.synchronize()?;
        let load_times = EngineLoadTimes { compile, total: start.elapsed() };
        Ok(CudaDecoder {
            load_times,
            config,
            dtype: opts.dtype,
            _ctx: ctx,
            stream,
            blas,
            kernels,
            embed,
            lm_head,
            norm,
            layers,
            cos,
            sin,
            cache: None,
            s,
            chunk,
            graphs: opts.cuda_graphs.then(HashMap::new),
            tensor_cores: opts.tensor_cores,
            warp_attention,
            prefill_mma,
            seqs: 0,
            len: 0,
            flagged: 0,
            cache_step: opts.cache_step.max(1),
        })
    }

    /// Positions one sequence can hold (the model's context).
    pub fn context_len(&self) -> usize {
        self.config.max_position.max(1)
    }

    /// Positions the KV cache has room for per sequence now (it grows up to
    /// [`Self::context_len`] as sequences lengthen).
    pub fn cache_positions(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.positions)
    }

    /// Grows the KV cache to hold `positions` positions per sequence now (at most the context),
    /// as a server that wants its whole context up front would; it never shrinks.
    pub fn reserve_positions(&mut self, positions: usize) -> Result<(), CudaError> {
        self.reserve(self.seqs.max(1), positions, self.len)
    }

    /// Positions cached per sequence so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The input embeddings of token ids, `ids.len() × hidden` row-major f32 on the host.
    pub fn embed_ids(&mut self, ids: &[u32]) -> Result<Vec<f32>, CudaError> {
        let d = self.config.hidden_size;
        let mut out = vec![0f32; ids.len() * d];
        for (part, rows) in ids.chunks(self.chunk).zip(out.chunks_mut(self.chunk * d)) {
            self.embed_rows(part)?;
            self.download(self.s.h.ptr, rows)?;
        }
        Ok(out)
    }

    /// Runs a prompt of `embeds.len() / hidden` positions (row-major f32 input embeddings) as a
    /// new single sequence; the logits of its last position are then ready.
    pub fn prefill(&mut self, embeds: &[f32]) -> Result<(), CudaError> {
        self.prefill_keeping(embeds, None)
    }

    /// As [`Self::prefill`], returning every position's residual stream after the last layer
    /// (before the final norm; `embeds.len()` f32 values): what checks a prompt's attention
    /// position by position, where the logits show only the last.
    pub fn prefill_states(&mut self, embeds: &[f32]) -> Result<Vec<f32>, CudaError> {
        let mut states = vec![0f32; embeds.len()];
        self.prefill_keeping(embeds, Some(&mut states))?;
        Ok(states)
    }

    /// [`Self::prefill`], copying each chunk's final residual stream into `states` when given.
    fn prefill_keeping(&mut self, embeds: &[f32], mut states: Option<&mut [f32]>) -> Result<(), CudaError> {
        let d = self.config.hidden_size;
        let n = embeds.len() / d;
        if n == 0 || n * d != embeds.len() {
            return Err(CudaError::Unsupported(format!("prompt embeddings of {} values are not whole rows of {d}", embeds.len())));
        }
        self.reserve(1, n, 0)?;
        self.seqs = 1;
        self.len = 0;
        self.flagged = 0;
        // SAFETY: `seen` holds `vocab_size` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(self.s.seen.ptr, 0, self.s.seen.len, self.stream.cu_stream())? };
        self.reorder_paths(None)?;
        let mut last_rows = 0;
        for (i, part) in embeds.chunks(self.chunk * d).enumerate() {
            let rows = part.len() / d;
            self.upload(self.s.h.ptr, part)?;
            if rows <= MAX_SEQS {
                let n = (rows * d) as i64;
                let grid = ((n as u32).div_ceil(256), 1, 1);
                self.kernels.launch(&format!("to_t_{}", self.dtype.suffix()), grid, 256, &[Arg::P(self.s.h.ptr), Arg::P(self.s.hx.ptr), Arg::L(n)])?;
            }
            self.layers_forward(rows, i * self.chunk, 1, 0)?;
            if let Some(states) = states.as_deref_mut() {
                self.download(self.s.h.ptr, &mut states[i * self.chunk * d..][..rows * d])?;
            }
            last_rows = rows;
        }
        self.head(last_rows - 1, 1)?;
        self.len = n;
        Ok(())
    }

    /// One step: `tokens[s]` is appended to sequence `s` (as many tokens as sequences); the
    /// logits of each sequence's new position are then ready.
    pub fn step(&mut self, tokens: &[u32]) -> Result<(), CudaError> {
        if tokens.len() != self.seqs || self.seqs == 0 {
            return Err(CudaError::Unsupported(format!("{} tokens for {} sequences (prefill first)", tokens.len(), self.seqs)));
        }
        self.reserve(self.seqs, self.len + 1, self.len)?;
        self.upload_ids(tokens)?;
        self.upload(self.s.pos.ptr, &[self.len as i32])?;
        let rows = tokens.len();
        match self.graphs.as_ref().map(|g| g.contains_key(&rows)) {
            None => self.decode_kernels(rows, false)?,
            Some(true) => {}
            Some(false) => {
                let graph = self.capture(rows)?;
                self.graphs.as_mut().expect("graphs on").insert(rows, StepGraph(graph));
            }
        }
        if let Some(graph) = self.graphs.as_ref().and_then(|g| g.get(&rows)) {
            graph.0.launch()?;
        }
        self.len += 1;
        Ok(())
    }

    /// Whether decode steps replay captured CUDA graphs (see [`EngineOptions::cuda_graphs`]).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        if on != self.graphs.is_some() {
            self.graphs = on.then(HashMap::new);
        }
    }

    /// Runs a decode step's attention on `attention_dec{E}` (on) or on the tile kernel
    /// `attention` (off; `XC_DECODE_ATTENTION=tile` sets that at load); captured steps are dropped.
    pub fn set_warp_attention(&mut self, on: bool) {
        if on != self.warp_attention {
            self.warp_attention = on;
            self.drop_graphs();
        }
    }

    /// Runs products of several rows on the tensor cores or (off) the CUDA cores
    /// (see [`EngineOptions::tensor_cores`]); captured steps are dropped, as they name kernels.
    pub fn set_tensor_cores(&mut self, on: bool) {
        if on != self.tensor_cores {
            self.tensor_cores = on;
            self.drop_graphs();
        }
    }

    /// A decode step's kernels for `rows` sequences, their ids in `ids` and their position in
    /// `pos` on the device: the token embeddings, every layer, the LM head. `fixed`: launched
    /// as a graph records them (the position read on the device, a fixed attention grid).
    fn decode_kernels(&self, rows: usize, fixed: bool) -> Result<(), CudaError> {
        self.launch_embed(rows)?;
        let at = RowGeometry { rows, pos0: self.len, pos_step: 0, seq_step: 1, pos_dev: if fixed { self.s.pos.ptr } else { 0 } };
        for l in 0..self.layers.len() {
            for part in Part::launched(rows) {
                self.run_part(part, l, at)?;
            }
        }
        self.head(0, rows)
    }

    /// Records [`Self::decode_kernels`] for `rows` sequences into a graph (which runs nothing
    /// until launched).
    fn capture(&self, rows: usize) -> Result<CudaGraph, CudaError> {
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let recorded = self.decode_kernels(rows, true);
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        graph?.ok_or_else(|| CudaError::Unsupported("the CUDA graph capture recorded nothing".into()))
    }

    /// The logits of the last position of every sequence.
    pub fn logits(&mut self) -> Result<Vec<Vec<f32>>, CudaError> {
        let v = self.config.vocab_size;
        let mut all = vec![0f32; self.seqs * v];
        self.download(self.s.logits.ptr, &mut all)?;
        Ok(all.chunks(v).map(<[f32]>::to_vec).collect())
    }

    /// Greedy choice for sequence 0 on the device: the argmax after Hugging Face's repetition
    /// `penalty` over the tokens of `seq` (the sequence so far), only the id read back.
    pub fn greedy_token(&mut self, seq: &[u32], penalty: f32) -> Result<u32, CudaError> {
        self.check_ids(seq)?;
        let new: Vec<i32> = seq.get(self.flagged..).unwrap_or_default().iter().map(|&t| t as i32).collect();
        self.flag(&new, self.s.seen.ptr)?;
        self.launch_greedy(penalty)?;
        let mut tok = [0i32; 1];
        self.download(self.s.token.ptr, &mut tok)?;
        self.flagged = seq.len() + 1;
        Ok(tok[0] as u32)
    }

    /// `argmax_penalized` over the first logits row: a block per [`ARGMAX_SHARE`] logits, the
    /// id into `token` (and flagged in `seen`).
    fn launch_greedy(&self, penalty: f32) -> Result<(), CudaError> {
        let v = self.config.vocab_size;
        let blocks = v.div_ceil(ARGMAX_SHARE).min(ARGMAX_BLOCKS) as u32;
        let s = &self.s;
        let args = [Arg::P(s.logits.ptr), Arg::I(v as i32), Arg::P(s.seen.ptr), Arg::F(penalty), Arg::P(s.token.ptr), Arg::P(s.arg_v.ptr), Arg::P(s.arg_i.ptr), Arg::P(s.arg_done.ptr)];
        self.kernels.launch("argmax_penalized", (blocks, 1, 1), 256, &args)
    }

    /// `beam_max`, `beam_lse` then `beam_topk` over the first `rows` logits rows, a block per
    /// [`TOPK_SHARE`] logits of a row: the best `k` of each row into `top_v`/`top_i`.
    fn launch_beam_topk(&self, rows: usize, penalty: f32, k: usize) -> Result<(), CudaError> {
        let (v, s) = (self.config.vocab_size, &self.s);
        let grid = (v.div_ceil(TOPK_SHARE).min(TOPK_SHARES) as u32, rows as u32, 1);
        self.kernels.launch("beam_max", grid, 256, &[Arg::P(s.logits.ptr), Arg::I(v as i32), Arg::P(s.share_m.ptr)])?;
        self.kernels.launch("beam_lse", grid, 256, &[Arg::P(s.logits.ptr), Arg::I(v as i32), Arg::P(s.share_m.ptr), Arg::P(s.share_s.ptr)])?;
        let args = [Arg::P(s.logits.ptr), Arg::I(v as i32), Arg::P(s.beam_seen.ptr), Arg::F(penalty), Arg::I(k as i32), Arg::P(s.share_m.ptr), Arg::P(s.share_s.ptr)];
        let more = [s.cand_v.ptr, s.cand_i.ptr, s.topk_done.ptr, s.top_v.ptr, s.top_i.ptr].map(Arg::P);
        self.kernels.launch("beam_topk", grid, 256, &[&args[..], &more[..]].concat())
    }

    /// Keeps sequences `rows` (in that order, repeats allowed): how beam search follows its
    /// beams, and how one prompt becomes several beams. Only the slot tables move; the cache
    /// grows (once) when there are more sequences than slots.
    pub fn reorder(&mut self, rows: &[usize]) -> Result<(), CudaError> {
        if rows.is_empty() || rows.len() > MAX_SEQS || rows.iter().any(|&r| r >= self.seqs) {
            return Err(CudaError::Unsupported(format!("reorder to {rows:?} with {} sequences (1 to {MAX_SEQS})", self.seqs)));
        }
        if rows.len() == self.seqs && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        self.reserve(rows.len(), self.len, self.len)?;
        let ids: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        self.upload(self.s.ids.ptr, &ids)?;
        self.reorder_paths(Some(rows.len()))?;
        self.seqs = rows.len();
        Ok(())
    }

    /// The slot tables after a reorder to the `rows` uploaded in `ids` (`Some(count)`), or the
    /// identity (`None`, after a prefill).
    fn reorder_paths(&self, rows: Option<usize>) -> Result<(), CudaError> {
        let stride = self.cache_positions();
        let (src, dst) = (self.s.paths.ptr, self.s.paths_spare.ptr);
        let (rows_ptr, seqs) = rows.map_or((0, MAX_SEQS), |n| (self.s.ids.ptr, n));
        let n = (seqs * stride) as u32;
        let args = [Arg::P(src), Arg::P(dst), Arg::P(rows_ptr), Arg::I(seqs as i32), Arg::I(self.len as i32), Arg::I(stride as i32)];
        self.kernels.launch("reorder_paths", (n.div_ceil(256), 1, 1), 256, &args)?;
        // Copied back rather than swapped: captured graphs hold the table's address.
        // SAFETY: both tables hold MAX_SEQS × context i32 on the engine's stream.
        unsafe { cudarc::driver::result::memcpy_dtod_async(src, dst, n as usize * 4, self.stream.cu_stream())? };
        Ok(())
    }

    /// Room for `seqs` sequences of `positions` positions: the cache grows (by whole steps of
    /// `cache_step` positions, to at most the context) with the first `keep` positions of its
    /// slots and the slot tables carried over; captured steps are dropped (they name its
    /// addresses and stride).
    fn reserve(&mut self, seqs: usize, positions: usize, keep: usize) -> Result<(), CudaError> {
        let ctx = self.context_len();
        if positions > ctx {
            return Err(CudaError::Context { needed: positions, max: ctx });
        }
        let (capacity, held) = self.cache.as_ref().map_or((0, 0), |c| (c.capacity, c.positions));
        if capacity >= seqs && held >= positions {
            return Ok(());
        }
        let grown = self.new_cache(capacity.max(seqs), held.max(positions.next_multiple_of(self.cache_step).min(ctx)))?;
        if let Some(old) = self.cache.take()
            && keep > 0
        {
            self.copy_slots(&old, &grown, keep)?;
        }
        self.cache = Some(grown);
        self.drop_graphs();
        Ok(())
    }

    /// Copies the first `keep` positions of every slot of `old` into `new`, and lays the slot
    /// tables out at `new`'s stride.
    fn copy_slots(&self, old: &Cache, new: &Cache, keep: usize) -> Result<(), CudaError> {
        let c = &self.config;
        let eb = self.dtype.bytes();
        let width = c.num_kv_heads * c.head_dim * eb;
        let ids: Vec<i32> = (0..old.capacity as i32).collect();
        self.upload(self.s.ids.ptr, &ids)?;
        let span_bytes = keep * width;
        let grid = ((span_bytes / 16).div_ceil(256).clamp(1, 64) as u32, (c.num_layers * old.capacity) as u32, 1);
        let strides = [old.positions * width, new.positions * width, span_bytes].map(|b| Arg::L(b as i64));
        for (src, dst) in [(old.k.ptr, new.k.ptr), (old.v.ptr, new.v.ptr)] {
            let mut args = vec![Arg::P(src), Arg::P(dst), Arg::P(self.s.ids.ptr)];
            args.extend([old.capacity, new.capacity, old.capacity].map(|v| Arg::I(v as i32)));
            args.extend(strides);
            args.push(Arg::I(eb as i32));
            self.kernels.launch("reorder_cache", grid, 256, &args)?;
        }
        if new.positions != old.positions {
            let mut paths = vec![0i32; MAX_SEQS * old.positions];
            self.download(self.s.paths.ptr, &mut paths)?;
            // Positions not yet written are each sequence's own slot, as `reorder_paths` leaves them.
            let mut wide: Vec<i32> = (0..MAX_SEQS * new.positions).map(|i| (i / new.positions) as i32).collect();
            for (seq, row) in paths.chunks(old.positions).enumerate() {
                wide[seq * new.positions..][..keep].copy_from_slice(&row[..keep]);
            }
            self.upload(self.s.paths.ptr, &wide)?;
        }
        // The old cache is freed once the copies are done.
        Ok(self.stream.synchronize()?)
    }

    /// [`StepDecoder::top_logprobs`] on the device: only `k` (log-prob, id) pairs per row come back.
    pub fn top_logprobs(&mut self, seqs: &[Vec<u32>], penalty: f32, k: usize) -> Result<Vec<Vec<(f32, u32)>>, CudaError> {
        let (v, rows) = (self.config.vocab_size, seqs.len());
        if rows == 0 || rows > self.seqs.max(1) || k == 0 || k > TOPK_MAX.min(v) {
            return Err(CudaError::Unsupported(format!("top {k} of {rows} rows ({} sequences, k ≤ {TOPK_MAX})", self.seqs)));
        }
        // SAFETY: `beam_seen` holds MAX_SEQS × vocab bytes and rows ≤ MAX_SEQS.
        unsafe { cudarc::driver::result::memset_d8_async(self.s.beam_seen.ptr, 0, rows * v, self.stream.cu_stream())? };
        let mut flat = Vec::new();
        for (r, seq) in seqs.iter().enumerate() {
            self.check_ids(seq)?;
            flat.extend(seq.iter().map(|&t| (r * v) as i32 + t as i32));
        }
        if penalty != 1.0 {
            self.flag(&flat, self.s.beam_seen.ptr)?;
        }
        self.launch_beam_topk(rows, penalty, k)?;
        let (mut vals, mut ids) = (vec![0f32; rows * k], vec![0i32; rows * k]);
        self.download(self.s.top_i.ptr, &mut ids)?;
        self.download(self.s.top_v.ptr, &mut vals)?;
        Ok(vals.chunks(k).zip(ids.chunks(k)).map(|(vs, is)| vs.iter().zip(is).map(|(&x, &i)| (x, i as u32)).collect()).collect())
    }

    /// Bytes of the weights on the device (embeddings and LM head included).
    pub fn weight_bytes(&self) -> usize {
        let vectors = |l: &LayerWeights| [&l.qkv_bias, &l.o_bias].iter().filter_map(|b| b.as_ref()).map(|b| b.bytes).sum::<usize>();
        let layers: usize = self.layers.iter().map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down].iter().map(|m| m.bytes()).sum::<usize>() + vectors(l)).sum();
        layers + self.embed.bytes() + self.lm_head.as_ref().map_or(0, Matrix::bytes) + self.norm.bytes + self.cos.bytes + self.sin.bytes
    }

    /// Bytes the engine holds on the device: weights, KV cache and scratch (not the CUDA
    /// context, cuBLAS's workspace or the compiled kernels).
    pub fn allocated_bytes(&self) -> usize {
        let cache = self.cache.as_ref().map_or(0, |c| c.k.bytes + c.v.bytes);
        self.weight_bytes() + cache + self.s.bytes()
    }

    /// Bytes of device memory in use as the driver reports it: this process's allocations and
    /// CUDA context, and any other process's on the same device.
    pub fn memory_in_use(&self) -> Result<usize, CudaError> {
        let (free, total) = cudarc::driver::result::mem_get_info()?;
        Ok(total - free)
    }

    /// Waits for the device (for timing).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }

    fn new_cache(&self, capacity: usize, positions: usize) -> Result<Cache, CudaError> {
        let c = &self.config;
        let n = c.num_layers * capacity * positions * c.num_kv_heads * c.head_dim;
        Ok(Cache { k: self.dtype.zeros(&self.stream, n)?, v: self.dtype.zeros(&self.stream, n)?, capacity, positions })
    }

    /// Forgets the captured graphs (they name addresses about to change).
    fn drop_graphs(&mut self) {
        if let Some(g) = self.graphs.as_mut() {
            g.clear();
        }
    }

    fn upload<T: cudarc::driver::DeviceRepr>(&self, dst: u64, data: &[T]) -> Result<(), CudaError> {
        // SAFETY: every destination is a scratch buffer sized for a chunk of rows; pageable host
        // memory is staged before the call returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, data, self.stream.cu_stream())? };
        Ok(())
    }

    fn download<T: cudarc::driver::DeviceRepr>(&self, src: u64, out: &mut [T]) -> Result<(), CudaError> {
        // SAFETY: `src` holds at least `out.len()` elements; the stream is synchronised before return.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(out, src, self.stream.cu_stream())? };
        self.stream.synchronize()?;
        Ok(())
    }

    /// Refuses ids outside the vocabulary (the kernels index tables with them).
    fn check_ids(&self, ids: &[u32]) -> Result<(), CudaError> {
        let v = self.config.vocab_size;
        match ids.iter().find(|&&t| t as usize >= v) {
            Some(&bad) => Err(CudaError::Unsupported(format!("token id {bad} is outside the vocabulary of {v}"))),
            None => Ok(()),
        }
    }

    /// Flags `ids` (offsets into the byte table at `seen`) for the repetition penalty, in chunks
    /// of the ids buffer.
    fn flag(&self, ids: &[i32], seen: u64) -> Result<(), CudaError> {
        for part in ids.chunks(self.s.ids.len) {
            self.upload(self.s.ids.ptr, part)?;
            let n = part.len() as u32;
            self.kernels.launch("flag_tokens", (n.div_ceil(256), 1, 1), 256, &[Arg::P(self.s.ids.ptr), Arg::I(n as i32), Arg::P(seen)])?;
        }
        Ok(())
    }

    /// At most a chunk of token ids, checked against the vocabulary, into the ids buffer.
    fn upload_ids(&self, ids: &[u32]) -> Result<(), CudaError> {
        self.check_ids(ids)?;
        let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        self.upload(self.s.ids.ptr, &ids)
    }

    /// The embeddings of the first `rows` ids of the ids buffer into the first rows of `h` (and `hx`).
    fn launch_embed(&self, rows: usize) -> Result<(), CudaError> {
        let (name, mut args) = match &self.embed {
            Matrix::Plain(t) => (format!("embed_{}", self.dtype.suffix()), vec![Arg::P(t.ptr)]),
            Matrix::Quant { q, d, ty } => (format!("embed_q{}_h", ty.bits()), vec![Arg::P(q.ptr), Arg::P(d.ptr)]),
        };
        args.extend([Arg::P(self.s.ids.ptr), Arg::P(self.s.h.ptr), Arg::P(self.s.hx.ptr), Arg::I(self.config.hidden_size as i32)]);
        self.kernels.launch(&name, (rows as u32, 1, 1), 256, &args)
    }

    /// Looks up at most a chunk of ids into the first rows of `h` (and `hx`).
    fn embed_rows(&self, ids: &[u32]) -> Result<(), CudaError> {
        self.upload_ids(ids)?;
        self.launch_embed(ids.len())
    }

    /// All layers over `rows` rows of `h`; row r is position `pos0 + r·pos_step` of sequence `r·seq_step`.
    fn layers_forward(&mut self, rows: usize, pos0: usize, pos_step: usize, seq_step: usize) -> Result<(), CudaError> {
        let at = RowGeometry { rows, pos0, pos_step, seq_step, pos_dev: 0 };
        for l in 0..self.layers.len() {
            for part in Part::launched(rows) {
                self.run_part(part, l, at)?;
            }
        }
        Ok(())
    }

    /// One part of layer `l` over the rows `at` describes (see [`Part::launched`]).
    fn run_part(&self, part: Part, l: usize, at: RowGeometry) -> Result<(), CudaError> {
        let c = &self.config;
        let (d, hd, ff, sfx) = (c.hidden_size, c.head_dim, c.intermediate_size, self.dtype.suffix());
        let (nh, nkv, rows) = (c.num_heads, c.num_kv_heads, at.rows);
        // The matrix-vector kernels normalise `hx` themselves; cuBLAS takes rows normalised by a kernel.
        let normed = if rows <= MAX_SEQS { self.s.hx.ptr } else { self.s.xn.ptr };
        let lw = &self.layers[l];
        let cache = self.cache.as_ref().expect("allocated by prefill");
        let layer_bytes = (cache.capacity * cache.positions * nkv * hd * self.dtype.bytes()) as u64;
        let (kc, vc) = (cache.k.ptr + l as u64 * layer_bytes, cache.v.ptr + l as u64 * layer_bytes);
        let geometry = [nh, nkv, hd, at.pos0, at.pos_step, at.seq_step, cache.positions].map(|v| Arg::I(v as i32));
        match part {
            Part::AttnNorm | Part::FfnNorm => self.rmsnorm(self.s.h.ptr, 0, rows),
            Part::Qkv => {
                let bias = lw.qkv_bias.as_ref().map_or(0, |b| b.ptr);
                let epi = if rows <= MAX_SEQS { Epilogue::Rope { bias, kc, vc, at } } else { Epilogue::Store { out: self.s.qkv.ptr, bias } };
                self.project(&lw.qkv, (nh + 2 * nkv) * hd, d, normed, rows, epi)
            }
            Part::Rope => {
                let mut args = vec![Arg::P(self.s.qkv.ptr), Arg::P(self.cos.ptr), Arg::P(self.sin.ptr), Arg::P(self.s.q.ptr), Arg::P(kc), Arg::P(vc)];
                args.extend(geometry);
                self.kernels.launch(&format!("rope_kv_{sfx}"), (rows as u32, (nh + nkv) as u32, 1), (hd / 2) as u32, &args)
            }
            Part::Attention => {
                // A prompt's rows (one sequence, consecutive positions) on the tensor cores.
                if let Some(width) = self.prefill_mma.filter(|_| rows > MAX_SEQS && at.seq_step == 0 && at.pos_step == 1) {
                    let mut args = vec![Arg::P(self.s.q.ptr), Arg::P(kc), Arg::P(vc), Arg::P(self.s.paths.ptr), Arg::P(self.s.att.ptr)];
                    args.extend([rows, nh, nkv, hd, at.pos0, cache.positions].map(|v| Arg::I(v as i32)));
                    args.push(Arg::F(1.0 / (hd as f32).sqrt()));
                    let grid = (rows.div_ceil(PREFILL_MMA_ROWS) as u32, nh as u32, 1);
                    return self.kernels.launch(&format!("attention_prefill_mma_{width}"), grid, 128, &args);
                }
                // Spans for the row that sees the most keys, or a graph's fixed count.
                let spans = match at.pos_dev {
                    0 => direct_spans(rows, at.pos0 + (rows - 1) * at.pos_step + 1),
                    _ => graph_spans(self.context_len(), rows),
                };
                let mut args = vec![Arg::P(self.s.q.ptr), Arg::P(kc), Arg::P(vc), Arg::P(self.s.paths.ptr), Arg::P(self.s.part.ptr), Arg::P(self.s.done.ptr), Arg::P(self.s.att.ptr), Arg::P(at.pos_dev), Arg::I(rows as i32)];
                args.extend(geometry);
                args.push(Arg::F(1.0 / (hd as f32).sqrt()));
                // A prompt's rows (one sequence) share the key and value loads eight at a time.
                let (name, group) = match warp_attention_lanes(hd, self.dtype) {
                    _ if rows > MAX_SEQS && at.seq_step == 0 => ("attention_rows8".to_string(), ATT_ROW_GROUP),
                    Some(e) if self.warp_attention => (format!("attention_dec{e}"), 1),
                    _ => ("attention".to_string(), 1),
                };
                self.kernels.launch(&format!("{name}_{sfx}"), (nh as u32, rows.div_ceil(group) as u32, spans as u32), 128, &args)
            }
            Part::Out => {
                let bias = lw.o_bias.as_ref().map_or(0, |b| b.ptr);
                self.project(&lw.o, d, nh * hd, self.s.att.ptr, rows, Epilogue::Add { out: self.s.h.ptr, bias })
            }
            Part::GateUp => self.project(&lw.gate_up, ff, d, normed, rows, Epilogue::SwiGlu { out: self.s.act.ptr }),
            Part::Down => self.project(&lw.down, d, ff, self.s.act.ptr, rows, Epilogue::Add { out: self.s.h.ptr, bias: 0 }),
        }
    }

    /// Microseconds per launch of each part of a decode step of `rows` sequences at the current
    /// length (layer 0, `reps` back-to-back launches each), then of the LM head and the greedy
    /// choice: where a step's time goes. Leaves the hidden state meaningless: prefill again after.
    pub fn profile_step(&mut self, rows: usize, reps: usize) -> Result<Vec<(&'static str, f64)>, CudaError> {
        if self.seqs < rows || self.is_empty() {
            return Err(CudaError::Unsupported(format!("profile_step needs {rows} prefilled sequences")));
        }
        // The position read on the device, as a captured step reads it (and the same attention spans).
        self.upload(self.s.pos.ptr, &[(self.len - 1) as i32])?;
        self.profile_parts(RowGeometry { rows, pos0: self.len - 1, pos_step: 0, seq_step: 1, pos_dev: self.s.pos.ptr }, reps)
    }

    /// As [`Self::profile_step`] for one prefill pass over the first `positions` positions of
    /// the current sequence (at most a prefill chunk; the cache must hold them).
    pub fn profile_prefill(&mut self, positions: usize, reps: usize) -> Result<Vec<(&'static str, f64)>, CudaError> {
        if self.len < positions || positions > self.chunk || positions <= MAX_SEQS {
            return Err(CudaError::Unsupported(format!("profile_prefill needs {positions} prefilled positions, more than {MAX_SEQS} and at most a chunk ({})", self.chunk)));
        }
        self.profile_parts(RowGeometry { rows: positions, pos0: 0, pos_step: 1, seq_step: 0, pos_dev: 0 }, reps)
    }

    /// Microseconds per launch of each part of one layer over the rows `at` describes, then of
    /// the LM head and the greedy choice (over the last row only when there are more rows than
    /// sequences, as a prefill runs them: the logits hold [`MAX_SEQS`] rows).
    fn profile_parts(&mut self, at: RowGeometry, reps: usize) -> Result<Vec<(&'static str, f64)>, CudaError> {
        let rows = at.rows;
        let head_rows = if rows <= MAX_SEQS { rows } else { 1 };
        let time = |f: &dyn Fn() -> Result<(), CudaError>| -> Result<f64, CudaError> {
            f()?;
            self.stream.synchronize()?;
            let t = Instant::now();
            for _ in 0..reps {
                f()?;
            }
            self.stream.synchronize()?;
            Ok(t.elapsed().as_secs_f64() * 1e6 / reps as f64)
        };
        let mut out = vec![];
        for part in Part::launched(rows) {
            out.push((part.name(rows), time(&|| self.run_part(part, 0, at))?));
        }
        out.push(("lm head", time(&|| self.lm_head_logits(head_rows))?));
        out.push(("greedy choice", time(&|| self.launch_greedy(1.0))?));
        // Beam search's candidates (2 per beam, as it asks), flags and downloads left out.
        if (2..=MAX_SEQS).contains(&rows) {
            out.push(("beam candidates", time(&|| self.launch_beam_topk(rows, 1.5, 2 * rows))?));
        }
        Ok(out)
    }

    /// Final norm of `rows` rows of `h` from `first`, then the LM head into `logits`.
    fn head(&self, first: usize, rows: usize) -> Result<(), CudaError> {
        self.rmsnorm(self.s.h.at(first * self.config.hidden_size, 4), self.norm.ptr, rows)?;
        self.lm_head_logits(rows)
    }

    /// The LM head (the embeddings when tied) over `rows` normalised rows of `xn` into `logits`.
    fn lm_head_logits(&self, rows: usize) -> Result<(), CudaError> {
        if rows > MAX_SEQS {
            return Err(CudaError::Unsupported(format!("the logits hold {MAX_SEQS} rows, not {rows}")));
        }
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        self.project(w, self.config.vocab_size, self.config.hidden_size, self.s.xn.ptr, rows, Epilogue::Store { out: self.s.logits.ptr, bias: 0 })
    }

    fn rmsnorm(&self, x: u64, w: u64, rows: usize) -> Result<(), CudaError> {
        let c = &self.config;
        let name = format!("rmsnorm_{}", self.dtype.suffix());
        self.kernels.launch(&name, (rows as u32, 1, 1), 1024.min(c.hidden_size.next_power_of_two().max(32)) as u32, &[Arg::P(x), Arg::P(w), Arg::P(self.s.xn.ptr), Arg::I(c.hidden_size as i32), Arg::F(c.rms_norm_eps)])
    }

    /// `rows` rows of `x` (weight type, `[rows, k]`) times `W[n, k]ᵀ` (`[2n, k]` for SwiGLU):
    /// the matrix-vector kernels for a decode step, cuBLAS plus an epilogue kernel for prefill.
    fn project(&self, w: &Matrix, n: usize, k: usize, x: u64, rows: usize, epi: Epilogue) -> Result<(), CudaError> {
        if rows <= MAX_SEQS {
            return self.gemv(w, n, k, x, rows, epi);
        }
        let elementwise = |count: usize| ((count as u32).div_ceil(256), 1, 1);
        match epi {
            Epilogue::Store { out, bias } => {
                self.gemm(w, n, k, x, rows, out)?;
                if bias != 0 {
                    self.kernels.launch("add_bias_f", elementwise(rows * n), 256, &[Arg::P(out), Arg::P(bias), Arg::I(rows as i32), Arg::I(n as i32)])?;
                }
                Ok(())
            }
            Epilogue::Add { out, bias } => {
                self.gemm(w, n, k, x, rows, self.s.tmp.ptr)?;
                self.kernels.launch("residual_add_f", elementwise(rows * n), 256, &[Arg::P(out), Arg::P(self.s.tmp.ptr), Arg::P(bias), Arg::I(rows as i32), Arg::I(n as i32)])
            }
            Epilogue::SwiGlu { out } => {
                self.gemm(w, 2 * n, k, x, rows, self.s.tmp.ptr)?;
                let name = format!("swiglu_{}", self.dtype.suffix());
                self.kernels.launch(&name, elementwise(rows * n), 256, &[Arg::P(self.s.tmp.ptr), Arg::P(out), Arg::I(rows as i32), Arg::I(n as i32)])
            }
            Epilogue::Rope { .. } => Err(CudaError::Unsupported(format!("the fused q/k/v kernel runs at most {MAX_SEQS} rows, not {rows}"))),
        }
    }

    /// The matrix-vector kernel for `rows` ≤ [`MAX_SEQS`] rows (8 warps per block, a warp per
    /// output or, for SwiGLU and RoPE, per pair of outputs; on the tensor cores, a block per 16
    /// weight rows); a quantized weight's inputs are quantized first (normalised on the way for
    /// SwiGLU and RoPE, whose weights hold the norm).
    fn gemv(&self, w: &Matrix, n: usize, k: usize, x: u64, rows: usize, epi: Epilogue) -> Result<(), CudaError> {
        let c = &self.config;
        let none = RowGeometry { rows, pos0: 0, pos_step: 0, seq_step: 0, pos_dev: 0 };
        let (kind, warps, bias, out_f, out_t, rope) = match epi {
            Epilogue::Store { out, bias } => ("store", n, bias, out, 0, (0, 0, none)),
            Epilogue::Add { out, bias } => ("add", n, bias, out, self.s.hx.ptr, (0, 0, none)),
            Epilogue::SwiGlu { out } => ("swiglu", n, 0, 0, out, (0, 0, none)),
            Epilogue::Rope { bias, kc, vc, at } => ("rope", n / 2, bias, 0, 0, (kc, vc, at)),
        };
        let (kc, vc, at) = rope;
        // Several rows on the tensor cores: f16 weights whose rows are whole steps of 32, and
        // quantized weights (whole blocks of 32 by construction), with f16 inputs.
        let tensor = self.tensor_cores
            && rows >= 2
            && match w {
                Matrix::Plain(_) => self.dtype == EngineDtype::F16 && k.is_multiple_of(32),
                Matrix::Quant { .. } => true,
            };
        // Outputs per block: a warp each, or 16 weight rows (8 pairs) on the tensor cores.
        let per_block = match (tensor, kind) {
            (false, _) => 8,
            (true, "swiglu" | "rope") => 8,
            (true, _) => 16,
        };
        let (name, mut args) = match w {
            Matrix::Plain(b) if tensor => (format!("gemvt_{kind}_h_{rows}"), vec![Arg::P(b.ptr), Arg::P(x)]),
            Matrix::Plain(b) => (format!("gemv_{kind}_{}_{rows}", self.dtype.suffix()), vec![Arg::P(b.ptr), Arg::P(x)]),
            Matrix::Quant { q, d, ty } if tensor => (format!("gemvtq_{kind}_q{}_{rows}", ty.bits()), vec![Arg::P(q.ptr), Arg::P(d.ptr), Arg::P(x)]),
            Matrix::Quant { q, d, ty } => {
                let norm = if matches!(kind, "swiglu" | "rope") { "_norm" } else { "" };
                let quantize = [Arg::P(x), Arg::P(self.s.xq.ptr), Arg::P(self.s.xd.ptr), Arg::P(self.s.xs.ptr), Arg::I(k as i32), Arg::F(c.rms_norm_eps)];
                self.kernels.launch(&format!("quantize_x{norm}_h"), ((k / 32).div_ceil(8) as u32, rows as u32, 1), 256, &quantize)?;
                let name = format!("gemvq_{kind}_q{}_{rows}", ty.bits());
                (name, vec![Arg::P(q.ptr), Arg::P(d.ptr), Arg::P(self.s.xq.ptr), Arg::P(self.s.xd.ptr), Arg::P(self.s.xs.ptr)])
            }
        };
        args.extend([Arg::P(bias), Arg::P(out_f), Arg::P(out_t), Arg::I(warps as i32), Arg::I(k as i32)]);
        // The kernels that read f16 inputs normalise them themselves.
        if tensor || matches!(w, Matrix::Plain(_)) {
            args.push(Arg::F(c.rms_norm_eps));
        }
        args.extend([self.cos.ptr, self.sin.ptr, self.s.q.ptr, kc, vc, at.pos_dev].map(Arg::P));
        args.extend([c.num_heads, c.num_kv_heads, c.head_dim, at.pos0, at.pos_step, at.seq_step, self.cache_positions()].map(|v| Arg::I(v as i32)));
        self.kernels.launch(&name, ((warps as u32).div_ceil(per_block), 1, 1), 256, &args)
    }

    /// `out[rows, n] (f32) = x[rows, k] · W[n, k]ᵀ` through cuBLAS (f32 accumulation); a
    /// quantized weight is expanded to f16 [`WTMP_ROWS`] rows at a time.
    fn gemm(&self, w: &Matrix, n: usize, k: usize, x: u64, rows: usize, out: u64) -> Result<(), CudaError> {
        let (q, d, ty) = match w {
            Matrix::Plain(b) => return self.gemm_rows(b.ptr, n, k, x, rows, out, n),
            Matrix::Quant { q, d, ty } => (q, d, ty),
        };
        for n0 in (0..n).step_by(WTMP_ROWS) {
            let m = WTMP_ROWS.min(n - n0);
            let blocks = (m * k / 32) as i64;
            let (q_at, d_at) = (q.at(n0 * k * ty.bits() / 8, 1), d.at(n0 * k / 32, 2));
            let args = [Arg::P(q_at), Arg::P(d_at), Arg::P(self.s.wtmp.ptr), Arg::L(blocks)];
            self.kernels.launch(&format!("dequantize_q{}", ty.bits()), ((blocks as u64).div_ceil(256) as u32, 1, 1), 256, &args)?;
            self.gemm_rows(self.s.wtmp.ptr, m, k, x, rows, out + (n0 * 4) as u64, n)?;
        }
        Ok(())
    }

    /// `m` output columns of `out` (row stride `ldc` f32) from the `[m, k]` weight at `w`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rows(&self, w: u64, m: usize, k: usize, x: u64, rows: usize, out: u64, ldc: usize) -> Result<(), CudaError> {
        let ty = self.dtype.blas_type();
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: W is [m, k], x is [rows, k] and out [rows, ldc ≥ m] on the engine's stream;
        // column-major cuBLAS sees Wᵀ·xᵀ = outᵀ.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                blas::cublasOperation_t::CUBLAS_OP_T,
                blas::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                rows as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                w as *const _,
                ty,
                k as i32,
                x as *const _,
                ty,
                k as i32,
                &beta as *const f32 as *const _,
                out as *mut _,
                blas::cudaDataType::CUDA_R_32F,
                ldc as i32,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }
}

/// Refuses a `--quant` the engine cannot run: f32 engines, and rows not made of whole blocks.
fn check_quant(c: &DecoderConfig, opts: EngineOptions) -> Result<(), CudaError> {
    let Some(ty) = opts.quant else { return Ok(()) };
    if opts.dtype != EngineDtype::F16 {
        return Err(CudaError::Unsupported(format!("{ty:?} weights run on the f16 engine (--dtype f16), not {:?}", opts.dtype)));
    }
    let (q, ff) = (c.num_heads * c.head_dim, c.intermediate_size);
    for (name, cols) in [("hidden_size", c.hidden_size), ("num_heads × head_dim", q), ("intermediate_size", ff)] {
        if !cols.is_multiple_of(32) {
            return Err(CudaError::Unsupported(format!("{ty:?} weights need {name} to be a multiple of 32, not {cols}")));
        }
    }
    Ok(())
}

impl Scratch {
    /// Bytes of every buffer.
    fn bytes(&self) -> usize {
        let s = self;
        let all = [&s.h, &s.hx, &s.xn, &s.qkv, &s.q, &s.att, &s.tmp, &s.act, &s.part, &s.done, &s.logits, &s.seen, &s.ids, &s.token, &s.pos];
        let more = [&s.paths, &s.paths_spare, &s.beam_seen, &s.top_v, &s.top_i, &s.share_m, &s.share_s, &s.cand_v, &s.cand_i, &s.topk_done, &s.arg_v, &s.arg_i, &s.arg_done, &s.xq, &s.xd, &s.xs, &s.wtmp];
        all.iter().chain(more.iter()).map(|b| b.bytes).sum()
    }

    fn new(stream: &Arc<CudaStream>, c: &DecoderConfig, opts: EngineOptions, chunk: usize, prefill_mma: Option<usize>) -> Result<Self, CudaError> {
        let dtype = opts.dtype;
        let (d, hd, ff) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let width = (c.num_heads + 2 * c.num_kv_heads) * hd;
        let q = c.num_heads * hd;
        let typed = |n: usize| dtype.zeros(stream, n);
        let (quant, k_max) = (opts.quant.is_some(), d.max(q).max(ff));
        Ok(Scratch {
            h: Buf::zeros::<f32>(stream, chunk * d)?,
            hx: typed(chunk * d)?,
            xn: typed(chunk * d.max(q))?,
            qkv: Buf::zeros::<f32>(stream, chunk * width)?,
            q: Buf::zeros::<f32>(stream, chunk * q)?,
            att: typed(chunk * q)?,
            tmp: Buf::zeros::<f32>(stream, chunk * (2 * ff).max(d))?,
            act: typed(chunk * ff)?,
            part: Buf::zeros::<f32>(stream, partial_floats(c, chunk, prefill_mma))?,
            logits: Buf::zeros::<f32>(stream, MAX_SEQS * c.vocab_size)?,
            done: Buf::zeros::<i32>(stream, chunk * c.num_heads)?,
            seen: Buf::zeros::<u8>(stream, c.vocab_size)?,
            ids: Buf::zeros::<i32>(stream, chunk)?,
            token: Buf::zeros::<i32>(stream, 1)?,
            pos: Buf::zeros::<i32>(stream, 1)?,
            paths: Buf::zeros::<i32>(stream, MAX_SEQS * c.max_position.max(1))?,
            paths_spare: Buf::zeros::<i32>(stream, MAX_SEQS * c.max_position.max(1))?,
            beam_seen: Buf::zeros::<u8>(stream, MAX_SEQS * c.vocab_size)?,
            top_v: Buf::zeros::<f32>(stream, MAX_SEQS * TOPK_MAX)?,
            top_i: Buf::zeros::<i32>(stream, MAX_SEQS * TOPK_MAX)?,
            share_m: Buf::zeros::<f32>(stream, MAX_SEQS * TOPK_SHARES)?,
            share_s: Buf::zeros::<f64>(stream, MAX_SEQS * TOPK_SHARES)?,
            cand_v: Buf::zeros::<f32>(stream, MAX_SEQS * TOPK_SHARES * TOPK_MAX)?,
            cand_i: Buf::zeros::<i32>(stream, MAX_SEQS * TOPK_SHARES * TOPK_MAX)?,
            topk_done: Buf::zeros::<i32>(stream, MAX_SEQS)?,
            arg_v: Buf::zeros::<f32>(stream, ARGMAX_BLOCKS)?,
            arg_i: Buf::zeros::<i32>(stream, ARGMAX_BLOCKS)?,
            arg_done: Buf::zeros::<i32>(stream, 1)?,
            xq: Buf::zeros::<i8>(stream, if quant { MAX_SEQS * k_max } else { 0 })?,
            xd: Buf::zeros::<f32>(stream, if quant { MAX_SEQS * k_max / 32 } else { 0 })?,
            xs: Buf::zeros::<f32>(stream, if quant { MAX_SEQS * k_max / 32 } else { 0 })?,
            wtmp: Buf::zeros::<u16>(stream, if quant { WTMP_ROWS * k_max } else { 0 })?,
        })
    }
}

/// Reads checkpoint tensors and stacks them in the engine's type, on the host.
#[derive(Clone, Copy)]
struct WeightLoader<'a> {
    src: &'a dyn WeightSource,
    style: KeyStyle,
    dtype: EngineDtype,
    quant: Option<WeightQuant>,
    permuted: bool,
}

/// One layer's weights prepared on the host (see [`HostMatrix`]).
struct HostLayer {
    qkv: HostMatrix,
    qkv_bias: Option<Vec<f32>>,
    o: HostMatrix,
    o_bias: Option<Vec<f32>>,
    gate_up: HostMatrix,
    down: HostMatrix,
}

impl HostLayer {
    /// Copies it to the device.
    fn upload(self, stream: &Arc<CudaStream>) -> Result<LayerWeights, CudaError> {
        let vector = |v: Option<Vec<f32>>| v.map(|v| Buf::upload(stream, &v)).transpose();
        Ok(LayerWeights {
            qkv: self.qkv.upload(stream)?,
            qkv_bias: vector(self.qkv_bias)?,
            o: self.o.upload(stream)?,
            o_bias: vector(self.o_bias)?,
            gate_up: self.gate_up.upload(stream)?,
            down: self.down.upload(stream)?,
        })
    }
}

impl WeightLoader<'_> {
    /// Layer `l` of a decoder shaped as `c`, on the host: q/k/v and gate/up stacked, the
    /// RMSNorm weights folded into the columns of the products that follow them.
    fn host_layer(&self, c: &DecoderConfig, l: usize) -> Result<HostLayer, CudaError> {
        let (d, hd, ff) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
        let attn_norm = self.host_vector(&[("model.layers.{}.input_layernorm.weight", d)], l)?;
        let ffn_norm = self.host_vector(&[("model.layers.{}.post_attention_layernorm.weight", d)], l)?;
        let qkv_names = [
            ("model.layers.{}.self_attn.q_proj.weight", q_out, Some(c.num_heads)),
            ("model.layers.{}.self_attn.k_proj.weight", kv_out, Some(c.num_kv_heads)),
            ("model.layers.{}.self_attn.v_proj.weight", kv_out, None),
        ];
        let bias_names = [("model.layers.{}.self_attn.q_proj.bias", q_out), ("model.layers.{}.self_attn.k_proj.bias", kv_out), ("model.layers.{}.self_attn.v_proj.bias", kv_out)];
        let gate_up = [("model.layers.{}.mlp.gate_proj.weight", ff, None), ("model.layers.{}.mlp.up_proj.weight", ff, None)];
        Ok(HostLayer {
            qkv: self.host_matrix(&qkv_names, l, d, Some(&attn_norm))?,
            qkv_bias: if c.qkv_bias { Some(self.host_vector(&bias_names, l)?) } else { None },
            o: self.host_matrix(&[("model.layers.{}.self_attn.o_proj.weight", d, None)], l, q_out, None)?,
            o_bias: if c.o_bias { Some(self.host_vector(&[("model.layers.{}.self_attn.o_proj.bias", d)], l)?) } else { None },
            gate_up: self.host_matrix(&gate_up, l, d, Some(&ffn_norm))?,
            down: self.host_matrix(&[("model.layers.{}.mlp.down_proj.weight", d, None)], l, ff, None)?,
        })
    }

    /// `[Σ rows, cols]`: the tensors named (HF names, `{}` the layer) stacked by rows; those with
    /// a head count had llama.cpp's q/k permutation undone; column j scaled by `fold[j]` if given.
    fn host_matrix(&self, parts: &[(&str, usize, Option<usize>)], layer: usize, cols: usize, fold: Option<&[f32]>) -> Result<HostMatrix, CudaError> {
        let mut all: Vec<f32> = Vec::with_capacity(parts.iter().map(|p| p.1).sum::<usize>() * cols);
        for &(hf, rows, heads) in parts {
            let t = self.src.load_shaped(&self.style.name(hf, layer), &[rows, cols])?;
            let t = match heads.filter(|_| self.permuted) {
                Some(n) => unpermute_rows(&t, n),
                None => t,
            };
            all.extend_from_slice(&t.data);
        }
        if let Some(scale) = fold {
            all.par_chunks_mut(cols).for_each(|row| row.iter_mut().zip(scale).for_each(|(x, s)| *x *= s));
        }
        if let Some(ty) = self.quant {
            return HostMatrix::quantize(&all, cols, ty);
        }
        Ok(self.dtype.host_matrix(all))
    }

    /// f32 vectors stacked, on the host.
    fn host_vector(&self, parts: &[(&str, usize)], layer: usize) -> Result<Vec<f32>, CudaError> {
        let mut all = vec![];
        for &(hf, n) in parts {
            all.extend(self.src.load_shaped(&self.style.name(hf, layer), &[n])?.data);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decode_attention_switch_takes_warp_or_tile_and_refuses_the_rest() {
        assert!(warp_attention(None).unwrap());
        assert!(warp_attention(Some("warp")).unwrap());
        assert!(!warp_attention(Some("tile")).unwrap());
        let e = warp_attention(Some("Tile")).unwrap_err().to_string();
        assert!(e.contains("XC_DECODE_ATTENTION=\"Tile\"") && e.contains("\"tile\""), "{e}");
    }
}
