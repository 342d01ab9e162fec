//! The composer end to end with the real default models (SmolLM2-135M-Instruct, MiniLM,
//! EfficientNet-Lite0) and the default library, over the sample prompts in `tests/prompts/`.

#[path = "../crates/llm/tests/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::backend::Flex;
use serde::Deserialize;
use xcomposer_composer::render::{self, Format};
use xcomposer_composer::{Article, ChatLanguageModel, ComposeRequest, Composer, Language, LibraryRetriever};
use xcomposer_llm::LanguageModel;
use xcomposer_retrieval::{EmbeddingScorer, TextEmbedder, default_library};

/// One file of `tests/prompts/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplePrompt {
    instruction: String,
    lang: Option<Language>,
    images: Option<usize>,
    seed: u64,
    max_new_tokens: usize,
    max_paragraphs: usize,
}

fn prompts() -> Vec<(String, SamplePrompt)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/prompts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let prompt = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, prompt)
        })
        .collect()
}

fn composer() -> Composer {
    let device = Default::default();
    let models = xcomposer_llm::fetch::models_dir();
    let llm = LanguageModel::<Flex>::load(&common::default_model(), &device).unwrap();
    let library = default_library::open::<Flex>(&models, &device, &mut |m| eprintln!("[fetch] {m}"), &mut |_| {}).expect("the default library");
    let embedder = Arc::new(TextEmbedder::<Flex>::load_default(&models, &device, &mut |m| eprintln!("[fetch] {m}")).unwrap());
    let retriever = LibraryRetriever { library, scorer: Box::new(EmbeddingScorer::hybrid(embedder)), scorer_name: "hybrid".into() };
    Composer::with_model(Arc::new(ChatLanguageModel::new(llm)), Box::new(retriever))
}

fn request(p: &SamplePrompt) -> ComposeRequest {
    ComposeRequest {
        instruction: p.instruction.clone(),
        language: p.lang,
        images: p.images,
        seed: p.seed,
        max_new_tokens: p.max_new_tokens,
        max_paragraphs: p.max_paragraphs,
        candidates: 4,
    }
}

/// The article without its timings, which differ from run to run.
fn content(a: &Article) -> Article {
    let mut a = a.clone();
    a.timings.clear();
    a
}

#[test]
fn sample_prompts_compose_illustrated_articles() {
    let prompts = prompts();
    assert!(prompts.len() >= 6, "tests/prompts/ holds {} prompts", prompts.len());
    assert!(prompts.iter().any(|(_, p)| Language::detect(&p.instruction) == Language::Zh));
    let c = composer();
    let out_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("compose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_root);
    for (name, p) in &prompts {
        let mut article = c.compose(&request(p), &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ctx = format!("{name}: {}", article.to_json());
        assert!(!article.title.trim().is_empty(), "{ctx}");
        assert!(!article.paragraphs.is_empty() && article.paragraphs.len() <= p.max_paragraphs, "{ctx}");
        assert!(article.paragraphs.iter().all(|x| !x.trim().is_empty()), "{ctx}");
        assert!(!article.images.is_empty(), "{ctx}");
        if let Some(n) = p.images {
            assert_eq!(article.images.len(), n.min(article.paragraphs.len()), "{ctx}");
        }
        assert!(article.images.iter().all(|s| !s.caption.trim().is_empty() && s.image().is_some()), "{ctx}");
        assert_eq!(article.language, p.lang.unwrap_or_else(|| Language::detect(&p.instruction)));
        let chosen: std::collections::BTreeSet<_> = article.images.iter().map(|s| s.image().unwrap().path.clone()).collect();
        assert_eq!(chosen.len(), article.images.len(), "no image twice: {ctx}");

        let out = out_root.join(name);
        render::write(&mut article, &out, &[Format::Markdown, Format::Html, Format::Json], false, &c.image_roots()).unwrap();
        let md = std::fs::read_to_string(out.join("article.md")).unwrap();
        let links = render::image_links(&md);
        assert_eq!(links.len(), article.images.len(), "{md}");
        for link in &links {
            assert!(link.starts_with("assets/") && out.join(link).is_file(), "{name}: {link} does not resolve");
        }
        let html = std::fs::read_to_string(out.join("article.html")).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("</html>"), "{name}");
        for link in &links {
            assert!(html.contains(&format!("src=\"{link}\"")), "{name}: {link} not in the HTML");
        }
        let back = Article::load(&out.join("article.json")).unwrap();
        assert_eq!(back, article, "{name}: the JSON round-trips");
        eprintln!("{name}: {:?}, {} paragraphs, images after {:?}: {:?}", article.title, article.paragraphs.len(), article.spots(), article.images.iter().map(|s| &s.caption).collect::<Vec<_>>());
    }

    // The same seed gives the same article.
    let (name, p) = &prompts[0];
    let a = c.compose(&request(p), &mut |_| {}).unwrap();
    let b = c.compose(&request(p), &mut |_| {}).unwrap();
    assert_eq!(content(&a), content(&b), "{name}: same seed, same article");
}
