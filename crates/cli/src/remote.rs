//! The flags of images over HTTP (`--remote`, the fetcher's limits and allow-lists), shared by
//! `compose`, `edit`, `chat` and `index`, and what they build: the [`Fetcher`] and the remote
//! candidate source beside the library.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xcomposer_composer::retriever::PrepareLibrary;
use xcomposer_composer::{Language, MergedRetriever, RemoteRetriever, Retriever};
use xcomposer_llm::fetch;
use xcomposer_retrieval::remote::{AddressPolicy, FetchOptions, Fetcher, ImageMeta, RemoteSource};
use xcomposer_retrieval::{ClipEmbedder, Indexer, Scorer};
use xcomposer_vision::ImageLimits;

use crate::library::{ScorerOptions, add_clip_features};

/// How images are fetched over HTTP.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FetchArgs {
    /// Also connect to this address or range (ADDRESS or ADDRESS/BITS; repeatable), which is
    /// refused by default: loopback, private, link-local, … (e.g. a search service on this machine).
    #[arg(long = "allow-address", value_name = "RANGE")]
    pub allow_address: Vec<String>,
    /// Fetch only from these host names (repeatable; `.example.org` allows its subdomains too).
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// Seconds a fetch may take in all, redirects and body included (default 20).
    #[arg(long, value_name = "SECONDS")]
    pub fetch_timeout: Option<f64>,
    /// Redirects followed at most (default 5).
    #[arg(long)]
    pub max_redirects: Option<usize>,
    /// The folder of fetched images (default: MODELS/remote-images).
    #[arg(long, value_name = "DIR")]
    pub remote_cache: Option<PathBuf>,
}

impl FetchArgs {
    /// The fetcher's options under the image `limits`.
    pub fn options(&self, limits: ImageLimits) -> Result<FetchOptions> {
        let addresses = AddressPolicy::allowing(&self.allow_address).map_err(|e| anyhow::anyhow!("--allow-address {e}"))?;
        let mut o = FetchOptions { addresses, hosts: self.allow_host.clone(), limits, ..FetchOptions::default() };
        if let Some(s) = self.fetch_timeout {
            if !(s > 0.0 && s.is_finite()) {
                bail!("--fetch-timeout must be a positive number of seconds, got {s}");
            }
            o.timeout = Duration::from_secs_f64(s);
            o.connect_timeout = o.connect_timeout.min(o.timeout);
        }
        o.max_redirects = self.max_redirects.unwrap_or(o.max_redirects);
        Ok(o)
    }

    /// The cache folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.remote_cache.clone().unwrap_or_else(|| fetch::models_dir().join("remote-images"))
    }

    /// A fetcher under the image `limits`.
    pub fn fetcher(&self, limits: ImageLimits) -> Result<Fetcher> {
        let dir = self.cache_dir();
        Fetcher::new(self.options(limits)?, &dir).with_context(|| format!("opening the image cache {}", dir.display()))
    }
}

/// Remote candidate sources and how to reach them (`compose` and `edit`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteOptions {
    /// An image-search endpoint searched beside the library (repeatable); its JSON contract is
    /// in the README ("Remote images").
    #[arg(long = "remote", value_name = "URL")]
    pub remote: Vec<String>,
    /// How images are fetched.
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// Whether `arg` is an http(s) URL rather than a file.
pub fn is_url(arg: &str) -> bool {
    arg.starts_with("http://") || arg.starts_with("https://")
}

/// `image` itself, or for an http(s) URL the cached file it was fetched into.
pub fn local_image(image: &Path, fetch: &FetchArgs, limits: ImageLimits) -> Result<PathBuf> {
    let text = image.to_string_lossy();
    if !is_url(&text) {
        return Ok(image.to_path_buf());
    }
    Ok(fetch.fetcher(limits)?.fetch_image(&text, ImageMeta::default())?.path)
}

/// `library` alone, or merged with the `--remote` sources scored by the same `scorer`.
pub fn with_remote(library: Box<dyn Retriever>, opts: &RemoteOptions, scoring: &ScorerOptions, scorer: Arc<dyn Scorer>, language: Language) -> Result<Box<dyn Retriever>> {
    if opts.remote.is_empty() {
        return Ok(library);
    }
    let limits = scoring.images.limits();
    let fetcher = Arc::new(opts.fetch.fetcher(limits)?);
    let mut indexer = Indexer::<burn::backend::Flex>::load_default(&fetch::models_dir(), &Default::default(), &mut |m| eprintln!("[models] {m}")).map_err(|e| anyhow::anyhow!("{e}"))?;
    indexer.limits = limits;
    let sources = opts.remote.iter().map(|u| RemoteSource { endpoint: u.clone() }).collect();
    let remote = RemoteRetriever::new(sources, fetcher, indexer, scorer, scoring.name(), language, clip_preparation(scoring));
    Ok(Box::new(MergedRetriever { parts: vec![library, Box::new(remote)] }))
}

/// With `--clip`: adds CLIP features to the fetched images' library (the model loaded on first use).
fn clip_preparation(scoring: &ScorerOptions) -> Option<PrepareLibrary> {
    let dir = scoring.clip.clone()?;
    let limits = scoring.images.limits();
    let clip: OnceLock<ClipEmbedder<burn::backend::Flex>> = OnceLock::new();
    Some(Box::new(move |lib| {
        let model = match clip.get() {
            Some(m) => m,
            None => {
                let m = ClipEmbedder::load(&dir, &Default::default()).map_err(|e| format!("loading {}: {e}", dir.display()))?;
                clip.get_or_init(|| m)
            }
        };
        add_clip_features(lib, model, limits).map_err(|e| e.to_string())
    }))
}
