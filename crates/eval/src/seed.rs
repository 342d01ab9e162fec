//! SEED-Bench (image part): `SEED-Bench.json` (`questions[]` with `question_id, question,
//! choice_a…d, answer, data_id, data_type, question_type_id`, and the `question_type` name → id
//! map) with the images under one folder; the original's prompt (`evaluation/seed_bench/utils.py`,
//! its literal `Options: []`), and accuracy overall and per question type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{BadRows, EvalError};
use crate::mmbench::Accuracy;
use xcomposer_llm::readers::path_io::AtPath;

/// The candidates ranked by likelihood, in order; the prediction is the letter of the best.
pub const CANDIDATES: [&str; 4] = ["A.", "B.", "C.", "D."];

/// One SEED-Bench image question.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedQuestion {
    /// `question_id` as written (a string or a number in the JSON).
    pub id: String,
    /// The question.
    pub question: String,
    /// `choice_a`, `choice_b`, then `choice_c`, `choice_d` (`choice_e`) where the question has them.
    pub choices: Vec<String>,
    /// The answer letter.
    pub answer: String,
    /// The image file.
    pub image: PathBuf,
    /// The question type's name.
    pub question_type: String,
}

impl SeedQuestion {
    /// The original's prompt.
    pub fn prompt(&self) -> String {
        let options: String = self.choices.iter().enumerate().map(|(i, c)| format!("{}. {c}\n", (b'A' + i as u8) as char)).collect();
        format!(" <|User|>:<ImageHere>Context: N/A\nQuestion: {}\nOptions: []\n{options}<TOKENS_UNUSED_0> <|Bot|>: Answer: The answer is", self.question)
    }
}

/// Reads the image questions (`data_type == "image"`) of a SEED-Bench JSON, images under
/// `images`. A question missing a field, with an unknown type id or a missing image is an error
/// naming the file and the question's position (skipped and listed under `--skip-bad`).
pub fn read(json_path: &Path, images: &Path, bad: &mut BadRows) -> Result<Vec<SeedQuestion>, EvalError> {
    let text = std::fs::read_to_string(json_path).at(json_path)?;
    let json: Value = serde_json::from_str(&text).map_err(|e| EvalError::data(json_path, format!("line {}", e.line()), format!("not JSON: {e}")))?;
    let types: BTreeMap<i64, String> = match json.get("question_type").and_then(Value::as_object) {
        Some(m) => m.iter().filter_map(|(k, v)| v.as_i64().map(|id| (id, k.clone()))).collect(),
        None => return Err(EvalError::data(json_path, "top level", "no `question_type` map")),
    };
    let Some(questions) = json.get("questions").and_then(Value::as_array) else { return Err(EvalError::data(json_path, "top level", "no `questions` list")) };
    let mut out = vec![];
    for (i, q) in questions.iter().enumerate() {
        if q.get("data_type").and_then(Value::as_str) != Some("image") {
            continue;
        }
        match question(q, &types, images) {
            Ok(q) => out.push(q),
            Err(message) => bad.handle(EvalError::data(json_path, format!("questions[{i}]"), message))?,
        }
    }
    Ok(out)
}

fn question(q: &Value, types: &BTreeMap<i64, String>, images: &Path) -> Result<SeedQuestion, String> {
    let text = |k: &str| -> Result<String, String> {
        match q.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v @ Value::Number(_)) => Ok(v.to_string()),
            _ => Err(format!("no `{k}`")),
        }
    };
    let mut choices = vec![text("choice_a")?, text("choice_b")?];
    for k in ["choice_c", "choice_d", "choice_e"] {
        if q.get(k).is_some() {
            choices.push(text(k)?);
        }
    }
    let type_id = q.get("question_type_id").and_then(Value::as_i64).ok_or("no integer `question_type_id`")?;
    let question_type = types.get(&type_id).cloned().ok_or(format!("question_type_id {type_id} is not in the `question_type` map"))?;
    let image = images.join(text("data_id")?);
    if !image.is_file() {
        return Err(format!("image {} not found", image.display()));
    }
    Ok(SeedQuestion { id: text("question_id")?, question: text("question")?, choices, answer: text("answer")?, image, question_type })
}

/// SEED-Bench's scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeedScores {
    /// Over every question (the original's `score / len(answer_list)`).
    pub overall: Accuracy,
    /// Per question type.
    pub by_type: BTreeMap<String, Accuracy>,
    /// Questions with no prediction (scored wrong).
    pub missing: usize,
}

/// Scores predictions (letters by question id): right when equal to the answer.
pub fn score(questions: &[SeedQuestion], predictions: &BTreeMap<String, String>) -> SeedScores {
    let right: Vec<(&SeedQuestion, bool)> = questions.iter().map(|q| (q, predictions.get(&q.id) == Some(&q.answer))).collect();
    let mut by_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (q, r) in &right {
        let e = by_type.entry(q.question_type.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(*r);
    }
    let acc = Accuracy::new;
    let hits = right.iter().filter(|(_, r)| *r).count();
    SeedScores {
        overall: acc(right.len(), hits),
        by_type: by_type.into_iter().map(|(k, (n, h))| (k, acc(n, h))).collect(),
        missing: questions.iter().filter(|q| !predictions.contains_key(&q.id)).count(),
    }
}

/// The index of the lowest mean cross-entropy, the first on ties (`np.argmin`).
pub fn argmin(losses: &[f64]) -> usize {
    let mut best = 0;
    for (i, l) in losses.iter().enumerate() {
        if *l < losses[best] {
            best = i;
        }
    }
    best
}

/// A prediction line as SEED-Bench's upload takes it: `{"question_id": …, "prediction": "A"}`.
pub fn official_line(q: &SeedQuestion, prediction: &str) -> String {
    serde_json::json!({"question_id": q.id, "prediction": prediction}).to_string()
}
