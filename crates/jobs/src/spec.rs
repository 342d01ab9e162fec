//! A jobs file: one JSON object per line (blank lines and `#` comments skipped), the compose
//! options of one article plus an optional `id`. A job without an id gets one derived from its
//! options, so the same line maps to the same output folder on every run.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use xcomposer_llm::readers::path_io::AtPath;

use crate::JobError;

/// One job: its id and its compose options (every field of the line but `id`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The output folder's name: given, or the first 16 hex digits of the options' SHA-256.
    pub id: String,
    /// The compose options, keyed by their snake_case names (checked by the caller).
    pub options: Map<String, Value>,
    /// The 1-based line of the jobs file it came from (0 when it did not come from a file).
    pub line: usize,
}

/// Whether `id` can name a folder and a queue entry: 1–64 ASCII letters, digits, `-`, `_` or
/// `.`, not starting with `.`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.starts_with('.') && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The id of a job without one: its options serialized with sorted keys, hashed, so key order
/// and spacing on the line do not change it.
pub fn derive_id(options: &Map<String, Value>) -> String {
    let sorted: BTreeMap<&String, &Value> = options.iter().collect();
    let canonical = serde_json::to_string(&sorted).unwrap_or_default();
    Sha256::digest(canonical.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl JobSpec {
    /// A job from one JSON object; `line` is only used in errors and kept for them.
    pub fn from_value(value: Value, file: &Path, line: usize) -> Result<Self, JobError> {
        let bad = |message: String| JobError::BadLine { file: file.to_path_buf(), line, message };
        let Value::Object(mut options) = value else {
            return Err(bad("expected a JSON object ({\"instruction\": \"…\", …})".into()));
        };
        let id = match options.remove("id") {
            None | Some(Value::Null) => derive_id(&options),
            Some(Value::String(id)) if valid_id(&id) => id,
            Some(other) => return Err(bad(format!("field \"id\": expected 1-64 letters, digits, '-', '_' or '.' (not starting with '.'), got {other}"))),
        };
        Ok(JobSpec { id, options, line })
    }

    /// The job as one JSON line, with its id (what the queue carries).
    pub fn to_line(&self) -> String {
        let mut m = self.options.clone();
        m.insert("id".into(), Value::String(self.id.clone()));
        Value::Object(m).to_string()
    }
}

/// Every job of a JSONL text; ids must be unique (a repeated one names both lines).
pub fn parse_jobs(text: &str, file: &Path) -> Result<Vec<JobSpec>, JobError> {
    let mut jobs: Vec<JobSpec> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let value: Value = serde_json::from_str(trimmed).map_err(|e| JobError::BadLine { file: file.to_path_buf(), line, message: format!("not JSON: {e}") })?;
        let job = JobSpec::from_value(value, file, line)?;
        if let Some(first) = seen.insert(job.id.clone(), line) {
            return Err(JobError::BadLine { file: file.to_path_buf(), line, message: format!("id {:?} is already the id of line {first} (give each job its own id, or drop the repeated line)", job.id) });
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// Reads and parses a jobs file.
pub fn read_jobs(file: &Path) -> Result<Vec<JobSpec>, JobError> {
    let text = std::fs::read_to_string(file).at(file).map_err(JobError::doing("reading the jobs file"))?;
    parse_jobs(&text, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<JobSpec>, JobError> {
        parse_jobs(text, Path::new("jobs.jsonl"))
    }

    #[test]
    fn derived_ids_ignore_key_order_and_spacing_but_not_values() {
        let a = parse(r#"{"instruction": "About owls.", "seed": 1}"#).unwrap();
        let b = parse(r#"{"seed":1,"instruction":"About owls."}"#).unwrap();
        let c = parse(r#"{"seed":2,"instruction":"About owls."}"#).unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_ne!(a[0].id, c[0].id);
        assert_eq!(a[0].id.len(), 16);
    }

    #[test]
    fn given_ids_are_kept_and_lines_are_counted_past_comments() {
        let jobs = parse("# two jobs\n\n{\"id\": \"owls-1\", \"instruction\": \"About owls.\"}\n{\"instruction\": \"About cats.\"}\n").unwrap();
        assert_eq!((jobs[0].id.as_str(), jobs[0].line, jobs[1].line), ("owls-1", 3, 4));
        assert!(!jobs[0].options.contains_key("id"));
        let back = JobSpec::from_value(serde_json::from_str(&jobs[0].to_line()).unwrap(), Path::new("q"), 0).unwrap();
        assert_eq!((back.id, back.options), (jobs[0].id.clone(), jobs[0].options.clone()));
    }

    #[test]
    fn bad_lines_name_the_line_and_what_was_expected() {
        let msg = |t: &str| parse(t).unwrap_err().to_string();
        assert_eq!(msg("{\"instruction\": \"a\"}\n[1, 2]"), "jobs.jsonl:2: expected a JSON object ({\"instruction\": \"…\", …})");
        assert!(msg("{\"id\": \"../up\", \"instruction\": \"a\"}").starts_with("jobs.jsonl:1: field \"id\": expected 1-64 letters"));
        assert!(msg("{\"instruction\": \"a\"").starts_with("jobs.jsonl:1: not JSON: "));
        let dup = msg("{\"id\": \"x\", \"instruction\": \"a\"}\n{\"id\": \"x\", \"instruction\": \"b\"}");
        assert!(dup.starts_with("jobs.jsonl:2: id \"x\" is already the id of line 1"), "{dup}");
    }
}
