//! Retrieval for xcomposer, stage 3 of composition: finding the image that fits a caption.
//!
//! - [`bert`] and [`embedder`]: the MiniLM sentence embedder ([`TextEmbedder`]);
//! - [`clip`], [`clip_tokenizer`] and [`clip_scorer`]: CLIP for users who bring Hugging Face
//!   CLIP weights ([`Clip`], [`ClipTokenizer`], [`ClipEmbedder`], [`ClipScorer`]);
//! - [`scorer`]: the caption → image score interface and the default scorers;
//! - [`library`]: the user's image folder as a persisted, incrementally updated index
//!   ([`ImageLibrary`]);
//! - [`default_library`]: real photos from registry packages with our own metadata, the
//!   library used when the user names none;
//! - [`remote`]: images over HTTP (the guarded [`remote::Fetcher`], remote image-search
//!   sources, URLs listed by a library).

pub mod bert;
pub mod clip;
#[cfg(feature = "cuda")]
pub mod clip_cuda;
pub mod clip_scorer;
pub mod clip_tokenizer;
pub mod embedder;

pub use clip::{Clip, ClipConfig, ClipError};
pub use clip_scorer::{ClipEmbedder, ClipScorer};
pub use clip_tokenizer::ClipTokenizer;
pub use embedder::{EmbedderError, TextEmbedder};
pub mod default_library;
pub mod library;
pub mod remote;
pub mod scorer;

pub use library::{Hit, ImageLibrary, IndexReport, IndexedImage, Indexer, LibraryError};
pub use scorer::{EmbeddingScorer, HybridScorer, Score, ScoreMatrix, ScorePart, Scorer};
