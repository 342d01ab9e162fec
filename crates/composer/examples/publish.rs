//! A publishing tool calling the composer as a library: it composes an article with the
//! default models and library, swaps in its own selector, reads the `Article` struct back
//! (title, paragraphs, the chosen images and why), and renders Markdown + JSON.
//!
//! ```sh
//! cargo run -p xcomposer-composer --example publish -- "Write an illustrated article about the Moon." out/moon
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use burn::backend::Flex;
use xcomposer_composer::article::{Candidate, Provenance, Source};
use xcomposer_composer::render::{self, Format};
use xcomposer_composer::selector::{SelectContext, Selector};
use xcomposer_composer::{ChatLanguageModel, ComposeError, ComposeRequest, Composer, Event, LibraryRetriever};
use xcomposer_llm::{LanguageModel, fetch};
use xcomposer_retrieval::{EmbeddingScorer, TextEmbedder, default_library};

/// The publisher's house rule: the best-scoring candidate, but landscape-named files first.
struct PreferLandscape;

impl Selector for PreferLandscape {
    fn id(&self) -> String {
        "prefer files named *landscape*, else best score".into()
    }

    fn select(&self, _: &SelectContext, candidates: &[Candidate]) -> Result<(usize, Provenance), ComposeError> {
        if candidates.is_empty() {
            return Err(ComposeError::BadRequest("no candidates".into()));
        }
        let i = candidates.iter().position(|c| c.path.to_string_lossy().contains("landscape")).unwrap_or(0);
        Ok((i, Provenance::new(Source::Score, "house rule")))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let instruction = args.next().unwrap_or_else(|| "Write an illustrated article about the Moon.".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "out/example".into()));

    let models = fetch::models_dir();
    let device = Default::default();
    let model_path = fetch::ensure(&fetch::SMOLLM2_135M, &models, &mut |m| eprintln!("{m}"))?.path().to_path_buf();
    let llm = LanguageModel::<Flex>::load(&model_path, &device)?;
    let library = default_library::open::<Flex>(&models, &device, &mut |m| eprintln!("{m}"), &mut |_| {})?;
    let embedder = Arc::new(TextEmbedder::<Flex>::load_default(&models, &device, &mut |m| eprintln!("{m}"))?);
    let retriever = LibraryRetriever { library, scorer: Box::new(EmbeddingScorer::hybrid(embedder)), scorer_name: "hybrid".into() };

    let mut composer = Composer::with_model(Arc::new(ChatLanguageModel::new(llm)), Box::new(retriever));
    composer.selector = Box::new(PreferLandscape);

    let mut req = ComposeRequest::new(instruction);
    req.images = Some(2);
    req.max_new_tokens = 300;
    let mut article = composer.compose(&req, &mut |e| {
        if let Event::Finished { stage, seconds, .. } = e {
            eprintln!("{} done in {seconds:.1} s", stage.name());
        }
    })?;

    println!("# {}", article.title);
    for slot in &article.images {
        let image = slot.image().expect("a chosen image");
        println!("after paragraph {}: {:?} → {} (score {:.3}; {})", slot.after_paragraph, slot.caption, image.path.display(), image.score, slot.selection.detail);
    }
    let written = render::write(&mut article, &out, &[Format::Markdown, Format::Json], false, &composer.image_roots())?;
    for f in written.files {
        println!("{}", f.display());
    }
    Ok(())
}
