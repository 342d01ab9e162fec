//! Where finished articles go: [`ArticleStore`], what any store must guarantee, and
//! [`FolderStore`], article folders `ROOT/<id>/` each written whole or not at all: a job composes
//! into `ROOT/.partial/<id>.<worker>/`, which is renamed to `ROOT/<id>/` when complete. A rename
//! onto an existing folder fails, so when two workers finish the same job only one article
//! remains. A folder on NFS works the same for several machines; an object store would be
//! another [`ArticleStore`] (see the README's "Many articles").

use std::path::{Path, PathBuf};

use xcomposer_llm::readers::path_io::{AtPath, PathIoError};

use crate::JobError;
use crate::spec::valid_id;

/// The hidden folder of unfinished articles under the store's root.
pub const PARTIAL_DIR: &str = ".partial";

/// Where finished articles go, shared by every worker and batch run. A job is always composed
/// into a local folder from [`ArticleStore::begin`]; an implementation must guarantee that
/// [`ArticleStore::commit`] puts that whole article under its id atomically (readers see all of
/// it or nothing), that of two commits of one id the first wins and the other is dropped
/// ([`Committed::AlreadyStored`]), and that [`ArticleStore::is_stored`] answers by id whether a
/// commit has completed. [`FolderStore`] is the one built.
pub trait ArticleStore: Send + Sync {
    /// Whether the job's article is stored (complete).
    fn is_stored(&self, id: &str) -> Result<bool, JobError>;
    /// A fresh, empty local folder for `worker`'s try at `id` (an earlier one of the same
    /// worker and id is removed first).
    fn begin(&self, id: &str, worker: &str) -> Result<PathBuf, JobError>;
    /// Puts the complete folder `tmp` as the article `id`, whole or not at all, and removes `tmp`.
    fn commit(&self, tmp: &Path, id: &str) -> Result<Committed, JobError>;
    /// Removes a try's folder (an abandoned or failed try).
    fn discard(&self, tmp: &Path) -> Result<(), JobError>;
    /// Removes every unfinished try of `id` (call it only when the job's other tries are known
    /// to be dead), or of every job when `id` is `None`; returns how many.
    fn clear_partials(&self, id: Option<&str>) -> Result<usize, JobError>;
    /// Every file of a stored article, relative to the store's root, sorted.
    fn files(&self, id: &str) -> Result<Vec<PathBuf>, JobError>;
}

/// Article folders under one root, on a local or network file system.
#[derive(Debug, Clone)]
pub struct FolderStore {
    /// The folder holding one folder per job id.
    pub root: PathBuf,
}

/// What [`ArticleStore::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The article is now at `ROOT/<id>/`.
    Stored,
    /// `ROOT/<id>/` was already there (another run finished first); this copy was dropped.
    AlreadyStored,
}

impl FolderStore {
    /// A store at `root`, made if missing.
    pub fn open(root: &Path) -> Result<Self, JobError> {
        let partial = root.join(PARTIAL_DIR);
        std::fs::create_dir_all(&partial).at(&partial).map_err(JobError::doing("making the output folder"))?;
        Ok(FolderStore { root: root.to_path_buf() })
    }

    /// The finished article's folder.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

impl ArticleStore for FolderStore {
    /// The folder only appears complete (renamed into place).
    fn is_stored(&self, id: &str) -> Result<bool, JobError> {
        Ok(self.dir(id).is_dir())
    }

    fn begin(&self, id: &str, worker: &str) -> Result<PathBuf, JobError> {
        if !valid_id(id) || !valid_id(worker) {
            return Err(JobError::Unusable { path: self.root.clone(), message: format!("job id {id:?} or worker name {worker:?} cannot name a folder") });
        }
        let tmp = self.root.join(PARTIAL_DIR).join(format!("{id}.{worker}"));
        remove_dir_if_there(&tmp)?;
        std::fs::create_dir_all(&tmp).at(&tmp).map_err(JobError::doing("making the temporary article folder"))?;
        Ok(tmp)
    }

    /// Renames the folder into place as `ROOT/<id>/` (a rename onto an existing folder fails).
    fn commit(&self, tmp: &Path, id: &str) -> Result<Committed, JobError> {
        let target = self.dir(id);
        match std::fs::rename(tmp, &target) {
            Ok(()) => Ok(Committed::Stored),
            Err(_) if target.is_dir() => {
                self.discard(tmp)?;
                Ok(Committed::AlreadyStored)
            }
            Err(e) => Err(JobError::doing("moving the finished article into place")(PathIoError { path: target, error: e })),
        }
    }

    fn discard(&self, tmp: &Path) -> Result<(), JobError> {
        remove_dir_if_there(tmp)
    }

    fn clear_partials(&self, id: Option<&str>) -> Result<usize, JobError> {
        let dir = self.root.join(PARTIAL_DIR);
        let entries = std::fs::read_dir(&dir).at(&dir).map_err(JobError::doing("listing the temporary folders"))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if id.is_none_or(|id| name.strip_prefix(id).is_some_and(|rest| rest.starts_with('.'))) {
                remove_dir_if_there(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn files(&self, id: &str) -> Result<Vec<PathBuf>, JobError> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir(id)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).at(&dir).map_err(JobError::doing("listing the article"))?.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(&self.root).map(Path::to_path_buf).unwrap_or(p));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The folder a store URL names: `file:///path` (`%XX` escapes decoded; `file://localhost/path`
/// too) or a plain path. Any other scheme is refused, naming it and what is supported: an
/// object store would be another implementation of [`FolderStore`]'s steps (see the README's
/// "Many articles"), and none is built.
///
/// ```
/// use xcomposer_jobs::store::folder_of_url;
/// assert_eq!(folder_of_url("file:///srv/my%20articles").unwrap(), std::path::PathBuf::from("/srv/my articles"));
/// assert_eq!(folder_of_url("out/articles").unwrap(), std::path::PathBuf::from("out/articles"));
/// let e = folder_of_url("s3://bucket/articles").unwrap_err().to_string();
/// assert!(e.starts_with("s3://bucket/articles: the s3:// scheme is not supported"), "{e}");
/// ```
pub fn folder_of_url(url: &str) -> Result<PathBuf, JobError> {
    let bad = |message: String| JobError::StoreUrl { url: url.into(), message };
    let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| is_scheme(s)) else {
        return if url.is_empty() { Err(bad("expected a folder path or file:///path".into())) } else { Ok(PathBuf::from(url)) };
    };
    if !scheme.eq_ignore_ascii_case("file") {
        return Err(bad(format!("the {scheme}:// scheme is not supported; use file:///path or a folder path (a local or network folder shared by the workers)")));
    }
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(bad("a file URL names an absolute path on this machine: file:///path".into()));
    }
    percent_decoded(path).map(PathBuf::from).ok_or_else(|| bad("a %-escape is not two hex digits, or the decoded path is not UTF-8".into()))
}

/// Whether `s` is a URL scheme (a letter, then letters, digits, `+`, `-` or `.`).
fn is_scheme(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `text` with its `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = [bytes.next()?, bytes.next()?];
        out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
    }
    String::from_utf8(out).ok()
}

fn remove_dir_if_there(dir: &Path) -> Result<(), JobError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(JobError::doing("removing the temporary article folder")(PathIoError { path: dir.into(), error: e })),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_the_folder_that_failed_and_what_was_being_done() {
        let file = std::env::temp_dir().join(format!("xcomposer-jobs-not-a-folder-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let e = FolderStore::open(&file).err().unwrap().to_string();
        let jobs = crate::spec::read_jobs(&file.join("jobs.jsonl")).err().unwrap().to_string();
        std::fs::remove_file(&file).unwrap();
        // Before: the output folder was named, not its .partial folder whose making failed.
        assert_eq!(e, format!("{}/.partial: making the output folder: Not a directory (os error 20)", file.display()));
        assert_eq!(jobs, format!("{}/jobs.jsonl: reading the jobs file: Not a directory (os error 20)", file.display()));
    }

    fn store(tag: &str) -> FolderStore {
        let root = std::env::temp_dir().join(format!("xcomposer-jobs-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        FolderStore::open(&root).unwrap()
    }

    #[test]
    fn an_article_appears_only_when_committed_and_only_once() {
        let s = store("once");
        let a = s.begin("job-1", "w1").unwrap();
        let b = s.begin("job-1", "w2").unwrap();
        std::fs::write(a.join("article.md"), "from w1").unwrap();
        std::fs::write(b.join("article.md"), "from w2").unwrap();
        assert!(!s.is_stored("job-1").unwrap());
        assert_eq!(s.commit(&b, "job-1").unwrap(), Committed::Stored);
        assert_eq!(s.commit(&a, "job-1").unwrap(), Committed::AlreadyStored);
        assert_eq!(std::fs::read_to_string(s.dir("job-1").join("article.md")).unwrap(), "from w2");
        assert!(!a.exists() && !b.exists());
        assert_eq!(s.files("job-1").unwrap(), vec![PathBuf::from("job-1/article.md")]);
        std::fs::remove_dir_all(&s.root).unwrap();
    }

    #[test]
    fn store_urls_name_a_folder_or_are_refused_with_what_is_supported() {
        assert_eq!(folder_of_url("file://localhost/a/b").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(folder_of_url("FILE:///a").unwrap(), PathBuf::from("/a"));
        assert_eq!(folder_of_url("/abs/path").unwrap(), PathBuf::from("/abs/path"));
        // A colon without "//" is part of a path.
        assert_eq!(folder_of_url("dir:with:colons").unwrap(), PathBuf::from("dir:with:colons"));
        for (url, says) in [
            ("s3://bucket/x", "s3://bucket/x: the s3:// scheme is not supported; use file:///path or a folder path"),
            ("https://example.org/x", "the https:// scheme is not supported"),
            ("file://server/share", "file://server/share: a file URL names an absolute path on this machine"),
            ("file:///a%2", "a %-escape is not two hex digits"),
            ("file:///a%zz", "a %-escape is not two hex digits"),
            ("", "expected a folder path or file:///path"),
        ] {
            let e = folder_of_url(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn partials_of_one_job_are_cleared_without_touching_others() {
        let s = store("clear");
        let a = s.begin("job-1", "w1").unwrap();
        let a2 = s.begin("job-10", "w1").unwrap();
        assert_eq!(s.clear_partials(Some("job-1")).unwrap(), 1);
        assert!(!a.exists() && a2.exists());
        assert!(s.begin("../x", "w1").is_err());
        assert_eq!(s.clear_partials(None).unwrap(), 1);
        std::fs::remove_dir_all(&s.root).unwrap();
    }
}
