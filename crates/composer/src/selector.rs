//! Stage 3b, [`Selector`]: one candidate per slot. The default, [`BestScore`], takes the
//! retriever's best; a vision-language model's "A–D" chooser (the original's) plugs in through
//! the same trait.

use std::path::PathBuf;

use crate::article::{Candidate, Provenance, Source};
use crate::error::ComposeError;
use crate::language::Language;

/// What a selector sees of the article.
#[derive(Debug, Clone)]
pub struct SelectContext<'a> {
    /// The paragraphs.
    pub paragraphs: &'a [String],
    /// The paragraph the image follows.
    pub after: usize,
    /// The slot's caption.
    pub caption: &'a str,
    /// The images already placed, as `(paragraph, image)`.
    pub placed: &'a [(usize, PathBuf)],
    /// The prompt language.
    pub language: Language,
}

/// Picks one candidate.
pub trait Selector: Send + Sync {
    /// What the selector is (for provenance).
    fn id(&self) -> String;
    /// The index of the chosen candidate and why.
    fn select(&self, ctx: &SelectContext, candidates: &[Candidate]) -> Result<(usize, Provenance), ComposeError>;
}

/// The candidate with the highest score.
pub struct BestScore;

impl Selector for BestScore {
    fn id(&self) -> String {
        "best score".into()
    }

    fn select(&self, _: &SelectContext, candidates: &[Candidate]) -> Result<(usize, Provenance), ComposeError> {
        let best = candidates
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.score.total_cmp(&b.1.score).then(b.0.cmp(&a.0)))
            .ok_or_else(|| ComposeError::BadRequest("no candidate images to choose from (is the library empty?)".into()))?;
        Ok((best.0, Provenance::new(Source::Score, format!("the best score, {:.3}", best.1.score))))
    }
}
