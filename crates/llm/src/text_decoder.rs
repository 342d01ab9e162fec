//! [`TextDecoder`]: a decoder on burn or on the fused CUDA engine, chosen when the model loads,
//! and [`TextDecoder::steps`], the one-sequence [`StepDecoder`] that generation runs on either.

use burn::tensor::backend::Backend;

use crate::beam::{BurnSteps, StepDecoder};
use crate::config::DecoderConfig;
use crate::decoder::{Decoder, KeyStyle};
use crate::placement::{Placement, PlacementNeeds};
use crate::weights::{WeightError, WeightSource};
#[cfg(feature = "cuda")]
use crate::cuda::{CudaDecoder, CudaError, EngineOptions, EngineSteps};

/// Which implementation runs a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum EngineChoice {
    /// burn's operations on the backend's device (the CPU, or burn-cuda).
    #[default]
    Burn,
    /// The fused CUDA engine on GPU 0.
    #[cfg(feature = "cuda")]
    Cuda(EngineOptions),
}

/// Devices to split a model across by memory (a pipeline: layers in contiguous runs, the
/// activations handed from one device to the next), with the bytes each offers.
#[derive(Debug, Clone)]
pub struct DeviceSplit<B: Backend> {
    /// The devices in order; the first holds the embeddings, the head and any image encoder.
    pub devices: Vec<B::Device>,
    /// The bytes each device offers (its free memory), in the same order.
    pub capacities: Vec<u64>,
    /// Bytes a weight value takes on the devices (4 for f32, 2 for f16).
    pub weight_bytes: u64,
    /// Sequences decoded together (beams), each with a KV cache of the full context.
    pub sequences: usize,
}

impl<B: Backend> DeviceSplit<B> {
    /// The plan for `config` with `first_extra` more bytes on the first device (an image
    /// encoder), each layer's KV cache counted for every sequence at the model's full context in
    /// the weights' type.
    pub fn plan(&self, config: &DecoderConfig, first_extra: u64) -> Result<Placement, crate::placement::PlacementError> {
        let needs = PlacementNeeds::for_decoder(config, self.weight_bytes, self.weight_bytes, self.sequences, config.max_position, first_extra);
        crate::placement::place(&needs, &self.capacities)
    }
}

/// Errors of loading or running a [`TextDecoder`].
#[derive(Debug, thiserror::Error)]
pub enum TextDecoderError {
    /// burn's decoder could not be built from the weights.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// A plan that does not fit the devices or the model it is used with.
    #[error("a plan of {shares} devices and {plan_layers} layers for {devices} devices and a model of {model_layers} layers")]
    PlanMismatch {
        /// Devices in the plan.
        shares: usize,
        /// Layers the plan places.
        plan_layers: usize,
        /// Devices given.
        devices: usize,
        /// Layers of the model.
        model_layers: usize,
    },
    /// The fused CUDA engine was asked to run split.
    #[error("the fused CUDA engine runs on one GPU; a split across devices runs on burn's operations (--engine burn)")]
    FusedEngineSplit,
    /// The CUDA engine refused or failed.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// A decoder in the implementation chosen at load.
#[allow(clippy::large_enum_variant)] // one per loaded model
pub enum TextDecoder<B: Backend> {
    /// burn's decoder.
    Burn(Decoder<B>),
    /// The CUDA engine (behind a lock: it owns its KV cache and scratch buffers).
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Mutex<CudaDecoder>),
}

impl<B: Backend> TextDecoder<B> {
    /// Loads the weights of `src` (names as `style` spells them) into the implementation `engine` names.
    pub fn load(config: DecoderConfig, src: &dyn WeightSource, style: KeyStyle, device: &B::Device, engine: EngineChoice) -> Result<Self, TextDecoderError> {
        Ok(match engine {
            EngineChoice::Burn => TextDecoder::Burn(Decoder::load(config, src, style, device)?),
            #[cfg(feature = "cuda")]
            EngineChoice::Cuda(opts) => TextDecoder::Cuda(std::sync::Mutex::new(CudaDecoder::load(config, src, style, opts)?)),
        })
    }

    /// [`TextDecoder::load`] split across `devices` as `placement` says (its shares in the order
    /// of `devices`): the embeddings and head on the first, each layer on its share's device.
    /// Only burn's decoder splits; the fused CUDA engine runs on one GPU.
    pub fn load_placed(config: DecoderConfig, src: &dyn WeightSource, style: KeyStyle, devices: &[B::Device], placement: &Placement, engine: EngineChoice) -> Result<Self, TextDecoderError> {
        let on = placement.layer_devices();
        if placement.shares.len() != devices.len() || on.len() != config.num_layers || devices.is_empty() {
            let (shares, plan_layers, devices, model_layers) = (placement.shares.len(), on.len(), devices.len(), config.num_layers);
            return Err(TextDecoderError::PlanMismatch { shares, plan_layers, devices, model_layers });
        }
        if engine != EngineChoice::Burn {
            return Err(TextDecoderError::FusedEngineSplit);
        }
        Ok(TextDecoder::Burn(Decoder::load_split(config, src, style, devices, &on)?))
    }

    /// burn's decoder, when that is what runs the model.
    pub fn burn(&self) -> Option<&Decoder<B>> {
        match self {
            TextDecoder::Burn(d) => Some(d),
            #[cfg(feature = "cuda")]
            TextDecoder::Cuda(_) => None,
        }
    }

    /// burn's decoder, mutably (to change its settings), when that is what runs the model.
    pub fn burn_mut(&mut self) -> Option<&mut Decoder<B>> {
        match self {
            TextDecoder::Burn(d) => Some(d),
            #[cfg(feature = "cuda")]
            TextDecoder::Cuda(_) => None,
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> DecoderConfig {
        match self {
            TextDecoder::Burn(d) => d.config.clone(),
            #[cfg(feature = "cuda")]
            TextDecoder::Cuda(e) => lock_engine(e).config.clone(),
        }
    }

    /// Runs `f` on a one-sequence [`StepDecoder`] ready to prefill `prompt_ids` (the engine stays
    /// locked until `f` returns).
    pub fn steps<R>(&self, prompt_ids: &[u32], f: impl FnOnce(&mut dyn StepDecoder<Error = TextDecoderError>) -> R) -> Result<R, TextDecoderError> {
        match self {
            TextDecoder::Burn(d) => {
                let embeds = d.embed_ids(prompt_ids).reshape([1, prompt_ids.len(), d.config.hidden_size]);
                Ok(f(&mut AsTextDecoderErrors(BurnSteps::new(d, embeds))))
            }
            #[cfg(feature = "cuda")]
            TextDecoder::Cuda(e) => {
                let mut engine = lock_engine(e);
                let prompt = engine.embed_ids(prompt_ids)?;
                Ok(f(&mut AsTextDecoderErrors(EngineSteps { engine: &mut engine, prompt: &prompt[..] })))
            }
        }
    }
}

/// The engine behind its lock; a panic while it was held leaves nothing half-written that a new
/// request reads (every request starts with a prefill).
#[cfg(feature = "cuda")]
pub fn lock_engine(e: &std::sync::Mutex<CudaDecoder>) -> std::sync::MutexGuard<'_, CudaDecoder> {
    e.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A [`StepDecoder`] that reports its errors as [`TextDecoderError`]s, so either implementation
/// fits one `dyn StepDecoder`.
struct AsTextDecoderErrors<D>(D);

impl<D: StepDecoder> StepDecoder for AsTextDecoderErrors<D>
where
    TextDecoderError: From<D::Error>,
{
    type Error = TextDecoderError;

    fn prefill(&mut self) -> Result<(), TextDecoderError> {
        Ok(self.0.prefill()?)
    }

    fn logits(&mut self) -> Result<Vec<Vec<f32>>, TextDecoderError> {
        Ok(self.0.logits()?)
    }

    fn reorder(&mut self, rows: &[usize]) -> Result<(), TextDecoderError> {
        Ok(self.0.reorder(rows)?)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<(), TextDecoderError> {
        Ok(self.0.step(tokens)?)
    }

    fn greedy_token(&mut self, seq: &[u32], penalty: f32) -> Result<u32, TextDecoderError> {
        Ok(self.0.greedy_token(seq, penalty)?)
    }

    fn top_logprobs(&mut self, seqs: &[Vec<u32>], penalty: f32, k: usize) -> Result<Vec<Vec<(f32, u32)>>, TextDecoderError> {
        Ok(self.0.top_logprobs(seqs, penalty, k)?)
    }
}

impl From<std::convert::Infallible> for TextDecoderError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}
