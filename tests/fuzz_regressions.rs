//! Replays the fuzz regression corpus (issue 13) on stable, without libFuzzer: every file in
//! `tests/fuzz-regressions/<target>/` goes through the same entry point as the cargo-fuzz target
//! of that name (`fuzz/entries.rs`) and must return (the library's Ok or a clean Err), not panic.
//! Inputs that once crashed a target or ran past its bounds are kept here (`crash-*`, `oom-*`,
//! `timeout-*`), with a few small valid seeds (`seed-*`, which the reader must accept, so the
//! replay goes down the real paths) and inputs the reader must refuse (`refused-*`).

#[path = "../fuzz/entries.rs"]
mod entries;

use std::path::Path;

#[test]
fn every_fuzz_regression_file_replays_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz-regressions");
    let mut replayed = 0;
    for (target, run) in entries::TARGETS {
        let dir = root.join(target);
        let Ok(files) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<_> = files.map(|f| f.expect("a readable folder entry").path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("a readable regression file");
            eprintln!("{target}: {}", file.display());
            let accepted = run(&data);
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            assert!(accepted || !name.starts_with("seed-"), "the seed {} was refused", file.display());
            assert!(!accepted || !name.starts_with("refused-"), "{} was accepted", file.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no regression files under {}", root.display());
}
