//! The whole InternLM-XComposer model against the original code on
//! ../shared/fixtures/xcomposer-tiny: prompt pieces' ids, the prompt embeddings (image spliced
//! in), the final hidden states and logits, and the greedy and beam-search (5 beams, repetition
//! penalty 1.5) token sequences, scores and texts, loading the original sharded checkpoint with
//! its LoRA merged.

#[path = "../../llm/tests/common.rs"]
mod common;

use burn::backend::Flex;
use burn::tensor::Tensor;
use safetensors::SafeTensors;
use xcomposer_vision::xcomposer::model::{Piece, XComposer};
use xcomposer_llm::beam::EmbedGenConfig;

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn prompts_activations_and_generations_match_the_original() {
    let dir = common::fixture("xcomposer-tiny");
    let model = XComposer::<Flex>::load(&dir, &Default::default()).unwrap();
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| -> Vec<f32> { st.tensor(k).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect() };
    let mut report = vec![];
    for case in ["coffee", "chelsea"] {
        let c = &expected["cases"][case];
        // Pixels → image embeddings, from the reference pixels and from the image file.
        let image = model.encode_pixels(get(&format!("{case}.pixel_values"))).unwrap();
        let ours = model.pixels(&dir.join("..").join("images").join(c["image"].as_str().unwrap().rsplit('/').next().unwrap())).unwrap();
        let px_err = max_abs(&ours, &get(&format!("{case}.pixel_values")));
        assert!(px_err <= 0.02, "{case}: pixel_values max-abs {px_err}");
        // The prompt pieces, tokenized as the original did.
        let mut pieces = vec![];
        for p in c["prompt_pieces"].as_array().unwrap() {
            if p["name"] == "image" {
                pieces.push(Piece::Image(image.clone()));
                continue;
            }
            let (text, bos) = (p["text"].as_str().unwrap(), p["add_bos"].as_bool().unwrap());
            let want: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(model.tokenizer.encode(text, bos).unwrap(), want, "{case}: ids of {}", p["name"]);
            pieces.push(Piece::Text { text: text.into(), bos });
        }
        let prompt = model.embed(&pieces).unwrap();
        let err = max_abs(&values(prompt.clone()), &get(&format!("{case}.llm_input_embeds")));
        assert!(err <= 1e-4, "{case}: llm_input_embeds {err}");
        report.push(format!("{case}: pixels {px_err:.1e}, input embeds {err:.1e}"));
        // The protocol builds the same prompt from (text, image).
        let protocol = model.generate_prompt("Describe this image.", std::slice::from_ref(&image)).unwrap();
        assert_eq!(max_abs(&values(protocol), &values(prompt.clone())), 0.0, "{case}: generate_prompt differs from the pieces");

        let mut cache = model.text.burn().expect("burn decoder").new_cache();
        let hidden = model.text.burn().expect("burn decoder").hidden_states(prompt.clone(), &mut cache);
        let err = max_abs(&values(hidden.clone()), &get(&format!("{case}.llm_final_norm")));
        assert!(err <= 1e-4, "{case}: llm_final_norm {err}");
        let mut cache = model.text.burn().expect("burn decoder").new_cache();
        let logits = model.text.burn().expect("burn decoder").forward_embeds(prompt.clone(), &mut cache, 1);
        let lerr = max_abs(&values(logits), &get(&format!("{case}.logits_last")));
        assert!(lerr <= 2e-4, "{case}: logits_last {lerr}");
        report.push(format!("final norm {err:.1e}, logits {lerr:.1e}"));

        let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
        let greedy_cfg = EmbedGenConfig { num_beams: 1, max_new_tokens: 24, repetition_penalty: 1.0, ..xcomposer_vision::xcomposer::language::gen_config() };
        let g = model.decode(prompt.clone(), &greedy_cfg).expect("decodes");
        assert_eq!(g.sequence, ids(&c["greedy"]["sequence"]), "{case}: greedy tokens");
        assert_eq!(model.answer_text(&g), c["greedy"]["text"].as_str().unwrap(), "{case}: greedy text");

        let beam_cfg = EmbedGenConfig { max_new_tokens: 24, ..xcomposer_vision::xcomposer::language::gen_config() };
        let b = model.decode(prompt, &beam_cfg).expect("decodes");
        assert_eq!(b.sequence, ids(&c["beam"]["sequence"]), "{case}: beam tokens");
        let serr = (b.score - c["beam"]["sequence_score"].as_f64().unwrap() as f32).abs();
        assert!(serr <= 1e-4, "{case}: beam score off by {serr}");
        assert_eq!(model.answer_text(&b), c["model_generate_text"].as_str().unwrap(), "{case}: text");
        report.push(format!("greedy and beam tokens exact, beam score {serr:.1e}"));
    }
    eprintln!("{}", report.join("; "));
}

#[test]
fn the_model_chooses_among_four_candidates() {
    use std::sync::Arc;
    use xcomposer_composer::article::{Candidate, Source};
    use xcomposer_composer::selector::{SelectContext, Selector};
    use xcomposer_composer::vlm_selector::VlmSelector;
    use xcomposer_composer::{Language, Prompts};
    let dir = common::fixture("xcomposer-tiny");
    let model = Arc::new(XComposer::<Flex>::load(&dir, &Default::default()).unwrap());
    let sel = VlmSelector { constrained: false, ..VlmSelector::new(model, Arc::new(Prompts::default())) };
    let images = dir.join("../images");
    let cands: Vec<Candidate> = ["coffee.png", "chelsea.png", "cell.png", "logo.png"]
        .iter()
        .map(|f| Candidate { path: images.join(f), score: 0.5, parts: vec![], description: None, remote: None })
        .collect();
    let paragraphs: Vec<String> = vec!["咖啡起源于埃塞俄比亚。".into(), "意大利人发明了浓缩咖啡。".into()];
    let placed = vec![(0, images.join("chelsea.png"))];
    let ctx = SelectContext { paragraphs: &paragraphs, after: 1, caption: "一杯浓缩咖啡", placed: &placed, language: Language::Zh };
    let (i, why) = sel.select(&ctx, &cands).unwrap();
    assert!(i < 4);
    // Unconstrained, a random tiny model answers with noise: the choice is recorded either way
    // (constrained, it is always a letter: tests/constrained_beams.rs).
    assert!(why.raw.is_some());
    assert!(matches!(why.by, Source::Model | Source::Fallback), "{why:?}");
}

/// The fixture's checkpoint with one tensor hidden or reshaped.
struct Altered<'a> {
    inner: &'a dyn xcomposer_llm::weights::WeightSource,
    name: &'static str,
    shape: Option<Vec<usize>>,
}

impl xcomposer_llm::weights::WeightSource for Altered<'_> {
    fn source_name(&self) -> String {
        self.inner.source_name()
    }
    fn contains(&self, name: &str) -> bool {
        (name != self.name || self.shape.is_some()) && self.inner.contains(name)
    }
    fn load(&self, name: &str) -> Result<xcomposer_llm::weights::HostTensor, xcomposer_llm::weights::WeightError> {
        if name != self.name {
            return self.inner.load(name);
        }
        match &self.shape {
            None => Err(xcomposer_llm::weights::WeightError::Missing { source_name: self.source_name(), name: name.into() }),
            Some(s) => Ok(xcomposer_llm::weights::HostTensor { data: vec![0.0; s.iter().product()], shape: s.clone() }),
        }
    }
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    use xcomposer_llm::decoder::KeyStyle;
    use xcomposer_llm::torch::TorchWeights;
    use xcomposer_vision::xcomposer::language::LoraMerged;
    use xcomposer_vision::{VisualConfig, XComposerVisual};
    let dir = common::fixture("xcomposer-tiny");
    let src = TorchWeights::open_dir(&dir).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let vc = VisualConfig::from_json(&cfg, "config.json").unwrap();
    let dev = Default::default();
    let hidden = Altered { inner: &src, name: "Qformer.bert.encoder.layer.2.crossattention.self.key.weight", shape: None };
    let e = XComposerVisual::<Flex>::load(&hidden, &vc, &dev).err().unwrap().to_string();
    assert!(e.ends_with("tensor 'Qformer.bert.encoder.layer.2.crossattention.self.key.weight' is missing"), "{e}");
    let reshaped = Altered { inner: &src, name: "internlm_model.model.layers.1.mlp.up_proj.lora_B.weight", shape: Some(vec![160, 4]) };
    let lc = xcomposer_llm::DecoderConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json")).unwrap(), "config.json").unwrap();
    let lora = LoraMerged { inner: &reshaped, prefix: "internlm_model.".into(), scale: 1.0 };
    let e = xcomposer_llm::Decoder::<Flex>::load(lc, &lora, KeyStyle::HuggingFace, &dev).err().unwrap().to_string();
    assert!(e.ends_with("tensor 'internlm_model.model.layers.1.mlp.up_proj.lora_B.weight' has shape [160, 4], expected [160, 8]"), "{e}");
}

#[test]
fn multi_turn_prompts_follow_the_original_layout() {
    use xcomposer_vision::xcomposer::model::Turn;
    let dir = common::fixture("xcomposer-tiny");
    let model = XComposer::<Flex>::load(&dir, &Default::default()).unwrap();
    let image = model.encode_image(&dir.join("../images/coffee.png")).unwrap();
    let ids = |t: &str, bos: bool| model.tokenizer.encode(t, bos).unwrap();
    // No history: the same as generate().
    let first = model.chat_prompt("What is it?", std::slice::from_ref(&image), &[]).unwrap();
    assert_eq!(values(first), values(model.generate_prompt("What is it?", std::slice::from_ref(&image)).unwrap()));
    // One past turn: [BOS]" <|User|>:" img "q" " <|Bot|>:" [BOS]"answer", then " <|User|>:" "q2" "\n<eoh> <|Bot|>:" without BOS.
    let past = Turn { user: "What is it?".into(), images: vec![], answer: "A cup.".into() };
    let p = model.chat_prompt("And the colour?", &[], &[(past, vec![image.clone()])]).unwrap();
    let parts = [ids(" <|User|>:", true), vec![0; 10], ids("What is it?", false), ids(" <|Bot|>:", false), ids("A cup.", true), ids(" <|User|>:", false), ids("And the colour?", false), ids("\n<TOKENS_UNUSED_0> <|Bot|>:", false)];
    let want_len: usize = parts.iter().map(Vec::len).sum();
    assert_eq!(p.dims()[1], want_len);
    // Two BOS rows: the first position and the answer's first.
    let rows = values(p.clone());
    let d = 64;
    let bos = values(model.text.burn().expect("burn decoder").embed_ids(&[1]));
    let at = |i: usize| &rows[i * d..(i + 1) * d];
    let answer_at = parts[..4].iter().map(Vec::len).sum::<usize>();
    assert_eq!(at(0), &bos[..]);
    assert_eq!(at(answer_at), &bos[..]);
    assert!(!ids("\n<TOKENS_UNUSED_0> <|Bot|>:", false).contains(&1));
    assert!(ids(" <|User|>:", true)[0] == 1 && ids("A cup.", true)[0] == 1);
}

#[test]
fn images_of_every_turn_stay_in_the_history() {
    use xcomposer_vision::xcomposer::model::Turn;
    let dir = common::fixture("xcomposer-tiny");
    let model = XComposer::<Flex>::load(&dir, &Default::default()).unwrap();
    let a = model.encode_image(&dir.join("../images/coffee.png")).unwrap();
    let b = model.encode_image(&dir.join("../images/chelsea.png")).unwrap();
    let len = |t: &str, bos: bool| model.tokenizer.encode(t, bos).unwrap().len();
    // Turn 1: two images; turn 2: none; turn 3 (asked now): one more.
    let history = vec![
        (Turn { user: "Compare <ImageHere> and <ImageHere>.".into(), images: vec![], answer: "Both.".into() }, vec![a.clone(), b.clone()]),
        (Turn { user: "Which is warmer?".into(), images: vec![], answer: "The cup.".into() }, vec![]),
    ];
    let p = model.chat_prompt("And this one?", std::slice::from_ref(&a), &history).unwrap();
    let text = len(" <|User|>:", true) + len("Compare ", false) + len(" and ", false) + len(".", false) + len(" <|Bot|>:", false) + len("Both.", true)
        + len(" <|User|>:", true) + len("Which is warmer?", false) + len(" <|Bot|>:", false) + len("The cup.", true)
        + len(" <|User|>:", false) + len("And this one?", false) + len("\n<TOKENS_UNUSED_0> <|Bot|>:", false);
    assert_eq!(p.dims()[1], text + 3 * a.dims()[1], "three images' positions");
    // A past turn whose text names two images but that kept one is refused, naming the counts.
    let bad = vec![(Turn { user: "Compare <ImageHere> and <ImageHere>.".into(), images: vec![], answer: "Both.".into() }, vec![a.clone()])];
    let e = model.chat_prompt("Again?", &[], &bad).unwrap_err().to_string();
    assert!(e.contains("2 <ImageHere> but 1 images"), "{e}");
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let dir = common::fixture("xcomposer-tiny");
    let model = XComposer::<Flex>::load(&dir, &Default::default()).unwrap();
    let max = model.text.config().max_position;
    let prompt = model.generate_prompt(&"word ".repeat(max), &[]).unwrap();
    let cfg = xcomposer_llm::beam::EmbedGenConfig { max_new_tokens: 4, ..xcomposer_vision::xcomposer::language::gen_config() };
    for beams in [1, 5] {
        let e = model.decode(prompt.clone(), &xcomposer_llm::beam::EmbedGenConfig { num_beams: beams, ..cfg.clone() }).unwrap_err().to_string();
        assert!(e.contains("the model's context holds"), "{e}");
    }
    // A prompt that fits, with an answer budget that does not.
    let short = model.generate_prompt("Hello", &[]).unwrap();
    let room = max - short.dims()[1];
    assert!(model.decode(short.clone(), &xcomposer_llm::beam::EmbedGenConfig { num_beams: 1, max_new_tokens: room + 1, ..cfg.clone() }).is_err());
    assert!(model.last_logits(prompt).is_err());
}

/// The fixture's four images, in a fixed order, each offered once while any is left.
struct FixtureImages(Vec<std::path::PathBuf>);

impl xcomposer_composer::Retriever for FixtureImages {
    fn id(&self) -> String {
        "fixture images".into()
    }

    fn retrieve(&self, _caption: &str, k: usize, exclude: &[std::path::PathBuf]) -> Result<xcomposer_composer::retriever::Retrieved, xcomposer_composer::ComposeError> {
        use xcomposer_composer::article::Candidate;
        let fresh = self.0.iter().filter(|p| !exclude.contains(p));
        let candidates = fresh.take(k).map(|p| Candidate { path: p.clone(), score: 1.0, parts: vec![], description: None, remote: None }).collect();
        Ok(xcomposer_composer::retriever::Retrieved { candidates, note: None })
    }
}

#[test]
fn every_stage_runs_on_xcomposer_tiny() {
    use std::sync::Arc;
    use xcomposer_composer::article::Source;
    use xcomposer_composer::render::{self, Format};
    use xcomposer_composer::{ComposeRequest, Composer, Event, Prompts};
    let dir = common::fixture("xcomposer-tiny");
    let model = Arc::new(XComposer::<Flex>::load(&dir, &Default::default()).unwrap());
    let images = std::fs::canonicalize(dir.join("../images")).unwrap();
    let pool = ["coffee.png", "chelsea.png", "cell.png", "logo.png"].map(|f| images.join(f)).to_vec();
    let composer = Composer::with_xcomposer(model, Arc::new(Prompts::default()), Box::new(FixtureImages(pool.clone())));
    let req = ComposeRequest { images: Some(2), max_new_tokens: 48, ..ComposeRequest::new("写一篇关于长城的图文并茂的文章") };
    let mut streamed = String::new();
    let article = composer
        .compose(&req, &mut |e| {
            if let Event::Text(t) = e {
                streamed.push_str(t);
            }
        })
        .unwrap();
    // Every model stage names the XComposer folder; the writer streamed what it wrote.
    let models = composer.models();
    assert_eq!(models["writer"], "xcomposer-tiny (5 beams, repetition penalty 5)");
    assert_eq!(models["spotter"], "xcomposer-tiny (5 beams)");
    assert_eq!(models["captioner"], "xcomposer-tiny (greedy, repetition penalty 5)");
    assert!(models["selector"].ends_with("xcomposer-tiny (A–D choice, 5 beams)"), "{models:?}");
    assert!(!article.paragraphs.is_empty());
    assert!(!streamed.trim().is_empty(), "the writer's text was streamed");
    // Two images asked for; a random tiny model may write fewer lines than that.
    assert_eq!(article.images.len(), 2.min(article.paragraphs.len()), "{:?}", article.paragraphs);
    for slot in &article.images {
        assert!(!slot.caption.trim().is_empty());
        assert!(slot.chosen < slot.candidates.len());
        assert!(pool.contains(&slot.candidates[slot.chosen].path));
        assert!(matches!(slot.selection.by, Source::Model | Source::Fallback), "{:?}", slot.selection);
        assert!(slot.selection.raw.is_some(), "the A–D answer is recorded");
    }
    let out = std::env::temp_dir().join(format!("xc-tiny-compose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut article = article;
    let written = render::write(&mut article, &out, &[Format::Markdown, Format::Json], false, std::slice::from_ref(&images)).unwrap();
    let md = std::fs::read_to_string(out.join("article.md")).unwrap();
    assert_eq!(md.matches("](assets/").count(), article.images.len(), "{md}");
    assert!(written.files.iter().all(|f| f.exists()));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_article_can_be_sampled_as_the_demos_random_sample_box_asks() {
    use std::sync::Arc;
    use xcomposer_composer::prompts::Prompt;
    use xcomposer_composer::text_model::{Request, Sampling};
    use xcomposer_composer::xcomposer_text::XComposerText;
    let dir = common::fixture("xcomposer-tiny");
    let text = XComposerText::new(Arc::new(XComposer::<Flex>::load(&dir, &Default::default()).unwrap()));
    let prompt = Prompt { user: "根据给定标题写一个图文并茂，不重复的文章：长城".into(), prefix: String::new() };
    let ask = |sampling: Sampling| {
        let req = Request { prompt: &prompt, max_new_tokens: 16, sampling, stop: vec![], max_lines: 0, prompt_as_inputs: false, grammar: None };
        text.answer(&req, &mut |_| std::ops::ControlFlow::Continue(())).map(|a| a.output.sequence)
    };
    let sampled = |seed: u64| Sampling { temperature: 1.0, top_p: 1.0, repetition_penalty: 5.0, seed, beams: 1 };
    let greedy = ask(Sampling::greedy(5.0)).unwrap();
    let (a, b, c) = (ask(sampled(1)).unwrap(), ask(sampled(1)).unwrap(), ask(sampled(2)).unwrap());
    assert_eq!(a, b, "one seed, one article");
    assert!(a != greedy || c != greedy, "sampling at temperature 1 gave the greedy ids twice: {a:?}");
    assert!(a != c, "two seeds gave the same 16 tokens: {a:?}");
    // Sampling draws one sequence: with beams it is refused, naming both.
    let e = ask(Sampling { beams: 5, ..sampled(1) }).unwrap_err();
    assert!(e.contains("5 beams") && e.contains("temperature 1"), "{e}");
}

#[test]
fn a_split_across_two_devices_generates_what_the_original_did() {
    use xcomposer_llm::placement::PlacementNeeds;
    use xcomposer_llm::text_decoder::{DeviceSplit, EngineChoice};
    let dir = common::fixture("xcomposer-tiny");
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let c = &expected["cases"]["coffee"];
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let pixels: Vec<f32> = st.tensor("coffee.pixel_values").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    // Two "devices" (the same CPU): the first offers exactly its own parts and one layer, the
    // second one layer, so layer 0 runs beside the embeddings and layer 1 on the second.
    let lc = xcomposer_llm::DecoderConfig::from_hf_json(&std::fs::read_to_string(dir.join("config.json")).unwrap(), "config.json").unwrap();
    let visual = xcomposer_vision::xcomposer::model::image_encoder_bytes(&xcomposer_llm::torch::TorchWeights::open_dir(&dir).unwrap(), 4);
    let needs = PlacementNeeds::for_decoder(&lc, 4, 4, 1, lc.max_position, visual);
    let (first, layer) = (needs.first_device, needs.layers[0]);
    let whole = XComposer::<Flex>::load(&dir, &Default::default()).unwrap();
    let split = DeviceSplit::<Flex> { devices: vec![Default::default(); 2], capacities: vec![first + layer, layer], weight_bytes: 4, sequences: 1 };
    let model = XComposer::<Flex>::load_split(&dir, &split, EngineChoice::Burn).unwrap();
    let plan = model.placement.clone().expect("a split model has a plan");
    assert_eq!(plan.shares.iter().map(|s| s.layers.clone()).collect::<Vec<_>>(), vec![0..1, 1..2], "{plan}");
    assert!(model.text.burn().is_some());

    let image = model.encode_pixels(pixels.clone()).unwrap();
    let prompt = model.generate_prompt("Describe this image.", std::slice::from_ref(&image)).unwrap();
    let reference = whole.generate_prompt("Describe this image.", &[whole.encode_pixels(pixels).unwrap()]).unwrap();
    let logits = model.last_logits(prompt.clone()).unwrap();
    assert_eq!(logits, whole.last_logits(reference).unwrap(), "the split's last logits equal one device's");
    let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let greedy_cfg = EmbedGenConfig { num_beams: 1, max_new_tokens: 24, repetition_penalty: 1.0, ..xcomposer_vision::xcomposer::language::gen_config() };
    assert_eq!(model.decode(prompt.clone(), &greedy_cfg).unwrap().sequence, ids(&c["greedy"]["sequence"]), "greedy tokens");
    let beam_cfg = EmbedGenConfig { max_new_tokens: 24, ..xcomposer_vision::xcomposer::language::gen_config() };
    assert_eq!(model.decode(prompt, &beam_cfg).unwrap().sequence, ids(&c["beam"]["sequence"]), "5-beam tokens");
}
