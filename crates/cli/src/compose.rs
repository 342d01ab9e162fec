//! `xcomposer compose` and `xcomposer edit`: the illustrated-article pipeline from the command
//! line, with a progress display per stage on stderr and the output paths on stdout.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use xcomposer_composer::composer::OnEvent;
use xcomposer_composer::render::{self, Format};
use xcomposer_composer::{Article, ChatLanguageModel, ComposeRequest, Composer, Edit, Event, Language, LibraryRetriever, PromptSet, Prompts, Stage};
use xcomposer_vision::xcomposer::model::XComposer;
use xcomposer_composer::xcomposer_text::XCOMPOSER_WRITING;
use xcomposer_composer::text_model::{Sampling, TextModel};
use xcomposer_composer::{LlmWriter, StructuredWriter};
use xcomposer_llm::LanguageModel;

use crate::backend::{DeviceArg, DeviceOptions, peak_rss_mib, resolve_model_for};
use crate::library::{ScorerOptions, open_library};

/// The model and library flags shared by `compose` and `edit`.
#[derive(clap::Args, Clone)]
pub struct PipelineOptions {
    /// The image library (default: the default library, fetched and indexed on first use).
    #[arg(long)]
    pub library: Option<PathBuf>,
    /// The library's index folder, if not LIBRARY/.xcomposer.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// A .gguf file or a Hugging Face model folder (default: the fetched SmolLM2-135M-Instruct for
    /// English, Qwen2.5-Coder-0.5B-Instruct for Chinese).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A prompt file (TOML, as assets/prompts/en.toml) used instead of the built-in prompts of
    /// the article's language.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// How images are scored.
    #[command(flatten)]
    pub scoring: ScorerOptions,
    /// Remote image-search sources searched beside the library, and how images are fetched.
    #[command(flatten)]
    pub remote: crate::remote::RemoteOptions,
    /// An InternLM-XComposer folder: the model does every stage as the original composes (writes
    /// with 5 beams unless --beams/--temperature say otherwise, chooses the image lines, captions,
    /// picks each image among its 4 candidates); `--model` is then not used.
    #[arg(long)]
    pub xcomposer: Option<PathBuf>,
    /// Output formats, comma-separated.
    #[arg(long, default_value = "md,html,json", value_parser = Format::parse_list)]
    pub format: std::vec::Vec<Format>,
    /// Where the `--xcomposer` model runs (the default text models run on the CPU).
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// Several devices to split the `--xcomposer` model across.
    #[command(flatten)]
    pub split: crate::split::SplitOptions,
    /// How the `--xcomposer` model writes the article.
    #[command(flatten)]
    pub writing: WritingOptions,
    /// How the default text model writes: `structured` plans a title and an outline, then writes
    /// each section with them in view; `oneshot` writes the whole article from one prompt. The
    /// --xcomposer model always writes in one shot, as the original.
    #[arg(long, value_enum, default_value_t = WriterKind::Structured)]
    pub writer: WriterKind,
    /// Sections of the structured writer, 1–12 (default: as many as the instruction asks, else 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=12))]
    pub sections: Option<u16>,
}

/// The writers `--writer` chooses between.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterKind {
    /// Plan, then write each section ([`StructuredWriter`]).
    Structured,
    /// The whole article from one prompt ([`LlmWriter`]).
    Oneshot,
}

/// The original web demo's writing controls, for the `--xcomposer` model's article (the other
/// stages keep the demo's own settings).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct WritingOptions {
    /// With --xcomposer: beams for the article (the demo's slider, 1–6; default 5).
    #[arg(long)]
    pub beams: Option<usize>,
    /// With --xcomposer: the article's repetition penalty (the demo's default 5.0).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// With --xcomposer: sample the article at this temperature, one beam, seeded by --seed (the
    /// demo's "random sample" box).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// With --temperature: keep the likeliest tokens whose probability reaches p (default 1: all).
    #[arg(long)]
    pub top_p: Option<f32>,
}

impl WritingOptions {
    /// The article's decoding, the demo's defaults where a flag is not given; refuses values
    /// the demo does not offer and combinations that cannot run.
    pub fn sampling(&self) -> Result<Sampling> {
        let mut s = XCOMPOSER_WRITING;
        if let Some(t) = self.temperature {
            if !(t > 0.0 && t.is_finite()) {
                bail!("--temperature must be a positive number, got {t}");
            }
            (s.temperature, s.beams) = (t, 1);
        }
        if let Some(b) = self.beams {
            if !(1..=6).contains(&b) {
                bail!("--beams must be 1 to 6 (the original's range), got {b}");
            }
            if b > 1 && self.temperature.is_some() {
                bail!("--temperature samples one sequence; --beams {b} cannot be combined with it");
            }
            s.beams = b;
        }
        if let Some(p) = self.repetition_penalty {
            if !(p > 0.0 && p.is_finite()) {
                bail!("--repetition-penalty must be a positive number, got {p}");
            }
            s.repetition_penalty = p;
        }
        match self.top_p {
            Some(p) if self.temperature.is_none() => bail!("--top-p {p} needs --temperature (it only shapes sampling)"),
            Some(p) if !(p > 0.0 && p <= 1.0) => bail!("--top-p must be in (0, 1], got {p}"),
            Some(p) => s.top_p = p,
            None => {}
        }
        Ok(s)
    }

    fn is_set(&self) -> bool {
        self.beams.is_some() || self.repetition_penalty.is_some() || self.temperature.is_some() || self.top_p.is_some()
    }
}

/// Arguments of `xcomposer compose`.
#[derive(clap::Args)]
pub struct ComposeArgs {
    /// The writing instruction.
    pub instruction: String,
    /// The output folder (default: articles/SLUG, numbered when it exists).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into an existing, non-empty --out folder (only the article's own files are replaced).
    #[arg(long)]
    pub force: bool,
    /// How many images (default: about one per 2–3 paragraphs, placed by the model).
    #[arg(long)]
    pub images: Option<usize>,
    /// Prompt language (default: Chinese if the instruction has Chinese characters, else English).
    #[arg(long, value_parser = clap::value_parser!(Language))]
    pub lang: Option<Language>,
    /// The writer's sampling seed: the same seed gives the same article.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The writer's token budget.
    #[arg(long, default_value_t = 400)]
    pub max_new_tokens: usize,
    /// The most paragraphs kept.
    #[arg(long, default_value_t = 60)]
    pub max_paragraphs: usize,
    /// Candidates retrieved per image.
    #[arg(long, default_value_t = 4)]
    pub candidates: usize,
    /// Models, library and outputs.
    #[command(flatten)]
    pub pipeline: PipelineOptions,
}

/// Arguments of `xcomposer edit`.
#[derive(clap::Args)]
pub struct EditArgs {
    /// The article to edit (OUT/article.json); its folder is rendered again.
    pub article: PathBuf,
    /// The edit.
    #[command(subcommand)]
    pub op: EditOp,
    /// Models, library and outputs (give the same --model and --library as for compose).
    #[command(flatten)]
    pub pipeline: PipelineOptions,
}

/// An edit of a saved article (slots and paragraphs are numbered from 0).
#[derive(clap::Subcommand)]
pub enum EditOp {
    /// Write a slot's caption anew with the model and search again.
    Recaption {
        /// The image slot.
        slot: usize,
    },
    /// Set a slot's caption and search again with it.
    Caption {
        /// The image slot.
        slot: usize,
        /// The new caption.
        text: String,
    },
    /// Show alternative J of a slot instead.
    Swap {
        /// The image slot.
        slot: usize,
        /// The candidate (0 = best).
        candidate: usize,
    },
    /// Remove a slot's image.
    Delete {
        /// The image slot.
        slot: usize,
    },
    /// Add an image after a paragraph (captioned by the model).
    Add {
        /// The paragraph.
        paragraph: usize,
    },
    /// Place N images anew (spot, caption, retrieve again).
    Insert {
        /// How many images.
        count: usize,
    },
    /// Write one paragraph anew with the model.
    Regenerate {
        /// The paragraph.
        paragraph: usize,
    },
    /// Print the article's slots and candidates (changes nothing).
    Show,
}

/// Builds the default pipeline: the language model, the library and its scorer.
pub(crate) fn build_composer(opts: &PipelineOptions, language: Language) -> Result<Composer> {
    let mut run_on = opts.run_on;
    let specs = opts.split.resolve(&mut run_on)?;
    match &opts.xcomposer {
        None if !specs.is_empty() => bail!("--devices splits the --xcomposer model; the default text models run on the CPU (add --xcomposer DIR)"),
        None => run_on.refuse_quant("composing with the default text models")?,
        // --quant's checks, before anything loads.
        Some(_) => {
            run_on.engine_choice()?;
        }
    }
    if run_on.device != DeviceArg::Cpu && opts.xcomposer.is_none() {
        bail!("--device cuda runs the --xcomposer model; the default text models run on the CPU (drop --device, or add --xcomposer DIR)");
    }
    if opts.sections.is_some() && (opts.xcomposer.is_some() || opts.writer == WriterKind::Oneshot) {
        bail!("--sections sets the structured writer of the default text models; drop it with --xcomposer or --writer oneshot (they write in one shot)");
    }
    if opts.writing.is_set() && opts.xcomposer.is_none() {
        bail!("--beams, --repetition-penalty, --temperature and --top-p set how the --xcomposer model writes; add --xcomposer DIR (the default writer has its own settings)");
    }
    let writing = opts.writing.sampling()?;
    let mut library = open_library(opts.library.as_deref(), opts.index.as_deref(), &opts.scoring)?;
    let scorer: Arc<dyn xcomposer_retrieval::Scorer> = Arc::from(opts.scoring.scorer(&mut library)?);
    let in_library = Box::new(LibraryRetriever { library, scorer: Box::new(scorer.clone()), scorer_name: opts.scoring.name() });
    let retriever = crate::remote::with_remote(in_library, &opts.remote, &opts.scoring, scorer, language)?;
    // The original XComposer is prompted in Chinese whatever the title's language.
    let mut prompts = if opts.xcomposer.is_some() { Prompts::original() } else { Prompts::default() };
    if let Some(file) = &opts.prompts {
        prompts.set(language, PromptSet::from_file(file)?);
    }
    let prompts = Arc::new(prompts);
    if let Some(dir) = &opts.xcomposer {
        return crate::with_backend!(run_on.device, |device: B| xcomposer_composer::<B>(dir, &device, &run_on, &specs, prompts, retriever, writing));
    }
    let path = resolve_model_for(opts.model.clone(), language)?;
    let llm = LanguageModel::<burn::backend::Flex>::load(&path, &Default::default()).with_context(|| format!("loading {}", path.display()))?;
    eprintln!("[compose] loaded {} in {:.2} s", path.display(), llm.load_time.as_secs_f64());
    let model: Arc<dyn TextModel> = Arc::new(ChatLanguageModel::new(llm));
    let mut composer = Composer::with_prompts(model.clone(), prompts.clone(), retriever);
    let oneshot = LlmWriter::new(model, prompts);
    composer.writer = match opts.writer {
        WriterKind::Oneshot => Box::new(oneshot),
        WriterKind::Structured => Box::new(StructuredWriter { sections: opts.sections.map(usize::from), ..StructuredWriter::new(oneshot) }),
    };
    Ok(composer)
}

/// Every stage on the one XComposer model (loaded once, on `device`), as the original composes.
fn xcomposer_composer<B: crate::split::SplitBackend>(
    dir: &Path,
    device: &B::Device,
    run_on: &DeviceOptions,
    specs: &[crate::split::DeviceSpec],
    prompts: Arc<Prompts>,
    retriever: Box<dyn xcomposer_composer::Retriever>,
    writing: Sampling,
) -> Result<Composer>
where
    XComposer<B>: Send + Sync,
{
    let model = crate::split::load_xcomposer::<B>(dir, device, run_on, specs, "compose")?;
    Ok(Composer::with_xcomposer_writing(Arc::new(model), prompts, retriever, writing))
}

/// A folder name from the instruction: its words, lower-case, ASCII or CJK, at most 48
/// characters, cut at a word boundary.
fn slug(instruction: &str) -> String {
    let mut s = String::new();
    for c in instruction.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let mut s = s.trim_end_matches('-').to_string();
    if s.chars().count() > 48 {
        s = s.chars().take(48).collect();
        if let Some(at) = s.rfind('-').filter(|&at| at > 16) {
            s.truncate(at);
        }
    }
    if s.is_empty() { "article".into() } else { s }
}

/// `articles/SLUG`, or `articles/SLUG-2`, `-3`, … when it exists.
fn default_out(instruction: &str) -> PathBuf {
    let base = PathBuf::from("articles").join(slug(instruction));
    (1..)
        .map(|n| if n == 1 { base.clone() } else { PathBuf::from(format!("{}-{n}", base.display())) })
        .find(|p| !p.exists())
        .expect("an unused folder name")
}

fn print_outputs(written: &render::Written) -> Result<()> {
    for name in &written.left_alone {
        eprintln!("[render] left {name:?} alone: the previous article.json names it as a copy, but it is not a file inside {}/", render::ASSETS_DIR);
    }
    let mut stdout = std::io::stdout().lock();
    for f in &written.files {
        writeln!(stdout, "{}", f.display())?;
    }
    Ok(())
}

/// Runs `compose`.
pub fn run_compose(args: ComposeArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.instruction));
    if !args.force && out.is_dir() && std::fs::read_dir(&out).map(|mut d| d.next().is_some()).unwrap_or(false) {
        // Refuse before spending minutes on the models.
        return Err(xcomposer_composer::ComposeError::OutputExists(out).into());
    }
    if args.instruction.trim().is_empty() {
        anyhow::bail!("the instruction is empty: say what the article should be about");
    }
    let language = args.lang.unwrap_or_else(|| Language::detect(&args.instruction));
    let t0 = Instant::now();
    let composer = build_composer(&args.pipeline, language)?;
    let (article, written) = compose_to(&composer, &args, &args.pipeline.format, &out, args.force, &mut |e| {
        print_event(e);
        ControlFlow::Continue(())
    })?;
    eprintln!(
        "[compose] {:?}: {} paragraphs, {} images in {:.1} s; peak memory {}",
        article.title,
        article.paragraphs.len(),
        article.images.len(),
        t0.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    );
    print_outputs(&written)
}

impl ComposeArgs {
    /// The pipeline's request for this article (the language detected when not given).
    pub(crate) fn request(&self) -> ComposeRequest {
        ComposeRequest {
            instruction: self.instruction.clone(),
            language: Some(self.lang.unwrap_or_else(|| Language::detect(&self.instruction))),
            images: self.images,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
            max_paragraphs: self.max_paragraphs,
            candidates: self.candidates,
        }
    }
}

/// Composes one article with loaded models and writes it into `out` (`force`: `out` may hold an
/// earlier article): the step `compose`, `batch` and `worker` share. `on_event` may stop it.
pub(crate) fn compose_to(composer: &Composer, args: &ComposeArgs, formats: &[Format], out: &Path, force: bool, on_event: &mut OnEvent<'_>) -> Result<(Article, render::Written)> {
    let mut article = composer.compose_stoppable(&args.request(), on_event)?;
    let written = render::write(&mut article, out, formats, force, &composer.image_roots())?;
    Ok((article, written))
}

/// Prints `compose`'s progress on stderr: each stage and the article's text as it is written.
fn print_event(e: Event<'_>) {
    match e {
        Event::Started(Stage::Write) => eprintln!("[writer] writing…"),
        Event::Started(stage) => eprintln!("[{}] …", stage.name()),
        Event::Text(t) => {
            let mut err = std::io::stderr();
            let _ = err.write_all(t.as_bytes());
            let _ = err.flush();
        }
        Event::Finished { stage, seconds, summary } => {
            if stage == Stage::Write {
                eprintln!();
            }
            eprintln!("[{}] {seconds:.1} s: {summary}", stage.name());
        }
    }
}

/// Runs `edit`.
pub fn run_edit(args: EditArgs) -> Result<()> {
    let mut article = Article::load(&args.article)?;
    let dir: &Path = args.article.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let edit = match args.op {
        EditOp::Show => return show(&article),
        EditOp::Recaption { slot } => Edit::Recaption { slot },
        EditOp::Caption { slot, text } => Edit::Caption { slot, text },
        EditOp::Swap { slot, candidate } => Edit::Swap { slot, candidate },
        EditOp::Delete { slot } => Edit::Delete { slot },
        EditOp::Add { paragraph } => Edit::Add { after: paragraph },
        EditOp::Insert { count } => Edit::Insert { count },
        EditOp::Regenerate { paragraph } => Edit::Regenerate { paragraph },
    };
    let mut pipeline = args.pipeline.clone();
    if pipeline.library.is_none() {
        // The article's own library, unless it was the default one.
        let default_dir = xcomposer_retrieval::default_library::dir(&xcomposer_llm::fetch::models_dir());
        pipeline.library = article.library.clone().filter(|l| *l != default_dir);
    }
    let composer = build_composer(&pipeline, article.language)?;
    let summary = composer.edit(&mut article, &edit)?;
    eprintln!("[edit] {summary}");
    let written = render::write(&mut article, dir, &pipeline.format, true, &composer.image_roots())?;
    print_outputs(&written)
}

fn show(article: &Article) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}  ({} paragraphs)", article.title, article.paragraphs.len())?;
    for (i, s) in article.images.iter().enumerate() {
        writeln!(out, "slot {i}: after paragraph {}, caption {:?} ({:?})", s.after_paragraph, s.caption, s.caption_source.by)?;
        for (j, c) in s.candidates.iter().enumerate() {
            writeln!(out, "  {} {j}. {:.3} {}", if j == s.chosen { "*" } else { " " }, c.score, c.path.display())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs_are_short_and_end_on_a_word() {
        assert_eq!(slug("Write an illustrated article about rockets."), "write-an-illustrated-article-about-rockets");
        assert_eq!(slug("Write an illustrated article about the history of coffee."), "write-an-illustrated-article-about-the-history");
        assert_eq!(slug("写一篇关于长城的文章"), "写一篇关于长城的文章");
        assert_eq!(slug("?!"), "article");
    }
}
