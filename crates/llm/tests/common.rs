//! Shared helpers of the integration tests: the fixtures folder and the default model.

#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/fixtures/NAME` beside the checkout (or under `$XCOMPOSER_SHARED/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    let shared = std::env::var_os("XCOMPOSER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("fixtures").join(name);
    assert!(dir.is_dir(), "fixture folder {} is missing: the parity fixtures live in ../shared beside the checkout", dir.display());
    dir
}

/// The default model, fetched into the shared models folder on first use.
pub fn default_model() -> PathBuf {
    let dir = xcomposer_llm::fetch::models_dir();
    xcomposer_llm::fetch::ensure(&xcomposer_llm::fetch::SMOLLM2_135M, &dir, &mut |m| eprintln!("[fetch] {m}"))
        .expect("fetching the default model")
        .path()
        .to_path_buf()
}
