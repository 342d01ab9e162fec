//! What the index stores for the scorers and what they answer: the names of the stored
//! features, a caption–image [`Score`] and the errors of scoring. Shared by the library and the
//! scorers, so that the library needs no scorer.

use serde::{Deserialize, Serialize};

use crate::embedder::EmbedderError;

/// The stored feature the tag scorer reads.
pub const TAG_FEATURE: &str = "tags";
/// The stored feature the metadata scorer reads.
pub const METADATA_FEATURE: &str = "metadata";

/// One scorer's contribution to a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorePart {
    /// The scorer's name.
    pub scorer: String,
    /// Its score.
    pub score: f32,
    /// Its weight in the total.
    pub weight: f32,
}

/// A caption–image score and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The score used for ranking.
    pub total: f32,
    /// The parts it combines (one part for a simple scorer).
    pub parts: Vec<ScorePart>,
}

/// Errors while scoring.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Embedding the captions failed.
    #[error(transparent)]
    Embedder(#[from] EmbedderError),
    /// The library's features were made by another model than the scorer's.
    #[error("the library index at {index} holds features of {found}, not of {wanted}: re-index it with this model (`xcomposer index --clip DIR`)")]
    OtherModel {
        /// The index folder.
        index: String,
        /// The model that made the stored features.
        found: String,
        /// The scorer's model.
        wanted: String,
    },
    /// The library lacks a feature this scorer needs.
    #[error("the library index at {index} has no '{feature}' features: re-index it with `xcomposer index` and this scorer")]
    MissingFeature {
        /// The index folder.
        index: String,
        /// The feature.
        feature: String,
    },
}

/// The stored feature holding CLIP image embeddings.
pub const CLIP_FEATURE: &str = "clip";
