//! Bad data stops the run with an error naming the file and the row, or, with `--skip-bad`, is
//! skipped and listed; it never becomes a silently wrong score.

use std::path::{Path, PathBuf};

use xcomposer_eval::runner::{Bench, DataPaths, Dataset};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

/// A scratch copy of a tiny data set folder.
fn scratch(name: &str, from: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xc-eval-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(from, &dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() { copy_dir(&p, &dest) } else { std::fs::copy(&p, &dest).map(|_| ()).unwrap() }
    }
}

fn load(bench: Bench, data: PathBuf, questions: Option<PathBuf>, skip: bool) -> Result<(Dataset, Vec<String>), String> {
    Dataset::load(bench, &DataPaths { data, questions }, skip).map(|(d, s)| (d, s.into_iter().map(|s| s.error).collect())).map_err(|e| e.to_string())
}

#[test]
fn mme_unknown_task_missing_image_and_malformed_line() {
    let dir = scratch("mme", &tiny().join("mme"));
    let res = dir.join("eval_tool/Your_Results");
    std::fs::write(res.join("colour.txt"), "a.png\tq?\tYes\n").unwrap();
    let e = load(Bench::Mme, dir.clone(), None, false).map(|_| ()).unwrap_err();
    assert!(e.contains("colour.txt: file name: `colour` is not an MME task"), "{e}");
    std::fs::remove_file(res.join("colour.txt")).unwrap();
    std::fs::remove_file(dir.join("count/images/cell.png")).unwrap();
    let e = load(Bench::Mme, dir.clone(), None, false).map(|_| ()).unwrap_err();
    assert!(e.contains("count.txt: line 1: image cell.png is in neither"), "{e}");
    std::fs::write(res.join("existence.txt"), "coffee.png\tIs it?\tYes\ncoffee.png\tIs it?\n").unwrap();
    let (ds, skipped) = load(Bench::Mme, dir.clone(), None, true).unwrap();
    // Skipped and listed: both lines of cell.png, line 2 of existence.txt and then its orphan line 1.
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(skipped.iter().any(|s| s.contains("existence.txt: line 2: 2 tab-separated fields")), "{skipped:?}");
    let Dataset::Mme(qs) = ds else { panic!() };
    assert_eq!(qs.len(), 2, "commonsense_reasoning's pair is left");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mmbench_bad_rows_name_file_and_line() {
    let dir = scratch("mmbench", &tiny().join("mmbench"));
    let tsv = dir.join("mmbench_tiny.tsv");
    let text = std::fs::read_to_string(&tsv).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut fields: Vec<&str> = lines[2].split('\t').collect();
    fields[7] = "Z";
    lines[2] = fields.join("\t");
    lines[3] = "x".repeat(5);
    std::fs::write(&tsv, lines.join("\n") + "\n").unwrap();
    let e = load(Bench::Mmbench, tsv.clone(), None, false).map(|_| ()).unwrap_err();
    assert!(e.contains("mmbench_tiny.tsv: line 4: 1 fields, the header has 12"), "{e}");
    lines.remove(3);
    std::fs::write(&tsv, lines.join("\n") + "\n").unwrap();
    let e = load(Bench::Mmbench, tsv.clone(), None, false).map(|_| ()).unwrap_err();
    assert!(e.contains("mmbench_tiny.tsv: line 3: the answer is `Z`"), "{e}");
    let (_, skipped) = load(Bench::Mmbench, tsv.clone(), None, true).unwrap();
    assert_eq!(skipped.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seed_missing_image_and_unknown_type() {
    let dir = scratch("seed", &tiny().join("seed"));
    let json = dir.join("SEED-Bench.json");
    let text = std::fs::read_to_string(&json).unwrap().replace("\"question_type_id\": 3", "\"question_type_id\": 9");
    std::fs::write(&json, text).unwrap();
    std::fs::remove_file(dir.join("images/chelsea.png")).unwrap();
    let e = load(Bench::Seed, dir.join("images"), Some(json.clone()), false).map(|_| ()).unwrap_err();
    assert!(e.contains("SEED-Bench.json: questions[1]: image") && e.contains("chelsea.png not found"), "{e}");
    let (ds, skipped) = load(Bench::Seed, dir.join("images"), Some(json), true).unwrap();
    assert!(skipped[1].contains("questions[2]: question_type_id 9 is not in the `question_type` map"), "{skipped:?}");
    let Dataset::Seed(qs) = ds else { panic!() };
    assert_eq!(qs.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
