//! `xcomposer index` and `xcomposer search`: building an image library's index and querying it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use xcomposer_llm::fetch;
use xcomposer_retrieval::library::{ImageLibrary, Indexer, ModelIds, Progress};
use xcomposer_retrieval::{ClipEmbedder, ClipScorer, EmbeddingScorer, HybridScorer, Scorer, TextEmbedder, default_library};

use xcomposer_vision::ImageLimits;

use crate::backend::DeviceArg;

/// Arguments of `xcomposer index`.
#[derive(clap::Args)]
pub struct IndexArgs {
    /// The image folder to index (recursively).
    pub dir: PathBuf,
    /// Where to keep the index (default: DIR/.xcomposer).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also store CLIP image embeddings made by this Hugging Face CLIP folder (for `--clip` search).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Where the models run.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// The size limits of each image.
    #[command(flatten)]
    pub images: ImageLimitOptions,
    /// How the images the folder lists by URL (`urls.txt`, `library.json` entries with a `url`)
    /// are fetched into DIR/remote/.
    #[command(flatten)]
    pub fetch: crate::remote::FetchArgs,
}

/// The image size limits, shared by every command that reads images (`index`, `search`,
/// `compose`, `edit`, `chat`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ImageLimitOptions {
    /// Refuse an image of more pixels than this, as decoded or after the model's resize.
    #[arg(long, default_value_t = ImageLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Refuse an image file of more bytes than this.
    #[arg(long, default_value_t = ImageLimits::default().max_file_bytes)]
    pub max_image_bytes: u64,
}

impl ImageLimitOptions {
    /// The limits the flags set.
    pub fn limits(&self) -> ImageLimits {
        ImageLimits { max_pixels: self.max_image_pixels, max_file_bytes: self.max_image_bytes }
    }
}

/// Which scorer ranks the images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScorerArg {
    /// Weighted mean of tags and metadata (see --tag-weight / --metadata-weight).
    Hybrid,
    /// ImageNet tags only (ConSE).
    Tags,
    /// The image's own text only.
    Metadata,
}

/// The scorer flags shared by `search`, `compose` and `edit`.
#[derive(clap::Args, Clone, Debug)]
pub struct ScorerOptions {
    /// Which scorer ranks the images.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub scorer: ScorerArg,
    /// Weight of the tag score in the hybrid.
    #[arg(long, default_value_t = 0.5)]
    pub tag_weight: f32,
    /// Weight of the metadata score in the hybrid.
    #[arg(long, default_value_t = 0.5)]
    pub metadata_weight: f32,
    /// A Hugging Face CLIP folder: rank with CLIP (the library's missing CLIP features are
    /// computed first and kept in its index).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// With --clip: mix CLIP (this weight) with the --scorer choice (weight 1) instead of using
    /// CLIP alone. CLIP's scores are its logits (about 0–35), the others cosines (0–1).
    #[arg(long, requires = "clip")]
    pub clip_weight: Option<f32>,
    /// The size limits of the library's images (read when CLIP features are added).
    #[command(flatten)]
    pub images: ImageLimitOptions,
}

impl ScorerOptions {
    /// The scorer the flags describe, for `lib` (CLIP features are added to it when missing).
    /// CLIP alone (`--clip` without `--clip-weight`) loads no text embedder.
    pub fn scorer(&self, lib: &mut ImageLibrary) -> Result<Box<dyn Scorer>> {
        let weights = self.weights()?;
        let Some(dir) = &self.clip else { return Ok(Box::new(text_scorer(weights)?)) };
        if let Some(w) = self.clip_weight.filter(|w| w.is_nan() || *w <= 0.0) {
            anyhow::bail!("--clip-weight {w}: must be > 0");
        }
        let clip = Arc::new(ClipEmbedder::<burn::backend::Flex>::load(dir, &Default::default()).with_context(|| format!("loading {}", dir.display()))?);
        add_clip_features(lib, &clip, self.images.limits())?;
        let clip_scorer = Box::new(ClipScorer::new(clip));
        Ok(match self.clip_weight {
            None => clip_scorer,
            Some(w) => Box::new(HybridScorer::new(vec![(clip_scorer, w), (Box::new(text_scorer(weights)?), 1.0)])),
        })
    }

    /// Whether the scorer uses the index's tag and metadata features (and so the default text
    /// embedder): everything but CLIP alone.
    pub fn uses_text_features(&self) -> bool {
        self.clip.is_none() || self.clip_weight.is_some()
    }

    /// The tag and metadata weights the flags describe, checked.
    fn weights(&self) -> Result<(f32, f32)> {
        let (tw, mw) = match self.scorer {
            ScorerArg::Hybrid => (self.tag_weight, self.metadata_weight),
            ScorerArg::Tags => (1.0, 0.0),
            ScorerArg::Metadata => (0.0, 1.0),
        };
        if tw < 0.0 || mw < 0.0 || tw + mw <= 0.0 {
            anyhow::bail!("--tag-weight {tw} / --metadata-weight {mw}: weights must be ≥ 0 and not both 0");
        }
        Ok((tw, mw))
    }

    /// The scorer's name, for display and provenance.
    pub fn name(&self) -> String {
        let text = match self.scorer {
            ScorerArg::Hybrid => format!("hybrid (tags {} / metadata {})", self.tag_weight, self.metadata_weight),
            ScorerArg::Tags => "tags".into(),
            ScorerArg::Metadata => "metadata".into(),
        };
        match (&self.clip, self.clip_weight) {
            (None, _) => text,
            (Some(d), None) => format!("clip ({})", d.display()),
            (Some(d), Some(w)) => format!("clip ({}) ×{w} + {text} ×1", d.display()),
        }
    }
}

/// Computes the CLIP features `lib` lacks for `clip`, with a progress bar; images over `limits`
/// are skipped and reported.
pub fn add_clip_features(lib: &mut ImageLibrary, clip: &ClipEmbedder<burn::backend::Flex>, limits: ImageLimits) -> Result<()> {
    let (bar, mut on_progress) = index_progress(lib.root());
    let mut skipped = vec![];
    let n = lib.index_clip(clip, 8, limits, &mut on_progress, &mut skipped)?;
    bar.finish_and_clear();
    for (path, why) in skipped {
        eprintln!("[index] skipped {path}: {why}");
    }
    if n > 0 {
        eprintln!("[index] CLIP features of {n} images added ({})", clip.id());
    }
    Ok(())
}

/// Opens the library at `dir`, or the default library, for `scoring`: its index must have been
/// made with the default models when the scorer uses their tag and metadata features; with CLIP
/// alone an index made with other models will do (only its images and CLIP features are used).
pub fn open_library(dir: Option<&Path>, index: Option<&Path>, scoring: &ScorerOptions) -> Result<ImageLibrary> {
    let models = scoring.uses_text_features().then(ModelIds::default_models);
    match (dir, &models) {
        (None, _) => default_library(models.as_ref()),
        (Some(dir), Some(models)) => Ok(ImageLibrary::open_for(dir, index, models)?),
        (Some(dir), None) => Ok(ImageLibrary::open(dir, index)?),
    }
}

/// The default text embedder's scorer with tag weight `tw` and metadata weight `mw`.
fn text_scorer((tw, mw): (f32, f32)) -> Result<EmbeddingScorer<burn::backend::Flex>> {
    let embedder = Arc::new(TextEmbedder::<burn::backend::Flex>::load_default(&fetch::models_dir(), &Default::default(), &mut log)?);
    Ok(EmbeddingScorer::weighted(embedder, tw, mw))
}

/// Arguments of `xcomposer search`.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// What the image should show.
    pub query: String,
    /// The image library (default: the default library, fetched and indexed on first use).
    #[arg(long)]
    pub library: Option<PathBuf>,
    /// The library's index folder, if not LIBRARY/.xcomposer.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// How many candidates to print.
    #[arg(short, long, default_value_t = 4)]
    pub k: usize,
    /// How images are scored.
    #[command(flatten)]
    pub scoring: ScorerOptions,
    /// Print the candidates as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn log(m: &str) {
    eprintln!("[models] {m}");
}

/// A progress bar on stderr fed by indexing progress events.
pub fn index_progress(dir: &Path) -> (ProgressBar, impl FnMut(Progress) + use<>) {
    let bar = ProgressBar::hidden();
    let b = bar.clone();
    let dir = dir.to_path_buf();
    let on_progress = move |p| match p {
        Progress::Planned { total, to_process } => {
            eprintln!("[index] {}: {total} images, {to_process} to process", dir.display());
            if to_process > 0 {
                b.set_length(to_process as u64);
                b.set_style(ProgressStyle::with_template("[index] {bar:30} {pos}/{len} images, {per_sec}, eta {eta}").expect("valid template"));
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
        }
        Progress::Processed => b.inc(1),
    };
    (bar, on_progress)
}

/// Indexes `dir` with the default models, showing a progress bar; returns the library.
pub fn index_with_progress<B: Backend>(dir: &Path, index: Option<&Path>, indexer: &Indexer<B>) -> Result<(ImageLibrary, xcomposer_retrieval::IndexReport, f64)> {
    let t0 = Instant::now();
    let (bar, mut on_progress) = index_progress(dir);
    let (lib, report) = ImageLibrary::index(dir, index, indexer, &mut on_progress).with_context(|| format!("indexing {}", dir.display()))?;
    bar.finish_and_clear();
    Ok((lib, report, t0.elapsed().as_secs_f64()))
}

/// Runs `xcomposer index`.
pub fn run_index(args: IndexArgs) -> Result<()> {
    if !args.dir.is_dir() {
        anyhow::bail!("{}: not a folder (expected a folder of images to index)", args.dir.display());
    }
    if args.fetch.remote_cache.is_some() {
        anyhow::bail!("--remote-cache: `index` keeps the images a library lists by URL in DIR/{}/", xcomposer_retrieval::remote::library_urls::REMOTE_DIR);
    }
    let urls = xcomposer_retrieval::remote::library_urls::fetch_library_urls(&args.dir, args.fetch.options(args.images.limits())?)?;
    if urls.listed > 0 {
        eprintln!("[index] {} image URLs listed: {} in {}/, {} failed", urls.listed, urls.stored.len(), args.dir.join(xcomposer_retrieval::remote::library_urls::REMOTE_DIR).display(), urls.failed.len());
    }
    for (_, why) in &urls.failed {
        eprintln!("[index] skipped {why}");
    }
    crate::with_backend!(args.device, |device: B| {
        let mut indexer = Indexer::<B>::load_default(&fetch::models_dir(), &device, &mut log).map_err(|e| anyhow::anyhow!("{e}"))?;
        indexer.limits = args.images.limits();
        let (mut lib, report, secs) = index_with_progress(&args.dir, args.index.as_deref(), &indexer)?;
        if let Some(dir) = &args.clip {
            let clip = ClipEmbedder::<burn::backend::Flex>::load(dir, &Default::default()).with_context(|| format!("loading {}", dir.display()))?;
            add_clip_features(&mut lib, &clip, indexer.limits)?;
        }
        for w in &report.warnings {
            eprintln!("[index] warning: {w}");
        }
        for (path, why) in &report.skipped {
            eprintln!("[index] skipped {path}: {why}");
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "indexed {} images in {secs:.1} s: {} processed ({:.1} images/s), {} unchanged, {} removed, {} skipped → {}",
                lib.len(),
                report.processed.len(),
                report.processed.len() as f64 / secs.max(1e-9),
                report.unchanged,
                report.removed.len(),
                report.skipped.len(),
                lib.index_dir().display()
            );
        }
        Ok(())
    })
}

/// Opens the default library, fetching and indexing it when needed; `models` as in
/// [`default_library::open_with`].
pub fn default_library(models: Option<&ModelIds>) -> Result<ImageLibrary> {
    let dir = fetch::models_dir();
    let (bar, mut on_progress) = index_progress(&default_library::dir(&dir));
    let lib = default_library::open_with::<burn::backend::Flex>(&dir, &Default::default(), models, &mut log, &mut on_progress)?;
    bar.finish_and_clear();
    Ok(lib)
}

/// Runs `xcomposer search`.
pub fn run_search(args: SearchArgs) -> Result<()> {
    let mut lib = open_library(args.library.as_deref(), args.index.as_deref(), &args.scoring)?;
    let scorer = args.scoring.scorer(&mut lib)?;
    let t0 = Instant::now();
    let hits = lib.search(scorer.as_ref(), &[args.query.as_str()], args.k)?.remove(0);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let out: Vec<serde_json::Value> = hits
            .iter()
            .map(|h| {
                let im = &lib.images()[h.image];
                serde_json::json!({
                    "path": lib.path_of(h.image), "relative_path": h.path, "score": h.score.total, "parts": h.score.parts,
                    "tags": im.tags, "metadata_text": im.metadata_text,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"query": args.query, "library": lib.root(), "scorer": args.scoring.name(), "hits": out}))?);
    } else {
        eprintln!("[search] {} images, {} in {ms:.1} ms", lib.len(), args.scoring.name());
        for (rank, h) in hits.iter().enumerate() {
            let im = &lib.images()[h.image];
            let parts: Vec<String> = h.score.parts.iter().map(|p| format!("{} {:.3}×{}", p.scorer, p.score, p.weight)).collect();
            let tags: Vec<String> = im.tags.iter().take(3).map(|t| format!("{} {:.2}", t.label, t.probability)).collect();
            println!("{}. {:.3}  {}  [{}]  tags: {}", rank + 1, h.score.total, lib.path_of(h.image).display(), parts.join(", "), tags.join(", "));
        }
        if hits.is_empty() {
            println!("no images in {}", lib.root().display());
        }
    }
    Ok(())
}
