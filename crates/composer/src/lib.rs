//! The xcomposer pipeline, the top of the workspace: instruction → article text → image slots →
//! candidates → chosen images → Markdown / HTML / JSON.
//!
//! Each stage is a trait with a default implementation, so a publishing tool can swap any of
//! them: [`ArticleWriter`] ([`writer`]), [`ImageSpotter`] ([`spotter`]), [`Captioner`]
//! ([`captioner`]), [`Retriever`] ([`retriever`]) and [`Selector`] ([`selector`]). [`Composer`]
//! holds one of each and produces an [`Article`], a serde model that records every decision and
//! why; [`render`] writes it out and [`edit`] changes a saved one. The language-model stages
//! see the model through [`TextModel`] and take their prompts from [`prompts`] (TOML files,
//! English and the original's Chinese).
//!
//! ```no_run
//! use std::sync::Arc;
//! use burn::backend::Flex;
//! use xcomposer_composer::{ChatLanguageModel, ComposeRequest, Composer, LibraryRetriever, render};
//! use xcomposer_llm::{LanguageModel, fetch};
//! use xcomposer_retrieval::{EmbeddingScorer, ImageLibrary, TextEmbedder};
//!
//! let device = Default::default();
//! let llm = LanguageModel::<Flex>::load(&fetch::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf"), &device)?;
//! let embedder = Arc::new(TextEmbedder::<Flex>::load_default(&fetch::models_dir(), &device, &mut |_| {})?);
//! let library = ImageLibrary::open("photos".as_ref(), None)?; // indexed with `xcomposer index photos`
//! let retriever = LibraryRetriever { library, scorer: Box::new(EmbeddingScorer::hybrid(embedder)), scorer_name: "hybrid".into() };
//! let composer = Composer::with_model(Arc::new(ChatLanguageModel::new(llm)), Box::new(retriever));
//! let mut article = composer.compose(&ComposeRequest::new("Write an illustrated article about coffee."), &mut |_| {})?;
//! render::write(&mut article, "out".as_ref(), &[render::Format::Markdown, render::Format::Json], false, &composer.image_roots())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod answer_grammar;
pub mod article;
pub mod captioner;
pub mod cleanup;
pub mod composer;
pub mod edit;
pub mod error;
pub mod language;
pub mod prompts;
pub mod render;
pub mod retriever;
pub mod selector;
pub mod spotter;
pub mod structured_writer;
pub mod text_model;
pub mod vlm_selector;
pub mod writer;

pub mod xcomposer_text;

pub use article::{Article, Candidate, ImageSlot, Provenance, RemoteOrigin, Source};
pub use captioner::{Captioner, LlmCaptioner};
pub use composer::{ComposeRequest, Composer, Event, Stage};
pub use edit::Edit;
pub use error::ComposeError;
pub use language::Language;
pub use prompts::{PromptSet, Prompts};
pub use retriever::{LibraryRetriever, MergedRetriever, RemoteRetriever, Retriever};
pub use selector::{BestScore, Selector};
pub use spotter::{ImageSpotter, LlmSpotter, SpreadSpotter};
pub use text_model::{ChatLanguageModel, TextModel};
pub use structured_writer::StructuredWriter;
pub use writer::{ArticleWriter, LlmWriter};
