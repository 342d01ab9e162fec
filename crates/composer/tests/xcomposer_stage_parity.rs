//! Every composition stage against the ORIGINAL web demo on ../shared/fixtures/xcomposer-tiny:
//! the prompt string, its token ids, the decoding settings and the generated ids of the writer
//! (greedy, beams, an English title), the image spotting (the model decides, or 2 asked), the
//! captions, the ➕ caption of an added image and the A–D choice (two slots, and a prompt cut to
//! the original's length). The references are tests/fixtures/xcomposer-composition, made by
//! scripts/fixtures/make_composition_fixtures.py running the demo's own methods; each stage here
//! goes through the functions `Composer::with_xcomposer` uses.

#[path = "../../llm/tests/common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::backend::Flex;
use serde_json::Value;
use xcomposer_composer::article::{ARTICLE_FORMAT, ARTICLE_VERSION, Settings};
use xcomposer_composer::selector::SelectContext;
use xcomposer_composer::text_model::{Completion, Request, Sampling};
use xcomposer_composer::vlm_selector::{VlmSelector, parse_choice};
use xcomposer_composer::writer::WriteRequest;
use xcomposer_vision::xcomposer::model::XComposer;
use xcomposer_composer::xcomposer_text::{Answered, XComposerText};
use xcomposer_composer::{Article, BestScore, Candidate, Composer, Edit, ImageSlot, Language, LlmWriter, Prompts, Provenance, Source, TextModel};

/// XComposerText keeping every answered request.
struct Recorder {
    inner: XComposerText<Flex>,
    calls: Mutex<Vec<Answered>>,
}

impl TextModel for Recorder {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn complete(&self, req: &Request, on_text: &mut (dyn FnMut(&str) -> std::ops::ControlFlow<()> + Send)) -> Result<Completion, String> {
        let answered = self.inner.answer(req, on_text)?;
        let completion = answered.completion.clone();
        self.calls.lock().unwrap().push(answered);
        Ok(completion)
    }
}

impl Recorder {
    fn take(&self) -> Vec<Answered> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// The model, a recorder around it, the composer's stages on the recorder, and the fixture's
/// article.
struct Setup {
    model: Arc<XComposer<Flex>>,
    text: Arc<Recorder>,
    composer: Composer,
    article: Vec<String>,
}

fn setup() -> Setup {
    let model = Arc::new(XComposer::<Flex>::load(&common::fixture("xcomposer-tiny"), &Default::default()).unwrap());
    let text = Arc::new(Recorder { inner: XComposerText::original(model.clone()), calls: Mutex::new(vec![]) });
    let composer = Composer::xcomposer_stages(text.clone(), Box::new(BestScore), Arc::new(Prompts::original()), Box::new(FixtureImages));
    Setup { model, text, composer, article: strings(&fixture("meta")["article"]) }
}

/// A retriever for the edit test: the fixture images, each once.
struct FixtureImages;

impl xcomposer_composer::Retriever for FixtureImages {
    fn id(&self) -> String {
        "fixture images".into()
    }

    fn retrieve(&self, _caption: &str, k: usize, _exclude: &[PathBuf]) -> Result<xcomposer_composer::retriever::Retrieved, xcomposer_composer::ComposeError> {
        let candidates = CANDIDATES.iter().take(k).map(|n| candidate(n)).collect();
        Ok(xcomposer_composer::retriever::Retrieved { candidates, note: None })
    }
}

const CANDIDATES: [&str; 4] = ["coffee.png", "chelsea.png", "cell.png", "logo.png"];

fn candidate(name: &str) -> Candidate {
    Candidate { path: common::fixture("images").join(name), score: 1.0, parts: vec![], description: None, remote: None }
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/xcomposer-composition").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// The eoh/eoa stop ids the original's settings name.
fn stop_ids(settings: &Value) -> Vec<u32> {
    let named = settings["stopping_criteria"].as_array().unwrap().iter().any(|c| c.as_str().unwrap().starts_with("StoppingCriteriaSub(103027,103028)"));
    if named { vec![103027, 103028] } else { vec![] }
}

/// One stage's call against the original's: prompt string, prompt ids, settings and generated
/// ids, exact; returns the report row.
fn check(stage: &str, got: &Answered, want: &Value) -> String {
    assert_eq!(got.prompt, want["prompt"].as_str().unwrap(), "{stage}: prompt string");
    assert_eq!(got.prompt_ids, ids(&want["prompt_ids"]), "{stage}: prompt ids");
    let s = &want["settings"];
    let c = &got.config;
    assert_eq!(c.num_beams as u64, s["num_beams"].as_u64().unwrap(), "{stage}: beams");
    assert_eq!(c.max_new_tokens as u64, s["new_token_budget"].as_u64().unwrap(), "{stage}: new-token budget");
    assert_eq!(c.repetition_penalty as f64, s["repetition_penalty"].as_f64().unwrap(), "{stage}: repetition penalty");
    assert_eq!(c.stop_ids, stop_ids(s), "{stage}: stop ids");
    assert_eq!(got.output.new_tokens(), ids(&want["new_ids"]), "{stage}: generated ids");
    format!("{stage}: prompt string exact, {} prompt ids exact, {} generated ids exact", got.prompt_ids.len(), got.output.new_tokens().len())
}

#[test]
fn the_writer_matches_the_original_greedy_and_with_beams() {
    let s = setup();
    let writer = fixture("writer");
    let budget = fixture("meta")["writer_max_length"].as_u64().unwrap() as usize - 1;
    let mut rows = vec![];
    for case in ["greedy", "beam", "beam_en"] {
        let want = &writer[case];
        let title = want["title"].as_str().unwrap();
        // The demo's beam slider: 1 for greedy, else the default 5 that with_xcomposer uses.
        let greedy = LlmWriter { sampling: Sampling { beams: 1, ..Sampling::greedy(5.0) }, ..LlmWriter::new(s.text.clone(), Arc::new(Prompts::original())) };
        let w: &dyn xcomposer_composer::ArticleWriter = if case == "greedy" { &greedy } else { s.composer.writer.as_ref() };
        let req = WriteRequest { instruction: title, language: Language::detect(title), max_new_tokens: budget, max_paragraphs: 60, seed: 0 };
        w.write(&req, &mut |_| std::ops::ControlFlow::Continue(())).unwrap();
        let calls = s.text.take();
        rows.push(check(&format!("writer {case}"), &calls[0], want));
        // What the demo streamed: the running (best) sequence after each step but the last.
        let mut streamed = vec![];
        let prompt = s.model.embed_ids(&calls[0].prompt_ids).unwrap();
        s.model.decode_streaming(prompt, &calls[0].config, &mut |seq| {
            streamed.push(seq.to_vec());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        let theirs: Vec<Vec<u32>> = want["streamed"].as_array().unwrap().iter().map(ids).collect();
        assert!(streamed.len() - theirs.len() <= 1 && streamed[..theirs.len()] == theirs[..], "writer {case}: streamed sequences");
        rows.push(format!("writer {case}: {} streamed sequences exact", theirs.len()));
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn image_spotting_matches_the_original() {
    let s = setup();
    let spot = fixture("spot");
    let mut rows = vec![];
    for (case, count) in [("auto", None), ("count", Some(2))] {
        s.composer.spotter.spot(&s.article, count, Language::Zh).unwrap();
        let calls = s.text.take();
        assert_eq!(calls.len(), 1);
        rows.push(check(&format!("spot {case}"), &calls[0], &spot[case]));
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn captions_match_the_original_one_after_another() {
    let s = setup();
    let caption = fixture("caption");
    let mut previous: Vec<(usize, String)> = vec![];
    let mut rows = vec![];
    for want in caption["calls"].as_array().unwrap() {
        let po = want["position"].as_u64().unwrap() as usize;
        let (ours, _) = s.composer.captioner.caption(&s.article, po, &previous, Language::Zh, 0).unwrap();
        let calls = s.text.take();
        rows.push(check(&format!("caption <Seg{po}>"), &calls[0], want));
        let theirs = want["caption"].as_str().unwrap();
        assert_eq!(ours, theirs, "caption <Seg{po}>: the caption cut from the answer");
        previous.push((po, theirs.to_string()));
    }
    eprintln!("{}", rows.join("\n"));
}

/// The fixture article with captioned slots after `existing` (`(paragraph, caption)`).
fn article_with(paragraphs: Vec<String>, existing: &[(usize, String)]) -> Article {
    let slot = |(after, caption): &(usize, String)| ImageSlot {
        after_paragraph: *after,
        caption: caption.clone(),
        caption_source: Provenance::new(Source::Model, "fixture"),
        candidates: vec![candidate(CANDIDATES[0])],
        chosen: 0,
        selection: Provenance::new(Source::Score, "fixture"),
        asset: None,
    };
    Article {
        format: ARTICLE_FORMAT.into(),
        version: ARTICLE_VERSION,
        instruction: "又见敦煌".into(),
        language: Language::Zh,
        title: "又见敦煌".into(),
        title_source: Provenance::new(Source::User, "fixture"),
        paragraphs,
        text_source: Provenance::new(Source::User, "fixture"),
        spotting: Provenance::new(Source::User, "fixture"),
        images: existing.iter().map(slot).collect(),
        settings: Settings { seed: 0, max_new_tokens: 40, max_paragraphs: 60, images: None, candidates: 4 },
        models: Default::default(),
        library: None,
        timings: vec![],
        edits: vec![],
    }
}

#[test]
fn an_added_image_is_captioned_as_the_originals_plus_button() {
    let s = setup();
    let insert = fixture("insert_caption");
    let mut rows = vec![];
    for case in ["with_past", "no_past"] {
        let want = &insert[case];
        let mut existing: Vec<(usize, String)> = want["existing_captions"].as_object().unwrap().iter().map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string())).collect();
        existing.sort();
        let mut a = article_with(s.article.clone(), &existing);
        let index = want["index"].as_u64().unwrap() as usize;
        s.composer.edit(&mut a, &Edit::Add { after: index }).unwrap();
        let calls = s.text.take();
        rows.push(check(&format!("➕ caption {case}"), &calls[0], want));
        let slot = a.slot_after(index).unwrap();
        assert_eq!(a.images[slot].caption, want["caption"].as_str().unwrap(), "➕ caption {case}: the caption");
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn the_a_to_d_choice_matches_the_original() {
    let model = Arc::new(XComposer::<Flex>::load(&common::fixture("xcomposer-tiny"), &Default::default()).unwrap());
    let selector = VlmSelector { constrained: false, ..VlmSelector::new(model, Arc::new(Prompts::original())) };
    let select = fixture("select");
    let mut rows = vec![];
    for case in ["two_slots", "truncated"] {
        let article = strings(&select[case]["article"]);
        for want in select[case]["calls"].as_array().unwrap() {
            let after = want["position"].as_u64().unwrap() as usize;
            let images = strings(&want["images"]);
            let (before, offered) = images.split_at(images.len() - 4);
            // Earlier slots' chosen images, in line order.
            let slots: Vec<usize> = select[case]["slots"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let placed: Vec<(usize, PathBuf)> = slots.iter().zip(before).map(|(p, n)| (*p, common::fixture("images").join(n))).collect();
            let ctx = SelectContext { paragraphs: &article, after, caption: "", placed: &placed, language: Language::Zh };
            let cands: Vec<Candidate> = offered.iter().map(|n| candidate(n)).collect();
            let asked = selector.ask(&ctx, &cands).unwrap();
            let stage = format!("A–D {case} <Seg{after}>");
            let aligned = want["aligned_text"].as_str().unwrap();
            assert_eq!(Some(asked.text.as_str()), aligned.strip_suffix("<TOKENS_UNUSED_1> </s>"), "{stage}: prompt string");
            let layout: Vec<Option<u32>> = want["prompt_layout"].as_array().unwrap().iter().map(|v| v.as_u64().map(|x| x as u32)).collect();
            assert_eq!(asked.layout, layout, "{stage}: prompt ids and image places");
            let s = &want["settings"];
            assert_eq!((asked.config.num_beams as u64, asked.config.max_new_tokens as u64), (s["num_beams"].as_u64().unwrap(), s["new_token_budget"].as_u64().unwrap()));
            assert_eq!(asked.config.repetition_penalty as f64, s["repetition_penalty"].as_f64().unwrap());
            assert_eq!(asked.config.stop_ids, stop_ids(s), "{stage}: stop ids");
            assert_eq!(asked.output.new_tokens(), ids(&want["new_ids"]), "{stage}: generated ids");
            assert_eq!(parse_choice(&asked.answer, 4).unwrap_or(0) as u64, want["selected"].as_u64().unwrap(), "{stage}: the letter");
            let n_ids = layout.iter().flatten().count();
            rows.push(format!("{stage}: prompt string exact, {n_ids} prompt ids + {} image positions exact, {} generated ids exact, choice exact", layout.len() - n_ids, asked.output.new_tokens().len()));
        }
    }
    eprintln!("{}", rows.join("\n"));
}
