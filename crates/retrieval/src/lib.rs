//! Image retrieval for xcomposer, stage 3 of composition: a persisted index of the user's image
//! library, text embedders, CLIP, and the scorers that rank candidate images for a caption.
//!
//! Filled by later issues: the MiniLM embedder, the scorer interface and its implementations, and
//! the `ImageLibrary` index.
