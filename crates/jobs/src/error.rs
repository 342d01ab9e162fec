//! The errors of job files, the store, the results log and the queue.

use std::path::PathBuf;

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
    /// Reading or writing a file or folder failed.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error, with what was being done.
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
    /// An I/O error on `path`, saying what was being done.
    pub fn io(path: impl Into<PathBuf>, doing: &str, e: std::io::Error) -> Self {
        JobError::Io { path: path.into(), message: format!("{doing}: {e}") }
    }
}
