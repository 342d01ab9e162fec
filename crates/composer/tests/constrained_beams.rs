//! Grammars under beam search on ../shared/fixtures/xcomposer-tiny (random weights, so the
//! model left alone answers noise): the A–D selector answers one offered letter, every beam
//! search hypothesis under a grammar is grammatical, a grammar that allows all the model says
//! changes nothing, and the 5-beam spotter names only valid lines.

#[path = "../../llm/tests/common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use burn::backend::Flex;
use xcomposer_composer::answer_grammar::choice_grammar;
use xcomposer_composer::selector::{SelectContext, Selector};
use xcomposer_composer::text_model::LazyVocabulary;
use xcomposer_composer::vlm_selector::{VlmSelector, parse_choice};
use xcomposer_composer::xcomposer_text::XComposerText;
use xcomposer_composer::{Candidate, ImageSpotter, Language, LlmSpotter, Prompts, Source};
use xcomposer_llm::beam::{EmbedGenConfig, EmbedGenOutput, every_step};
use xcomposer_llm::grammar::{Constraint, Grammar};
use xcomposer_vision::xcomposer::model::XComposer;

/// The model, loaded once for the tests of this file.
fn model() -> Arc<XComposer<Flex>> {
    static MODEL: OnceLock<Arc<XComposer<Flex>>> = OnceLock::new();
    MODEL.get_or_init(|| Arc::new(XComposer::<Flex>::load(&common::fixture("xcomposer-tiny"), &Default::default()).unwrap())).clone()
}

/// The model's tokens as grammars read them, computed once.
fn constraint(grammar: &str) -> Constraint {
    static VOCABULARY: OnceLock<LazyVocabulary> = OnceLock::new();
    let g = Arc::new(Grammar::parse("test", grammar).unwrap());
    VOCABULARY.get_or_init(LazyVocabulary::default).constraint(&model().tokenizer.sp, g)
}

fn images() -> PathBuf {
    common::fixture("images")
}

fn candidates(n: usize) -> Vec<Candidate> {
    ["coffee.png", "chelsea.png", "cell.png", "logo.png"][..n].iter().map(|f| Candidate { path: images().join(f), score: 0.5, parts: vec![], description: None, remote: None }).collect()
}

#[test]
fn a_constrained_selector_always_answers_one_offered_letter() {
    let selector = VlmSelector::new(model(), Arc::new(Prompts::default()));
    let paragraphs: Vec<String> = ["咖啡起源于埃塞俄比亚。", "Espresso came from Italy.", "Tea is older than coffee."].map(String::from).to_vec();
    let placed = vec![(0, images().join("chelsea.png"))];
    let mut seen = vec![];
    for (offered, after, language) in [(4, 1, Language::Zh), (3, 2, Language::En), (2, 1, Language::En)] {
        let ctx = SelectContext { paragraphs: &paragraphs, after, caption: "a cup", placed: &placed, language };
        let (i, why) = selector.select(&ctx, &candidates(offered)).unwrap();
        let raw = why.raw.clone().unwrap();
        assert_eq!(why.by, Source::Model, "{why:?}");
        assert!(choice_grammar(offered).matches(&raw), "{offered} offered, answer {raw:?}");
        assert_eq!(parse_choice(&raw, offered), Some(i));
        assert!(why.detail.starts_with("decoded under a one-letter grammar; the model chose"), "{}", why.detail);
        seen.push(raw);
    }
    // The same question unconstrained: the random model's answer is read as the original reads it.
    let free = VlmSelector { constrained: false, ..VlmSelector::new(model(), Arc::new(Prompts::default())) };
    let ctx = SelectContext { paragraphs: &paragraphs, after: 1, caption: "a cup", placed: &placed, language: Language::Zh };
    let (_, why) = free.select(&ctx, &candidates(4)).unwrap();
    assert!(why.detail.starts_with("unconstrained: the answer parsed"), "{}", why.detail);
    eprintln!("constrained answers {seen:?}; unconstrained {:?} ({:?})", why.raw, why.by);
}

/// Beam search (`beams`, `tokens` new tokens) after a short text prompt.
fn decode(beams: usize, tokens: usize, under: Option<&Constraint>) -> (EmbedGenConfig, EmbedGenOutput) {
    let m = model();
    let ids = m.tokenizer.encode(" <|User|>:Where should the images go?\n<TOKENS_UNUSED_0> <|Bot|>:", true).unwrap();
    let prompt = m.embed_ids(&ids).unwrap();
    let cfg = EmbedGenConfig { num_beams: beams, max_new_tokens: tokens, repetition_penalty: 1.0, ..xcomposer_vision::xcomposer::language::gen_config() };
    let out = match under {
        Some(c) => m.decode_constrained(prompt, c, &cfg, &mut every_step),
        None => m.decode(prompt, &cfg),
    };
    (cfg.clone(), out.unwrap())
}

/// Whether `seq` (BOS first) reads as the start of a sentence of `c`'s grammar (a whole one
/// when `whole`), skipping the ids that end a sentence.
fn grammatical(c: &Constraint, cfg: &EmbedGenConfig, seq: &[u32], whole: bool) -> bool {
    let mut state = c.grammar.start();
    for t in &seq[1..] {
        if *t == cfg.eos_id || cfg.stop_ids.contains(t) {
            continue;
        }
        if !c.vocabulary.bytes(*t).is_some_and(|b| state.advance_bytes(&c.grammar, b)) {
            return false;
        }
    }
    !whole || state.is_accepting()
}

#[test]
fn beam_search_under_a_grammar_gives_only_grammatical_outputs() {
    let c = constraint(r#"root ::= "<Seg" [0-9] ">" (", <Seg" [0-9] ">")*"#);
    for beams in [1, 5] {
        let (cfg, out) = decode(beams, 14, Some(&c));
        let ended = out.sequence.last() == Some(&cfg.eos_id);
        assert!(grammatical(&c, &cfg, &out.sequence, ended), "{beams} beams: {:?} = {:?}", out.sequence, model().answer_text(&out));
        assert!(model().answer_text(&out).starts_with("<Seg"), "{:?}", model().answer_text(&out));
        // Every finished hypothesis is a whole sentence (EOS comes only then).
        for (h, score) in &out.hypotheses {
            assert!(score.is_finite() && grammatical(&c, &cfg, h, false), "{beams} beams: hypothesis {h:?}");
        }
        if beams > 1 {
            assert!(out.hypotheses.len() > 1, "{:?}", out.hypotheses);
        }
        // Left alone, the random model writes no line marker.
        let (_, free) = decode(beams, 14, None);
        assert!(!grammatical(&c, &cfg, &free.sequence, false), "{:?}", model().answer_text(&free));
    }
}

#[test]
fn a_grammar_that_allows_all_the_model_says_leaves_beam_search_unchanged() {
    let c = constraint("root ::= .*");
    for beams in [1, 5] {
        let (_, free) = decode(beams, 12, None);
        let (_, under) = decode(beams, 12, Some(&c));
        assert_eq!(under, free, "{beams} beams");
    }
}

#[test]
fn the_five_beam_spotter_is_constrained_to_valid_lines() {
    let text = Arc::new(XComposerText::new(model()));
    let spotter = LlmSpotter { max_new_tokens: 40, beams: 5, ..LlmSpotter::new(text, Arc::new(Prompts::default())) };
    let paragraphs: Vec<String> = ["Coffee began in Ethiopia.", "Monks drank it to stay awake.", "It reached Venice in 1615.", "Cafés spread across Europe."].map(String::from).to_vec();
    let spots = spotter.spot(&paragraphs, Some(2), Language::En).unwrap();
    assert_eq!(spots.provenance.by, Source::Model, "{:?}", spots.provenance);
    assert!(spots.provenance.detail.starts_with("decoded under a grammar of 2 distinct valid line markers; the model chose lines"), "{}", spots.provenance.detail);
    assert_eq!(spots.after.len(), 2);
    assert!(spots.after.windows(2).all(|w| w[0] < w[1]) && spots.after.iter().all(|&l| l < paragraphs.len()), "{:?}", spots.after);
}
