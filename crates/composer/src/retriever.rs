//! Stage 3a, [`Retriever`]: the top-k candidate images for a caption. The default,
//! [`LibraryRetriever`], searches an [`ImageLibrary`] with any scorer of the retrieval crate.

use std::path::{Path, PathBuf};

use xcomposer_retrieval::{ImageLibrary, Scorer};

use crate::article::Candidate;
use crate::error::ComposeError;

/// Candidates for one caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieved {
    /// Best first.
    pub candidates: Vec<Candidate>,
    /// Set when the exclusions had to be ignored (every image already used).
    pub note: Option<String>,
}

/// Finds candidate images for captions.
pub trait Retriever: Send + Sync {
    /// What the retriever is (for provenance).
    fn id(&self) -> String;
    /// The image library searched, if there is one.
    fn library(&self) -> Option<&Path> {
        None
    }
    /// Up to `k` candidates for `caption`, none of `exclude` unless nothing else is left.
    fn retrieve(&self, caption: &str, k: usize, exclude: &[PathBuf]) -> Result<Retrieved, ComposeError>;
}

/// An image library and a scorer.
pub struct LibraryRetriever {
    /// The library.
    pub library: ImageLibrary,
    /// The scorer.
    pub scorer: Box<dyn Scorer>,
    /// The scorer's name, for provenance.
    pub scorer_name: String,
}

impl Retriever for LibraryRetriever {
    fn id(&self) -> String {
        format!("{} images in {}, {}", self.library.len(), self.library.root().display(), self.scorer_name)
    }

    fn library(&self) -> Option<&Path> {
        Some(self.library.root())
    }

    fn retrieve(&self, caption: &str, k: usize, exclude: &[PathBuf]) -> Result<Retrieved, ComposeError> {
        let hits = self.library.search(self.scorer.as_ref(), &[caption], k + exclude.len())?.remove(0);
        let candidates: Vec<Candidate> = hits
            .into_iter()
            .map(|h| {
                let image = &self.library.images()[h.image];
                Candidate {
                    path: self.library.path_of(h.image),
                    score: h.score.total,
                    parts: h.score.parts.clone(),
                    description: image.metadata_text.clone(),
                }
            })
            .collect();
        let fresh: Vec<Candidate> = candidates.iter().filter(|c| !exclude.contains(&c.path)).take(k).cloned().collect();
        if fresh.is_empty() && !candidates.is_empty() {
            let note = format!("all {} images are already used in this article; repeating one", self.library.len());
            return Ok(Retrieved { candidates: candidates.into_iter().take(k).collect(), note: Some(note) });
        }
        Ok(Retrieved { candidates: fresh, note: None })
    }
}
