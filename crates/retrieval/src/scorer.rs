//! The caption → image score interface and the default scorers.
//!
//! A [`Scorer`] scores every image of an [`ImageLibrary`] against a batch of captions, from the
//! features the library stored at index time. Every default score is a **cosine similarity of
//! unit vectors in MiniLM's sentence space** (−1 … 1; in practice about 0 for unrelated texts
//! and 0.5–0.8 for a caption and a description of the same thing), so scores are comparable
//! across images, across queries and between scorers:
//! - [`TagScorer`] (ConSE, Norouzi et al. 2014): the image is the probability-weighted mean of
//!   the embeddings of its top ImageNet label names; no opinion on images without tags.
//! - [`MetadataScorer`]: the image is the embedding of its own text (title, description, alt
//!   text, EXIF description, a cleaned file name); no opinion on images without any.
//! - [`HybridScorer`]: the weighted mean of its parts over the parts that have an opinion, so an
//!   image without metadata is judged by its tags alone rather than penalised.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embedder::{EmbedderError, TextEmbedder, dot};
use crate::library::ImageLibrary;

/// The stored feature a [`TagScorer`] reads.
pub const TAG_FEATURE: &str = "tags";
/// The stored feature a [`MetadataScorer`] reads.
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
    /// The library lacks a feature this scorer needs.
    #[error("the library index at {index} has no '{feature}' features: re-index it with `xcomposer index` and this scorer")]
    MissingFeature {
        /// The index folder.
        index: String,
        /// The feature.
        feature: String,
    },
}

/// Scores library images against captions.
pub trait Scorer: Send + Sync {
    /// A short name, used in score breakdowns.
    fn name(&self) -> &str;

    /// `result[c][i]`: the score of image `i` of `library` for caption `c`, or `None` where the
    /// scorer has no opinion about the image.
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<Vec<Vec<Option<Score>>>, ScoreError>;
}

/// Cosine of each caption embedding with each stored row of `feature`.
fn cosine_scores(name: &str, feature: &str, queries: &[Vec<f32>], library: &ImageLibrary) -> Result<Vec<Vec<Option<Score>>>, ScoreError> {
    let m = library.feature(feature).ok_or_else(|| ScoreError::MissingFeature { index: library.index_dir().display().to_string(), feature: feature.into() })?;
    Ok(queries
        .iter()
        .map(|q| {
            (0..library.len())
                .into_par_iter()
                .map(|i| {
                    m.row(i).map(|r| {
                        let s = dot(q, r);
                        Score { total: s, parts: vec![ScorePart { scorer: name.into(), score: s, weight: 1.0 }] }
                    })
                })
                .collect()
        })
        .collect())
}

/// ConSE: the caption against the probability-weighted embedding of the image's top labels.
pub struct TagScorer<B: Backend> {
    embedder: Arc<TextEmbedder<B>>,
}

impl<B: Backend> TagScorer<B> {
    /// A tag scorer embedding captions with `embedder` (the one the index was built with).
    pub fn new(embedder: Arc<TextEmbedder<B>>) -> Self {
        Self { embedder }
    }
}

impl<B: Backend> Scorer for TagScorer<B>
where
    TextEmbedder<B>: Send + Sync,
{
    fn name(&self) -> &str {
        "tags"
    }
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<Vec<Vec<Option<Score>>>, ScoreError> {
        cosine_scores(self.name(), TAG_FEATURE, &self.embedder.embed(captions)?, library)
    }
}

/// The caption against the image's own text.
pub struct MetadataScorer<B: Backend> {
    embedder: Arc<TextEmbedder<B>>,
}

impl<B: Backend> MetadataScorer<B> {
    /// A metadata scorer embedding captions with `embedder`.
    pub fn new(embedder: Arc<TextEmbedder<B>>) -> Self {
        Self { embedder }
    }
}

impl<B: Backend> Scorer for MetadataScorer<B>
where
    TextEmbedder<B>: Send + Sync,
{
    fn name(&self) -> &str {
        "metadata"
    }
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<Vec<Vec<Option<Score>>>, ScoreError> {
        cosine_scores(self.name(), METADATA_FEATURE, &self.embedder.embed(captions)?, library)
    }
}

/// A weighted mean of other scorers over the parts that have an opinion.
pub struct HybridScorer {
    parts: Vec<(Box<dyn Scorer>, f32)>,
    name: String,
}

impl HybridScorer {
    /// Combines `(scorer, weight)` pairs; weights need not sum to 1.
    pub fn new(parts: Vec<(Box<dyn Scorer>, f32)>) -> Self {
        let name = parts.iter().map(|(s, w)| format!("{}×{w}", s.name())).collect::<Vec<_>>().join("+");
        Self { parts, name }
    }

    /// The default: tags 0.5, metadata 0.5.
    pub fn default_for<B: Backend>(embedder: Arc<TextEmbedder<B>>) -> Self
    where
        TextEmbedder<B>: Send + Sync,
    {
        Self::weighted(embedder, 0.5, 0.5)
    }

    /// Tags and metadata with the given weights (a zero weight leaves that part out).
    pub fn weighted<B: Backend>(embedder: Arc<TextEmbedder<B>>, tags: f32, metadata: f32) -> Self
    where
        TextEmbedder<B>: Send + Sync,
    {
        let mut parts: Vec<(Box<dyn Scorer>, f32)> = vec![];
        if tags > 0.0 {
            parts.push((Box::new(TagScorer::new(embedder.clone())), tags));
        }
        if metadata > 0.0 {
            parts.push((Box::new(MetadataScorer::new(embedder)), metadata));
        }
        Self::new(parts)
    }
}

impl Scorer for HybridScorer {
    fn name(&self) -> &str {
        &self.name
    }
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<Vec<Vec<Option<Score>>>, ScoreError> {
        let each = self.parts.iter().map(|(s, _)| s.score(captions, library)).collect::<Result<Vec<_>, _>>()?;
        Ok((0..captions.len())
            .map(|c| {
                (0..library.len())
                    .map(|i| {
                        let mut parts = vec![];
                        for ((_, w), scores) in self.parts.iter().zip(&each) {
                            if let Some(s) = &scores[c][i] {
                                parts.extend(s.parts.iter().map(|p| ScorePart { weight: p.weight * w, ..p.clone() }));
                            }
                        }
                        let wsum: f32 = parts.iter().map(|p| p.weight).sum();
                        (wsum > 0.0).then(|| Score { total: parts.iter().map(|p| p.score * p.weight).sum::<f32>() / wsum, parts })
                    })
                    .collect()
            })
            .collect())
    }
}
