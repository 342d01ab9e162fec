//! Article folders `ROOT/<id>/`, each written whole or not at all: a job composes into
//! `ROOT/.partial/<id>.<worker>/`, which is renamed to `ROOT/<id>/` when complete. A rename onto
//! an existing folder fails, so when two workers finish the same job only one article remains.
//! A folder on NFS works the same for several machines; an object store would implement the same
//! three steps (see the README's "Many articles").

use std::path::{Path, PathBuf};

use crate::JobError;
use crate::spec::valid_id;

/// The hidden folder of unfinished articles under the store's root.
pub const PARTIAL_DIR: &str = ".partial";

/// Where finished articles live.
#[derive(Debug, Clone)]
pub struct FolderStore {
    /// The folder holding one folder per job id.
    pub root: PathBuf,
}

/// What [`FolderStore::commit`] did.
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
        std::fs::create_dir_all(root.join(PARTIAL_DIR)).map_err(|e| JobError::io(root, "making the output folder", e))?;
        Ok(FolderStore { root: root.to_path_buf() })
    }

    /// The finished article's folder.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Whether the job's article is stored (the folder only appears complete).
    pub fn is_stored(&self, id: &str) -> bool {
        self.dir(id).is_dir()
    }

    /// A fresh, empty temporary folder for `worker`'s try at `id` (an earlier one of the same
    /// worker and id is removed first).
    pub fn begin(&self, id: &str, worker: &str) -> Result<PathBuf, JobError> {
        if !valid_id(id) || !valid_id(worker) {
            return Err(JobError::Io { path: self.root.clone(), message: format!("job id {id:?} or worker name {worker:?} cannot name a folder") });
        }
        let tmp = self.root.join(PARTIAL_DIR).join(format!("{id}.{worker}"));
        remove_dir_if_there(&tmp)?;
        std::fs::create_dir_all(&tmp).map_err(|e| JobError::io(&tmp, "making the temporary article folder", e))?;
        Ok(tmp)
    }

    /// Moves a complete temporary folder into place as `ROOT/<id>/`.
    pub fn commit(&self, tmp: &Path, id: &str) -> Result<Committed, JobError> {
        let target = self.dir(id);
        match std::fs::rename(tmp, &target) {
            Ok(()) => Ok(Committed::Stored),
            Err(_) if target.is_dir() => {
                self.discard(tmp)?;
                Ok(Committed::AlreadyStored)
            }
            Err(e) => Err(JobError::io(&target, "moving the finished article into place", e)),
        }
    }

    /// Removes a temporary folder (an abandoned or failed try).
    pub fn discard(&self, tmp: &Path) -> Result<(), JobError> {
        remove_dir_if_there(tmp)
    }

    /// Removes every temporary folder of `id` (all workers' tries: call it only when the job's
    /// other tries are known to be dead), or of every job when `id` is `None`.
    pub fn clear_partials(&self, id: Option<&str>) -> Result<usize, JobError> {
        let dir = self.root.join(PARTIAL_DIR);
        let entries = std::fs::read_dir(&dir).map_err(|e| JobError::io(&dir, "listing the temporary folders", e))?;
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

    /// Every file of a stored article, relative to the store's root, sorted.
    pub fn files(&self, id: &str) -> Result<Vec<PathBuf>, JobError> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir(id)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| JobError::io(&dir, "listing the article", e))?.flatten() {
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

fn remove_dir_if_there(dir: &Path) -> Result<(), JobError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(JobError::io(dir, "removing the temporary article folder", e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!s.is_stored("job-1"));
        assert_eq!(s.commit(&b, "job-1").unwrap(), Committed::Stored);
        assert_eq!(s.commit(&a, "job-1").unwrap(), Committed::AlreadyStored);
        assert_eq!(std::fs::read_to_string(s.dir("job-1").join("article.md")).unwrap(), "from w2");
        assert!(!a.exists() && !b.exists());
        assert_eq!(s.files("job-1").unwrap(), vec![PathBuf::from("job-1/article.md")]);
        std::fs::remove_dir_all(&s.root).unwrap();
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
