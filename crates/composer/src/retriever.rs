//! Stage 3a, [`Retriever`]: the top-k candidate images for a caption. The default,
//! [`LibraryRetriever`], searches an [`ImageLibrary`] with any scorer of the retrieval crate;
//! [`RemoteRetriever`] asks remote image-search endpoints and scores what they propose with the
//! same scorer; [`MergedRetriever`] ranks the candidates of several retrievers together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use xcomposer_retrieval::remote::{FetchedImage, Fetcher, RemoteSource, SearchRequest};
use xcomposer_retrieval::{ImageLibrary, Indexer, Scorer};

use crate::article::{Candidate, RemoteOrigin};
use crate::error::ComposeError;
use crate::language::Language;

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
    /// The folders its candidates' files are in (what rendering may copy from).
    fn image_roots(&self) -> Vec<PathBuf> {
        self.library().map(PathBuf::from).into_iter().collect()
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
                    remote: None,
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

/// Prepares the library of fetched images for the scorer (e.g. adds its CLIP features).
pub type PrepareLibrary = Box<dyn Fn(&mut ImageLibrary) -> Result<(), String> + Send + Sync>;

/// Remote image-search endpoints: each caption is sent to every source (in parallel), the
/// proposed images are fetched through the [`Fetcher`] into its cache, the cache folder is
/// indexed as a library (tags, metadata from the sources' titles and descriptions) and the
/// images of this query are ranked by the scorer. A source that fails costs at most the
/// fetcher's timeout; what failed is said in the result's note.
pub struct RemoteRetriever<B: Backend> {
    sources: Vec<RemoteSource>,
    fetcher: Arc<Fetcher>,
    indexer: Indexer<B>,
    scorer: Arc<dyn Scorer>,
    scorer_name: String,
    language: Language,
    prepare: Option<PrepareLibrary>,
    /// One index of the cache at a time.
    indexing: Mutex<()>,
}

impl<B: Backend> RemoteRetriever<B> {
    /// Searches `sources` for captions in `language`, scoring with `scorer` (named
    /// `scorer_name`) after `prepare`, if given, readied the cache's library.
    pub fn new(sources: Vec<RemoteSource>, fetcher: Arc<Fetcher>, indexer: Indexer<B>, scorer: Arc<dyn Scorer>, scorer_name: String, language: Language, prepare: Option<PrepareLibrary>) -> Self {
        Self { sources, fetcher, indexer, scorer, scorer_name, language, prepare, indexing: Mutex::new(()) }
    }

    /// The images every source proposes for `caption`, and a note per source that failed.
    fn gather(&self, caption: &str, k: usize) -> (Vec<FetchedImage>, Vec<String>) {
        let req = SearchRequest { query: caption.into(), k, language: self.language.code().into() };
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = self.sources.iter().map(|src| s.spawn(|| src.candidates(&self.fetcher, &req))).collect();
            handles.into_iter().map(|h| h.join().expect("a source thread panicked")).collect()
        });
        let (mut images, mut notes) = (vec![], vec![]);
        for (src, r) in self.sources.iter().zip(results) {
            match r {
                Ok(got) => {
                    if let Some(first) = got.failed.first() {
                        notes.push(format!("remote source {}: {} of its images skipped (first: {first})", src.endpoint, got.failed.len()));
                    }
                    images.extend(got.images);
                }
                Err(e) => notes.push(format!("remote source {} skipped: {e}", src.endpoint)),
            }
        }
        (images, notes)
    }
}

impl<B: Backend> Retriever for RemoteRetriever<B>
where
    Indexer<B>: Send + Sync,
{
    fn id(&self) -> String {
        let sources: Vec<&str> = self.sources.iter().map(|s| s.endpoint.as_str()).collect();
        format!("remote {} (cache {}), {}", sources.join(", "), self.fetcher.cache().dir().display(), self.scorer_name)
    }

    fn image_roots(&self) -> Vec<PathBuf> {
        vec![self.fetcher.cache().dir().to_path_buf()]
    }

    fn retrieve(&self, caption: &str, k: usize, exclude: &[PathBuf]) -> Result<Retrieved, ComposeError> {
        let (images, notes) = self.gather(caption, k + exclude.len());
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        if images.is_empty() {
            return Ok(Retrieved { candidates: vec![], note });
        }
        let by_name: HashMap<String, &FetchedImage> = images.iter().filter_map(|im| Some((im.path.file_name()?.to_string_lossy().into_owned(), im))).collect();
        let _one = self.indexing.lock().unwrap_or_else(|e| e.into_inner());
        let (mut lib, _) = ImageLibrary::index(self.fetcher.cache().dir(), None, &self.indexer, &mut |_| {})?;
        if let Some(prepare) = &self.prepare {
            prepare(&mut lib).map_err(|e| ComposeError::BadRequest(format!("preparing the remote images for scoring: {e}")))?;
        }
        let hits = lib.search(self.scorer.as_ref(), &[caption], lib.len())?.remove(0);
        let candidates = hits
            .into_iter()
            .filter_map(|h| {
                let fetched = by_name.get(&h.path)?;
                let r = &fetched.record;
                let remote = RemoteOrigin { url: r.url.clone(), final_url: r.final_url.clone(), licence: r.meta.licence.clone(), source_page: r.meta.source_page.clone(), source: r.meta.source.clone() };
                Some(Candidate { path: lib.path_of(h.image), score: h.score.total, parts: h.score.parts, description: lib.images()[h.image].metadata_text.clone(), remote: Some(remote) })
            })
            .filter(|c| !exclude.contains(&c.path))
            .take(k)
            .collect();
        Ok(Retrieved { candidates, note })
    }
}

/// Several retrievers ranked together by score (their scores must be comparable: the same
/// scorer); their notes are joined.
pub struct MergedRetriever {
    /// The retrievers; the first with a library names the article's library.
    pub parts: Vec<Box<dyn Retriever>>,
}

impl Retriever for MergedRetriever {
    fn id(&self) -> String {
        self.parts.iter().map(|p| p.id()).collect::<Vec<_>>().join(" + ")
    }

    fn library(&self) -> Option<&Path> {
        self.parts.iter().find_map(|p| p.library())
    }

    fn image_roots(&self) -> Vec<PathBuf> {
        self.parts.iter().flat_map(|p| p.image_roots()).collect()
    }

    fn retrieve(&self, caption: &str, k: usize, exclude: &[PathBuf]) -> Result<Retrieved, ComposeError> {
        let (mut candidates, mut notes) = (vec![], vec![]);
        for p in &self.parts {
            let got = p.retrieve(caption, k, exclude)?;
            candidates.extend(got.candidates);
            notes.extend(got.note);
        }
        candidates.sort_by(|a: &Candidate, b: &Candidate| b.score.total_cmp(&a.score));
        candidates.truncate(k);
        Ok(Retrieved { candidates, note: (!notes.is_empty()).then(|| notes.join("; ")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed candidates from a folder.
    struct Fixed(&'static str, Vec<f32>);

    impl Retriever for Fixed {
        fn id(&self) -> String {
            self.0.into()
        }
        fn image_roots(&self) -> Vec<PathBuf> {
            vec![PathBuf::from(self.0)]
        }
        fn retrieve(&self, _: &str, k: usize, _: &[PathBuf]) -> Result<Retrieved, ComposeError> {
            let candidates = self.1.iter().enumerate().map(|(i, &score)| Candidate { path: Path::new(self.0).join(i.to_string()), score, parts: vec![], description: None, remote: None }).take(k).collect();
            Ok(Retrieved { candidates, note: Some(format!("{} answered", self.0)) })
        }
    }

    #[test]
    fn merged_candidates_are_ranked_together_and_every_folder_may_be_copied_from() {
        let merged = MergedRetriever { parts: vec![Box::new(Fixed("/lib", vec![0.9, 0.3])), Box::new(Fixed("/cache", vec![0.5, 0.4]))] };
        let got = merged.retrieve("q", 3, &[]).unwrap();
        let order: Vec<(String, f32)> = got.candidates.iter().map(|c| (c.path.display().to_string(), c.score)).collect();
        assert_eq!(order, [("/lib/0".to_string(), 0.9), ("/cache/0".into(), 0.5), ("/cache/1".into(), 0.4)]);
        assert_eq!(got.note.as_deref(), Some("/lib answered; /cache answered"));
        assert_eq!(merged.image_roots(), [PathBuf::from("/lib"), PathBuf::from("/cache")]);
    }
}
