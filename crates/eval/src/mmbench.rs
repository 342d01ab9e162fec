//! MMBench, MMBench-CN and CCBench: the published TSV (`index, question, hint, A…D(E), answer,
//! category, l2-category, image` as base64; circular copies are rows with `index ≥ 1e6`, the
//! question `index % 1e6`), the original's prompt (`evaluation/mmbench/utils.py`), and
//! CircularEval scored as opencompass's `tools/eval_mmbench.py` does with its rule-based answer
//! extraction only: an answer no rule reads is counted and scored wrong, never guessed.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;

use crate::error::{BadRows, EvalError};
use crate::tsv::{Table, is_na, one_line};

/// Circular copies have their question's index plus a multiple of this.
pub const CIRCULAR_BASE: i64 = 1_000_000;

/// One row: a question or one of its circular copies.
#[derive(Clone, PartialEq)]
pub struct McQuestion {
    /// The row's index (a copy: its question's index + k·1e6).
    pub index: i64,
    /// The question as written.
    pub question: String,
    /// The hint, when the column exists and the cell is not missing.
    pub hint: Option<String>,
    /// Each option column present (A, B, then C, D, E when the file has them), its cell as
    /// pandas renders it (`None`: missing, printed `nan` as the original does).
    pub options: Vec<Option<String>>,
    /// The answer letter (the dev split; `None` on the test split).
    pub answer: Option<char>,
    /// The leaf category.
    pub category: String,
    /// The l2-category (absent from CCBench).
    pub l2_category: Option<String>,
    /// The image's base64 text.
    pub image_b64: String,
    /// The file's line where the row starts.
    pub line: usize,
}

impl std::fmt::Debug for McQuestion {
    /// Every field but the image's base64, of which only the length is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McQuestion")
            .field("index", &self.index)
            .field("question", &self.question)
            .field("hint", &self.hint)
            .field("options", &self.options)
            .field("answer", &self.answer)
            .field("category", &self.category)
            .field("l2_category", &self.l2_category)
            .field("image_b64_len", &self.image_b64.len())
            .field("line", &self.line)
            .finish()
    }
}

impl McQuestion {
    /// The question this row asks (its own index for a main row).
    pub fn group(&self) -> i64 {
        self.index % CIRCULAR_BASE
    }

    /// The original's prompt; the same English template for every language.
    pub fn prompt(&self) -> String {
        let options: String = self.options.iter().enumerate().map(|(i, o)| format!("{}. {}\n", letter(i), o.as_deref().unwrap_or("nan"))).collect();
        let context = self.hint.as_deref().unwrap_or("N/A");
        format!(" <|User|>:<ImageHere>Please answer this question by choosing the correct choice.Context: {context}\nQuestion: {}\nOptions: {options}<TOKENS_UNUSED_0> <|Bot|>: Answer: The answer is", self.question)
    }

    /// The non-missing options among A–D with their letters (what `build_choices` gives the
    /// text rule).
    pub fn choices(&self) -> Vec<(char, String)> {
        self.options.iter().take(4).enumerate().filter_map(|(i, o)| o.clone().map(|o| (letter(i), o))).collect()
    }

    /// The image bytes.
    pub fn image(&self, file: &Path) -> Result<Vec<u8>, EvalError> {
        base64::engine::general_purpose::STANDARD.decode(self.image_b64.trim()).map_err(|e| EvalError::data(file, format!("line {} (index {})", self.line, self.index), format!("the image is not base64: {e}")))
    }
}

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// A benchmark file's rows, grouped: each question then its circular copies.
#[derive(Debug, Clone, PartialEq)]
pub struct McBench {
    /// The rows in run order: by question index, each question followed by its copies.
    pub rows: Vec<McQuestion>,
    /// Whether the copies were made here (the file had none).
    pub rotations_generated: bool,
}

/// Reads a MMBench/CCBench TSV. Bad rows (a missing column, a non-integer index, a
/// non-letter answer, an empty image) are errors naming file and line, or skipped under
/// `--skip-bad`. Without any row at `index ≥ 1e6` the circular copies are generated.
pub fn read(path: &Path, bad: &mut BadRows) -> Result<McBench, EvalError> {
    let table = Table::read(path)?;
    let col = |name: &str| table.column(name).ok_or_else(|| EvalError::data(path, "line 1", format!("no `{name}` column (columns: {})", table.columns.join(", "))));
    let cols = Columns { index: col("index")?, question: col("question")?, category: col("category")?, image: col("image")?, a: col("A")?, b: col("B")? };
    let mut rows = vec![];
    for r in 0..table.rows.len() {
        match row(&table, r, &cols) {
            Ok(q) => rows.push(q),
            Err(message) => bad.handle(EvalError::data(path, format!("line {}", table.rows[r].0), message))?,
        }
    }
    resolve_image_refs(&mut rows, path)?;
    let rotations_generated = !rows.iter().any(|q| q.index >= CIRCULAR_BASE);
    if rotations_generated {
        rows = rows.into_iter().flat_map(|q| rotations(&q)).collect();
    }
    rows.sort_by_key(|q| (q.group(), q.index));
    Ok(McBench { rows, rotations_generated })
}

struct Columns {
    index: usize,
    question: usize,
    category: usize,
    image: usize,
    a: usize,
    b: usize,
}

fn row(t: &Table, r: usize, c: &Columns) -> Result<McQuestion, String> {
    let (line, cells) = &t.rows[r];
    let cell = |i: usize| cells[i].clone();
    let text = |name: &str| t.column(name).and_then(|i| cells[i].clone());
    let index: i64 = cell(c.index).and_then(|s| s.trim().parse().ok()).ok_or("the index is not an integer")?;
    let question = cell(c.question).ok_or("the question is missing")?;
    let mut options = vec![cell(c.a).map(|_| t.rendered(r, c.a)), cell(c.b).map(|_| t.rendered(r, c.b))];
    for name in ["C", "D", "E"] {
        if let Some(i) = t.column(name) {
            options.push(cells[i].as_ref().map(|_| t.rendered(r, i)));
        }
    }
    let answer = match text("answer") {
        None => None,
        Some(a) => match a.trim() {
            x if x.len() == 1 && ('A'..='E').contains(&x.chars().next().unwrap_or(' ')) => x.chars().next(),
            x => return Err(format!("the answer is `{x}`, not a letter A–E")),
        },
    };
    let image_b64 = cell(c.image).ok_or("the image is missing")?;
    Ok(McQuestion { index, question, hint: text("hint"), options, answer, category: cell(c.category).ok_or("the category is missing")?, l2_category: text("l2-category"), image_b64, line: *line })
}

/// Newer MMBench files (VLMEvalKit's) store a copy's image as its question's index: those are
/// replaced by the referenced row's base64.
fn resolve_image_refs(rows: &mut [McQuestion], path: &Path) -> Result<(), EvalError> {
    let by_index: BTreeMap<i64, usize> = rows.iter().enumerate().map(|(i, q)| (q.index, i)).collect();
    for i in 0..rows.len() {
        let Ok(target) = rows[i].image_b64.trim().parse::<i64>() else { continue };
        let Some(&j) = by_index.get(&target).filter(|&&j| rows[j].image_b64.trim().parse::<i64>().is_err()) else {
            return Err(EvalError::data(path, format!("line {}", rows[i].line), format!("the image refers to index {target}, which has no image")));
        };
        rows[i].image_b64 = rows[j].image_b64.clone();
    }
    Ok(())
}

/// A question and its circular copies as CircularEval asks them: the present options rotated
/// by k = 1…n−1 (option i of copy k is option (i+k) mod n), the answer moved with them, index
/// `index + k·1e6`.
pub fn rotations(q: &McQuestion) -> Vec<McQuestion> {
    let present: Vec<String> = q.options.iter().map_while(|o| o.clone()).collect();
    let n = present.len();
    let mut out = vec![q.clone()];
    for k in 1..n {
        let mut c = q.clone();
        c.index = q.index + k as i64 * CIRCULAR_BASE;
        for (i, slot) in c.options.iter_mut().take(n).enumerate() {
            *slot = Some(present[(i + k) % n].clone());
        }
        c.answer = q.answer.map(|a| {
            let pos = (a as u8 - b'A') as usize;
            if pos < n { letter((pos + n - k) % n) } else { a }
        });
        out.push(c);
    }
    out
}

/// The letter a prediction names, by opencompass's `can_infer` rules (options first, then a
/// unique option text); `None`: no rule reads it (the official tool would ask ChatGPT).
pub fn extract(prediction: &str, choices: &[(char, String)]) -> Option<char> {
    // The official reads the predictions back with pandas: a missing or NA-like cell is `nan`.
    let prediction = if is_na(prediction) { "nan" } else { prediction };
    infer_option(prediction).or_else(|| infer_text(prediction, choices))
}

/// `can_infer_option`: a single letter token, or a single `A.`/`(A)`/`:A`… token, among A–E.
fn infer_option(answer: &str) -> Option<char> {
    const CHOICES: [char; 5] = ['A', 'B', 'C', 'D', 'E'];
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    let splits: Vec<&str> = answer.split(py_isspace).filter(|s| !s.is_empty()).collect();
    let has = |pre: &str, c: char, suf: &str| splits.contains(&format!("{pre}{c}{suf}").as_str());
    let count = |pre: &str, suf: &str| CHOICES.iter().filter(|c| has(pre, **c, suf)).count();
    if count("", "") == 1 && !(splits.contains(&"A") && splits.len() > 3) {
        return CHOICES.into_iter().find(|c| has("", *c, ""));
    }
    const TUPS: [(&str, &str); 12] = [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","), (":", "."), (":", ")"), (":", ").")];
    TUPS.iter().find(|(pre, suf)| count(pre, suf) == 1).and_then(|(pre, suf)| CHOICES.into_iter().find(|c| has(pre, *c, suf)))
}

/// Python's `str.split()` separators.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `can_infer_text`: exactly one option's text (lower-cased) inside the answer.
fn infer_text(answer: &str, choices: &[(char, String)]) -> Option<char> {
    let answer = answer.to_lowercase();
    let cands: Vec<char> = choices.iter().filter(|(_, t)| answer.contains(&t.to_lowercase())).map(|(c, _)| *c).collect();
    match cands[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// Hits over a set of questions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Accuracy {
    /// Questions.
    pub questions: usize,
    /// Questions with every pass right.
    pub hits: usize,
    /// hits / questions (NaN with no question, as `np.mean([])`).
    pub accuracy: f64,
}

impl Accuracy {
    /// From counts: `hits / questions` as the official tools divide (NaN with none).
    pub fn new(questions: usize, hits: usize) -> Accuracy {
        Accuracy { questions, hits, accuracy: hits as f64 / questions as f64 }
    }

    fn of(hits: &[bool]) -> Accuracy {
        Accuracy::new(hits.len(), hits.iter().filter(|x| **x).count())
    }
}

/// CircularEval's scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CircularScores {
    /// Over every question.
    pub overall: Accuracy,
    /// Per leaf category (sorted by name).
    pub by_category: BTreeMap<String, Accuracy>,
    /// Per l2-category (empty when the file has none, as CCBench).
    pub by_l2_category: BTreeMap<String, Accuracy>,
    /// Passes (rows) whose answer no rule could read; they count as wrong.
    pub unreadable: usize,
    /// Passes with no prediction at all; their questions count as wrong.
    pub missing: usize,
    /// Questions without a ground-truth answer (the test split): not scored.
    pub unanswered_key: usize,
}

/// Scores every question of `rows` (grouped as [`read`] orders them) from `predictions` by row
/// index: a question is right only when every pass's extracted letter equals its answer.
pub fn score(rows: &[McQuestion], predictions: &BTreeMap<i64, String>) -> CircularScores {
    let mut per_question: Vec<(&McQuestion, bool)> = vec![];
    let (mut unreadable, mut missing, mut unanswered_key) = (0, 0, 0);
    for group in rows.chunk_by(|a, b| a.group() == b.group()) {
        let main = group.iter().find(|q| q.index < CIRCULAR_BASE).unwrap_or(&group[0]);
        if group.iter().any(|q| q.answer.is_none()) {
            unanswered_key += 1;
            continue;
        }
        let mut hit = true;
        for q in group {
            match predictions.get(&q.index) {
                None => {
                    missing += 1;
                    hit = false;
                }
                Some(p) => match extract(p, &q.choices()) {
                    None => {
                        unreadable += 1;
                        hit = false;
                    }
                    Some(letter) => hit &= Some(letter) == q.answer,
                },
            }
        }
        per_question.push((main, hit));
    }
    let hits: Vec<bool> = per_question.iter().map(|(_, h)| *h).collect();
    let group_by = |key: &dyn Fn(&McQuestion) -> Option<String>| {
        let mut m: BTreeMap<String, Vec<bool>> = BTreeMap::new();
        for (q, h) in &per_question {
            if let Some(k) = key(q) {
                m.entry(k).or_default().push(*h);
            }
        }
        m.into_iter().map(|(k, v)| (k, Accuracy::of(&v))).collect()
    };
    CircularScores { overall: Accuracy::of(&hits), by_category: group_by(&|q| Some(q.category.clone())), by_l2_category: group_by(&|q| q.l2_category.clone()), unreadable, missing, unanswered_key }
}

/// The header of [`official_row`]'s file: the columns `eval_mmbench.py` and VLMEvalKit read.
pub const OFFICIAL_HEADER: &str = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tl2-category\tprediction";

/// A prediction row for the official tools (TSV; `pandas.read_csv(f, sep='\t').to_excel(…)`
/// gives the `.xlsx` the old script takes); tabs and newlines in cells become spaces.
pub fn official_row(q: &McQuestion, prediction: &str) -> String {
    let clean = one_line;
    let opt = |i: usize| q.options.get(i).cloned().flatten().map(|o| clean(&o)).unwrap_or_default();
    let fields = [q.index.to_string(), clean(&q.question), q.hint.as_deref().map(clean).unwrap_or_default(), opt(0), opt(1), opt(2), opt(3), q.answer.map(String::from).unwrap_or_default(), clean(&q.category), q.l2_category.as_deref().map(clean).unwrap_or_default(), clean(prediction)];
    fields.join("\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices() -> Vec<(char, String)> {
        vec![('A', "cat".into()), ('B', "dog".into()), ('C', "a dog and a cat".into())]
    }

    #[test]
    fn letters_are_read_by_the_official_rules() {
        // Expected letters follow can_infer in opencompass tools/eval_mmbench.py.
        let c = choices();
        assert_eq!(extract("B", &c), Some('B'));
        assert_eq!(extract("The answer is (C)", &c), Some('C'));
        assert_eq!(extract("A", &c), Some('A'));
        // "A" with more than three words may be an article: the punctuated forms are tried instead.
        assert_eq!(extract("A cat sits here B.", &c), Some('B'));
        assert_eq!(extract("A B", &c), None, "two single letters and no option text");
        assert_eq!(extract("it is a dog", &c), Some('B'));
        assert_eq!(extract("a dog and a cat", &c), None, "three option texts match: a tie");
        assert_eq!(extract("", &c), None, "read back as nan");
        assert_eq!(extract("E", &c), Some('E'));
    }

    #[test]
    fn a_copy_whose_image_is_an_index_takes_that_rows_image() {
        let q = |index, image: &str| McQuestion { index, question: "q".into(), hint: None, options: vec![], answer: None, category: "c".into(), l2_category: None, image_b64: image.into(), line: 2 };
        let mut rows = vec![q(5, "iVBORw0KGgo="), q(1_000_005, "5")];
        resolve_image_refs(&mut rows, Path::new("t.tsv")).unwrap();
        assert_eq!(rows[1].image_b64, "iVBORw0KGgo=");
        let mut dangling = vec![q(1_000_006, "6")];
        assert_eq!(resolve_image_refs(&mut dangling, Path::new("t.tsv")).unwrap_err().to_string(), "t.tsv: line 2: the image refers to index 6, which has no image");
    }

    #[test]
    fn rotations_shift_the_present_options_and_the_answer() {
        let q = McQuestion { index: 7, question: "q".into(), hint: None, options: vec![Some("w".into()), Some("x".into()), Some("y".into()), None], answer: Some('B'), category: "c".into(), l2_category: None, image_b64: String::new(), line: 2 };
        let r = rotations(&q);
        assert_eq!(r.iter().map(|c| c.index).collect::<Vec<_>>(), [7, 1_000_007, 2_000_007]);
        assert_eq!(r[1].options, [Some("x".into()), Some("y".into()), Some("w".into()), None]);
        assert_eq!(r[1].answer, Some('A'));
        assert_eq!(r[2].answer, Some('C'));
        assert!(r[1].prompt().contains("Options: A. x\nB. y\nC. w\nD. nan\n<TOKENS_UNUSED_0>"));
    }
}
