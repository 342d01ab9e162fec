//! The composer's error type.

use std::path::PathBuf;

/// Everything that can go wrong while composing, editing or rendering an article.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The caller's event callback asked to stop (between stages or while writing).
    #[error("stopped by the caller")]
    Cancelled,
    /// A prompt template file is malformed or lacks a stage.
    #[error("{file}: {reason}")]
    Prompts {
        /// The prompt file (or built-in set) at fault.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The language model failed.
    #[error("{stage}: the language model failed: {reason}")]
    Model {
        /// The stage that called it.
        stage: &'static str,
        /// The model's error.
        reason: String,
    },
    /// The image library failed.
    #[error("retrieval: {0}")]
    Library(#[from] xcomposer_retrieval::LibraryError),
    /// The writer produced no usable text.
    #[error("the writer produced no paragraphs for {0:?}")]
    EmptyArticle(String),
    /// An edit or request names something that does not exist.
    #[error("{0}")]
    BadRequest(String),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
    /// A saved article does not parse.
    #[error("{path}: not an xcomposer article: {reason}")]
    BadArticle {
        /// The article file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The output folder already holds files.
    #[error("{0}: the output folder exists and is not empty (pass --force to write into it; only the article's own files are replaced)")]
    OutputExists(PathBuf),
    /// An image the article names is not one that may be copied.
    #[error("{article}: field `{field}` is {path:?}, {reason}")]
    UnsafeImage {
        /// The article file the field belongs to.
        article: PathBuf,
        /// The field, as `images[I].candidates[J].path`.
        field: String,
        /// The path it names.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A rendered image link does not resolve to a file.
    #[error("{output}: the image link {link:?} does not resolve to a file")]
    BrokenLink {
        /// The rendered file.
        output: PathBuf,
        /// The link.
        link: String,
    },
}

impl From<xcomposer_llm::readers::path_io::PathIoError> for ComposeError {
    fn from(e: xcomposer_llm::readers::path_io::PathIoError) -> Self {
        ComposeError::Io { path: e.path, reason: e.error.to_string() }
    }
}

impl ComposeError {
    /// A file error on `path` whose reason is a message, not an `std::io::Error` (those go
    /// through [`xcomposer_llm::readers::path_io::AtPath::at`]).
    pub fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        ComposeError::Io { path: path.into(), reason: e.to_string() }
    }
}
