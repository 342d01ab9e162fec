//! The predictions file (`predictions.jsonl`): one JSON object per answered pass, appended and
//! flushed as each answer comes, so a crash loses at most the question in flight; `--resume`
//! reads it back (a torn last line is dropped) and skips what is there.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::EvalError;
use xcomposer_llm::readers::path_io::{AtPath, PathIoError};

/// One answered pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The pass's id (MME `task/line`, MMBench the row index, SEED the question id).
    pub id: String,
    /// The answer text (SEED: the chosen letter).
    pub prediction: String,
    /// The generated sequence (MME, MMBench).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequence: Vec<u32>,
    /// Each candidate's mean cross-entropy (SEED).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub losses: Vec<f64>,
    /// Seconds the pass took (image encoding included when it was not cached).
    pub seconds: f64,
}

/// An open predictions file.
pub struct PredictionLog {
    path: PathBuf,
    file: std::fs::File,
    /// The records so far, by id.
    pub records: BTreeMap<String, Record>,
}

impl PredictionLog {
    /// Opens `path`: refused when it holds predictions and `resume` is off; read back when on.
    pub fn open(path: &Path, resume: bool) -> Result<PredictionLog, EvalError> {
        let existing = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(PathIoError { path: path.into(), error }.into()),
        };
        if !existing.trim().is_empty() && !resume {
            return Err(EvalError::data(path, "file", "holds predictions of an earlier run: pass --resume to continue it, or another --out"));
        }
        let mut records = BTreeMap::new();
        let mut good = 0;
        for line in existing.split_inclusive('\n') {
            match serde_json::from_str::<Record>(line.trim()) {
                Ok(r) if line.ends_with('\n') => {
                    records.insert(r.id.clone(), r);
                    good += line.len();
                }
                _ if line.trim().is_empty() => good += line.len(),
                // A line cut by a crash: dropped, and the file cut back before it.
                _ => break,
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).at(path)?;
        file.set_len(good as u64).at(path)?;
        Ok(PredictionLog { path: path.into(), file, records })
    }

    /// Appends a record and flushes it to disk.
    pub fn append(&mut self, r: Record) -> Result<(), EvalError> {
        let line = serde_json::to_string(&r).expect("a record serializes") + "\n";
        self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data()).at(&self.path)?;
        self.records.insert(r.id.clone(), r);
        Ok(())
    }

    /// The predictions by id.
    pub fn texts(&self) -> BTreeMap<String, String> {
        self.records.iter().map(|(k, r)| (k.clone(), r.prediction.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_refusal_without_resume() {
        let dir = std::env::temp_dir().join(format!("xc-eval-pred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("predictions.jsonl");
        std::fs::write(&path, "{\"id\":\"a\",\"prediction\":\"yes\",\"seconds\":1.0}\n{\"id\":\"b\",\"predi").unwrap();
        assert!(PredictionLog::open(&path, false).is_err());
        let mut log = PredictionLog::open(&path, true).unwrap();
        assert_eq!(log.records.keys().collect::<Vec<_>>(), ["a"]);
        log.append(Record { id: "b".into(), prediction: "no".into(), sequence: vec![], losses: vec![], seconds: 0.5 }).unwrap();
        let back = PredictionLog::open(&path, true).unwrap();
        assert_eq!(back.texts().into_iter().collect::<Vec<_>>(), [("a".to_string(), "yes".to_string()), ("b".to_string(), "no".to_string())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
