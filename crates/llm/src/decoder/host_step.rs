//! The one-token decode step on the CPU without burn's per-operation dispatch: RMSNorm, the
//! projections (q/k/v in one parallel region, gate/up in another, each from one quantized copy
//! of its input), RoPE, attention over a host-memory KV cache and SwiGLU, in a few passes over
//! buffers kept between steps. Used for batch-1 single positions when every projection is
//! block-encoded ([`QMatrix`]); the cache moves between burn tensors and host memory only when
//! the other path needs it (after a prefill, before the next prefill or a beam reorder).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::attention::{attend, attend_chunk, exp256};
use super::{Decoder, KvCache, Linear};
use crate::matvec::{ActScratch, PrefillInput, PrefillScratch, QMatrix, matvec_many};

/// The step's small f32 weights (norms, biases) and RoPE tables; present only when every
/// projection of the decoder, and its head, is block-encoded.
pub(super) struct HostWeights {
    pub(super) layers: Vec<HostLayer>,
    pub(super) norm: Vec<f32>,
    /// `[max_position, head_dim]`.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
}

/// One layer's norms and biases in host memory.
pub(super) struct HostLayer {
    pub(super) attn_norm: Vec<f32>,
    pub(super) ffn_norm: Vec<f32>,
    pub(super) bqkv: Option<[Vec<f32>; 3]>,
    pub(super) bo: Option<Vec<f32>>,
}

/// A sequence's KV cache in host memory (`[position][kv head][head_dim]` per layer, while
/// `on_host`), and the step's buffers.
#[derive(Debug, Clone, Default)]
pub struct HostCache {
    on_host: bool,
    kv: Vec<(Vec<f32>, Vec<f32>)>,
    kv_heads: usize,
    head_dim: usize,
    bufs: Buffers,
}

/// Activations of one step, reused from step to step (a prefill's, `[positions, width]` each,
/// reused from chunk to chunk).
#[derive(Debug, Clone, Default)]
struct Buffers {
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// A prefill chunk's keys, transposed for [`attend_chunk`].
    keys_t: Vec<f32>,
    act: ActScratch,
    /// The memory of a prefill chunk's quantized product inputs.
    inputs: PrefillScratch,
}

/// The matrix a projection keeps for one-token products; every projection has one when
/// [`HostWeights`] exist (checked at load).
fn qm<B: Backend>(l: &Linear<B>) -> &QMatrix {
    l.host.as_ref().expect("host weights exist only when every projection is block-encoded")
}

/// Positions a layer's host cache grows by when it is full.
const GROWTH: usize = 128;

/// Prompt positions a host prefill takes through all the layers at a time: its activations
/// (about 23 KB a position on SmolLM2) stay small, and each product still has rows enough.
const PREFILL_ROWS: usize = 128;

impl<B: Backend> KvCache<B> {
    /// Moves the cache into host memory, if it is not there yet (batch 1).
    fn move_to_host(&mut self, kv_heads: usize, head_dim: usize, device: &B::Device) {
        if self.host.on_host {
            return;
        }
        let rows = |t: Tensor<B, 4>| -> Vec<f32> {
            assert_eq!(t.dims()[0], 1, "the host step runs one sequence");
            t.swap_dims(1, 2).into_data().convert::<f32>().into_vec().expect("f32 cache")
        };
        self.host.kv = self.layers.iter_mut().map(|slot| slot.take().map_or((vec![], vec![]), |(k, v)| (rows(k), rows(v)))).collect();
        (self.host.on_host, self.host.kv_heads, self.host.head_dim) = (true, kv_heads, head_dim);
        self.device = Some(device.clone());
    }

    /// Moves the cache back into burn tensors, if it is in host memory.
    pub(super) fn move_to_burn(&mut self) {
        if !self.host.on_host {
            return;
        }
        self.host.on_host = false;
        let device = self.device.clone().expect("set when the cache moved to the host");
        let shape = [1, self.len, self.host.kv_heads, self.host.head_dim];
        let tensor = |data: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(data, shape), &device).swap_dims(1, 2);
        for (slot, (k, v)) in self.layers.iter_mut().zip(self.host.kv.drain(..)) {
            *slot = (self.len > 0).then(|| (tensor(k), tensor(v)));
        }
    }
}

impl<B: Backend> Decoder<B> {
    /// Runs one position's input embedding `x` (batch 1) through the layers on the host,
    /// appending to `cache`; returns the final normalised hidden state, or gives `x` back when
    /// this decoder has no host weights or `x` is not one position of one sequence.
    pub(super) fn try_host_step(&self, x: Tensor<B, 3>, cache: &mut KvCache<B>) -> Result<Vec<f32>, Tensor<B, 3>> {
        let (Some(w), [1, 1, _], true) = (&self.host, x.dims(), self.fused_step) else { return Err(x) };
        let mut x: Vec<f32> = x.into_data().convert::<f32>().into_vec().expect("f32 activations");
        let c = &self.config;
        cache.move_to_host(c.num_kv_heads, c.head_dim, &self.device);
        let pos = cache.len;
        assert!(pos < c.max_position, "position {pos} is past the model's {} positions", c.max_position);
        for ((layer, hl), kv) in self.layers.iter().zip(&w.layers).zip(cache.host.kv.iter_mut()) {
            let b = &mut cache.host.bufs;
            rms_norm(&x, &hl.attn_norm, c.rms_norm_eps, &mut b.h);
            self.project(&b.h, &mut [(&layer.wq, &mut b.q), (&layer.wk, &mut b.k), (&layer.wv, &mut b.v)], &mut b.act);
            if let Some(bias) = &hl.bqkv {
                for (y, bias) in [&mut b.q, &mut b.k, &mut b.v].into_iter().zip(bias) {
                    y.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                }
            }
            let (cos, sin) = (&w.cos[pos * c.head_dim..(pos + 1) * c.head_dim], &w.sin[pos * c.head_dim..(pos + 1) * c.head_dim]);
            rope(&mut b.q, cos, sin);
            rope(&mut b.k, cos, sin);
            for (cached, new) in [(&mut kv.0, &b.k), (&mut kv.1, &b.v)] {
                if cached.len() + new.len() > cached.capacity() {
                    // Room for GROWTH more positions, not the doubling `extend` would make: the
                    // cache moved from burn holds exactly the prompt's positions, and doubling
                    // it on the first step held 2 × 512 positions for 640 (18 MiB of 46 on SmolLM2).
                    cached.reserve_exact(GROWTH * new.len());
                }
                cached.extend_from_slice(new);
            }
            b.att.resize(c.num_heads * c.head_dim, 0.0);
            attend(&b.q, kv, pos + 1, c.num_kv_heads, c.head_dim, &mut b.att);
            self.project(&b.att, &mut [(&layer.wo, &mut b.o)], &mut b.act);
            if let Some(bias) = &hl.bo {
                b.o.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
            x.iter_mut().zip(&b.o).for_each(|(x, o)| *x += o);
            rms_norm(&x, &hl.ffn_norm, c.rms_norm_eps, &mut b.h);
            self.project(&b.h, &mut [(&layer.w_gate, &mut b.gate), (&layer.w_up, &mut b.up)], &mut b.act);
            swiglu(&mut b.gate, &b.up);
            self.project(&b.gate, &mut [(&layer.w_down, &mut b.o)], &mut b.act);
            x.iter_mut().zip(&b.o).for_each(|(x, o)| *x += o);
        }
        cache.len += 1;
        let mut out = vec![0f32; x.len()];
        rms_norm(&x, &w.norm, c.rms_norm_eps, &mut out);
        Ok(out)
    }

    /// Runs a prompt's input embeddings `x` (batch 1, any length) through the layers on the host
    /// as [`Decoder::try_host_step`] runs one position: each projection a product over all the
    /// positions ([`QMatrix::matmul_with`], the prefill's activations), RoPE, the KV append and
    /// causal attention row by row over the host cache, SwiGLU; appends to `cache` and returns
    /// the final normalised hidden states of the last `last_n` positions `[last_n, hidden]`
    /// (all when more), or gives `x` back when this decoder has no host weights or `x` is not
    /// one sequence.
    pub(super) fn try_host_prefill(&self, x: Tensor<B, 3>, cache: &mut KvCache<B>, last_n: usize) -> Result<Vec<f32>, Tensor<B, 3>> {
        let (Some(w), [1, s, _], true) = (&self.host, x.dims(), self.fused_step) else { return Err(x) };
        let mut x: Vec<f32> = x.into_data().convert::<f32>().into_vec().expect("f32 activations");
        let c = &self.config;
        cache.move_to_host(c.num_kv_heads, c.head_dim, &self.device);
        assert!(cache.len + s <= c.max_position, "positions up to {} are past the model's {}", cache.len + s, c.max_position);
        let kv_width = c.num_kv_heads * c.head_dim;
        for (k, v) in cache.host.kv.iter_mut() {
            // Exactly the prompt, and GROWTH positions more for the steps after it.
            k.reserve_exact((s + GROWTH) * kv_width);
            v.reserve_exact((s + GROWTH) * kv_width);
        }
        let mut p = Buffers::default();
        for rows in x.chunks_mut(PREFILL_ROWS * c.hidden_size) {
            let past = cache.len;
            for ((layer, hl), kv) in self.layers.iter().zip(&w.layers).zip(cache.host.kv.iter_mut()) {
                self.prefill_layer(layer, hl, w, rows, past, kv, &mut p);
            }
            cache.len += rows.len() / c.hidden_size;
        }
        let mut out = Vec::new();
        let first = s.saturating_sub(last_n.max(1)) * c.hidden_size;
        rms_norm(&x[first..], &w.norm, c.rms_norm_eps, &mut out);
        Ok(out)
    }

    /// One layer of [`Decoder::try_host_prefill`] over `x`, the rows of positions `past…`,
    /// appending their keys and values to `kv`.
    #[allow(clippy::too_many_arguments)]
    fn prefill_layer(&self, layer: &super::Layer<B>, hl: &HostLayer, w: &HostWeights, x: &mut [f32], past: usize, kv: &mut (Vec<f32>, Vec<f32>), p: &mut Buffers) {
        let (c, act) = (&self.config, self.prefill_activations());
        let (d, hd) = (c.hidden_size, c.head_dim);
        let s = x.len() / d;
        norm_rows(x, None, &hl.attn_norm, c.rms_norm_eps, &mut p.h);
        with_input(&p.h, s, &mut p.inputs, |h| {
            for (l, y, bias) in [(&layer.wq, &mut p.q, 0), (&layer.wk, &mut p.k, 1), (&layer.wv, &mut p.v, 2)] {
                product(l, h, y, act);
                if let Some(b) = &hl.bqkv {
                    add_rows(y, &b[bias]);
                }
            }
        });
        let rows = p.q.par_chunks_exact_mut(c.num_heads * hd).zip(p.k.par_chunks_exact_mut(c.num_kv_heads * hd));
        rows.enumerate().with_min_len(ROWS_PER_TASK).for_each(|(i, (q, k))| {
            let at = (past + i) * hd..(past + i + 1) * hd;
            rope(q, &w.cos[at.clone()], &w.sin[at.clone()]);
            rope(k, &w.cos[at.clone()], &w.sin[at]);
        });
        kv.0.extend_from_slice(&p.k);
        kv.1.extend_from_slice(&p.v);
        p.att.resize(s * c.num_heads * hd, 0.0);
        attend_chunk(&p.q, kv, past, (c.num_heads, c.num_kv_heads, hd), &mut p.att, &mut p.keys_t);
        with_input(&p.att, s, &mut p.inputs, |a| product(&layer.wo, a, &mut p.o, act));
        if let Some(b) = &hl.bo {
            add_rows(&mut p.o, b);
        }
        norm_rows(x, Some(&p.o), &hl.ffn_norm, c.rms_norm_eps, &mut p.h);
        with_input(&p.h, s, &mut p.inputs, |h| {
            product(&layer.w_gate, h, &mut p.gate, act);
            product(&layer.w_up, h, &mut p.up, act);
        });
        p.gate.par_chunks_mut(4096).zip(p.up.par_chunks(4096)).for_each(|(g, u)| swiglu(g, u));
        with_input(&p.gate, s, &mut p.inputs, |a| product(&layer.w_down, a, &mut p.o, act));
        x.par_chunks_mut(d).zip(p.o.par_chunks(d)).with_min_len(ROWS_PER_TASK).for_each(|(x, o)| x.iter_mut().zip(o).for_each(|(x, o)| *x += o));
    }

    /// The logits of a host step's hidden state.
    pub(super) fn host_logits(&self, h: &[f32], cache: &mut KvCache<B>) -> Vec<f32> {
        let mut logits = Vec::new();
        self.project(h, &mut [(&self.lm_head, &mut logits)], &mut cache.host.bufs.act);
        logits
    }

    /// `y = W x` for each (projection, output) pair, sized here, in one parallel region.
    fn project(&self, x: &[f32], parts: &mut [(&Linear<B>, &mut Vec<f32>)], act: &mut ActScratch) {
        let parts = parts
            .iter_mut()
            .map(|(l, y)| {
                let m = qm(l);
                y.resize(m.rows, 0.0);
                (m, &mut y[..])
            })
            .collect();
        matvec_many(x, parts, self.activations, act);
    }
}

/// `f` of the `s` rows of `x` as one prefill input, quantized into `scratch`'s memory (and its
/// memory left there for the next).
fn with_input(x: &[f32], s: usize, scratch: &mut PrefillScratch, f: impl FnOnce(&PrefillInput)) {
    let input = PrefillInput::reusing(x, s, std::mem::take(scratch));
    f(&input);
    *scratch = input.into_scratch();
}

/// `y = x Wᵀ` for the rows of `x`, `y` sized here.
fn product<B: Backend>(l: &Linear<B>, x: &PrefillInput, y: &mut Vec<f32>, act: crate::matvec::Activations) {
    let m = qm(l);
    y.resize(x.rows() * m.rows, 0.0);
    m.matmul_input(x, y, act);
}

/// `bias` added to every row of `y`.
fn add_rows(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
    }
}

/// `out = x / rms(x) · w` for each row of `w.len()` values of `x`, as burn's path computes it
/// (`out` sized here).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    for (x, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        norm_row(x, w, eps, o);
    }
}

/// A prefill chunk's rows per task in its element-wise passes (a few tasks a thread).
const ROWS_PER_TASK: usize = 16;

/// [`rms_norm`] of a prefill chunk's rows across rayon's threads, with `residual` first added
/// to `x` in place where given.
fn norm_rows(x: &mut [f32], residual: Option<&[f32]>, w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let d = w.len();
    out.resize(x.len(), 0.0);
    let rows = x.par_chunks_exact_mut(d).zip(out.par_chunks_exact_mut(d)).enumerate().with_min_len(ROWS_PER_TASK);
    rows.for_each(|(i, (x, o))| {
        if let Some(r) = residual {
            x.iter_mut().zip(&r[i * d..(i + 1) * d]).for_each(|(x, r)| *x += r);
        }
        norm_row(x, w, eps, o);
    });
}

/// `o = x / rms(x) · w` for one row.
fn norm_row(x: &[f32], w: &[f32], eps: f32, o: &mut [f32]) {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = (mean + eps).sqrt().recip();
    o.iter_mut().zip(x.iter().zip(w)).for_each(|(o, (x, w))| *o = x * inv * w);
}

/// Rotate-half RoPE of every head of `x` (heads of `cos.len()` values) at one position.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len() / 2;
    for head in x.chunks_exact_mut(cos.len()) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos[i] - b * sin[i];
            head[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/// `gate = silu(gate) · up` (SwiGLU), eight values at a time in AVX2 + FMA where the CPU has them.
fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::matvec::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        unsafe { swiglu_fma(gate, up) };
        return;
    }
    gate.iter_mut().zip(up).for_each(|(g, u)| *g = silu_mul(*g, *u));
}

/// silu(g) · u, with libm's exp.
#[inline(always)]
fn silu_mul(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}

/// [`swiglu`] with [`exp256`]: the same formula, e^−g within 2e-7 of libm's.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = gate.len().min(up.len());
    let lanes = n / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    // SAFETY: loads and stores of whole groups of eight below `lanes`, inside both slices.
    unsafe {
        for i in (0..lanes).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i))));
        }
    }
    gate[lanes..n].iter_mut().zip(&up[lanes..n]).for_each(|(g, u)| *g = silu_mul(*g, *u));
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::backend::Flex;

    use super::*;
    use crate::config::{Arch, DecoderConfig};
    use crate::matvec::Activations;
    use crate::decoder::KeyStyle;
    use crate::quant::{GgmlType, dequantize, quantize};
    use crate::random_weights::RandomWeights;
    use crate::weights::{HostTensor, RawTensor, WeightError, WeightSource};

    /// Random weights whose matrices are block-encoded (Q8_0 attention and embedding, Q4_0 MLP)
    /// and read back dequantized, so that burn's path and the host step multiply the same values.
    struct Encoded {
        inner: RandomWeights,
        blocks: HashMap<String, (GgmlType, Vec<usize>, Vec<u8>)>,
        /// Whether the encoded bytes are offered ([`WeightSource::raw`]); else only the values.
        raw: bool,
    }

    impl Encoded {
        fn new(c: &DecoderConfig) -> Self {
            let inner = RandomWeights::for_decoder(c, 3);
            let mut names = vec!["model.embed_tokens.weight".to_string()];
            for l in 0..c.num_layers {
                for p in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
                    names.push(format!("model.layers.{l}.{p}.weight"));
                }
            }
            let blocks = names
                .into_iter()
                .map(|n| {
                    let t = inner.load(&n).unwrap();
                    let ty = if n.contains("mlp") { GgmlType::Q4_0 } else { GgmlType::Q8_0 };
                    let b = quantize(ty, &t.data).unwrap();
                    (n, (ty, t.shape, b))
                })
                .collect();
            Encoded { inner, blocks, raw: true }
        }
    }

    impl WeightSource for Encoded {
        fn source_name(&self) -> String {
            "block-encoded random weights".into()
        }
        fn contains(&self, name: &str) -> bool {
            self.inner.contains(name)
        }
        fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
            match self.blocks.get(name) {
                Some((ty, shape, b)) => Ok(HostTensor { data: dequantize(*ty, b, shape.iter().product()).unwrap(), shape: shape.clone() }),
                None => self.inner.load(name),
            }
        }
        fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
            let (ty, shape, b) = self.blocks.get(name).filter(|_| self.raw)?;
            Some(RawTensor { ty: *ty, rows: shape[0], cols: shape[1], bytes: b })
        }
    }

    fn config() -> DecoderConfig {
        DecoderConfig {
            arch: Arch::Qwen2, vocab_size: 96, hidden_size: 64, intermediate_size: 128, num_layers: 2, num_heads: 4, num_kv_heads: 2,
            head_dim: 16, rope_theta: 10000.0, rms_norm_eps: 1e-6, max_position: 64, qkv_bias: true, o_bias: true,
            tie_word_embeddings: true, rope_inv_freq_f16: false,
        }
    }

    fn values(t: Tensor<Flex, 3>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    /// The largest difference between `got` and `want`, relative to `want`'s largest magnitude.
    fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max) / scale
    }

    #[test]
    fn prefill_from_encoded_rows_matches_dense_weights() {
        let c = config();
        let mut encoded = Decoder::<Flex>::load(c.clone(), &Encoded::new(&c), KeyStyle::HuggingFace, &Default::default()).unwrap();
        let dense_src = Encoded { raw: false, ..Encoded::new(&c) };
        let dense = Decoder::<Flex>::load(c.clone(), &dense_src, KeyStyle::HuggingFace, &Default::default()).unwrap();
        assert!(encoded.layers.iter().all(|l| l.wq.w.is_none() && l.w_down.w.is_none()), "no f32 copy beside the encoded rows");
        assert!(matches!(encoded.embed, super::super::Embedding::TiedHead) && encoded.lm_head.w.is_none());
        assert!(dense.host.is_none() && dense.layers.iter().all(|l| l.wq.w.is_some()));
        let ids: Vec<u32> = (0..10).map(|i| (i * 29 % 96) as u32).collect();
        assert_eq!(values(encoded.embed_ids(&ids)), values(dense.embed_ids(&ids)), "embedding rows decoded as loaded");
        let want = values(dense.forward_ids(&ids, &mut dense.new_cache(), 10));
        // The exact mode: f32 tiles decoded from the encoded rows.
        encoded.set_activations(Activations::F32);
        let got = values(encoded.forward_ids(&ids, &mut encoded.new_cache(), 10));
        assert!(rel_diff(&got, &want) <= 1e-5, "exact prefill logits: {}", rel_diff(&got, &want));
        // The default: 16-bit activation codes for the packed rows (measured 3.1e-5).
        encoded.set_activations(Activations::Int16);
        let got = values(encoded.forward_ids(&ids, &mut encoded.new_cache(), 10));
        eprintln!("16-bit prefill logits: {:.3e}", rel_diff(&got, &want));
        assert!(rel_diff(&got, &want) <= 1e-4, "16-bit prefill logits: {}", rel_diff(&got, &want));
    }

    #[test]
    fn a_prompt_longer_than_a_chunk_prefills_as_burn_does() {
        // 300 positions: two whole chunks of PREFILL_ROWS and a part, then a step after them.
        let c = DecoderConfig { max_position: 320, ..config() };
        let mut encoded = Decoder::<Flex>::load(c.clone(), &Encoded::new(&c), KeyStyle::HuggingFace, &Default::default()).unwrap();
        encoded.set_activations(Activations::F32);
        let dense = Decoder::<Flex>::load(c.clone(), &Encoded { raw: false, ..Encoded::new(&c) }, KeyStyle::HuggingFace, &Default::default()).unwrap();
        let ids: Vec<u32> = (0..300).map(|i| (i * 29 % 96) as u32).collect();
        let (mut a, mut b) = (encoded.new_cache(), dense.new_cache());
        let (got, want) = (values(encoded.forward_ids(&ids, &mut a, 300)), values(dense.forward_ids(&ids, &mut b, 300)));
        assert!(rel_diff(&got, &want) <= 1e-5, "logits of every position: {}", rel_diff(&got, &want));
        assert_eq!(a.len(), 300);
        let (got, want) = (values(encoded.forward_ids(&[7], &mut a, 1)), values(dense.forward_ids(&[7], &mut b, 1)));
        assert!(rel_diff(&got, &want) <= 1e-5, "the step after: {}", rel_diff(&got, &want));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_swiglu_matches_the_formula() {
        // 21 values: two groups of eight and a tail, from −95 (e^95 past f32) to +95.
        let gate: Vec<f32> = (0..21).map(|i| (i as f32 - 10.0) * 9.5).collect();
        let up: Vec<f32> = (0..21).map(|i| 0.5 + i as f32 * 0.25).collect();
        let mut got = gate.clone();
        swiglu(&mut got, &up);
        for ((g, x), u) in got.iter().zip(&gate).zip(&up) {
            let want = x / (1.0 + (-x).exp()) * u;
            assert!((g - want).abs() <= 2e-6 * want.abs().max(1e-30), "silu({x}) · {u}: {g} against {want}");
        }
    }

    #[test]
    fn the_host_cache_grows_by_a_step_not_by_doubling() {
        let c = DecoderConfig { max_position: 512, ..config() };
        let dec = Decoder::<Flex>::load(c.clone(), &Encoded::new(&c), KeyStyle::HuggingFace, &Default::default()).unwrap();
        let ids: Vec<u32> = (0..300).map(|i| (i * 37 % 96) as u32).collect();
        let mut cache = dec.new_cache();
        dec.forward_ids(&ids, &mut cache, 1);
        dec.forward_ids(&ids[..1], &mut cache, 1); // moves 300 positions to the host and adds one
        let per_position = c.num_kv_heads * c.head_dim;
        for (k, v) in &cache.host.kv {
            for kv in [k, v] {
                assert_eq!(kv.len(), 301 * per_position);
                // Doubling would hold 600 positions.
                assert!(kv.capacity() <= (300 + GROWTH) * per_position, "{} positions held", kv.capacity() / per_position);
            }
        }
    }

    #[test]
    fn host_steps_match_burn_and_hand_the_cache_back_and_forth() {
        let c = config();
        let v = c.vocab_size;
        let mut dec = Decoder::<Flex>::load(c, &Encoded::new(&config()), KeyStyle::HuggingFace, &Default::default()).unwrap();
        assert!(dec.host.is_some(), "every projection is block-encoded");
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 % 96) as u32).collect();
        // burn alone over the whole sequence, in the exact mode: the logits of every position.
        dec.set_activations(Activations::F32);
        let want = values(dec.forward_ids(&ids, &mut dec.new_cache(), ids.len()));
        let at = |p: std::ops::Range<usize>| &want[p.start * v..p.end * v];
        for (act, tol) in [(Activations::F32, 1e-5), (Activations::Int16, 1e-4), (Activations::Int8, 0.03)] {
            dec.set_activations(act);
            let mut cache = dec.new_cache();
            dec.forward_ids(&ids[..4], &mut cache, 1); // burn's prefill
            for p in 4..8 {
                let got = values(dec.forward_ids(&ids[p..p + 1], &mut cache, 1)); // host steps
                assert!(rel_diff(&got, at(p..p + 1)) <= tol, "{act:?} host step at {p}: {}", rel_diff(&got, at(p..p + 1)));
            }
            assert!(cache.host.on_host);
            let got = values(dec.forward_ids(&ids[8..11], &mut cache, 3)); // burn again: the cache moves back
            assert!(rel_diff(&got, at(8..11)) <= tol, "{act:?} prefill after host steps: {}", rel_diff(&got, at(8..11)));
            let got = values(dec.forward_ids(&ids[11..12], &mut cache, 1));
            assert!(rel_diff(&got, at(11..12)) <= tol, "{act:?} host step after a prefill: {}", rel_diff(&got, at(11..12)));
            assert_eq!(cache.len(), 12);
        }
        // A beam reorder after host steps: two copies of the sequence step on burn's batched path.
        dec.set_activations(Activations::F32);
        let mut cache = dec.new_cache();
        dec.forward_ids(&ids[..4], &mut cache, 1);
        dec.forward_ids(&ids[4..5], &mut cache, 1);
        cache.reorder(&[0, 0]);
        let x = dec.embed_ids(&[ids[5], ids[5]]).reshape([2, 1, 64]);
        let got = values(dec.forward_embeds(x, &mut cache, 1));
        for row in got.chunks(v) {
            assert!(rel_diff(row, at(5..6)) <= 1e-5, "beam row after a reorder: {}", rel_diff(row, at(5..6)));
        }
    }
}
