//! [`ImageEncoder`]: XComposer's image path on burn ([`XComposerVisual`]) or, when the language
//! model runs on the fused CUDA engine, on the CUDA encoder runtime (`visual_cuda.rs`), chosen
//! at load like the decoder.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use xcomposer_llm::weights::WeightSource;

use super::model::{EngineChoice, XComposerError};
use super::visual::{VisualConfig, XComposerVisual};

/// The image encoder in the implementation chosen at load.
pub struct ImageEncoder<B: Backend> {
    /// Sizes.
    pub config: VisualConfig,
    kind: Kind<B>,
}

#[allow(clippy::large_enum_variant)] // one per loaded model
enum Kind<B: Backend> {
    Burn(XComposerVisual<B>),
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Mutex<super::visual_cuda::CudaVisual>),
}

impl<B: Backend> ImageEncoder<B> {
    /// Loads the encoder where `engine` puts the language model: burn's device, or the CUDA
    /// runtime in the engine's float type.
    pub fn load(src: &dyn WeightSource, c: &VisualConfig, device: &B::Device, engine: EngineChoice) -> Result<Self, XComposerError> {
        let load_error = |e: &dyn std::fmt::Display| XComposerError::Load(e.to_string());
        let kind = match engine {
            EngineChoice::Burn => Kind::Burn(XComposerVisual::load(src, c, device).map_err(|e| load_error(&e))?),
            #[cfg(feature = "cuda")]
            EngineChoice::Cuda(opts) => Kind::Cuda(std::sync::Mutex::new(super::visual_cuda::CudaVisual::load(src, c, opts.dtype).map_err(|e| load_error(&e))?)),
        };
        Ok(ImageEncoder { config: c.clone(), kind })
    }

    /// burn's encoder, when that is what runs it (for traces and parity checks).
    pub fn burn(&self) -> Option<&XComposerVisual<B>> {
        match &self.kind {
            Kind::Burn(v) => Some(v),
            #[cfg(feature = "cuda")]
            Kind::Cuda(_) => None,
        }
    }

    /// The LLM embeddings of images from their preprocessed pixels (`n × 3 × S × S` values, `n`
    /// images): `[n, num_query + 2, llm_dim]` on `device`.
    pub fn encode(&self, pixels: Vec<f32>, device: &B::Device) -> Result<Tensor<B, 3>, XComposerError> {
        let s = self.config.img_size;
        let per_image = 3 * s * s;
        if pixels.is_empty() || !pixels.len().is_multiple_of(per_image) {
            return Err(XComposerError::BadRequest(format!("{} pixel values are not whole images of 3 × {s} × {s}", pixels.len())));
        }
        let n = pixels.len() / per_image;
        match &self.kind {
            Kind::Burn(v) => Ok(v.forward(Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), device))),
            #[cfg(feature = "cuda")]
            Kind::Cuda(v) => {
                let mut v = v.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let embeds = v.forward(&pixels, n).map_err(|e| XComposerError::Engine(e.to_string()))?;
                Ok(Tensor::from_data(TensorData::new(embeds, [n, self.config.tokens_per_image(), self.config.llm_dim]), device))
            }
        }
    }
}
