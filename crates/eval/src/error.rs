//! The crate's errors: bad data always names its file and row.

use std::path::PathBuf;

/// What can go wrong reading a benchmark, running it or writing its results.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A malformed row, a missing image, an unknown task: `file` and `row` say where.
    #[error("{}: {row}: {message}", file.display())]
    Data {
        /// The file holding the row (or the folder, for a missing task folder).
        file: PathBuf,
        /// Where in the file ("line 12", "question 3", …).
        row: String,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] xcomposer_llm::readers::path_io::PathIoError),
    /// The model failed on a question (the message names the question).
    #[error("{id}: {source}")]
    Model {
        /// The question's id.
        id: String,
        /// The cause.
        source: xcomposer_vision::xcomposer::XComposerError,
    },
    /// The request cannot be run (a flag combination, a decoder that lacks what is needed).
    #[error("{0}")]
    Unsupported(String),
}

impl EvalError {
    /// A [`EvalError::Data`] from displayable parts.
    pub fn data(file: impl Into<PathBuf>, row: impl std::fmt::Display, message: impl std::fmt::Display) -> Self {
        EvalError::Data { file: file.into(), row: row.to_string(), message: message.to_string() }
    }

}

/// A row skipped under `--skip-bad`, listed in the results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    /// The error that would have stopped the run, with file and row.
    pub error: String,
}

/// Collects bad rows: the first one is an error unless `skip_bad`, then each is listed.
#[derive(Debug, Default)]
pub struct BadRows {
    /// Whether bad rows are skipped (`--skip-bad`) rather than fatal.
    pub skip_bad: bool,
    /// The rows skipped so far.
    pub skipped: Vec<Skipped>,
}

impl BadRows {
    /// Fatal unless skipping; else records `e` and returns `Ok(())` so the caller drops the row.
    pub fn handle(&mut self, e: EvalError) -> Result<(), EvalError> {
        if !self.skip_bad {
            return Err(e);
        }
        self.skipped.push(Skipped { error: e.to_string() });
        Ok(())
    }
}
