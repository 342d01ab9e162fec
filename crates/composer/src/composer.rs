//! [`Composer`]: holds one component per stage and runs them in order, instruction → [`Article`].

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::article::{ARTICLE_FORMAT, ARTICLE_VERSION, Article, ImageSlot, Provenance, Settings, Source, StageTiming};
use crate::captioner::{Captioner, LlmCaptioner};
use crate::error::ComposeError;
use crate::language::Language;
use crate::prompts::Prompts;
use crate::retriever::Retriever;
use crate::selector::{BestScore, SelectContext, Selector};
use crate::spotter::{ImageSpotter, LlmSpotter};
use crate::text_model::TextModel;
use crate::structured_writer::StructuredWriter;
use crate::writer::{ArticleWriter, LlmWriter, WriteRequest};

/// The pipeline's stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Writing the text and the title.
    Write,
    /// Choosing where images go.
    Spot,
    /// Captioning each slot.
    Caption,
    /// Finding candidates.
    Retrieve,
    /// Choosing one per slot.
    Select,
}

impl Stage {
    /// The stage's name (as in the article's timings).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Write => "writer",
            Stage::Spot => "spotter",
            Stage::Caption => "captioner",
            Stage::Retrieve => "retriever",
            Stage::Select => "selector",
        }
    }
}

/// What the composer reports while it works.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A stage begins.
    Started(Stage),
    /// The writer produced text.
    Text(&'a str),
    /// A stage is done: its time and a one-line summary.
    Finished {
        /// The stage.
        stage: Stage,
        /// Seconds it took.
        seconds: f64,
        /// What it decided.
        summary: String,
    },
}

/// An event callback that may stop the composition: `ControlFlow::Break(())` ends it.
pub type OnEvent<'a> = dyn FnMut(Event<'_>) -> ControlFlow<()> + Send + 'a;

/// Reports `event`; [`ComposeError::Cancelled`] when the callback answers `Break`.
fn emit(on_event: &mut OnEvent<'_>, event: Event<'_>) -> Result<(), ComposeError> {
    match on_event(event) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(ComposeError::Cancelled),
    }
}

/// What to compose.
#[derive(Debug, Clone)]
pub struct ComposeRequest {
    /// The writing instruction.
    pub instruction: String,
    /// The prompt language (`None`: detected from the instruction).
    pub language: Option<Language>,
    /// How many images (`None`: the spotter decides).
    pub images: Option<usize>,
    /// The writer's sampling seed.
    pub seed: u64,
    /// The writer's token budget.
    pub max_new_tokens: usize,
    /// The most paragraphs kept.
    pub max_paragraphs: usize,
    /// Candidates retrieved per slot.
    pub candidates: usize,
}

impl ComposeRequest {
    /// A request with the defaults: language detected, spotter decides, seed 0, 400 tokens,
    /// 60 paragraphs (the original's cap), 4 candidates (the original's).
    pub fn new(instruction: impl Into<String>) -> Self {
        ComposeRequest { instruction: instruction.into(), language: None, images: None, seed: 0, max_new_tokens: 400, max_paragraphs: 60, candidates: 4 }
    }
}

/// One component per stage.
pub struct Composer {
    /// Stage 1.
    pub writer: Box<dyn ArticleWriter>,
    /// Stage 2a.
    pub spotter: Box<dyn ImageSpotter>,
    /// Stage 2b.
    pub captioner: Box<dyn Captioner>,
    /// Stage 3a.
    pub retriever: Box<dyn Retriever>,
    /// Stage 3b.
    pub selector: Box<dyn Selector>,
}

impl Composer {
    /// The default stages around one language model and a retriever: [`StructuredWriter`],
    /// [`LlmSpotter`], [`LlmCaptioner`] with the built-in prompts, and [`BestScore`].
    /// Replace any field to swap a stage.
    pub fn with_model(model: Arc<dyn TextModel>, retriever: Box<dyn Retriever>) -> Self {
        let prompts = Arc::new(Prompts::default());
        Self::with_prompts(model, prompts, retriever)
    }

    /// As [`Composer::with_model`], with other prompt sets.
    pub fn with_prompts(model: Arc<dyn TextModel>, prompts: Arc<Prompts>, retriever: Box<dyn Retriever>) -> Self {
        Composer {
            writer: Box::new(StructuredWriter::new(LlmWriter::new(model.clone(), prompts.clone()))),
            spotter: Box::new(LlmSpotter::new(model.clone(), prompts.clone())),
            captioner: Box::new(LlmCaptioner::new(model, prompts)),
            retriever,
            selector: Box::new(BestScore),
        }
    }

    /// The folders images may be copied from when rendering: the retriever's library and the
    /// cache of its remote sources, if any.
    pub fn image_roots(&self) -> Vec<PathBuf> {
        self.retriever.image_roots()
    }

    /// The component behind each stage.
    pub fn models(&self) -> BTreeMap<String, String> {
        [
            (Stage::Write, self.writer.id()),
            (Stage::Spot, self.spotter.id()),
            (Stage::Caption, self.captioner.id()),
            (Stage::Retrieve, self.retriever.id()),
            (Stage::Select, self.selector.id()),
        ]
        .into_iter()
        .map(|(s, id)| (s.name().to_string(), id))
        .collect()
    }

    /// Runs the pipeline, reporting progress through `on_event`.
    pub fn compose(&self, req: &ComposeRequest, on_event: &mut (dyn FnMut(Event) + Send)) -> Result<Article, ComposeError> {
        self.compose_stoppable(req, &mut |e| {
            on_event(e);
            ControlFlow::Continue(())
        })
    }

    /// [`Composer::compose`] whose `on_event` may answer `Break` to stop it, at the next stage or
    /// inside the writer's generation: the answer is then [`ComposeError::Cancelled`].
    pub fn compose_stoppable(&self, req: &ComposeRequest, on_event: &mut OnEvent<'_>) -> Result<Article, ComposeError> {
        if req.instruction.trim().is_empty() {
            return Err(ComposeError::BadRequest("the instruction is empty".into()));
        }
        if req.candidates == 0 {
            return Err(ComposeError::BadRequest("candidates per slot must be at least 1".into()));
        }
        let language = req.language.unwrap_or_else(|| Language::detect(&req.instruction));
        let mut timings = Vec::new();

        emit(on_event, Event::Started(Stage::Write))?;
        let t = Instant::now();
        let wreq = WriteRequest { instruction: &req.instruction, language, max_new_tokens: req.max_new_tokens, max_paragraphs: req.max_paragraphs, seed: req.seed };
        let written = self.writer.write(&wreq, &mut |piece| on_event(Event::Text(piece)))?;
        let secs = t.elapsed().as_secs_f64();
        timings.push(StageTiming { stage: Stage::Write.name().into(), seconds: secs, new_tokens: Some(written.new_tokens) });
        emit(on_event, Event::Finished { stage: Stage::Write, seconds: secs, summary: format!("{:?}, {} paragraphs", written.title, written.paragraphs.len()) })?;

        let mut article = Article {
            format: ARTICLE_FORMAT.into(),
            version: ARTICLE_VERSION,
            instruction: req.instruction.clone(),
            language,
            title: written.title,
            title_source: written.title_source,
            paragraphs: written.paragraphs,
            text_source: written.text_source,
            spotting: Provenance::new(Source::Fallback, "not yet"),
            images: vec![],
            settings: Settings { seed: req.seed, max_new_tokens: req.max_new_tokens, max_paragraphs: req.max_paragraphs, images: req.images, candidates: req.candidates },
            models: self.models(),
            library: self.retriever.library().map(PathBuf::from),
            timings,
            edits: vec![],
        };
        self.illustrate(&mut article, req.images, on_event)?;
        Ok(article)
    }

    /// Spots, captions, retrieves and selects all images of `article` anew (its text kept).
    pub fn illustrate(&self, article: &mut Article, count: Option<usize>, on_event: &mut OnEvent<'_>) -> Result<(), ComposeError> {
        article.timings.retain(|t| t.stage == Stage::Write.name());
        emit(on_event, Event::Started(Stage::Spot))?;
        let t = Instant::now();
        let spots = self.spotter.spot(&article.paragraphs, count, article.language)?;
        let secs = t.elapsed().as_secs_f64();
        article.timings.push(StageTiming { stage: Stage::Spot.name().into(), seconds: secs, new_tokens: None });
        emit(on_event, Event::Finished { stage: Stage::Spot, seconds: secs, summary: format!("after paragraphs {:?} ({})", spots.after, spots.provenance.detail) })?;
        article.spotting = spots.provenance;

        emit(on_event, Event::Started(Stage::Caption))?;
        let t = Instant::now();
        let mut captions: Vec<(usize, String, Provenance)> = Vec::new();
        for &after in &spots.after {
            let previous: Vec<(usize, String)> = captions.iter().map(|(p, c, _)| (*p, c.clone())).collect();
            let (caption, why) = self.captioner.caption(&article.paragraphs, after, &previous, article.language, 0)?;
            captions.push((after, caption, why));
        }
        let secs = t.elapsed().as_secs_f64();
        article.timings.push(StageTiming { stage: Stage::Caption.name().into(), seconds: secs, new_tokens: None });
        emit(on_event, Event::Finished { stage: Stage::Caption, seconds: secs, summary: captions.iter().map(|c| format!("{:?}", c.1)).collect::<Vec<_>>().join(", ") })?;

        article.images = captions
            .into_iter()
            .map(|(after, caption, caption_source)| ImageSlot {
                after_paragraph: after,
                caption,
                caption_source,
                candidates: vec![],
                chosen: 0,
                selection: Provenance::new(Source::Score, "not yet"),
                asset: None,
            })
            .collect();
        let (mut t_retrieve, mut t_select) = (0.0, 0.0);
        emit(on_event, Event::Started(Stage::Retrieve))?;
        for i in 0..article.images.len() {
            let (r, s) = self.fill_slot(article, i)?;
            t_retrieve += r;
            t_select += s;
        }
        article.timings.push(StageTiming { stage: Stage::Retrieve.name().into(), seconds: t_retrieve, new_tokens: None });
        emit(on_event, Event::Finished { stage: Stage::Retrieve, seconds: t_retrieve, summary: format!("{} candidates per slot", article.settings.candidates) })?;
        article.timings.push(StageTiming { stage: Stage::Select.name().into(), seconds: t_select, new_tokens: None });
        let chosen: Vec<String> = article.images.iter().filter_map(|s| s.image()).map(|c| c.path.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        emit(on_event, Event::Finished { stage: Stage::Select, seconds: t_select, summary: chosen.join(", ") })?;
        Ok(())
    }

    /// Retrieves candidates for slot `i` (its caption as the query, the images of the other
    /// slots excluded) and selects one; returns the seconds spent on each.
    pub fn fill_slot(&self, article: &mut Article, i: usize) -> Result<(f64, f64), ComposeError> {
        let t = Instant::now();
        // The other slots' images: excluded from the search, and shown to the selector in place.
        let placed: Vec<(usize, PathBuf)> = article.images.iter().enumerate().filter(|(j, _)| *j != i).filter_map(|(_, s)| s.image().map(|c| (s.after_paragraph, c.path.clone()))).collect();
        let used: Vec<PathBuf> = placed.iter().map(|(_, p)| p.clone()).collect();
        let slot = &article.images[i];
        let got = self.retriever.retrieve(&slot.caption, article.settings.candidates, &used)?;
        let t_retrieve = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let ctx = SelectContext { paragraphs: &article.paragraphs, after: slot.after_paragraph, caption: &slot.caption, placed: &placed, language: article.language };
        let (chosen, mut why) = self.selector.select(&ctx, &got.candidates)?;
        if let Some(note) = got.note {
            why.detail = format!("{}; {note}", why.detail);
        }
        let slot = &mut article.images[i];
        slot.candidates = got.candidates;
        slot.chosen = chosen;
        slot.selection = why;
        Ok((t_retrieve, t.elapsed().as_secs_f64()))
    }
}
