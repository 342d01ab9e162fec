//! `Decoder<B>`: the llama-family transformer (Llama / SmolLM2, Qwen2, InternLM v1) with RMSNorm,
//! rotate-half RoPE, grouped-query attention, SwiGLU and a KV cache; and its weight loader.
//!
//! Weights are kept as f32 and stored transposed (`[in, out]`) so every projection is one
//! matmul, except on the CPU backend when the source keeps them block-encoded (GGUF): then each
//! projection (and the embedding) keeps only its encoded rows ([`QMatrix`]), which the one-token
//! step multiplies directly and prefill multiplies a decoded tile at a time.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorData};

mod attention;
mod host_step;
mod load;

use crate::config::DecoderConfig;
use crate::matvec::{Activations, QMatrix};
use crate::weights::{HostTensor, WeightError, WeightSource};

/// Checkpoint key names: (Hugging Face name, GGUF name), `{}` standing for the layer index.
/// The HF names are canonical; a GGUF source is read through the right-hand column.
pub const KEY_MAP: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.layers.{}.input_layernorm.weight", "blk.{}.attn_norm.weight"),
    ("model.layers.{}.self_attn.q_proj.weight", "blk.{}.attn_q.weight"),
    ("model.layers.{}.self_attn.q_proj.bias", "blk.{}.attn_q.bias"),
    ("model.layers.{}.self_attn.k_proj.weight", "blk.{}.attn_k.weight"),
    ("model.layers.{}.self_attn.k_proj.bias", "blk.{}.attn_k.bias"),
    ("model.layers.{}.self_attn.v_proj.weight", "blk.{}.attn_v.weight"),
    ("model.layers.{}.self_attn.v_proj.bias", "blk.{}.attn_v.bias"),
    ("model.layers.{}.self_attn.o_proj.weight", "blk.{}.attn_output.weight"),
    ("model.layers.{}.self_attn.o_proj.bias", "blk.{}.attn_output.bias"),
    ("model.layers.{}.post_attention_layernorm.weight", "blk.{}.ffn_norm.weight"),
    ("model.layers.{}.mlp.gate_proj.weight", "blk.{}.ffn_gate.weight"),
    ("model.layers.{}.mlp.up_proj.weight", "blk.{}.ffn_up.weight"),
    ("model.layers.{}.mlp.down_proj.weight", "blk.{}.ffn_down.weight"),
];

/// How checkpoint names are spelled and how q/k rows are ordered in a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// Hugging Face names, rotate-half row order.
    HuggingFace,
    /// llama.cpp names; `permuted_qk` when q/k rows are interleaved for llama.cpp's "normal"
    /// RoPE (GGUF arch `llama`), which we undo at load to use rotate-half everywhere.
    Gguf {
        /// Whether q/k rows were permuted by the converter.
        permuted_qk: bool,
    },
}

impl KeyStyle {
    /// The source's name for a canonical (HF) key.
    pub fn name(self, hf: &str, layer: usize) -> String {
        let template = match self {
            KeyStyle::HuggingFace => hf.to_string(),
            KeyStyle::Gguf { .. } => KEY_MAP
                .iter()
                .find(|(h, _)| *h == hf)
                .map(|(_, g)| g.to_string())
                .unwrap_or_else(|| hf.to_string()),
        };
        template.replace("{}", &layer.to_string())
    }
}

/// The per-layer cache of keys and values, `[batch, kv_heads, positions, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
    /// The same cache in host memory while the CPU's one-token step runs on it.
    host: host_step::HostCache,
    /// Where the tensors go back to when the cache leaves host memory.
    device: Option<B::Device>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![None; num_layers], len: 0, host: Default::default(), device: None }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps batch rows `rows` (in that order, repeats allowed): how beam search follows its
    /// beams, and how one prompt's cache becomes several beams'.
    pub fn reorder(&mut self, rows: &[usize]) {
        self.move_to_burn();
        for (k, v) in self.layers.iter_mut().flatten() {
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &k.device());
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx);
        }
    }
}

/// A projection `y = x·W`: either `W` stored `[in, out]` for burn, or, on the CPU with a
/// block-encoded source, only the weight in its file encoding.
struct Linear<B: Backend> {
    w: Option<Tensor<B, 2>>,
    host: Option<QMatrix>,
}

impl<B: Backend> Linear<B> {
    /// `x·W`; from encoded rows, several positions multiply with `prefill` activations.
    fn forward(&self, x: Tensor<B, 3>, prefill: Activations) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        match (&self.host, &self.w) {
            (Some(m), w) if b * s == 1 || w.is_none() => {
                let device = x.device();
                let xv: Vec<f32> = x.into_data().convert::<f32>().into_vec().expect("f32 activations");
                let mut y = vec![0f32; b * s * m.rows];
                if b * s == 1 {
                    m.matvec(&xv, &mut y);
                } else {
                    m.matmul_with(&xv, b * s, &mut y, prefill);
                }
                Tensor::from_data(TensorData::new(y, [b, s, m.rows]), &device)
            }
            (_, Some(w)) => x.matmul(w.clone().unsqueeze_dim(0)),
            (_, None) => unreachable!("a projection has its dense or its encoded weight"),
        }
    }
}

/// The token embedding: dense for burn, or looked up from encoded rows.
enum Embedding<B: Backend> {
    /// `[vocab, hidden]`.
    Dense(Tensor<B, 2>),
    /// The rows of the tied head's encoded matrix.
    TiedHead,
    /// Its own encoded rows (an untied head).
    Encoded(QMatrix),
}

/// One decoder layer. Projections are kept separate (not fused) so that every activation burn
/// sees is contiguous: slicing a fused output makes the CPU backend iterate strided views.
struct Layer<B: Backend> {
    attn_norm: Tensor<B, 1>,
    wq: Linear<B>,
    wk: Linear<B>,
    wv: Linear<B>,
    /// q, k, v biases (Qwen2, InternLM).
    bqkv: Option<[Tensor<B, 1>; 3]>,
    wo: Linear<B>,
    bo: Option<Tensor<B, 1>>,
    ffn_norm: Tensor<B, 1>,
    w_gate: Linear<B>,
    w_up: Linear<B>,
    w_down: Linear<B>,
    /// Index of its device in [`Decoder::tables`] (0 unless the model is split).
    on: usize,
}

/// What the layers on one device read besides their weights: RoPE tables and the rotation,
/// kept on that device.
struct DeviceTables<B: Backend> {
    device: B::Device,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// `[head_dim, head_dim]` signed permutation: `x·R` is rotate-half of `x`.
    rotate_half: Tensor<B, 2>,
}

impl<B: Backend> DeviceTables<B> {
    /// The tables on `device`, from [`rope_cos_sin`]'s `cos` and `sin`.
    fn new(c: &DecoderConfig, cos: &[f32], sin: &[f32], device: &B::Device) -> Self {
        let shape = [c.max_position.max(1), c.head_dim];
        let table = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), shape), device);
        DeviceTables { device: device.clone(), cos: table(cos), sin: table(sin), rotate_half: rotate_half_matrix::<B>(c.head_dim, device) }
    }
}

/// A llama-family decoder-only transformer.
pub struct Decoder<B: Backend> {
    /// The configuration it was built from.
    pub config: DecoderConfig,
    embed: Embedding<B>,
    layers: Vec<Layer<B>>,
    norm: Tensor<B, 1>,
    lm_head: Linear<B>,
    /// One per device the layers run on, the first device's first (that of the embeddings, the
    /// final norm and the head).
    tables: Vec<DeviceTables<B>>,
    /// The first device.
    device: B::Device,
    /// Norms, biases and RoPE tables for the CPU's one-token step; `None` unless every projection
    /// and the head are block-encoded (a GGUF file on the CPU backend).
    host: Option<host_step::HostWeights>,
    /// How the one-token step's matrix products treat their input.
    activations: Activations,
    /// Whether one-token steps use the host step when they can (else burn's operations).
    fused_step: bool,
}

/// For each HF row, the GGUF row it comes from (see [`unpermute_rows`]).
fn unpermute_order(rows: usize, n_head: usize) -> Vec<usize> {
    let half = rows / n_head / 2;
    let mut order = vec![0; rows];
    for h in 0..n_head {
        for i in 0..half {
            for pair in 0..2 {
                order[h * 2 * half + pair * half + i] = (h * half + i) * 2 + pair;
            }
        }
    }
    order
}

/// Undoes llama.cpp's q/k row permutation: GGUF row `(head, i, pair)` → HF row `(head, pair, i)`.
pub(crate) fn unpermute_rows(w: &HostTensor, n_head: usize) -> HostTensor {
    let (rows, cols) = (w.shape[0], w.data.len() / w.shape[0]);
    let data = unpermute_order(rows, n_head)
        .into_iter()
        .flat_map(|src| w.data[src * cols..(src + 1) * cols].iter().copied())
        .collect();
    HostTensor { data, shape: w.shape.clone() }
}

impl<B: Backend> Decoder<B> {
    /// Loads a decoder from a weight source whose names follow `style`. On the CPU backend,
    /// weights the source keeps block-encoded (GGUF) are also kept that way for decoding.
    pub fn load(config: DecoderConfig, src: &dyn WeightSource, style: KeyStyle, device: &B::Device) -> Result<Self, WeightError> {
        let unsplit = vec![0; config.num_layers];
        Self::load_split(config, src, style, std::slice::from_ref(device), &unsplit)
    }

    /// [`Decoder::load`] split across `devices`: layer `l`'s weights (and its KV cache) on
    /// `devices[on[l]]`, the embeddings, final norm and head on `devices[0]`; a forward pass hands
    /// the activations from one device to the next (a pipeline split). Devices may repeat (a split
    /// over one GPU or the CPU, to check one). The CPU's fused one-token step runs only unsplit.
    ///
    /// Panics when `on` has other than `config.num_layers` entries or names no device of `devices`.
    pub fn load_split(config: DecoderConfig, src: &dyn WeightSource, style: KeyStyle, devices: &[B::Device], on: &[usize]) -> Result<Self, WeightError> {
        assert!(on.len() == config.num_layers && on.iter().all(|&d| d < devices.len()), "one device of the list per decoder layer");
        let c = &config;
        let device = &devices[0];
        let (cos, sin) = rope_cos_sin(c);
        let tables: Vec<DeviceTables<B>> = devices.iter().map(|d| DeviceTables::new(c, &cos, &sin, d)).collect();
        let reader = load::Reader::new::<B>(src, style);
        let (embed, lm_head) = reader.embeddings(c, device)?;
        let mut layers = Vec::new(); // sized by the tensors found, not by the declared count
        let mut host_layers = Vec::new();
        for l in 0..c.num_layers {
            let (layer, host_layer) = reader.layer(c, l, &devices[on[l]], on[l])?;
            layers.push(layer);
            host_layers.push(host_layer);
        }
        let norm_host = reader.get("model.norm.weight", 0, &[c.hidden_size])?.data;
        let norm = load::vector(&norm_host, device);
        let all_encoded = tables.len() == 1
            && lm_head.host.is_some()
            && layers.iter().all(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().all(|p| p.host.is_some()));
        let host = all_encoded.then_some(host_step::HostWeights { layers: host_layers, norm: norm_host, cos, sin });
        Ok(Decoder { config, embed, layers, norm, lm_head, tables, device: device.clone(), host, activations: Activations::Int16, fused_step: true })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.num_layers)
    }

    /// Looks up the input embeddings of token ids: `[1, ids.len(), hidden]`.
    pub fn embed_ids(&self, ids: &[u32]) -> Tensor<B, 3> {
        let m = match &self.embed {
            Embedding::Dense(embed) => {
                let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [ids.len()]), &self.device);
                return embed.clone().select(0, idx).unsqueeze_dim(0);
            }
            Embedding::TiedHead => self.lm_head.host.as_ref().expect("a tied encoded head"),
            Embedding::Encoded(m) => m,
        };
        let d = m.cols;
        let mut x = vec![0f32; ids.len() * d];
        for (&id, row) in ids.iter().zip(x.chunks_exact_mut(d.max(1))) {
            assert!((id as usize) < m.rows, "token id {id} is past the vocabulary of {}", m.rows);
            m.decode_row(id as usize, row);
        }
        Tensor::from_data(TensorData::new(x, [1, ids.len(), d]), &self.device)
    }

    /// Runs token ids through the model, appending to `cache`; returns the logits of the last
    /// `last_n` positions, `[1, last_n, vocab]`.
    pub fn forward_ids(&self, ids: &[u32], cache: &mut KvCache<B>, last_n: usize) -> Tensor<B, 3> {
        self.forward_embeds(self.embed_ids(ids), cache, last_n)
    }

    /// Runs input embeddings `[batch, seq, hidden]` through the model (the way a VLM feeds image
    /// embeddings spliced into a prompt), appending to `cache`; returns the logits of the last
    /// `last_n` positions, `[batch, last_n, vocab]`.
    pub fn forward_embeds(&self, x: Tensor<B, 3>, cache: &mut KvCache<B>, last_n: usize) -> Tensor<B, 3> {
        let x = match self.try_host_step(x, cache) {
            Ok(h) => {
                let logits = self.host_logits(&h, cache);
                return Tensor::from_data(TensorData::new(logits, [1, 1, self.config.vocab_size]), &self.device);
            }
            Err(x) => x,
        };
        let h = match self.try_host_prefill(x, cache, last_n) {
            Ok(h) => self.rows_tensor(h),
            Err(x) => self.burn_hidden_states(x, cache),
        };
        let [b, s, d] = h.dims();
        let last_n = last_n.clamp(1, s);
        self.lm_head.forward(h.slice([0..b, s - last_n..s, 0..d]), self.prefill_activations())
    }

    /// The final normalised hidden states `[batch, seq, hidden]`, appending to `cache`.
    pub fn hidden_states(&self, x: Tensor<B, 3>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let x = match self.try_host_step(x, cache) {
            Ok(h) => return self.rows_tensor(h),
            Err(x) => x,
        };
        match self.try_host_prefill(x, cache, usize::MAX) {
            Ok(h) => self.rows_tensor(h),
            Err(x) => self.burn_hidden_states(x, cache),
        }
    }

    /// Host rows of `hidden_size` values as a `[1, rows, hidden]` tensor on the first device.
    fn rows_tensor(&self, h: Vec<f32>) -> Tensor<B, 3> {
        let d = self.config.hidden_size;
        let rows = h.len() / d.max(1);
        Tensor::from_data(TensorData::new(h, [1, rows, d]), &self.device)
    }

    /// How the CPU's matrix products from encoded rows treat their input, one-token steps and
    /// prefill alike: 16-bit blocks for the integer kernels (the default, [`Activations::Int16`]:
    /// a relative error of at most 1/65534 of a block's largest value; prefill multiplies the
    /// packed rows, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, in the 16-bit GEMM and the others in f32
    /// tiles; the SmolLM2 and Qwen2.5 fixtures' greedy tokens exactly the reference's, their
    /// prompt logits within 6.9e-3 and 4.7e-4 of it), f32 ([`Activations::F32`], the exact mode:
    /// equal to dequantize-then-multiply up to summation order, prompt logits within 5.1e-5 and
    /// 3.1e-5; slower) or 8-bit blocks ([`Activations::Int8`]: speed first, but SmolLM2's greedy
    /// reply to the first fixture prompt leaves the reference's at its 10th token; the packed rows'
    /// one-token products take 16-bit codes under it too, their prefill the 8-bit GEMM). The default is 16-bit because
    /// its greedy tokens are the reference's on every fixture prompt and its prefill is faster.
    pub fn set_activations(&mut self, activations: Activations) {
        self.activations = activations;
    }

    /// How products over several positions (prefill) from encoded rows treat their input: as
    /// the one-token steps do ([`Decoder::set_activations`]).
    fn prefill_activations(&self) -> Activations {
        self.activations
    }

    /// Whether one-position steps run the CPU's fused host step (the default) or burn's
    /// operations one by one, as prefill does (to measure one against the other).
    pub fn set_fused_step(&mut self, on: bool) {
        self.fused_step = on;
    }

    /// [`Decoder::hidden_states`] in burn's operations, for any batch and length.
    fn burn_hidden_states(&self, mut x: Tensor<B, 3>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        cache.move_to_burn();
        let c = &self.config;
        let [b, s, _] = x.dims();
        let past = cache.len;
        let g = c.num_heads / c.num_kv_heads;
        // Per device: the causal mask and `[1, s, 1, head_dim]` RoPE slices (to broadcast over
        // `[b, s, heads, head_dim]`), made when its first layer runs.
        let mut inputs: Vec<Option<LayerInputs<B>>> = self.tables.iter().map(|_| None).collect();
        let mut on = 0;
        if self.tables.len() > 1 {
            x = x.to_device(&self.device);
        }
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            if layer.on != on {
                on = layer.on;
                x = x.to_device(&self.tables[on].device);
            }
            let t = &self.tables[on];
            let inp = inputs[on].get_or_insert_with(|| LayerInputs {
                mask: (s > 1).then(|| causal_mask::<B>(b, c.num_kv_heads, g, s, past, &t.device)),
                cos: t.cos.clone().slice([past..past + s, 0..c.head_dim]).unsqueeze_dims::<4>(&[0, 2]),
                sin: t.sin.clone().slice([past..past + s, 0..c.head_dim]).unsqueeze_dims::<4>(&[0, 2]),
            });
            let h = rms_norm(x.clone(), layer.attn_norm.clone(), c.rms_norm_eps);
            let attn = self.attention(layer, h, slot, inp);
            x = x + attn;
            let h = rms_norm(x.clone(), layer.ffn_norm.clone(), c.rms_norm_eps);
            x = x + self.mlp(layer, h);
        }
        if on != 0 {
            x = x.to_device(&self.device);
        }
        cache.len += s;
        rms_norm(x, self.norm.clone(), c.rms_norm_eps)
    }

    fn attention(
        &self,
        layer: &Layer<B>,
        h: Tensor<B, 3>,
        slot: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
        inputs: &LayerInputs<B>,
    ) -> Tensor<B, 3> {
        let (cos, sin) = (&inputs.cos, &inputs.sin);
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let [b, s, _] = h.dims();
        let act = self.prefill_activations();
        let (mut q, mut k, mut v) = (layer.wq.forward(h.clone(), act), layer.wk.forward(h.clone(), act), layer.wv.forward(h, act));
        if let Some([bq, bk, bv]) = &layer.bqkv {
            q = q + bq.clone().unsqueeze_dims::<3>(&[0, 0]);
            k = k + bk.clone().unsqueeze_dims::<3>(&[0, 0]);
            v = v + bv.clone().unsqueeze_dims::<3>(&[0, 0]);
        }
        // RoPE in `[b, s, heads, hd]` (contiguous), then heads first for attention.
        let rotation = &self.tables[layer.on].rotate_half;
        let rot = |t: Tensor<B, 3>, n: usize| rope(t.reshape([b, s, n, hd]), cos, sin, rotation).swap_dims(1, 2);
        let q = rot(q, nh);
        let k = rot(k, nkv);
        let v = v.reshape([b, s, nkv, hd]).swap_dims(1, 2);
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        // Grouped-query attention without copying k/v per query head: the g query heads that
        // share a kv head are stacked along the query axis (rows j·s + i), one kv head each.
        let g = nh / nkv;
        let q = q.reshape([b, nkv, g * s, hd]);
        let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
        let out = attention(q, k, v, inputs.mask.clone(), None, opts).reshape([b, nh, s, hd]);
        let mut out = layer.wo.forward(out.swap_dims(1, 2).reshape([b, s, nh * hd]), act);
        if let Some(bias) = &layer.bo {
            out = out + bias.clone().unsqueeze_dims::<3>(&[0, 0]);
        }
        out
    }

    fn mlp(&self, layer: &Layer<B>, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let act = self.prefill_activations();
        let gate = layer.w_gate.forward(h.clone(), act);
        let up = layer.w_up.forward(h, act);
        layer.w_down.forward(silu(gate) * up, act)
    }
}

fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f32) -> Tensor<B, 3> {
    let inv = (x.clone().powi_scalar(2).mean_dim(2) + eps).sqrt().recip();
    x * inv * w.unsqueeze_dims::<3>(&[0, 0])
}

/// What every layer on one device reads in one forward pass besides the activations: the
/// causal mask (none for one position) and the RoPE slices of the positions.
struct LayerInputs<B: Backend> {
    mask: Option<Tensor<B, 4, Bool>>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

/// Rotate-half RoPE on `[b, s, heads, hd]`: `x·cos + rotate_half(x)·sin`, the rotation being
/// one small matmul by `rotation` instead of slices, a negation and a concatenation.
fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, rotation: &Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, s, h, d] = x.dims();
    let rotated = x.clone().reshape([b * s * h, d]).matmul(rotation.clone()).reshape([b, s, h, d]);
    x * cos.clone() + rotated * sin.clone()
}

/// `R` with `(x·R)[i] = −x[i + d/2]` for `i < d/2` and `x[i − d/2]` otherwise.
fn rotate_half_matrix<B: Backend>(d: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut r = vec![0f32; d * d];
    for i in 0..d / 2 {
        r[(i + d / 2) * d + i] = -1.0;
        r[i * d + i + d / 2] = 1.0;
    }
    Tensor::from_data(TensorData::new(r, [d, d]), device)
}

/// Cos/sin tables `[max_position, head_dim]`, computed in f32 as Hugging Face does (from
/// f16-rounded inverse frequencies where the config says the checkpoint stored them so).
pub(crate) fn rope_cos_sin(c: &DecoderConfig) -> (Vec<f32>, Vec<f32>) {
    let hd = c.head_dim;
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / hd as f32))
        .map(|f| if c.rope_inv_freq_f16 { half::f16::from_f32(f).to_f32() } else { f })
        .collect();
    let n = c.max_position.max(1);
    let (mut cos, mut sin) = (Vec::with_capacity(n * hd), Vec::with_capacity(n * hd));
    for p in 0..n {
        for k in 0..hd {
            let f = p as f32 * inv_freq[k % (hd / 2)];
            cos.push(f.cos());
            sin.push(f.sin());
        }
    }
    (cos, sin)
}

/// True where a query may not see a key: `[b, kv_heads, g·s, past + s]`, row `j·s + i` being
/// query head j of the group at position `past + i`.
fn causal_mask<B: Backend>(b: usize, kv_heads: usize, g: usize, s: usize, past: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let t = past + s;
    let rows: Vec<bool> = (0..g * s).flat_map(|r| (0..t).map(move |j| j > past + r % s)).collect();
    // Built at its full size (not a broadcast view), so the attention kernel reads it as it is
    // instead of making every layer copy it.
    let data = rows.repeat(b * kv_heads);
    Tensor::<B, 4, Bool>::from_data(TensorData::new(data, [b, kv_heads, g * s, t]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // llama.cpp's converter: w.reshape(n_head, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)
        let (n_head, half, cols) = (2, 3, 2);
        let rows = n_head * 2 * half;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..n_head {
            for pair in 0..2 {
                for i in 0..half {
                    let src_row = (h * 2 + pair) * half + i;
                    let dst_row = (h * half + i) * 2 + pair;
                    gguf[dst_row * cols..(dst_row + 1) * cols].copy_from_slice(&hf[src_row * cols..(src_row + 1) * cols]);
                }
            }
        }
        let back = unpermute_rows(&HostTensor { data: gguf, shape: vec![rows, cols] }, n_head);
        assert_eq!(back.data, hf);
    }

    #[test]
    fn a_split_across_devices_computes_what_one_device_does() {
        use burn::backend::Flex;
        let c = DecoderConfig {
            arch: crate::config::Arch::InternLm,
            vocab_size: 40,
            hidden_size: 16,
            intermediate_size: 24,
            num_layers: 3,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 4,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            max_position: 32,
            qkv_bias: true,
            o_bias: true,
            tie_word_embeddings: false,
            rope_inv_freq_f16: false,
        };
        let src = crate::random_weights::RandomWeights::for_decoder(&c, 11);
        let dev: burn::tensor::Device<Flex> = Default::default();
        let whole = Decoder::<Flex>::load(c.clone(), &src, KeyStyle::HuggingFace, &dev).unwrap();
        // Three "devices" (the same CPU), layers 0 | 1–2 on the second and third, none on the first.
        let devices = [dev, dev, dev];
        let split = Decoder::<Flex>::load_split(c, &src, KeyStyle::HuggingFace, &devices, &[1, 2, 2]).unwrap();
        assert_eq!(split.layers.iter().map(|l| l.on).collect::<Vec<_>>(), vec![1, 2, 2]);
        assert_eq!(split.tables.len(), 3);
        let run = |d: &Decoder<Flex>| {
            let mut cache = d.new_cache();
            let mut out = d.forward_ids(&[3, 1, 4, 1, 5], &mut cache, 2).into_data().convert::<f32>().into_vec::<f32>().unwrap();
            cache.reorder(&[0, 0]);
            let step = d.embed_ids(&[9, 2]).reshape([2, 1, 16]);
            out.extend(d.forward_embeds(step, &mut cache, 1).into_data().convert::<f32>().into_vec::<f32>().unwrap());
            (out, cache.len())
        };
        let (a, b) = (run(&whole), run(&split));
        assert_eq!(a.1, 6);
        assert_eq!(a, b, "prefill of 5 positions, then a step of two sequences");
    }

    #[test]
    fn gguf_names_follow_the_table() {
        let g = KeyStyle::Gguf { permuted_qk: true };
        assert_eq!(g.name("model.layers.{}.self_attn.q_proj.weight", 7), "blk.7.attn_q.weight");
        assert_eq!(g.name("lm_head.weight", 0), "output.weight");
        assert_eq!(KeyStyle::HuggingFace.name("model.layers.{}.mlp.up_proj.weight", 3), "model.layers.3.mlp.up_proj.weight");
    }
}
