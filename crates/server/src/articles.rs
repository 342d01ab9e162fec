//! The article store: one folder per article under `DATA/articles/ID` (the rendered
//! `article.json`, `article.md`, `article.html`, `assets/`) with its `job.json`; jobs in memory
//! keep their events for the live stream. Ids are checked before they name a path, so nothing
//! is read or written outside the data folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use xcomposer_composer::Composer;
use xcomposer_llm::readers::path_io::AtPath;

use crate::error::{ApiError, ServerError};

/// Builds the composition pipeline for a library (the server's own when `None`).
pub trait ComposerFactory: Send + Sync {
    /// The pipeline around the loaded models and that library's retriever.
    fn composer(&self, library: Option<&Path>) -> Result<Composer, String>;
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the model.
    Queued,
    /// Composing.
    Running,
    /// The article is written.
    Done,
    /// It failed (see `error`).
    Failed,
    /// It was cancelled before the article was written; nothing of it is stored.
    Cancelled,
}

impl Status {
    /// Whether the job has ended (done, failed or cancelled).
    pub fn ended(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }
}

/// A job's record, kept as `job.json` beside the article.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// The article id.
    pub id: String,
    /// The instruction.
    pub instruction: String,
    /// The library's name under `DATA/libraries` (`None`: the server's library).
    pub library: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// Why it failed.
    pub error: Option<String>,
    /// The article's title once written.
    pub title: Option<String>,
    /// Seconds since the epoch when it was created.
    pub created: u64,
}

/// A job in memory: its record and its events (SSE payloads) for late subscribers.
pub struct Job {
    /// The record.
    pub record: Mutex<JobRecord>,
    /// Every event so far, as JSON text.
    pub events: Mutex<Vec<String>>,
    /// Woken on each new event.
    pub notify: Notify,
    /// Set to stop the composition at its next stage or generated text.
    pub cancel: AtomicBool,
}

impl Job {
    /// A job with no events yet.
    fn new(record: JobRecord) -> Self {
        Job { record: Mutex::new(record), events: Mutex::new(vec![]), notify: Notify::new(), cancel: AtomicBool::new(false) }
    }

    /// Whether a cancel was asked for.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Appends an event and wakes the streams.
    pub fn push(&self, event: serde_json::Value) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event.to_string());
        self.notify.notify_waiters();
    }

    /// The record now.
    pub fn record(&self) -> JobRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Every article of the data folder.
pub struct Store {
    /// `DATA/articles`.
    pub root: PathBuf,
    /// `DATA/libraries`.
    pub libraries: PathBuf,
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

/// Whether `id` is one this server could have made (lower-case hex and dashes, 1–64 chars).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

fn new_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (or makes) `data/articles` and reads back every `job.json`; a job that was queued
    /// or running when the server stopped is marked failed.
    pub fn open(data: &Path) -> Result<Self, ServerError> {
        let root = data.join("articles");
        std::fs::create_dir_all(&root).at(&root)?;
        let mut jobs = BTreeMap::new();
        for entry in std::fs::read_dir(&root).at(&root)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(text) = std::fs::read_to_string(entry.path().join("job.json")) else { continue };
            let Ok(mut rec) = serde_json::from_str::<JobRecord>(&text) else { continue };
            if !valid_id(&name) || rec.id != name {
                continue;
            }
            if matches!(rec.status, Status::Queued | Status::Running) {
                rec.status = Status::Failed;
                rec.error = Some("the server stopped before the article was finished".into());
            }
            jobs.insert(name, Arc::new(Job::new(rec)));
        }
        Ok(Store { root, libraries: data.join("libraries"), jobs: Mutex::new(jobs) })
    }

    /// A new queued job, saved.
    pub fn create(&self, instruction: &str, library: Option<String>) -> Result<Arc<Job>, ApiError> {
        let rec = JobRecord { id: new_id(), instruction: instruction.into(), library, status: Status::Queued, error: None, title: None, created: now() };
        std::fs::create_dir_all(self.dir(&rec.id)).map_err(|e| ApiError::internal(format!("making the article folder: {e}")))?;
        let job = Arc::new(Job::new(rec.clone()));
        self.save(&rec)?;
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(rec.id.clone(), job.clone());
        Ok(job)
    }

    /// A new queued job kept in memory only: its folder is made by the worker that composes it
    /// (`serve --redis`), and its `job.json` is written when it ends.
    pub fn create_queued(&self, instruction: &str) -> Arc<Job> {
        let rec = JobRecord { id: new_id(), instruction: instruction.into(), library: None, status: Status::Queued, error: None, title: None, created: now() };
        let job = Arc::new(Job::new(rec.clone()));
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(rec.id, job.clone());
        job
    }

    /// Writes a job's record.
    pub fn save(&self, rec: &JobRecord) -> Result<(), ApiError> {
        let text = serde_json::to_string_pretty(rec).unwrap_or_default();
        std::fs::write(self.dir(&rec.id).join("job.json"), text).map_err(|e| ApiError::internal(format!("saving job.json: {e}")))
    }

    /// The article's folder (the id must be valid).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The job, or 404.
    pub fn get(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.get(id).filter(|_| valid_id(id)).cloned().ok_or_else(|| ApiError::not_found(format!("no article {id:?}")).param("id"))
    }

    /// Every job's record, newest first.
    pub fn list(&self) -> Vec<JobRecord> {
        let mut v: Vec<JobRecord> = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).values().map(|j| j.record()).collect();
        v.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        v
    }

    /// Deletes an article and its folder (not while it is being composed).
    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        let job = self.get(id)?;
        if !job.record().status.ended() {
            return Err(ApiError::new(axum::http::StatusCode::CONFLICT, "invalid_request_error", "the article is still being composed (POST /api/articles/ID/cancel stops it)").param("id"));
        }
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        std::fs::remove_dir_all(self.dir(id)).map_err(|e| ApiError::internal(format!("deleting the article: {e}")))
    }

    /// Forgets a job that never ran (its queue refused it) and removes its folder.
    pub fn discard(&self, id: &str) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        if valid_id(id) {
            let _ = std::fs::remove_dir_all(self.dir(id));
        }
    }

    /// The folder of a library named in a request: a plain name under `DATA/libraries`.
    pub fn library_dir(&self, name: &str) -> Result<PathBuf, ApiError> {
        let plain = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let dir = self.libraries.join(name);
        if !plain || !dir.is_dir() {
            return Err(ApiError::invalid("library", format!("no library {name:?}: a library is a folder name under the data folder's libraries/ (leave it out for the server's library)")));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_folder_that_cannot_hold_articles_is_named_with_the_folder_that_failed() {
        let file = std::env::temp_dir().join(format!("xcomposer-server-data-{}", std::process::id()));
        std::fs::write(&file, b"not a folder").unwrap();
        let e = Store::open(&file).err().unwrap().to_string();
        std::fs::remove_file(&file).unwrap();
        // Before: the message named --data itself, not the folder whose creation failed.
        assert_eq!(e, format!("--data {}/articles: Not a directory (os error 20)", file.display()));
    }
}
