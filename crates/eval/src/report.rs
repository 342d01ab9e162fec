//! The results of a run: `results.json` (scores, counts, skipped rows, speed) and `results.md`,
//! a table of our scores beside InternLM-XComposer-VL-7B's published ones.

use std::fmt::Write;

use crate::error::Skipped;
use crate::runner::{Bench, RunStats, Scores};

/// The published per-task MME scores (`v1/evaluation/mme/MME_Bench.md`), in task order.
const MME_PUBLISHED: [(&str, f64); 14] = [
    ("existence", 190.0), ("count", 158.33), ("position", 126.67), ("color", 165.0), ("posters", 161.90), ("celebrity", 150.29), ("scene", 159.75),
    ("landmark", 165.25), ("artwork", 126.25), ("OCR", 125.0), ("commonsense_reasoning", 138.57), ("numerical_calculation", 55.0), ("text_translation", 112.5), ("code_reasoning", 85.0),
];

/// Everything `results.json` holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    /// The benchmark.
    pub benchmark: Bench,
    /// The data file or folder.
    pub data: String,
    /// The model folder (`None` when only existing predictions were scored).
    pub model: Option<String>,
    /// `--limit` when given: the scores cover only those questions.
    pub limit: Option<usize>,
    /// Passes asked (circular copies and both MME questions of an image counted).
    pub passes: usize,
    /// The scores.
    pub scores: Scores,
    /// The headline (MME: perception + cognition; else accuracy in %).
    pub headline: f64,
    /// InternLM-XComposer-VL-7B's published headline.
    pub published: f64,
    /// Whether the copies of each question were generated here (MMBench/CCBench files without).
    pub rotations_generated: Option<bool>,
    /// Rows skipped under `--skip-bad`, each naming its file and row.
    pub skipped: Vec<Skipped>,
    /// Speed of this run's answering.
    pub run: RunStats,
}

/// The Markdown table: headline and sub-scores, ours beside the published numbers.
pub fn markdown(r: &Results) -> String {
    let mut s = format!("# {} results\n\n", r.benchmark.name());
    let _ = writeln!(s, "Data: `{}`; model: `{}`; {} passes{}.\n", r.data, r.model.as_deref().unwrap_or("(predictions only)"), r.passes, r.limit.map_or(String::new(), |n| format!(", **partial: --limit {n}**, not comparable with the published number")));
    s.push_str("| score | ours | published (InternLM-XComposer-VL-7B) |\n|---|---|---|\n");
    let _ = writeln!(s, "| **{}** | **{:.2}** | **{}** |", headline_name(r.benchmark), r.headline, r.published);
    match &r.scores {
        Scores::Mme(m) => {
            let _ = writeln!(s, "| perception | {:.2} | 1528.45 |\n| cognition | {:.2} | 391.07 |", m.perception, m.cognition);
            for t in &m.tasks {
                let published = MME_PUBLISHED.iter().find(|(n, _)| *n == t.task).map_or(String::new(), |(_, v)| format!("{v:.2}"));
                let _ = writeln!(s, "| {} (acc {:.2}, acc+ {:.2}, {} unread) | {:.2} | {published} |", t.task, t.acc * 100.0, t.acc_plus * 100.0, t.other, t.score);
            }
            if !m.missing_tasks.is_empty() {
                let _ = writeln!(s, "\nTasks with no questions (left out of the sums): {}.", m.missing_tasks.join(", "));
            }
        }
        Scores::Circular(c) => {
            for (k, a) in c.by_l2_category.iter().map(|(k, a)| (format!("l2: {k}"), a)).chain(c.by_category.iter().map(|(k, a)| (k.clone(), a))) {
                let _ = writeln!(s, "| {k} ({}/{}) | {:.2} | |", a.hits, a.questions, a.accuracy * 100.0);
            }
            let _ = writeln!(s, "\nCircularEval: a question counts only when every rotation is right. Passes no rule could read (counted wrong, never guessed): {}; passes without a prediction: {}; questions without an answer key (not scored): {}.", c.unreadable, c.missing, c.unanswered_key);
        }
        Scores::Seed(sd) => {
            for (k, a) in &sd.by_type {
                let _ = writeln!(s, "| {k} ({}/{}) | {:.2} | |", a.hits, a.questions, a.accuracy * 100.0);
            }
        }
    }
    let _ = writeln!(s, "\nThis run: {} passes of {} questions answered in {:.1} s ({:.3} passes/s, {:.3} questions/s), {} resumed from the predictions file; {} bad rows skipped.", r.run.answered, r.run.questions, r.run.seconds, r.run.passes_per_second, r.run.questions_per_second, r.run.resumed, r.skipped.len());
    s
}

fn headline_name(b: Bench) -> &'static str {
    match b {
        Bench::Mme => "MME total (perception + cognition)",
        Bench::Mmbench | Bench::MmbenchCn => "CircularEval accuracy % (published: test split)",
        Bench::Ccbench => "CircularEval accuracy %",
        Bench::Seed => "accuracy % (image)",
    }
}
