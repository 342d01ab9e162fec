//! Building blocks shared by the encoder models (BERT, CLIP, EVA-ViT, Q-Former): dense layers
//! and LayerNorm filled from a [`WeightSource`] by their checkpoint prefix, and multi-head
//! attention over `[batch, seq, dim]` activations.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorData};
use rayon::prelude::*;

use crate::weights::{HostTensor, WeightError, WeightSource};

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    out.par_chunks_mut(rows.max(1)).enumerate().for_each(|(c, col)| {
        for (r, v) in col.iter_mut().enumerate() {
            *v = data[r * cols + c];
        }
    });
    out
}

/// Moves a host tensor onto a device.
pub fn to_device<B: Backend, const D: usize>(t: HostTensor, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data, t.shape), device)
}

/// `y = x·Wᵀ + b` with a PyTorch `[out, in]` weight (stored transposed for burn).
#[derive(Debug, Clone)]
pub struct Dense<B: Backend> {
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
}

impl<B: Backend> Dense<B> {
    /// Loads `{prefix}.weight` `[out, in]` and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn load(src: &dyn WeightSource, prefix: &str, inp: usize, out: usize, bias: bool, device: &B::Device) -> Result<Self, WeightError> {
        let w = src.load_shaped(&format!("{prefix}.weight"), &[out, inp])?;
        let w = Tensor::from_data(TensorData::new(transpose(&w.data, out, inp), [inp, out]), device);
        let b = if bias { Some(to_device(src.load_shaped(&format!("{prefix}.bias"), &[out])?, device)) } else { None };
        Ok(Self { w, b })
    }

    /// Applies the layer to `[batch, seq, in]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = x.matmul(self.w.clone().unsqueeze_dim(0));
        match &self.b {
            Some(b) => y + b.clone().unsqueeze_dims::<3>(&[0, 0]),
            None => y,
        }
    }
}

/// LayerNorm over the last axis with an affine weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm<B: Backend> {
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub fn load(src: &dyn WeightSource, prefix: &str, dim: usize, eps: f64, device: &B::Device) -> Result<Self, WeightError> {
        Ok(Self { w: to_device(src.load_shaped(&format!("{prefix}.weight"), &[dim])?, device), b: to_device(src.load_shaped(&format!("{prefix}.bias"), &[dim])?, device), eps })
    }

    /// Normalises `[batch, seq, dim]` (biased variance, as PyTorch).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mean = x.clone().mean_dim(2);
        let centred = x - mean;
        let var = centred.clone().powi_scalar(2).mean_dim(2);
        let y = centred * (var + self.eps).sqrt().recip();
        y * self.w.clone().unsqueeze_dims::<3>(&[0, 0]) + self.b.clone().unsqueeze_dims::<3>(&[0, 0])
    }
}

/// Scaled dot-product attention of `[batch, seq, heads·hd]` projections, heads split and merged
/// here; `mask` is `[batch, heads or 1, q, k]` with `true` where attention is forbidden.
pub fn multi_head_attention<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, heads: usize, mask: Option<Tensor<B, 4, Bool>>) -> Tensor<B, 3> {
    let [b, sq, d] = q.dims();
    let sk = k.dims()[1];
    let hd = d / heads;
    let split = |t: Tensor<B, 3>, s: usize| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
    let mask = mask.map(|m| {
        let [mb, mh, mq, mk] = m.dims();
        if mh == heads { m } else { m.expand([mb, heads, mq, mk]) }
    });
    let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
    let out = attention(split(q, sq), split(k, sk), split(v, sk), mask, None, opts);
    out.swap_dims(1, 2).reshape([b, sq, d])
}

/// A key-padding mask `[batch, 1, q, k]`: `true` at the padded key positions of each row.
pub fn padding_mask<B: Backend>(lengths: &[usize], q: usize, k: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let mut m = Vec::with_capacity(lengths.len() * q * k);
    for &len in lengths {
        for _ in 0..q {
            m.extend((0..k).map(|j| j >= len));
        }
    }
    Tensor::from_data(TensorData::new(m, [lengths.len(), 1, q, k]), device)
}
