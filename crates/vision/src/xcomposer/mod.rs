//! InternLM-XComposer v1, the whole model family in one place (as candle keeps `llava/`):
//!
//! | module | what | original file |
//! |---|---|---|
//! | [`visual`] | EVA-CLIP ViT-g, the perceive sampler (BLIP-2 Q-Former), the projection and image flags: an image becomes LLM embeddings | `modeling_vit.py`, `modeling_perceive_sampler.py` |
//! | [`image_encoder`] | the image path on burn or, beside the fused decode engine, on the GPU encoder runtime (`visual_cuda`) | |
//! | [`language`] | the LoRA merged into InternLM-7B at load, the slow tokenizer, the eoh/eoa ids and `gen_config` | `modeling_InternLM.py` (LoRA), `tokenization_InternLM_XComposer.py` |
//! | [`model`] | the model: config checks, loading (CPU or the fused CUDA engine), the chat prompt protocol (meta instruction, `<ImageHere>`, turns), decoding greedy, beams or sampled | `modeling_InternLM_XComposer.py` |
//!
//! The decoder itself is the llm crate's llama-family [`xcomposer_llm::Decoder`] (or its CUDA
//! engine); the composer crate keeps only the stage adapters that ask this model.

pub mod image_encoder;
pub mod language;
pub mod model;
pub mod visual;
#[cfg(feature = "cuda")]
pub mod visual_cuda;

pub use image_encoder::ImageEncoder;
pub use language::{EOA, EOH, InternLmTokenizer, LoraMerged, gen_config};
pub use model::{EngineChoice, LoadTimes, Piece, TextDecoder, Turn, XComposer, XComposerError};
