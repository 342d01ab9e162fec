//! The article: text, image slots, and the record of every decision, saved as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use xcomposer_retrieval::ScorePart;

use xcomposer_llm::capped::{Cap, read_within};

use crate::error::ComposeError;
use crate::language::Language;

/// The `format` field of a saved article.
pub const ARTICLE_FORMAT: &str = "xcomposer-article";
/// The version of the saved layout; another version is refused with a clear error.
pub const ARTICLE_VERSION: u32 = 1;
/// The largest `article.json` read (a long article with many candidates is well under 1 MiB).
pub const MAX_ARTICLE_BYTES: u64 = 64 << 20;

/// The cap of a loaded `article.json`: [`MAX_ARTICLE_BYTES`], raised by `XCOMPOSER_MAX_ARTICLE_BYTES`.
pub const ARTICLE_CAP: Cap = Cap { var: "XCOMPOSER_MAX_ARTICLE_BYTES", default: MAX_ARTICLE_BYTES };

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A model's answer.
    Model,
    /// A deterministic rule, because the model's answer was unusable (or there is no model).
    Fallback,
    /// A scorer's ranking.
    Score,
    /// The user (request or edit).
    User,
}

/// How a value came about: who decided, a one-line reason, and the model's raw answer if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Who decided.
    pub by: Source,
    /// Why, in words.
    pub detail: String,
    /// The model's raw answer, when one was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

impl Provenance {
    /// A decision with no raw answer.
    pub fn new(by: Source, detail: impl Into<String>) -> Self {
        Provenance { by, detail: detail.into(), raw: None }
    }

    /// A model's decision with its raw answer.
    pub fn model(detail: impl Into<String>, raw: impl Into<String>) -> Self {
        Provenance { by: Source::Model, detail: detail.into(), raw: Some(raw.into()) }
    }
}

/// An image that could fill a slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The image file (absolute).
    pub path: PathBuf,
    /// The retriever's score (higher is better).
    pub score: f32,
    /// The parts of the score.
    #[serde(default)]
    pub parts: Vec<ScorePart>,
    /// The image's own title or description, if the library has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where a remote candidate came from (absent for library images and in older articles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteOrigin>,
}

/// The origin of an image fetched from a remote source: what the article must credit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteOrigin {
    /// The image's URL, as the source gave it.
    pub url: String,
    /// The URL it was fetched from after redirects.
    pub final_url: String,
    /// Its licence, as the source states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    /// The page the image is shown on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_page: Option<String>,
    /// The search endpoint that proposed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// An image placed after a paragraph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSlot {
    /// The paragraph (0-based) the image follows.
    pub after_paragraph: usize,
    /// The caption, which is also the retrieval query.
    pub caption: String,
    /// How the caption was written.
    pub caption_source: Provenance,
    /// The retrieved candidates, best first.
    pub candidates: Vec<Candidate>,
    /// The chosen candidate (an index into `candidates`).
    pub chosen: usize,
    /// How it was chosen.
    pub selection: Provenance,
    /// The copied image inside the output folder (`assets/NAME`), once rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
}

impl ImageSlot {
    /// The chosen image.
    pub fn image(&self) -> Option<&Candidate> {
        self.candidates.get(self.chosen)
    }
}

/// Wall time of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
    /// Tokens the stage's model generated, if it used one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tokens: Option<usize>,
}

/// The settings a composition ran with (kept so an edit can run the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Sampling seed of the writer.
    pub seed: u64,
    /// The writer's token budget.
    pub max_new_tokens: usize,
    /// The most paragraphs kept.
    pub max_paragraphs: usize,
    /// The number of images asked for (none: the spotter decides).
    pub images: Option<usize>,
    /// Candidates retrieved per slot.
    pub candidates: usize,
}

/// An illustrated article.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Article {
    /// Always [`ARTICLE_FORMAT`].
    pub format: String,
    /// [`ARTICLE_VERSION`].
    pub version: u32,
    /// What the user asked for.
    pub instruction: String,
    /// The language of the prompts.
    pub language: Language,
    /// The title.
    pub title: String,
    /// How the title was made.
    pub title_source: Provenance,
    /// The paragraphs, one per line of the writer's text.
    pub paragraphs: Vec<String>,
    /// How the text was written (the raw text is kept in `raw`).
    pub text_source: Provenance,
    /// How the image positions were chosen.
    pub spotting: Provenance,
    /// The images, in paragraph order.
    pub images: Vec<ImageSlot>,
    /// The settings used.
    pub settings: Settings,
    /// The component behind each stage (`writer`, `spotter`, `captioner`, `retriever`, `selector`).
    pub models: BTreeMap<String, String>,
    /// The image library searched, if the retriever has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
    /// Wall time per stage.
    pub timings: Vec<StageTiming>,
    /// The edits applied since composing, oldest first.
    #[serde(default)]
    pub edits: Vec<String>,
}

impl Article {
    /// The slot after paragraph `p`, if any.
    pub fn slot_after(&self, p: usize) -> Option<usize> {
        self.images.iter().position(|s| s.after_paragraph == p)
    }

    /// The paragraphs that have an image after them.
    pub fn spots(&self) -> Vec<usize> {
        self.images.iter().map(|s| s.after_paragraph).collect()
    }

    /// The captions written so far with their paragraphs, in paragraph order.
    pub fn captions(&self) -> Vec<(usize, String)> {
        self.images.iter().map(|s| (s.after_paragraph, s.caption.clone())).collect()
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("articles serialize")
    }

    /// Parses and checks a saved article; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ComposeError> {
        let bad = |reason: String| ComposeError::BadArticle { path: path.into(), reason };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some(ARTICLE_FORMAT) => {}
            other => return Err(bad(format!("field `format` is {other:?}, expected {ARTICLE_FORMAT:?}"))),
        }
        match v.get("version").and_then(|f| f.as_u64()) {
            Some(n) if n == ARTICLE_VERSION as u64 => {}
            other => return Err(bad(format!("field `version` is {other:?}, this build reads version {ARTICLE_VERSION}"))),
        }
        let a: Article = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        a.check().map_err(bad)?;
        Ok(a)
    }

    /// Reads a saved article: a regular file (never a FIFO or device) of at most
    /// [`ARTICLE_CAP`].
    pub fn load(path: &Path) -> Result<Self, ComposeError> {
        let bytes = read_within(path, ARTICLE_CAP).map_err(|e| ComposeError::io(path, e.reason()))?;
        let text = String::from_utf8(bytes).map_err(|e| ComposeError::BadArticle { path: path.into(), reason: format!("not UTF-8 text ({e})") })?;
        Self::from_json(&text, path)
    }

    /// Checks the cross-field rules: slots in order, one per paragraph, indices in range.
    pub fn check(&self) -> Result<(), String> {
        for (i, s) in self.images.iter().enumerate() {
            if s.after_paragraph >= self.paragraphs.len() {
                return Err(format!("images[{i}].after_paragraph is {}, but there are {} paragraphs", s.after_paragraph, self.paragraphs.len()));
            }
            if s.chosen >= s.candidates.len() {
                return Err(format!("images[{i}].chosen is {}, but it has {} candidates", s.chosen, s.candidates.len()));
            }
            if i > 0 && self.images[i - 1].after_paragraph >= s.after_paragraph {
                return Err(format!("images[{i}] is not after images[{}] (one image per paragraph, in order)", i - 1));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_only_regular_files_within_the_cap() {
        let dir = std::env::temp_dir().join(format!("xcomposer-article-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Before: /dev/zero was read until memory ran out, and a FIFO blocked forever.
        let e = Article::load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(e, "/dev/zero: not a regular file (a folder, FIFO or device); expected a file");
        let big = dir.join("article.json");
        std::fs::File::create(&big).unwrap().set_len(MAX_ARTICLE_BYTES + 1).unwrap();
        let e = Article::load(&big).unwrap_err().to_string();
        assert_eq!(e, format!("{}: larger than the limit of {MAX_ARTICLE_BYTES} bytes (raise it with the environment variable XCOMPOSER_MAX_ARTICLE_BYTES)", big.display()));
        std::fs::write(&big, b"{\"format\": \"\xff\"}").unwrap();
        let e = Article::load(&big).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
