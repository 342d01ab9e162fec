//! The caption → image score interface and the default scorers.
//!
//! A [`Scorer`] scores every image of an [`ImageLibrary`] against a batch of captions, from the
//! features the library stored at index time. Every default score is a **cosine similarity of
//! unit vectors in MiniLM's sentence space** (−1 … 1; in practice about 0 for unrelated texts
//! and 0.5–0.8 for a caption and a description of the same thing), so scores are comparable
//! across images, across queries and between scorers:
//! - the tag scorer, [`EmbeddingScorer::tags`] (ConSE, Norouzi et al. 2014): the image is the
//!   probability-weighted mean of the embeddings of its top ImageNet label names;
//! - the metadata scorer, [`EmbeddingScorer::metadata`]: the image is the embedding of its own
//!   text (title, description, alt text, EXIF description, a cleaned file name); no opinion on
//!   images without any;
//! - the hybrid, [`EmbeddingScorer::weighted`]: the weighted mean of both over the parts that
//!   have an opinion, so an image without metadata is judged by its tags alone rather than
//!   penalised; [`HybridScorer`] combines any scorers (e.g. CLIP with these) the same way.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use rayon::prelude::*;

use crate::embedder::{TextEmbedder, dot};
pub use crate::library::features::{METADATA_FEATURE, Score, ScoreError, ScorePart, TAG_FEATURE};
use crate::library::{Hit, ImageLibrary, LibraryError};

/// One scorer's raw scores: `values[c][i]` for caption `c` and image `i`, `None` where it has
/// no opinion about the image.
#[derive(Debug, Clone)]
pub struct PartScores {
    /// The scorer's name.
    pub scorer: String,
    /// Its weight in the total.
    pub weight: f32,
    /// `[caption][image]`.
    pub values: Vec<Vec<Option<f32>>>,
}

/// The scores of every library image for a batch of captions, kept per part so that ranking
/// touches plain numbers and only the winners are explained.
#[derive(Debug, Clone)]
pub struct ScoreMatrix {
    /// The parts; the total is their weighted mean over the parts with an opinion.
    pub parts: Vec<PartScores>,
}

impl ScoreMatrix {
    /// The total for caption `c` and image `i`, or `None` if no part has an opinion.
    pub fn total(&self, c: usize, i: usize) -> Option<f32> {
        let (mut sum, mut wsum) = (0f32, 0f32);
        for p in &self.parts {
            if let Some(v) = p.values[c][i] {
                sum += v * p.weight;
                wsum += p.weight;
            }
        }
        (wsum > 0.0).then(|| sum / wsum)
    }

    /// The total with its breakdown.
    pub fn explain(&self, c: usize, i: usize) -> Option<Score> {
        let total = self.total(c, i)?;
        let parts = self.parts.iter().filter_map(|p| p.values[c][i].map(|v| ScorePart { scorer: p.scorer.clone(), score: v, weight: p.weight })).collect();
        Some(Score { total, parts })
    }
}

/// Scores library images against captions.
pub trait Scorer: Send + Sync {
    /// A short name, used in score breakdowns.
    fn name(&self) -> &str;

    /// The scores of every image of `library` for each caption.
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<ScoreMatrix, ScoreError>;
}

/// A shared scorer scores as the scorer it shares (one scorer for a library and remote sources).
impl<S: Scorer + ?Sized> Scorer for Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<ScoreMatrix, ScoreError> {
        (**self).score(captions, library)
    }
}

/// Cosine of each caption embedding with each stored row of `feature`, as one part of weight 1.
pub(crate) fn cosine_scores(name: &str, feature: &str, queries: &[Vec<f32>], library: &ImageLibrary) -> Result<PartScores, ScoreError> {
    let m = library.feature(feature).ok_or_else(|| ScoreError::MissingFeature { index: library.index_dir().display().to_string(), feature: feature.into() })?;
    let values = queries.iter().map(|q| (0..library.len()).into_par_iter().map(|i| m.row(i).map(|r| dot(q, r))).collect()).collect();
    Ok(PartScores { scorer: name.into(), weight: 1.0, values })
}

/// Compares the caption embedding with stored image features of the same text space: the tag
/// feature (ConSE: the probability-weighted embedding of the image's top labels), the metadata
/// feature (the embedding of the image's own text), or both as a weighted hybrid. Captions are
/// embedded once however many features are compared.
pub struct EmbeddingScorer<B: Backend> {
    embedder: Arc<TextEmbedder<B>>,
    /// `(part name, stored feature, weight)`.
    features: Vec<(&'static str, &'static str, f32)>,
    name: String,
}

impl<B: Backend> EmbeddingScorer<B> {
    /// Tags and metadata with the given weights (a zero weight leaves that part out); the total
    /// is the weighted mean over the parts that have an opinion about an image.
    pub fn weighted(embedder: Arc<TextEmbedder<B>>, tags: f32, metadata: f32) -> Self {
        let features: Vec<_> = [("tags", TAG_FEATURE, tags), ("metadata", METADATA_FEATURE, metadata)].into_iter().filter(|f| f.2 > 0.0).collect();
        let name = features.iter().map(|(n, _, w)| format!("{n}×{w}")).collect::<Vec<_>>().join("+");
        Self { embedder, features, name }
    }

    /// The tag scorer (ConSE), embedding captions with `embedder` (the one the index used).
    pub fn tags(embedder: Arc<TextEmbedder<B>>) -> Self {
        Self::weighted(embedder, 1.0, 0.0)
    }

    /// The metadata scorer.
    pub fn metadata(embedder: Arc<TextEmbedder<B>>) -> Self {
        Self::weighted(embedder, 0.0, 1.0)
    }

    /// The default hybrid: tags 0.5, metadata 0.5.
    pub fn hybrid(embedder: Arc<TextEmbedder<B>>) -> Self {
        Self::weighted(embedder, 0.5, 0.5)
    }
}

impl<B: Backend> Scorer for EmbeddingScorer<B>
where
    TextEmbedder<B>: Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<ScoreMatrix, ScoreError> {
        let queries = self.embedder.embed(captions)?;
        let mut parts = vec![];
        for &(name, feature, weight) in &self.features {
            parts.push(PartScores { weight, ..cosine_scores(name, feature, &queries, library)? });
        }
        Ok(ScoreMatrix { parts })
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
}

impl Scorer for HybridScorer {
    fn name(&self) -> &str {
        &self.name
    }
    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<ScoreMatrix, ScoreError> {
        let mut parts = vec![];
        for (scorer, w) in &self.parts {
            for p in scorer.score(captions, library)?.parts {
                parts.push(PartScores { weight: p.weight * w, ..p });
            }
        }
        Ok(ScoreMatrix { parts })
    }
}

impl ImageLibrary {
    /// The `k` best images for each caption, best first (images the scorer has no opinion on
    /// are not returned).
    pub fn search(&self, scorer: &dyn Scorer, captions: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, LibraryError> {
        let scores = scorer.score(captions, self)?;
        Ok((0..captions.len())
            .map(|c| {
                let mut ranked: Vec<(usize, f32)> = (0..self.len()).filter_map(|i| scores.total(c, i).map(|t| (i, t))).collect();
                let k = k.min(ranked.len());
                if k > 0 && k < ranked.len() {
                    ranked.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                }
                ranked.truncate(k);
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(self.images[a.0].path.cmp(&self.images[b.0].path)));
                ranked.into_iter().map(|(i, _)| Hit { image: i, path: self.images[i].path.clone(), score: scores.explain(c, i).expect("ranked images have a score") }).collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::library::IndexedImage;

    #[test]
    fn search_ranks_by_total_and_skips_images_without_an_opinion() {
        struct Fixed;
        impl Scorer for Fixed {
            fn name(&self) -> &str {
                "fixed"
            }
            fn score(&self, captions: &[&str], lib: &ImageLibrary) -> Result<ScoreMatrix, ScoreError> {
                let values = captions.iter().map(|_| (0..lib.len()).map(|i| (i != 1).then_some(i as f32 * 0.1)).collect()).collect();
                Ok(ScoreMatrix { parts: vec![PartScores { scorer: "fixed".into(), weight: 1.0, values }] })
            }
        }
        let im = |p: &str| IndexedImage { path: p.into(), sha256: String::new(), bytes: 0, width: 1, height: 1, tags: vec![], exif_description: None, metadata_text: None, metadata_sources: vec![], rows: BTreeMap::new() };
        let lib = ImageLibrary::from_parts(Path::new("/lib"), vec![im("a"), im("b"), im("c"), im("d")], BTreeMap::new());
        let hits = lib.search(&Fixed, &["q"], 2).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.path.as_str()).collect::<Vec<_>>(), ["d", "c"]);
        let all = lib.search(&Fixed, &["q"], 10).unwrap();
        assert_eq!(all[0].len(), 3);
    }
}
