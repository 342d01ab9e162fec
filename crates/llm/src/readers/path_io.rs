//! I/O errors that name their file: [`PathIoError`] and [`AtPath::at`], the one way the crates
//! attach a path to an `std::io::Error` (`std::fs::read(p).at(p)?`); each crate's error type
//! converts from it with `From`.

use std::path::{Path, PathBuf};

/// An I/O error on a file or folder, shown as `PATH: what went wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct PathIoError {
    /// The file or folder.
    pub path: PathBuf,
    /// What went wrong (a plain field, not a `source`, so an error chain prints it once).
    pub error: std::io::Error,
}

impl PathIoError {
    /// Whether the file or folder does not exist (callers often treat that as "absent").
    pub fn is_not_found(&self) -> bool {
        self.error.kind() == std::io::ErrorKind::NotFound
    }
}

/// Names the path in an I/O result's error.
pub trait AtPath<T> {
    /// The result, its error naming `path`.
    fn at(self, path: &Path) -> Result<T, PathIoError>;
}

impl<T> AtPath<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T, PathIoError> {
        self.map_err(|error| PathIoError { path: path.to_path_buf(), error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_path_once() {
        let path = Path::new("/nonexistent-xcomposer/config.json");
        let e = std::fs::read(path).at(path).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "/nonexistent-xcomposer/config.json: No such file or directory (os error 2)");
        assert!(std::error::Error::source(&e).is_none(), "a chain would print the reason twice");
    }
}
