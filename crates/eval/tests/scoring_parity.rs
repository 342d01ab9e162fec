//! Our scores equal the official scoring code's on synthetic predictions (ties, empty and
//! unreadable answers, questions without a prediction). The inputs and the official outputs are in
//! `tests/fixtures/scoring`, made by `make_scoring_fixtures.py` there, which runs MME's
//! `calculation.py`, opencompass's `tools/eval_mmbench.py` and the original's SEED loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use xcomposer_eval::error::BadRows;
use xcomposer_eval::mme::{self, COGNITION, MmeQuestion, PERCEPTION};
use xcomposer_eval::tsv::Table;
use xcomposer_eval::{mmbench, seed};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scoring")
}

/// `calculation.py`'s printed scores: `(name, score)` for each task and each `total score`.
fn official_mme() -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(fixtures().join("mme_official_stdout.txt")).unwrap();
    let mut out = vec![];
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("total score: ") {
            out.push(("total".to_string(), v.trim().parse().unwrap()));
        } else if let Some((name, v)) = line.split_once(" score: ") {
            out.push((name.trim().to_string(), v.trim().parse().unwrap()));
        }
    }
    out
}

#[test]
fn mme_scores_equal_calculation_py() {
    let mut questions = vec![];
    for task in PERCEPTION.iter().chain(&COGNITION) {
        let text = std::fs::read_to_string(fixtures().join("mme").join(format!("{task}.txt"))).unwrap();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let q = MmeQuestion { task: task.to_string(), image_name: f[0].into(), image: PathBuf::new(), question: f[1].into(), answer: f[2].into() };
            questions.push((q, f[3].to_string()));
        }
    }
    let items: Vec<(&MmeQuestion, &str)> = questions.iter().map(|(q, p)| (q, p.as_str())).collect();
    let ours = mme::score(&items);
    let mut mine = vec![("total".to_string(), ours.perception)];
    mine.extend(ours.tasks[..10].iter().map(|t| (t.task.clone(), t.score)));
    mine.push(("total".to_string(), ours.cognition));
    mine.extend(ours.tasks[10..].iter().map(|t| (t.task.clone(), t.score)));
    assert_eq!(mine, official_mme(), "bit-equal floats, in calculation.py's order");
    assert!(ours.tasks.iter().any(|t| t.other > 0), "the fixture has unreadable answers");
}

/// One of `eval_mmbench.py`'s CSVs: column name → its `full` row.
fn official_csv(name: &str) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(fixtures().join(format!("mmbench_official_{name}.csv"))).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let full: Vec<&str> = lines.find(|l| l.starts_with("full,")).unwrap().split(',').collect();
    header.iter().zip(&full).skip(1).map(|(h, v)| (h.to_string(), v.parse().unwrap())).collect()
}

#[test]
fn mmbench_circular_scores_equal_eval_mmbench_py() {
    let mut bad = BadRows::default();
    let bench = mmbench::read(&fixtures().join("mmbench_meta.tsv"), &mut bad).unwrap();
    assert!(!bench.rotations_generated, "the file has its circular copies");
    let preds = Table::read(&fixtures().join("mmbench_predictions.tsv")).unwrap();
    let predictions: BTreeMap<i64, String> = preds.rows.iter().map(|(_, r)| (r[0].as_deref().unwrap().parse().unwrap(), r[1].clone().unwrap_or_default())).collect();
    let s = mmbench::score(&bench.rows, &predictions);
    assert_eq!(s.overall.accuracy, official_csv("overall")["overall"]);
    let leaf: BTreeMap<String, f64> = s.by_category.iter().map(|(k, a)| (k.clone(), a.accuracy)).collect();
    assert_eq!(leaf, official_csv("leaf"));
    let l2: BTreeMap<String, f64> = s.by_l2_category.iter().map(|(k, a)| (k.clone(), a.accuracy)).collect();
    assert_eq!(l2, official_csv("l2"));
    assert!(s.unreadable > 0 && s.missing == 0, "unreadable answers, none missing: {s:?}");
}

#[test]
fn seed_accuracy_equals_the_original_loop() {
    let mut bad = BadRows::default();
    let dir = fixtures();
    let questions = seed::read(&dir.join("seed_questions.json"), &dir, &mut bad).unwrap();
    let text = std::fs::read_to_string(dir.join("seed_predictions.jsonl")).unwrap();
    let predictions: BTreeMap<String, String> = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).map(|v| (v["question_id"].as_str().unwrap().to_string(), v["prediction"].as_str().unwrap().to_string())).collect();
    let s = seed::score(&questions, &predictions);
    let official: BTreeMap<String, f64> = serde_json::from_str(&std::fs::read_to_string(dir.join("seed_official.json")).unwrap()).unwrap();
    let mut ours: BTreeMap<String, f64> = s.by_type.iter().map(|(k, a)| (k.clone(), a.accuracy)).collect();
    ours.insert("overall".into(), s.overall.accuracy);
    assert_eq!(ours, official);
    assert!(s.missing > 0);
}
