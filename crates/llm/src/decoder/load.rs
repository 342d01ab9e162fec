//! Reading a [`Decoder`](super::Decoder)'s tensors from a weight source: dense weights for
//! burn, or, on the CPU, the source's block-encoded rows kept as they are.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{Embedding, KeyStyle, Layer, Linear, host_step, unpermute_order, unpermute_rows};
use crate::arena::Arena;
use crate::config::DecoderConfig;
use crate::matvec::QMatrix;
use crate::nn::transpose;
use crate::weights::{HostTensor, WeightError, WeightSource};

/// A source and how its names are spelled and its q/k rows ordered.
pub(super) struct Reader<'a> {
    src: &'a dyn WeightSource,
    style: KeyStyle,
    /// Whether q/k rows are in llama.cpp's interleaved order (undone at load).
    permuted: bool,
    /// Whether encoded rows are kept (the CPU backend, which multiplies them directly).
    host_matvec: bool,
    /// Where kept rows go: the model's matrices together, in huge pages.
    arena: Arena,
}

/// A vector on `device`.
pub(super) fn vector<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

impl<'a> Reader<'a> {
    /// A reader of `src` for the backend `B`.
    pub(super) fn new<B: Backend>(src: &'a dyn WeightSource, style: KeyStyle) -> Self {
        let permuted = matches!(style, KeyStyle::Gguf { permuted_qk: true });
        let host_matvec = std::any::TypeId::of::<B>() == std::any::TypeId::of::<burn::backend::Flex>();
        Reader { src, style, permuted, host_matvec, arena: Arena::new() }
    }

    /// The tensor with canonical name `hf` (of `layer`), checked to be `shape`.
    pub(super) fn get(&self, hf: &str, layer: usize, shape: &[usize]) -> Result<HostTensor, WeightError> {
        self.src.load_shaped(&self.style.name(hf, layer), shape)
    }

    /// A dense projection from its weight `[out, in]`, with `heads` to un-permute (q, k).
    fn dense<B: Backend>(&self, t: &HostTensor, heads: Option<usize>, device: &B::Device) -> Linear<B> {
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let w = match heads.filter(|_| self.permuted) {
            Some(n_head) => transpose(&unpermute_rows(t, n_head).data, rows, cols),
            None => transpose(&t.data, rows, cols),
        };
        Linear { w: Some(Tensor::<B, 2>::from_data(TensorData::new(w, [cols, rows]), device)), host: None }
    }

    /// On the CPU, a weight the source keeps block-encoded, kept so (its rows un-permuted for q
    /// and k, placed after the model's other matrices in the reader's arena) with no f32 copy;
    /// `None` when the source has it only as f32 or the backend is not the CPU's.
    fn encoded(&self, hf: &str, rows: usize, heads: Option<usize>, layer: usize, cols: usize) -> Result<Option<QMatrix>, WeightError> {
        let (src, name) = (self.src, self.style.name(hf, layer));
        let Some(r) = src.raw(&name).filter(|_| self.host_matvec) else { return Ok(None) };
        if (r.rows, r.cols) != (rows, cols) {
            let (found, expected) = (vec![r.rows, r.cols], vec![rows, cols]);
            return Err(WeightError::Shape { source_name: src.source_name(), name, found, expected });
        }
        let order = match heads.filter(|_| self.permuted) {
            Some(n_head) => unpermute_order(rows, n_head),
            None => (0..rows).collect(),
        };
        let m = QMatrix::from_rows_in(Some(&self.arena), r.ty, cols, &[(r.bytes, order)])
            .map_err(|reason| WeightError::File { path: src.source_name().into(), reason: format!("{name}: {reason}") })?;
        src.release(&name);
        Ok(Some(m))
    }

    /// The projection `hf` of `layer`, `[rows, cols]`: encoded rows where kept, else dense on `device`.
    fn linear<B: Backend>(&self, hf: &str, shape: [usize; 2], heads: Option<usize>, layer: usize, device: &B::Device) -> Result<Linear<B>, WeightError> {
        let [rows, cols] = shape;
        match self.encoded(hf, rows, heads, layer, cols)? {
            Some(m) => Ok(Linear { w: None, host: Some(m) }),
            None => Ok(self.dense(&self.get(hf, layer, &shape)?, heads, device)),
        }
    }

    /// The input embeddings and the LM head on `device`, read once when tied.
    pub(super) fn embeddings<B: Backend>(&self, c: &DecoderConfig, device: &B::Device) -> Result<(Embedding<B>, Linear<B>), WeightError> {
        let (v, d) = (c.vocab_size, c.hidden_size);
        Ok(match self.encoded("model.embed_tokens.weight", v, None, 0, d)? {
            Some(m) if c.tie_word_embeddings => (Embedding::TiedHead, Linear { w: None, host: Some(m) }),
            Some(m) => (Embedding::Encoded(m), self.linear("lm_head.weight", [v, d], None, 0, device)?),
            None => {
                let embed = self.get("model.embed_tokens.weight", 0, &[v, d])?;
                let lm_head = if c.tie_word_embeddings { self.dense(&embed, None, device) } else { self.linear("lm_head.weight", [v, d], None, 0, device)? };
                (Embedding::Dense(Tensor::<B, 2>::from_data(TensorData::new(embed.data, [v, d]), device)), lm_head)
            }
        })
    }

    /// Layer `l` on `device` (index `on` of the decoder's devices), and its norms and biases on
    /// the host for the CPU's one-token step.
    pub(super) fn layer<B: Backend>(&self, c: &DecoderConfig, l: usize, device: &B::Device, on: usize) -> Result<(Layer<B>, host_step::HostLayer), WeightError> {
        let (d, ff) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let bqkv = if c.qkv_bias {
            Some([
                self.get("model.layers.{}.self_attn.q_proj.bias", l, &[q])?.data,
                self.get("model.layers.{}.self_attn.k_proj.bias", l, &[kv])?.data,
                self.get("model.layers.{}.self_attn.v_proj.bias", l, &[kv])?.data,
            ])
        } else {
            None
        };
        let bo = if c.o_bias { Some(self.get("model.layers.{}.self_attn.o_proj.bias", l, &[d])?.data) } else { None };
        let hl = host_step::HostLayer {
            attn_norm: self.get("model.layers.{}.input_layernorm.weight", l, &[d])?.data,
            ffn_norm: self.get("model.layers.{}.post_attention_layernorm.weight", l, &[d])?.data,
            bqkv,
            bo,
        };
        let layer = Layer {
            attn_norm: vector(&hl.attn_norm, device),
            wq: self.linear("model.layers.{}.self_attn.q_proj.weight", [q, d], Some(c.num_heads), l, device)?,
            wk: self.linear("model.layers.{}.self_attn.k_proj.weight", [kv, d], Some(c.num_kv_heads), l, device)?,
            wv: self.linear("model.layers.{}.self_attn.v_proj.weight", [kv, d], None, l, device)?,
            bqkv: hl.bqkv.as_ref().map(|b| b.each_ref().map(|b| vector(b, device))),
            wo: self.linear("model.layers.{}.self_attn.o_proj.weight", [d, q], None, l, device)?,
            bo: hl.bo.as_deref().map(|b| vector(b, device)),
            ffn_norm: vector(&hl.ffn_norm, device),
            w_gate: self.linear("model.layers.{}.mlp.gate_proj.weight", [ff, d], None, l, device)?,
            w_up: self.linear("model.layers.{}.mlp.up_proj.weight", [ff, d], None, l, device)?,
            w_down: self.linear("model.layers.{}.mlp.down_proj.weight", [d, ff], None, l, device)?,
            on,
        };
        Ok((layer, hl))
    }
}
