//! Each benchmark end to end on the tiny data sets in `tests/fixtures/tiny` (the published formats,
//! our own questions) with the xcomposer-tiny checkpoint: the prompt strings, the prompt ids, the
//! generated ids, the answers and SEED's candidate losses equal what the ORIGINAL evaluation code
//! gave on the same files (`tests/fixtures/reference`, made by `make_eval_fixtures.py`), and the
//! run's scores are what the scoring rules give for those answers.

#[path = "../../llm/tests/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use serde_json::Value;
use xcomposer_eval::answerer::{Answerer, XComposerAnswerer, prompt_ids};
use xcomposer_eval::predictions::PredictionLog;
use xcomposer_eval::runner::{self, Bench, DataPaths, Dataset, Scores};
use xcomposer_vision::xcomposer::XComposer;

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(here().join("reference").join(format!("{name}.json"))).unwrap()).unwrap()
}

/// The tokenizer calls and the generate call recorded for one pass: (first piece's text, its
/// ids, the rest's text, its ids, the returned sequence).
fn calls(pass: &Value) -> (String, Vec<u32>, String, Vec<u32>, Option<Vec<u32>>) {
    let c = pass["calls"].as_array().unwrap();
    let ids = |v: &Value| v["tokenizer"]["ids"][0].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<u32>>();
    let text = |v: &Value| v["tokenizer"]["text"].as_str().unwrap().to_string();
    let seq = c.iter().find_map(|v| v.get("generate")).map(|g| g["sequence"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect());
    (text(&c[0]), ids(&c[0]), text(&c[1]), ids(&c[1]), seq)
}

/// Runs `bench` on its tiny data into a fresh folder; returns the dataset, the log and the folder.
fn run(model: &XComposer<Flex>, bench: Bench, paths: DataPaths) -> (Dataset, PredictionLog, PathBuf) {
    let (ds, skipped) = Dataset::load(bench, &paths, false).unwrap();
    assert!(skipped.is_empty());
    let out = std::env::temp_dir().join(format!("xc-eval-{}-{}", bench.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut log = PredictionLog::open(&out.join("predictions.jsonl"), false).unwrap();
    let stats = runner::run(&ds, &mut XComposerAnswerer::new(model), &mut log, &mut |_, _| {}).unwrap();
    assert_eq!(stats.answered, ds.passes().len());
    // A second run with --resume answers nothing and reads every prediction back.
    let mut again = PredictionLog::open(&out.join("predictions.jsonl"), true).unwrap();
    assert!(runner::all_answered(&ds, &again));
    assert_eq!(runner::run(&ds, &mut XComposerAnswerer::new(model), &mut again, &mut |_, _| {}).unwrap().answered, 0);
    (ds, again, out)
}

/// Checks one generated pass against the original's record.
fn check_generated(model: &XComposer<Flex>, prompt: &str, log: &PredictionLog, id: &str, pass: &Value) {
    let (a, a_ids, b, b_ids, seq) = calls(pass);
    assert_eq!(prompt, format!("{a}<ImageHere>{b}"), "{id}: prompt string");
    assert_eq!(prompt_ids(model, prompt).unwrap(), (a_ids, b_ids), "{id}: prompt ids");
    let r = &log.records[id];
    assert_eq!(Some(r.sequence.clone()), seq, "{id}: generated ids");
    assert_eq!(r.prediction, pass["response"].as_str().unwrap(), "{id}: answer text");
}

#[test]
fn every_benchmark_matches_the_original_evaluation_code_on_tiny_data() {
    let model = XComposer::<Flex>::load(&common::fixture("xcomposer-tiny"), &Default::default()).unwrap();
    let tiny = here().join("tiny");
    mme(&model, &tiny);
    mmbench(&model, &tiny);
    ccbench(&model, &tiny);
    seed(&model, &tiny);
}

fn mme(model: &XComposer<Flex>, tiny: &Path) {
    let (ds, log, out) = run(model, Bench::Mme, DataPaths { data: tiny.join("mme"), questions: None });
    let reference = reference("mme");
    let Dataset::Mme(qs) = &ds else { panic!() };
    assert_eq!(qs.len(), 8);
    for (line, q) in qs {
        let pass = reference["passes"].as_array().unwrap().iter().find(|p| p["image"] == q.image_name.as_str() && p["question"] == q.question.as_str()).unwrap();
        check_generated(model, &q.prompt(), &log, &q.id(*line), pass);
    }
    // The official result files, line for line as the original's eval.py wrote them.
    ds.write_official(&log.texts(), &out).unwrap();
    for (task, text) in reference["result_files"].as_object().unwrap() {
        assert_eq!(std::fs::read_to_string(out.join("mme").join(format!("{task}.txt"))).unwrap(), text.as_str().unwrap(), "{task}.txt");
    }
    let Scores::Mme(s) = ds.score(&log.texts()) else { panic!() };
    // calculation.py's rule reads none of the tiny model's answers as yes or no: every task scores 0.
    assert!(s.tasks.iter().all(|t| t.score == 0.0 && t.other == t.questions), "{s:?}");
    assert_eq!(s.missing_tasks.len(), 11);
}

fn mmbench(model: &XComposer<Flex>, tiny: &Path) {
    let (ds, log, _) = run(model, Bench::Mmbench, DataPaths { data: tiny.join("mmbench/mmbench_tiny.tsv"), questions: None });
    let reference = reference("mmbench");
    let Dataset::Mc { bench, .. } = &ds else { panic!() };
    assert_eq!(bench.rows.len(), reference.as_array().unwrap().len());
    for q in &bench.rows {
        let pass = reference.as_array().unwrap().iter().find(|p| p["index"] == q.index).unwrap();
        assert_eq!(q.prompt(), pass["input_text"].as_str().unwrap());
        check_generated(model, &q.prompt(), &log, &q.index.to_string(), pass);
    }
    let Scores::Circular(s) = ds.score(&log.texts()) else { panic!() };
    // The official rules read no letter and no unique option text in these answers.
    assert_eq!((s.overall.questions, s.overall.hits, s.unreadable), (3, 0, 9), "{s:?}");
}

fn ccbench(model: &XComposer<Flex>, tiny: &Path) {
    let (ds, log, _) = run(model, Bench::Ccbench, DataPaths { data: tiny.join("ccbench/ccbench_tiny.tsv"), questions: None });
    let Dataset::Mc { bench, .. } = &ds else { panic!() };
    assert!(bench.rotations_generated);
    // 3 + 2 options: each question and its generated rotations.
    assert_eq!(bench.rows.iter().map(|q| q.index).collect::<Vec<_>>(), [0, 1_000_000, 2_000_000, 1, 1_000_001]);
    for pass in reference("ccbench").as_array().unwrap() {
        let q = bench.rows.iter().find(|q| pass["index"] == q.index).unwrap();
        assert_eq!(q.prompt(), pass["input_text"].as_str().unwrap());
        check_generated(model, &q.prompt(), &log, &q.index.to_string(), pass);
    }
}

fn seed(model: &XComposer<Flex>, tiny: &Path) {
    let (ds, log, _) = run(model, Bench::Seed, DataPaths { data: tiny.join("seed/images"), questions: Some(tiny.join("seed/SEED-Bench.json")) });
    let reference = reference("seed");
    let Dataset::Seed(qs) = &ds else { panic!() };
    assert_eq!(qs.len(), 3, "the video question is left out");
    for pass in reference["passes"].as_array().unwrap() {
        let id = pass["question_id"].as_str().unwrap();
        let q = qs.iter().find(|q| q.id == id).unwrap();
        let (a, a_ids, b, b_ids, _) = calls(pass);
        assert_eq!(q.prompt(), format!("{a}<ImageHere>{b}"));
        assert_eq!(prompt_ids(model, &q.prompt()).unwrap(), (a_ids, b_ids));
        let cands: Vec<Vec<u32>> = pass["calls"][2]["tokenizer"]["ids"].as_array().unwrap().iter().map(|c| c.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()).collect();
        let ours: Vec<Vec<u32>> = xcomposer_eval::seed::CANDIDATES.iter().map(|c| model.tokenizer.encode(c, false).unwrap()).collect();
        assert_eq!(ours, cands, "candidate ids");
        let r = &log.records[id];
        for (x, y) in r.losses.iter().zip(pass["ce_loss"].as_array().unwrap()) {
            assert!((x - y.as_f64().unwrap()).abs() < 1e-3, "{id}: losses {:?} vs {}", r.losses, pass["ce_loss"]);
        }
        assert_eq!(r.prediction, pass["prediction"].as_str().unwrap());
    }
    // The fused engine's way (a prefill per candidate prefix) gives the same losses.
    let mut by_prefill = XComposerAnswerer::new(model);
    by_prefill.prefill_each_prefix = true;
    for pass in ds.passes() {
        let losses = by_prefill.rank(&pass.prompt, &pass.image_key, &|| pass.image(), &xcomposer_eval::seed::CANDIDATES).unwrap();
        for (x, y) in losses.iter().zip(&log.records[&pass.id].losses) {
            assert!((x - y).abs() < 1e-4, "{}: {losses:?} vs {:?}", pass.id, log.records[&pass.id].losses);
        }
    }
    let Scores::Seed(s) = ds.score(&log.texts()) else { panic!() };
    assert_eq!(s.overall.accuracy, reference["accuracy"].as_f64().unwrap(), "the original's score/len");
    let by_type: BTreeMap<&str, usize> = s.by_type.iter().map(|(k, a)| (k.as_str(), a.questions)).collect();
    assert_eq!(by_type, BTreeMap::from([("Instance Attributes", 1), ("Instance Identity", 1), ("Scene Understanding", 1)]));
}
