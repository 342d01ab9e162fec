//! MME: the task files (`eval_tool/Your_Results/{task}.txt`, lines `image\tquestion\tanswer`, two
//! yes/no questions per image), the original's prompt, and the score of MME's `calculation.py`:
//! per task 100·acc + 100·acc+ (acc+: both questions of an image right), perception and
//! cognition the sums of their tasks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{BadRows, EvalError};
use xcomposer_llm::readers::path_io::AtPath;

/// The perception tasks, in `calculation.py`'s order.
pub const PERCEPTION: [&str; 10] = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"];
/// The cognition tasks, in `calculation.py`'s order.
pub const COGNITION: [&str; 4] = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"];

/// One MME question.
#[derive(Debug, Clone, PartialEq)]
pub struct MmeQuestion {
    /// The task (one of [`PERCEPTION`] or [`COGNITION`]).
    pub task: String,
    /// The image's file name as the task file writes it.
    pub image_name: String,
    /// The image's path, found as the original looks: `{images}/{task}/{name}`, else `…/images/{name}`.
    pub image: PathBuf,
    /// The question, as written.
    pub question: String,
    /// The ground truth as written (`Yes`/`No`, any case).
    pub answer: String,
}

impl MmeQuestion {
    /// A stable id: `task/line`.
    pub fn id(&self, line: usize) -> String {
        format!("{}/{line}", self.task)
    }

    /// The original's prompt (`evaluation/mme/eval.py`).
    pub fn prompt(&self) -> String {
        format!(" <|User|>:<ImageHere> {} Answer this question briefly<TOKENS_UNUSED_0> <|Bot|>:", self.question)
    }
}

/// Reads every `{task}.txt` of `questions_dir` (images under `images_dir`); an unknown task name, a
/// malformed line, a ground truth other than yes/no, a missing image or an odd question count are
/// errors naming file and line (skipped and listed under `--skip-bad`). Each question comes with
/// its line number; tasks are in `calculation.py`'s order.
pub fn read(questions_dir: &Path, images_dir: &Path, bad: &mut BadRows) -> Result<Vec<(usize, MmeQuestion)>, EvalError> {
    let entries = std::fs::read_dir(questions_dir).at(questions_dir)?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.at(questions_dir)?.path();
        if path.extension().is_some_and(|x| x == "txt") {
            let task = path.file_stem().unwrap_or_default().to_string_lossy().to_string();
            match PERCEPTION.iter().chain(&COGNITION).position(|t| *t == task) {
                Some(order) => {
                    files.insert(order, (task, path));
                }
                None => bad.handle(EvalError::data(&path, "file name", format!("`{task}` is not an MME task (expected one of {})", PERCEPTION.iter().chain(&COGNITION).copied().collect::<Vec<_>>().join(", "))))?,
            }
        }
    }
    if files.is_empty() {
        return Err(EvalError::data(questions_dir, "folder", "no MME task file ({task}.txt) here"));
    }
    let mut out = vec![];
    for (task, path) in files.into_values() {
        out.extend(read_task(&task, &path, images_dir, bad)?);
    }
    Ok(out)
}

/// One task file, as the original's loop reads it: `splitlines()`, each line stripped and split
/// on tabs into three fields.
fn read_task(task: &str, path: &Path, images_dir: &Path, bad: &mut BadRows) -> Result<Vec<(usize, MmeQuestion)>, EvalError> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut questions = vec![];
    for (i, line) in text.lines().enumerate() {
        match parse_line(task, line, images_dir) {
            Ok(q) => questions.push((i + 1, q)),
            Err(message) => bad.handle(EvalError::data(path, format!("line {}", i + 1), message))?,
        }
    }
    // calculation.py pairs consecutive lines as one image's two questions.
    let mut paired = vec![];
    for pair in questions.chunks(2) {
        match pair {
            [a, b] if a.1.image_name == b.1.image_name => paired.extend_from_slice(pair),
            _ => bad.handle(EvalError::data(path, format!("line {}", pair[0].0), "MME scores an image's two questions together (consecutive lines with the same image); this line has no partner"))?,
        }
    }
    Ok(paired)
}

fn parse_line(task: &str, line: &str, images_dir: &Path) -> Result<MmeQuestion, String> {
    let fields: Vec<&str> = line.trim().split('\t').collect();
    let [image_name, question, answer] = fields[..] else { return Err(format!("{} tab-separated fields, expected 3 (image, question, answer)", fields.len())) };
    if !["yes", "no"].contains(&answer.to_lowercase().as_str()) {
        return Err(format!("the answer is `{answer}`, expected Yes or No"));
    }
    let direct = images_dir.join(task).join(image_name);
    let image = if direct.is_file() { direct } else { images_dir.join(task).join("images").join(image_name) };
    if !image.is_file() {
        return Err(format!("image {image_name} is in neither {} nor {}", images_dir.join(task).display(), images_dir.join(task).join("images").display()));
    }
    Ok(MmeQuestion { task: task.into(), image_name: image_name.into(), image, question: question.into(), answer: answer.into() })
}

/// A prediction's label as `calculation.py`'s `parse_pred_ans` reads it (the text lower-cased,
/// with the newline it keeps from `readlines()`): exactly yes/no, else "yes" then "no" searched in
/// its first 4 characters, else `Other`.
pub fn parse_prediction(pred: &str) -> Label {
    let p = format!("{}\n", pred.to_lowercase());
    let head: String = p.chars().take(4).collect();
    if head.contains("yes") {
        Label::Yes
    } else if head.contains("no") {
        Label::No
    } else {
        Label::Other
    }
}

/// A yes/no label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// yes.
    Yes,
    /// no.
    No,
    /// Neither could be read.
    Other,
}

/// One task's score.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskScore {
    /// The task.
    pub task: String,
    /// Questions.
    pub questions: usize,
    /// Fraction of questions right.
    pub acc: f64,
    /// Fraction of images with both questions right.
    pub acc_plus: f64,
    /// 100·acc + 100·acc+ (at most 200).
    pub score: f64,
    /// Answers read as neither yes nor no.
    pub other: usize,
}

/// MME's scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MmeScores {
    /// Each task present, in `calculation.py`'s order.
    pub tasks: Vec<TaskScore>,
    /// Sum of the perception tasks present (max 2000 with all 10).
    pub perception: f64,
    /// Sum of the cognition tasks present (max 800 with all 4).
    pub cognition: f64,
    /// Tasks with no questions (their sums leave them out).
    pub missing_tasks: Vec<String>,
}

/// Scores `(question, prediction)` pairs in file order (consecutive pairs are one image's), as
/// `calculation.py` does, adding in its order so the floats are equal.
pub fn score(items: &[(&MmeQuestion, &str)]) -> MmeScores {
    let mut tasks = vec![];
    let (mut perception, mut cognition) = (0.0, 0.0);
    let mut missing_tasks = vec![];
    for (sum, names) in [(&mut perception, &PERCEPTION[..]), (&mut cognition, &COGNITION[..])] {
        for name in names {
            let rows: Vec<&(&MmeQuestion, &str)> = items.iter().filter(|(q, _)| q.task == *name).collect();
            if rows.is_empty() {
                missing_tasks.push(name.to_string());
                continue;
            }
            let t = task_score(name, &rows);
            *sum += t.score;
            tasks.push(t);
        }
    }
    MmeScores { tasks, perception, cognition, missing_tasks }
}

fn task_score(name: &str, rows: &[&(&MmeQuestion, &str)]) -> TaskScore {
    let right: Vec<bool> = rows.iter().map(|(q, p)| Some(parse_prediction(p)) == truth(&q.answer)).collect();
    let other = rows.iter().filter(|(_, p)| parse_prediction(p) == Label::Other).count();
    let images = right.len().div_ceil(2);
    let both = right.chunks(2).filter(|c| c.iter().all(|r| *r) && c.len() == 2).count();
    let acc = right.iter().filter(|r| **r).count() as f64 / right.len() as f64;
    let acc_plus = both as f64 / images as f64;
    TaskScore { task: name.into(), questions: rows.len(), acc, acc_plus, score: acc * 100.0 + acc_plus * 100.0, other }
}

fn truth(answer: &str) -> Option<Label> {
    match answer.to_lowercase().as_str() {
        "yes" => Some(Label::Yes),
        "no" => Some(Label::No),
        _ => None,
    }
}

/// A task file's line with the prediction added, as `calculation.py` takes it
/// (`image\tquestion\tanswer\tprediction`); tabs and newlines in the prediction become spaces
/// (MME's readme: one line per answer).
pub fn official_line(q: &MmeQuestion, prediction: &str) -> String {
    format!("{}\t{}\t{}\t{}", q.image_name, q.question, q.answer, crate::tsv::one_line(prediction))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_are_read_from_their_first_four_characters() {
        // calculation.py's parse_pred_ans on `pred.lower()` with its newline.
        for (p, l) in [("Yes", Label::Yes), ("no", Label::No), ("Yes, there is", Label::Yes), ("Nope", Label::No), ("Not sure", Label::No), ("I think yes", Label::Other), ("", Label::Other), ("anno", Label::No), ("y", Label::Other)] {
            assert_eq!(parse_prediction(p), l, "{p:?}");
        }
    }
}
