//! `Decoder<B>`: the llama-family transformer (Llama / SmolLM2, Qwen2, InternLM v1) with RMSNorm,
//! rotate-half RoPE, grouped-query attention, SwiGLU and a KV cache; and its weight loader.
//!
//! Weights are kept as f32 and stored transposed (`[in, out]`) so every projection is one
//! matmul; q/k/v and gate/up are fused into single matrices.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::config::DecoderConfig;
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
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![None; num_layers], len: 0 }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

struct Layer<B: Backend> {
    attn_norm: Tensor<B, 1>,
    wqkv: Tensor<B, 2>,
    bqkv: Option<Tensor<B, 1>>,
    wo: Tensor<B, 2>,
    bo: Option<Tensor<B, 1>>,
    ffn_norm: Tensor<B, 1>,
    w_gate_up: Tensor<B, 2>,
    w_down: Tensor<B, 2>,
}

/// A llama-family decoder-only transformer.
pub struct Decoder<B: Backend> {
    /// The configuration it was built from.
    pub config: DecoderConfig,
    embed: Tensor<B, 2>,
    layers: Vec<Layer<B>>,
    norm: Tensor<B, 1>,
    lm_head: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    device: B::Device,
}

/// Transposes a row-major `[rows, cols]` matrix.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    out.par_chunks_mut(rows).enumerate().for_each(|(c, col)| {
        for (r, v) in col.iter_mut().enumerate() {
            *v = data[r * cols + c];
        }
    });
    out
}

/// Undoes llama.cpp's q/k row permutation: GGUF row `(head, i, pair)` → HF row `(head, pair, i)`.
fn unpermute_rows(w: &HostTensor, n_head: usize) -> HostTensor {
    let (rows, cols) = (w.shape[0], w.data.len() / w.shape[0]);
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for pair in 0..2 {
                let src = (h * half + i) * 2 + pair;
                let dst = h * 2 * half + pair * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    HostTensor { data: out, shape: w.shape.clone() }
}

impl<B: Backend> Decoder<B> {
    /// Loads a decoder from a weight source whose names follow `style`.
    pub fn load(config: DecoderConfig, src: &dyn WeightSource, style: KeyStyle, device: &B::Device) -> Result<Self, WeightError> {
        let c = &config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_heads * hd, c.num_kv_heads * hd);
        let get = |hf: &str, layer: usize, shape: &[usize]| src.load_shaped(&style.name(hf, layer), shape);
        let vec1 = |t: HostTensor| Tensor::<B, 1>::from_data(TensorData::new(t.data, [t.shape[0]]), device);
        // A Linear weight `[out, in]` (or several stacked on `out`) becomes our `[in, out]`.
        let linear_t = |parts: Vec<HostTensor>| {
            let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
            let cols = parts[0].shape[1];
            let data: Vec<f32> = parts.into_iter().flat_map(|p| p.data).collect();
            Tensor::<B, 2>::from_data(TensorData::new(transpose(&data, rows, cols), [cols, rows]), device)
        };
        let permuted = matches!(style, KeyStyle::Gguf { permuted_qk: true });

        let embed_host = get("model.embed_tokens.weight", 0, &[c.vocab_size, d])?;
        let lm_head = if c.tie_word_embeddings {
            linear_t(vec![embed_host.clone()])
        } else {
            linear_t(vec![get("lm_head.weight", 0, &[c.vocab_size, d])?])
        };
        let embed = Tensor::<B, 2>::from_data(TensorData::new(embed_host.data, [c.vocab_size, d]), device);

        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let mut wq = get("model.layers.{}.self_attn.q_proj.weight", l, &[q_out, d])?;
            let mut wk = get("model.layers.{}.self_attn.k_proj.weight", l, &[kv_out, d])?;
            let wv = get("model.layers.{}.self_attn.v_proj.weight", l, &[kv_out, d])?;
            if permuted {
                wq = unpermute_rows(&wq, c.num_heads);
                wk = unpermute_rows(&wk, c.num_kv_heads);
            }
            let bqkv = if c.qkv_bias {
                let bq = get("model.layers.{}.self_attn.q_proj.bias", l, &[q_out])?;
                let bk = get("model.layers.{}.self_attn.k_proj.bias", l, &[kv_out])?;
                let bv = get("model.layers.{}.self_attn.v_proj.bias", l, &[kv_out])?;
                let n = q_out + 2 * kv_out;
                Some(vec1(HostTensor { data: [bq.data, bk.data, bv.data].concat(), shape: vec![n] }))
            } else {
                None
            };
            let bo = if c.o_bias { Some(vec1(get("model.layers.{}.self_attn.o_proj.bias", l, &[d])?)) } else { None };
            layers.push(Layer {
                attn_norm: vec1(get("model.layers.{}.input_layernorm.weight", l, &[d])?),
                wqkv: linear_t(vec![wq, wk, wv]),
                bqkv,
                wo: linear_t(vec![get("model.layers.{}.self_attn.o_proj.weight", l, &[d, q_out])?]),
                bo,
                ffn_norm: vec1(get("model.layers.{}.post_attention_layernorm.weight", l, &[d])?),
                w_gate_up: linear_t(vec![
                    get("model.layers.{}.mlp.gate_proj.weight", l, &[c.intermediate_size, d])?,
                    get("model.layers.{}.mlp.up_proj.weight", l, &[c.intermediate_size, d])?,
                ]),
                w_down: linear_t(vec![get("model.layers.{}.mlp.down_proj.weight", l, &[d, c.intermediate_size])?]),
            });
        }
        let norm = vec1(get("model.norm.weight", 0, &[d])?);
        let (cos, sin) = rope_tables::<B>(c, device);
        Ok(Decoder { config, embed, layers, norm, lm_head, cos, sin, device: device.clone() })
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
        let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [ids.len()]), &self.device);
        self.embed.clone().select(0, idx).unsqueeze_dim(0)
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
        let h = self.hidden_states(x, cache);
        let [b, s, d] = h.dims();
        let last_n = last_n.clamp(1, s);
        h.slice([0..b, s - last_n..s, 0..d]).matmul(self.lm_head.clone().unsqueeze_dim(0))
    }

    /// The final normalised hidden states `[batch, seq, hidden]`, appending to `cache`.
    pub fn hidden_states(&self, mut x: Tensor<B, 3>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let c = &self.config;
        let [b, s, _] = x.dims();
        let past = cache.len;
        let mask = (s > 1).then(|| causal_mask::<B>(b, c.num_heads, s, past, &self.device));
        let cos = self.cos.clone().slice([past..past + s, 0..c.head_dim]).unsqueeze_dims::<4>(&[0, 0]);
        let sin = self.sin.clone().slice([past..past + s, 0..c.head_dim]).unsqueeze_dims::<4>(&[0, 0]);
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = rms_norm(x.clone(), layer.attn_norm.clone(), c.rms_norm_eps);
            let attn = self.attention(layer, h, slot, mask.clone(), &cos, &sin);
            x = x + attn;
            let h = rms_norm(x.clone(), layer.ffn_norm.clone(), c.rms_norm_eps);
            x = x + self.mlp(layer, h);
        }
        cache.len += s;
        rms_norm(x, self.norm.clone(), c.rms_norm_eps)
    }

    fn attention(
        &self,
        layer: &Layer<B>,
        h: Tensor<B, 3>,
        slot: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
        mask: Option<Tensor<B, 4, Bool>>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let [b, s, _] = h.dims();
        let mut qkv = h.matmul(layer.wqkv.clone().unsqueeze_dim(0));
        if let Some(bias) = &layer.bqkv {
            qkv = qkv + bias.clone().unsqueeze_dims::<3>(&[0, 0]);
        }
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = heads(qkv.clone().slice([0..b, 0..s, 0..nh * hd]), nh);
        let k = heads(qkv.clone().slice([0..b, 0..s, nh * hd..(nh + nkv) * hd]), nkv);
        let v = heads(qkv.slice([0..b, 0..s, (nh + nkv) * hd..(nh + 2 * nkv) * hd]), nkv);
        let q = rope(q, cos, sin);
        let k = rope(k, cos, sin);
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        let (k, v) = (repeat_kv(k, nh / nkv), repeat_kv(v, nh / nkv));
        let out = attention(q, k, v, mask, None, AttentionModuleOptions { scale: None, softcap: None, is_causal: false });
        let mut out = out.swap_dims(1, 2).reshape([b, s, nh * hd]).matmul(layer.wo.clone().unsqueeze_dim(0));
        if let Some(bias) = &layer.bo {
            out = out + bias.clone().unsqueeze_dims::<3>(&[0, 0]);
        }
        out
    }

    fn mlp(&self, layer: &Layer<B>, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let ff = self.config.intermediate_size;
        let [b, s, _] = h.dims();
        let gu = h.matmul(layer.w_gate_up.clone().unsqueeze_dim(0));
        let gate = gu.clone().slice([0..b, 0..s, 0..ff]);
        let up = gu.slice([0..b, 0..s, ff..2 * ff]);
        (silu(gate) * up).matmul(layer.w_down.clone().unsqueeze_dim(0))
    }
}

fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f32) -> Tensor<B, 3> {
    let inv = (x.clone().powi_scalar(2).mean_dim(2) + eps).sqrt().recip();
    x * inv * w.unsqueeze_dims::<3>(&[0, 0])
}

/// Rotate-half RoPE: `x * cos + [-x2, x1] * sin` with `x = [x1, x2]` split at half the head.
fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, d / 2..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Cos/sin tables `[max_position, head_dim]`, computed in f32 as Hugging Face does.
fn rope_tables<B: Backend>(c: &DecoderConfig, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let hd = c.head_dim;
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / hd as f32)).collect();
    let n = c.max_position.max(1);
    let (mut cos, mut sin) = (Vec::with_capacity(n * hd), Vec::with_capacity(n * hd));
    for p in 0..n {
        for k in 0..hd {
            let f = p as f32 * inv_freq[k % (hd / 2)];
            cos.push(f.cos());
            sin.push(f.sin());
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [n, hd]), device),
        Tensor::from_data(TensorData::new(sin, [n, hd]), device),
    )
}

/// `[b, kv_heads, t, d]` → `[b, kv_heads * n_rep, t, d]`, each kv head serving `n_rep` q heads.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [b, h, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, h, n_rep, t, d]).reshape([b, h * n_rep, t, d])
}

/// True where query `i` (at absolute position `past + i`) must not see key `j`.
fn causal_mask<B: Backend>(b: usize, heads: usize, s: usize, past: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let t = past + s;
    let data: Vec<bool> = (0..s).flat_map(|i| (0..t).map(move |j| j > past + i)).collect();
    Tensor::<B, 2, Bool>::from_data(TensorData::new(data, [s, t]), device)
        .unsqueeze_dims::<4>(&[0, 0])
        .expand([b, heads, s, t])
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
    fn gguf_names_follow_the_table() {
        let g = KeyStyle::Gguf { permuted_qk: true };
        assert_eq!(g.name("model.layers.{}.self_attn.q_proj.weight", 7), "blk.7.attn_q.weight");
        assert_eq!(g.name("lm_head.weight", 0), "output.weight");
        assert_eq!(KeyStyle::HuggingFace.name("model.layers.{}.mlp.up_proj.weight", 3), "model.layers.3.mlp.up_proj.weight");
    }
}
