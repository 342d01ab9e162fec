//! The errors of job files, the store, the results log and the queue.

use std::path::PathBuf;

use xcomposer_llm::readers::path_io::PathIoError;

/// What went wrong, naming the file, line or key involved.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A job line that is not a job (the message says what was expected).
    #[error("{file}:{line}: {message}")]
    BadLine {
        /// The jobs file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file or folder failed (the shared [`PathIoError`], and what was
    /// being done).
    #[error("{}: {doing}: {}", error.path.display(), error.error)]
    Io {
        /// What was being done ("reading the jobs file").
        doing: &'static str,
        /// The file or folder and the OS error.
        error: PathIoError,
    },
    /// A file or folder this crate cannot make or write (a job id that cannot name a folder, a
    /// result that cannot be encoded).
    #[error("{}: {message}", path.display())]
    Unusable {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A Redis command failed (connection lost, wrong reply, …).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A store URL this crate cannot write to (the message says what is supported).
    #[error("{url}: {message}")]
    StoreUrl {
        /// The URL as given.
        url: String,
        /// What is wrong and what is supported.
        message: String,
    },
    /// A queue entry or hash value that this crate did not write.
    #[error("queue {key}: {message}")]
    BadEntry {
        /// The stream or hash.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl JobError {
    /// Turns an I/O error that names its file ([`AtPath::at`](xcomposer_llm::readers::path_io::AtPath::at))
    /// into a job error saying what was being done: `.at(path).map_err(JobError::doing("reading the jobs file"))`.
    pub fn doing(what: &'static str) -> impl Fn(PathIoError) -> JobError {
        move |error| JobError::Io { doing: what, error }
    }
}
