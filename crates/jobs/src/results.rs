//! `results.jsonl`: one line per finished try of a job (id, status, paths, timings, error),
//! appended, never rewritten; the last line of an id is its result. The queue's results hash
//! holds the same records.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use xcomposer_llm::readers::path_io::AtPath;

use crate::JobError;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Its article is stored.
    Done,
    /// It failed (`error` says why); `batch --retry-failed` runs it again.
    Failed,
    /// It failed on every allowed try and was moved to the dead-letter stream.
    Dead,
}

/// One finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job id (its article is `OUT/<id>/`).
    pub id: String,
    /// How it ended.
    pub status: JobStatus,
    /// The article's files, relative to the output folder (empty unless done).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// The article's title, when done.
    #[serde(default)]
    pub title: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Seconds spent composing and storing.
    pub seconds: f64,
    /// Seconds between submission and the start of this try (queue jobs only).
    #[serde(default)]
    pub waited_seconds: Option<f64>,
    /// Which try this was (1 = first).
    pub tries: u32,
    /// The worker (or batch process) that ran it.
    pub worker: String,
    /// Milliseconds since the epoch when it ended.
    pub finished_ms: u64,
}

/// Milliseconds since the epoch (the queue's clock for waits and overheads).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The results log of an output folder.
#[derive(Debug, Clone)]
pub struct ResultsLog {
    /// `OUT/results.jsonl`.
    pub path: PathBuf,
}

impl ResultsLog {
    /// The log at `OUT/results.jsonl`.
    pub fn in_dir(out: &Path) -> Self {
        ResultsLog { path: out.join("results.jsonl") }
    }

    /// Each id's last result. A last line cut short (the process was killed while appending)
    /// is skipped and reported through `on_skip`; a bad line before it is an error.
    pub fn read(&self, on_skip: &mut dyn FnMut(String)) -> Result<BTreeMap<String, JobResult>, JobError> {
        let text = match std::fs::read_to_string(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            other => other.at(&self.path).map_err(JobError::doing("reading the results log"))?,
        };
        let mut out = BTreeMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str::<JobResult>(line) {
                Ok(r) => {
                    out.insert(r.id.clone(), r);
                }
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => on_skip(format!("{}:{}: skipped a result line cut short", self.path.display(), i + 1)),
                Err(e) => return Err(JobError::BadLine { file: self.path.clone(), line: i + 1, message: format!("not a result line: {e}") }),
            }
        }
        Ok(out)
    }

    /// Appends one result as one line (one write, so lines of concurrent writers do not mix).
    pub fn append(&self, result: &JobResult) -> Result<(), JobError> {
        let mut line = serde_json::to_string(result).map_err(|e| JobError::Unusable { path: self.path.clone(), message: format!("encoding a result: {e}") })?;
        line.push('\n');
        let io = JobError::doing("appending to the results log");
        drop_cut_line(&self.path).at(&self.path).map_err(&io)?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).at(&self.path).map_err(&io)?;
        f.write_all(line.as_bytes()).at(&self.path).map_err(&io)?;
        f.sync_data().at(&self.path).map_err(io)
    }
}

/// Removes a last line cut short by a kill (no newline at its end), which [`ResultsLog::read`]
/// skips, so that the next line does not join it.
fn drop_cut_line(path: &Path) -> std::io::Result<()> {
    let text = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if text.last().is_none_or(|&b| b == b'\n') {
        return Ok(());
    }
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(keep as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, status: JobStatus) -> JobResult {
        JobResult { id: id.into(), status, paths: vec![], title: None, error: None, seconds: 1.5, waited_seconds: None, tries: 1, worker: "w".into(), finished_ms: 7 }
    }

    #[test]
    fn the_last_line_of_an_id_wins_and_a_cut_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("xcomposer-jobs-results-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = ResultsLog::in_dir(&dir);
        log.append(&result("a", JobStatus::Failed)).unwrap();
        log.append(&result("b", JobStatus::Done)).unwrap();
        std::fs::OpenOptions::new().append(true).open(&log.path).unwrap().write_all(b"{\"id\": \"a\", \"sta").unwrap();
        let mut skipped = vec![];
        let read = log.read(&mut |m| skipped.push(m)).unwrap();
        assert_eq!((read["a"].status, read["b"].status, skipped.len()), (JobStatus::Failed, JobStatus::Done, 1));
        log.append(&result("a", JobStatus::Done)).unwrap();
        let read = log.read(&mut |m| panic!("{m}")).unwrap();
        assert_eq!(read["a"].status, JobStatus::Done);
        std::fs::write(&log.path, "junk\n{}\n").unwrap();
        assert!(log.read(&mut |_| {}).unwrap_err().to_string().ends_with("results.jsonl:1: not a result line: expected value at line 1 column 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
