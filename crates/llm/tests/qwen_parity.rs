//! Parity with the reference implementation (transformers' GGUF loader, f32) on the Chinese default
//! model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Q4_K, Q5_0, Q6_K and Q8_0 blocks, q/k/v biases, the
//! qwen2 pre-tokenizer and ChatML template): chat text, prompt ids, raw tokenizer cases, the last
//! position's logits and 24 greedy tokens, on Chinese and English prompts. Expected values come
//! from `tests/fixtures/qwen2.5-coder-0.5b/expected.json` (made by `scripts/make_qwen_fixture.py`).
//! The model is fetched into the models folder on first use, as the SmolLM2 tests fetch theirs.

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::backend::Flex;
use serde::Deserialize;
use xcomposer_llm::fetch::{self, QWEN25_CODER_05B};
use xcomposer_llm::matvec::Activations;
use xcomposer_llm::{GenerationConfig, LanguageModel, Message};

/// Largest |Δlogit| allowed at the last prompt position in the exact mode ([`Activations::F32`];
/// measured 2.5e-5 at most, with the fixture's rounding to 5 decimals): its prefill multiplies
/// tiles of rows decoded exactly to f32, as transformers' loader dequantizes through gguf-py, so
/// what is left is f32 summation order over 24 layers on logits of size ~20. The default mode
/// (16-bit activation codes) is held to [`DEFAULT_MODE_TOLERANCE`], and its greedy tokens
/// ([`greedy_tokens_match_exactly`]) to the reference's exactly.
const LOGIT_TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Expected {
    model_sha256: String,
    logit_stride: usize,
    vocab_size: usize,
    cases: Vec<Case>,
    tokenizer_cases: Vec<TokCase>,
}

#[derive(Deserialize)]
struct Case {
    system: Option<String>,
    user_message: String,
    chat_text: String,
    prompt_ids: Vec<u32>,
    last_top_ids: Vec<u32>,
    last_top_logits: Vec<f32>,
    last_strided_logits: Vec<f32>,
    greedy_new_ids: Vec<u32>,
    greedy_text: String,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
}

fn expected() -> &'static Expected {
    static E: OnceLock<Expected> = OnceLock::new();
    E.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2.5-coder-0.5b/expected.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    })
}

fn model() -> &'static LanguageModel<Flex> {
    static M: OnceLock<LanguageModel<Flex>> = OnceLock::new();
    M.get_or_init(|| {
        let fetched = fetch::ensure_split(&QWEN25_CODER_05B, &fetch::models_dir(), &mut |m| eprintln!("[fetch] {m}"), &mut |_, _| {});
        let path = fetched.expect("fetching the Chinese default model").path().to_path_buf();
        assert_eq!(fetch::sha256_file(&path).unwrap(), expected().model_sha256);
        LanguageModel::load(&path, &Default::default()).unwrap()
    })
}

/// The model in the exact mode ([`Activations::F32`]), which [`LOGIT_TOLERANCE`] is for.
fn exact_model() -> &'static LanguageModel<Flex> {
    static M: OnceLock<LanguageModel<Flex>> = OnceLock::new();
    M.get_or_init(|| {
        let path = fetch::ensure_split(&QWEN25_CODER_05B, &fetch::models_dir(), &mut |m| eprintln!("[fetch] {m}"), &mut |_, _| {});
        let mut m = LanguageModel::load(path.expect("fetching the Chinese default model").path(), &Default::default()).unwrap();
        m.decoder.burn_mut().expect("burn's decoder").set_activations(Activations::F32);
        m
    })
}

/// Largest |Δlogit| of the default mode's last-position logits (16-bit activation codes in the
/// prefill products of the packed Q5_0 and Q8_0 rows; Q4_K and Q6_K stay f32) from the
/// reference's: measured 3.7e-4 to 4.7e-4 over the four cases (the exact mode's: 2.1e-5 to 3.1e-5);
/// the greedy tokens stay exactly the reference's.
const DEFAULT_MODE_TOLERANCE: f32 = 1e-3;

fn messages(c: &Case) -> Vec<Message> {
    let system = c.system.iter().map(|s| Message::new("system", s));
    system.chain([Message::new("user", &c.user_message)]).collect()
}

#[test]
fn raw_tokenizer_cases_match() {
    let tok = &model().tokenizer;
    for c in &expected().tokenizer_cases {
        assert_eq!(tok.encode(&c.text).unwrap(), c.ids, "encoding {:?}", c.text);
        assert_eq!(tok.decode(&c.ids, false).unwrap(), c.text, "decoding {:?}", c.ids);
    }
}

#[test]
fn chat_template_and_prompt_ids_match() {
    let m = model();
    for c in &expected().cases {
        let text = m.chat_prompt(&messages(c)).unwrap();
        assert_eq!(text, c.chat_text);
        assert_eq!(m.tokenizer.encode(&text).unwrap(), c.prompt_ids, "prompt ids of {:?}", c.user_message);
    }
}

#[test]
fn last_position_logits_within_tolerance() {
    last_position_logits_within(exact_model(), LOGIT_TOLERANCE, "exact mode");
}

#[test]
fn default_mode_last_position_logits_within_its_bound() {
    last_position_logits_within(model(), DEFAULT_MODE_TOLERANCE, "default mode");
}

/// The last position's logits of every case within `tol` of the reference's, its top 20 in order.
fn last_position_logits_within(m: &LanguageModel<Flex>, tol: f32, mode: &str) {
    let e = expected();
    for (i, c) in e.cases.iter().enumerate() {
        let dec = m.decoder.burn().expect("burn's decoder");
        let logits = dec.forward_ids(&c.prompt_ids, &mut dec.new_cache(), 1);
        assert_eq!(logits.dims(), [1, 1, e.vocab_size]);
        let ours: Vec<f32> = logits.into_data().into_vec().unwrap();
        let strided: Vec<f32> = ours.iter().step_by(e.logit_stride).copied().collect();
        assert_eq!(strided.len(), c.last_strided_logits.len());
        let top: Vec<f32> = c.last_top_ids.iter().map(|&id| ours[id as usize]).collect();
        let diffs = strided.iter().zip(&c.last_strided_logits).chain(top.iter().zip(&c.last_top_logits));
        let max_abs = diffs.map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("case {i}, {mode}: max |Δlogit| = {max_abs:.3e} over {} logits", strided.len() + top.len());
        assert!(max_abs <= tol, "case {i}, {mode}: max-abs logit difference {max_abs}");
        // The reference's top 20, in order.
        let mut order: Vec<u32> = (0..e.vocab_size as u32).collect();
        order.sort_by(|&a, &b| ours[b as usize].total_cmp(&ours[a as usize]));
        assert_eq!(&order[..c.last_top_ids.len()], &c.last_top_ids[..], "case {i}: top ids");
    }
}

#[test]
fn greedy_tokens_match_exactly() {
    let m = model();
    for c in &expected().cases {
        let cfg = GenerationConfig { max_new_tokens: 24, ..Default::default() };
        let out = m.generate(&c.prompt_ids, &cfg, &mut |_| {}).unwrap();
        assert_eq!(out.ids, c.greedy_new_ids, "greedy ids for {:?}", c.user_message);
        assert_eq!(m.tokenizer.decode(&out.ids, false).unwrap(), c.greedy_text);
    }
}
