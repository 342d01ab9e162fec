//! The structured writer, spotter and captioner with a scripted model that takes grammars: every
//! constrained answer it gives is checked against the grammar it was handed, and the stages'
//! prompts, cleaning and provenance are checked against what the script answered.

use std::sync::{Arc, Mutex};

use xcomposer_composer::captioner::Captioner;
use xcomposer_composer::spotter::ImageSpotter;
use xcomposer_composer::text_model::{Completion, Request};
use xcomposer_composer::writer::{ArticleWriter, WriteRequest};
use xcomposer_composer::{Language, LlmCaptioner, LlmSpotter, LlmWriter, Prompts, Source, StructuredWriter, TextModel};

/// Answers from a queue; records each prompt and whether it came with a grammar.
struct Scripted {
    answers: Mutex<Vec<String>>,
    seen: Mutex<Vec<(String, bool)>>,
    grammars: bool,
}

impl Scripted {
    fn new(answers: &[&str], grammars: bool) -> Arc<Self> {
        Arc::new(Scripted { answers: Mutex::new(answers.iter().rev().map(|s| s.to_string()).collect()), seen: Mutex::new(vec![]), grammars })
    }
}

impl TextModel for Scripted {
    fn id(&self) -> String {
        "scripted".into()
    }

    fn takes_grammar(&self) -> bool {
        self.grammars
    }

    fn complete(&self, req: &Request, on_text: &mut (dyn FnMut(&str) -> std::ops::ControlFlow<()> + Send)) -> Result<Completion, String> {
        let text = self.answers.lock().unwrap().pop().expect("a scripted answer for every request");
        if let Some(g) = &req.grammar {
            assert!(self.grammars, "a grammar was sent to a model that takes none");
            assert!(g.matches(&text), "the script's answer {text:?} is outside the grammar it was given");
        }
        self.seen.lock().unwrap().push((req.prompt.user.clone(), req.grammar.is_some()));
        let _ = on_text(&text);
        Ok(Completion { text, prompt_tokens: 10, new_tokens: 5, prefill_seconds: 0.0, decode_seconds: 0.0, stop_reason: "stop_token".into() })
    }
}

fn request(instruction: &str) -> WriteRequest<'_> {
    WriteRequest { instruction, language: Language::En, max_new_tokens: 400, max_paragraphs: 60, seed: 3 }
}

#[test]
fn the_structured_writer_plans_writes_each_section_in_context_and_cleans() {
    let model = Scripted::new(
        &[
            " Honeybees at Work\n1. The hive\n2. The dance\n",
            "Sure! Here is section 1. Bees live in hives. Day after day, they make honey from the nectar of flowers, and they store it in wax cells that the young workers build from scratch every spring and summer.\n",
            "The dance: Bees dance to point at flowers, turning in figures of eight whose angle gives the direction of the food and whose length gives the distance to it from the hive. Bees live in hives! What would you like to know?\n",
        ],
        true,
    );
    let writer = StructuredWriter::new(LlmWriter::new(model.clone(), Arc::new(Prompts::default())));
    let mut streamed = String::new();
    let w = writer
        .write(&request("Write about bees in two sections."), &mut |t| {
            streamed.push_str(t);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(w.title, "Honeybees at Work");
    assert_eq!(w.title_source.by, Source::Model);
    assert_eq!(w.paragraphs, ["Bees live in hives. Day after day, they make honey from the nectar of flowers, and they store it in wax cells that the young workers build from scratch every spring and summer.", "Bees dance to point at flowers, turning in figures of eight whose angle gives the direction of the food and whose length gives the distance to it from the hive."]);
    let d = &w.text_source.detail;
    assert!(d.starts_with("structured writer: an outline of 2 sections (decoded under the outline grammar)"), "{d}");
    assert!(d.contains("3 meta-talk sentence(s) removed") && d.contains("1 repeated sentence(s) removed"), "{d}");
    assert!(streamed.contains("Bees dance") && streamed.contains("\n\n"), "{streamed}");
    let seen = model.seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].1 && seen[0].0.contains("2 numbered section headings"), "{:?}", seen[0]);
    // Each section (one paragraph, under a grammar) sees the title and the outline; the second also the first's text.
    for (prompt, constrained) in &seen[1..] {
        assert!(*constrained && prompt.contains("\"Honeybees at Work\"") && prompt.contains("1. The hive\n2. The dance"), "{prompt}");
    }
    assert!(!seen[1].0.contains("previous section") && seen[2].0.contains("every spring and summer."), "{}", seen[2].0);
    assert!(seen[2].0.contains("section 2, \"The dance\""), "{}", seen[2].0);
    assert!(writer.id().starts_with("structured ("), "{}", writer.id());
}

#[test]
fn an_unconstrained_model_gets_no_grammar_and_a_short_outline_is_completed() {
    let model = Scripted::new(&["Bees\n1. The hive\n", "Bees live in hives.\n", "Honey is sweet.\n", "Wax is made by bees.\n"], false);
    let writer = StructuredWriter { sections: Some(3), ..StructuredWriter::new(LlmWriter::new(model.clone(), Arc::new(Prompts::default()))) };
    let w = writer.write(&request("Write about bees."), &mut |_| std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(w.paragraphs.len(), 3);
    let d = &w.text_source.detail;
    assert!(d.contains("unconstrained: the model takes no grammar") && d.contains("the outline had 1 heading(s), 2 named after the instruction"), "{d}");
    assert!(model.seen.lock().unwrap().iter().all(|(_, g)| !g));
    assert!(model.seen.lock().unwrap()[3].0.contains("3. Bees, part 3"), "{}", model.seen.lock().unwrap()[3].0);
}

#[test]
fn the_spotter_asks_for_one_image_per_two_to_three_paragraphs_under_a_grammar() {
    let paragraphs: Vec<String> = (0..7).map(|i| format!("Paragraph {i} about bees.")).collect();
    // 7 paragraphs: 3 images; the answer may only be 3 distinct markers.
    let model = Scripted::new(&[" <Seg1>, <Seg4>, <Seg6>"], true);
    let spotter = LlmSpotter::new(model.clone(), Arc::new(Prompts::default()));
    let s = spotter.spot(&paragraphs, None, Language::En).unwrap();
    assert_eq!(s.after, [1, 4, 6]);
    assert_eq!(s.provenance.by, Source::Model);
    assert!(s.provenance.detail.starts_with("decoded under a grammar of 3 distinct valid line markers"), "{}", s.provenance.detail);
    assert!(model.seen.lock().unwrap()[0].0.contains("choose 3 lines"));
    // --images 2 fixes the count.
    let model = Scripted::new(&["<Seg0>, <Seg5>"], true);
    let s = LlmSpotter::new(model, Arc::new(Prompts::default())).spot(&paragraphs, Some(2), Language::En).unwrap();
    assert_eq!(s.after, [0, 5]);
    // A model without grammars is asked as before and its answer parsed (and fallen back from).
    let model = Scripted::new(&["I like bees"], false);
    let s = LlmSpotter::new(model.clone(), Arc::new(Prompts::default())).spot(&paragraphs, None, Language::En).unwrap();
    assert_eq!(s.provenance.by, Source::Fallback);
    assert!(s.provenance.detail.starts_with("unconstrained (the model takes no grammar)"), "{}", s.provenance.detail);
    assert!(!model.seen.lock().unwrap()[0].0.contains("choose 3"));
    // No image asked: the model is not asked either (the script has no answer to give).
    let model = Scripted::new(&[], true);
    let s = LlmSpotter::new(model.clone(), Arc::new(Prompts::default())).spot(&paragraphs, Some(0), Language::En).unwrap();
    assert!(s.after.is_empty() && model.seen.lock().unwrap().is_empty());
    assert_eq!((s.provenance.by, s.provenance.detail.as_str()), (Source::User, "no images asked: the model was not asked"));
}

#[test]
fn the_captioner_decodes_a_bounded_quoted_caption_and_says_so() {
    let paragraphs = vec!["Bees live in hives.".to_string(), "They dance.".to_string()];
    let model = Scripted::new(&["A honeybee on a comb\""], true);
    let (c, why) = LlmCaptioner::new(model, Arc::new(Prompts::default())).caption(&paragraphs, 0, &[], Language::En, 0).unwrap();
    assert_eq!(c, "A honeybee on a comb");
    assert!(why.detail.contains("decoded under a grammar: a quoted caption of at most 80 characters"), "{}", why.detail);
    let model = Scripted::new(&["A honeybee on a comb\" and more"], false);
    let (_, why) = LlmCaptioner::new(model, Arc::new(Prompts::default())).caption(&paragraphs, 0, &[], Language::En, 0).unwrap();
    assert!(why.detail.contains("unconstrained"), "{}", why.detail);
}
