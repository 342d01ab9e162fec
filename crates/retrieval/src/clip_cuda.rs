//! CLIP's vision tower and projection on the llm crate's CUDA encoder runtime (feature `cuda`):
//! a whole batch of images through cuBLAS products and a few fused kernels. The checkpoint names
//! are [`crate::clip`]'s table; q, k and v are stacked into one product at load.

use std::path::Path;

use rayon::prelude::*;

use xcomposer_llm::cuda::encoder::{Activation as Act, DevLinear, DevNorm, EncoderRuntime, HostLinear, HostNorm, HostPreNormBlock, HostVit, VitTower};
use xcomposer_llm::cuda::{Buf, CudaError, EngineDtype};
use xcomposer_llm::weights::{WeightError, WeightSource};

use crate::clip::{Activation, ClipConfig, ClipError, TowerConfig, open_weights};

/// Errors of the CUDA vision tower.
#[derive(Debug, thiserror::Error)]
pub enum ClipCudaError {
    /// The folder or its weights.
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// The GPU runtime.
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

impl From<WeightError> for ClipCudaError {
    fn from(e: WeightError) -> Self {
        ClipCudaError::Clip(e.into())
    }
}

/// One vision layer with q, k and v stacked.
fn block(src: &dyn WeightSource, p: &str, c: &TowerConfig) -> Result<HostPreNormBlock, WeightError> {
    let d = c.hidden_size;
    let (q, k, v) = (HostLinear::load(src, &format!("{p}.self_attn.q_proj"), d, d, true)?, HostLinear::load(src, &format!("{p}.self_attn.k_proj"), d, d, true)?, HostLinear::load(src, &format!("{p}.self_attn.v_proj"), d, d, true)?);
    let bias = [&q, &k, &v].iter().flat_map(|l| l.bias.clone().unwrap_or_default()).collect();
    let weight = [q.weight, k.weight, v.weight].concat();
    Ok(HostPreNormBlock {
        norm1: HostNorm::load(src, &format!("{p}.layer_norm1"), d, c.layer_norm_eps)?,
        qkv: HostLinear { weight, bias: Some(bias), out: 3 * d, inp: d },
        proj: HostLinear::load(src, &format!("{p}.self_attn.out_proj"), d, d, true)?,
        norm2: HostNorm::load(src, &format!("{p}.layer_norm2"), d, c.layer_norm_eps)?,
        fc1: HostLinear::load(src, &format!("{p}.mlp.fc1"), d, c.intermediate_size, true)?,
        fc2: HostLinear::load(src, &format!("{p}.mlp.fc2"), c.intermediate_size, d, true)?,
    })
}

/// The vision tower, post-LN of the class token and the projection, on the GPU.
pub struct CudaClipVision {
    rt: EncoderRuntime,
    vit: VitTower,
    post_norm: DevNorm,
    projection: DevLinear,
    /// Sizes.
    pub config: ClipConfig,
}

impl CudaClipVision {
    /// Loads the vision side of a Hugging Face CLIP folder onto GPU 0 in `dtype`.
    pub fn load(dir: &Path, dtype: EngineDtype) -> Result<Self, ClipCudaError> {
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let src = open_weights(dir)?;
        let src = src.as_ref();
        let (v, t) = (&config.vision, &config.vision.tower);
        let (d, p) = (t.hidden_size, v.patch_size);
        let grid = v.image_size / p;
        let host = HostVit {
            patch: HostLinear { weight: src.load_shaped("vision_model.embeddings.patch_embedding.weight", &[d, 3, p, p])?.data, bias: None, out: d, inp: 3 * p * p },
            cls: src.load_shaped("vision_model.embeddings.class_embedding", &[d])?.data,
            pos: src.load_shaped("vision_model.embeddings.position_embedding.weight", &[grid * grid + 1, d])?.data,
            pre_norm: Some(HostNorm::load(src, "vision_model.pre_layrnorm", d, t.layer_norm_eps)?),
            blocks: (0..t.num_hidden_layers).into_par_iter().map(|i| block(src, &format!("vision_model.encoder.layers.{i}"), t)).collect::<Result<_, _>>()?,
            img: v.image_size,
            patch_size: p,
            heads: t.num_attention_heads,
            act: match t.hidden_act {
                Activation::QuickGelu => Act::QuickGelu,
                Activation::Gelu => Act::Gelu,
            },
        };
        let rt = EncoderRuntime::new(dtype)?;
        Ok(CudaClipVision {
            vit: VitTower::upload(&rt, host)?,
            post_norm: rt.norm(HostNorm::load(src, "vision_model.post_layernorm", d, t.layer_norm_eps)?)?,
            projection: rt.linear(HostLinear::load(src, "visual_projection", d, config.projection_dim, false)?)?,
            rt,
            config,
        })
    }

    /// Unnormalised image features `[n, projection_dim]` (row-major) of `n` images' pixel
    /// values (`[n, 3, S, S]` row-major).
    pub fn image_features(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f32>, CudaError> {
        self.check_pixels(pixels.len(), n)?;
        let mark = self.rt.mark();
        let px = self.rt.scratch(pixels.len() * 4)?;
        self.rt.upload_to(px, pixels)?;
        let features = self.features_at(px, n);
        self.rt.release(mark);
        features
    }

    /// Pixel values (`[n, 3, S, S]` row-major) copied to the device once, for
    /// [`CudaClipVision::image_features_on_device`].
    pub fn upload_pixels(&self, pixels: &[f32]) -> Result<Buf, CudaError> {
        self.rt.upload_f32(pixels)
    }

    /// [`CudaClipVision::image_features`] of the first `n` images of pixels already on the
    /// device (as a PyTorch caller holds its input tensor there).
    pub fn image_features_on_device(&mut self, pixels: &Buf, n: usize) -> Result<Vec<f32>, CudaError> {
        let s = self.vit.image_size();
        if pixels.bytes < n * 3 * s * s * 4 {
            return Err(CudaError::Unsupported(format!("{} bytes of pixel values for {n} images of 3 × {s} × {s}", pixels.bytes)));
        }
        self.features_at(pixels.ptr, n)
    }

    fn check_pixels(&self, values: usize, n: usize) -> Result<(), CudaError> {
        let s = self.vit.image_size();
        if values != n * 3 * s * s {
            return Err(CudaError::Unsupported(format!("{values} pixel values for {n} images of 3 × {s} × {s}")));
        }
        Ok(())
    }

    /// The tower, the post-LayerNorm of each class token and the projection on pixels at `px`.
    fn features_at(&mut self, px: u64, n: usize) -> Result<Vec<f32>, CudaError> {
        let (d, tokens, e) = (self.vit.dim(), self.vit.tokens(), self.rt.elem());
        let rt = &mut self.rt;
        let mark = rt.mark();
        let h = rt.scratch(n * tokens * d * 4)?;
        self.vit.forward(rt, px, n, h)?;
        // The class token of each image: row 0 of its `tokens` rows.
        let pooled = rt.scratch(n * d * e)?;
        rt.layer_norm(h, tokens * d, &self.post_norm, pooled, 0, n)?;
        let out = rt.scratch(n * self.projection.out * 4)?;
        rt.product_f32(pooled, n, &self.projection, out)?;
        let features = rt.download_f32(out, n * self.projection.out)?;
        rt.release(mark);
        Ok(features)
    }
}
