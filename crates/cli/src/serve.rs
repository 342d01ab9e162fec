//! `xcomposer serve`: parses the flags, loads the models once and starts the HTTP server
//! (`xcomposer-server`); the server holds every route.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::backend::Flex;
use xcomposer_composer::xcomposer_text::XCOMPOSER_WRITING;
use xcomposer_composer::{ChatLanguageModel, Composer, LibraryRetriever, Prompts};
use xcomposer_llm::LanguageModel;
use xcomposer_server::articles::ComposerFactory;
use xcomposer_server::{AppState, Limits, ServerConfig, ServerModels};
use xcomposer_vision::xcomposer::model::XComposer;

use crate::backend::{DeviceArg, DeviceOptions, EngineArg, resolve_model, set_float_dtype};
use crate::library::{ScorerOptions, open_library};

/// Arguments of `xcomposer serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; another address without --api-key warns).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A .gguf file or a Hugging Face model folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// An InternLM-XComposer folder: answers requests with images.
    #[arg(long)]
    pub xcomposer: Option<PathBuf>,
    /// The image library of articles (default: the default library).
    #[arg(long)]
    pub library: Option<PathBuf>,
    /// Where the models run: `--device cuda` puts the text model's and InternLM-XComposer's
    /// decoders (and XComposer's image encoder) on the fused CUDA engine.
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// Require `Authorization: Bearer KEY` on the API.
    #[arg(long, env = "XCOMPOSER_API_KEY")]
    pub api_key: Option<String>,
    /// Folder for articles and uploads (default: ./xcomposer-data).
    #[arg(long, default_value = "xcomposer-data")]
    pub data: PathBuf,
    /// Requests that may wait for the model behind the running one (more get 429).
    #[arg(long, default_value_t = 32)]
    pub max_queue: usize,
    /// The largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_cap: usize,
    /// Fetch the API's `image_url` parts given as http(s) URLs (refused otherwise) through the
    /// safe fetcher: public addresses only unless --allow-address, only --allow-host hosts when
    /// given, within the request image limits (10 MiB, 40 M pixels).
    #[arg(long)]
    pub fetch_images: bool,
    /// How image URLs are fetched, with --fetch-images.
    #[command(flatten)]
    pub fetch: crate::remote::FetchArgs,
    /// Send the article API's compositions to this Redis Streams queue (redis://HOST:PORT)
    /// for `xcomposer worker --out DATA/articles` instead of composing them here.
    #[arg(long)]
    pub redis: Option<String>,
    /// With --redis: the queue's key prefix.
    #[arg(long, default_value = xcomposer_jobs::queue::DEFAULT_PREFIX)]
    pub queue: String,
    /// How the article API scores library images.
    #[command(flatten)]
    pub scoring: ScorerOptions,
}

/// The article pipeline of `compose`, around the models the server already loaded.
struct Composers {
    text: Arc<ChatLanguageModel<Flex>>,
    xcomposer: Option<Arc<XComposer<Flex>>>,
    library: Option<PathBuf>,
    scoring: ScorerOptions,
}

impl ComposerFactory for Composers {
    fn composer(&self, library: Option<&std::path::Path>) -> Result<Composer, String> {
        let dir = library.or(self.library.as_deref());
        let mut lib = open_library(dir, None, &self.scoring).map_err(|e| format!("{e:#}"))?;
        let scorer = self.scoring.scorer(&mut lib).map_err(|e| format!("{e:#}"))?;
        let retriever = Box::new(LibraryRetriever { library: lib, scorer, scorer_name: self.scoring.name() });
        Ok(match &self.xcomposer {
            // As `compose --xcomposer`: every stage on the one model, the original's prompts.
            Some(xc) => Composer::with_xcomposer_writing(xc.clone(), Arc::new(Prompts::original()), retriever, XCOMPOSER_WRITING),
            None => Composer::with_prompts(self.text.clone(), Arc::new(Prompts::default()), retriever),
        })
    }
}

/// The decoders' engine for `--device`: burn on the CPU; on CUDA the fused engine, the one
/// that runs beside the server's CPU tensors (burn-cuda's operations are not wired to it).
fn engine_choice(run_on: &DeviceOptions) -> Result<xcomposer_llm::text_decoder::EngineChoice> {
    if run_on.device == DeviceArg::Cuda {
        if !cfg!(feature = "cuda") {
            bail!("--device cuda: this xcomposer was built without CUDA; rebuild with `cargo build --release --features cuda`");
        }
        if run_on.engine == EngineArg::Burn {
            bail!("serve runs --device cuda on the fused engine only; drop --engine burn");
        }
    }
    run_on.engine_choice()
}

/// Where the decoders run, for the log.
fn device_label(run_on: &DeviceOptions) -> String {
    match run_on.device {
        DeviceArg::Cpu => "the CPU".into(),
        DeviceArg::Cuda => format!("CUDA (fused engine, {}{})", run_on.dtype.name(), run_on.quant.map_or(String::new(), |q| format!(", {}", q.name()))),
    }
}

/// Runs `serve`.
pub fn run(args: ServeArgs) -> Result<()> {
    let state = load(&args)?;
    xcomposer_server::run(&args.host, args.port, state, |addr| {
        eprintln!("[serve] listening on http://{addr}/ (OpenAI API at http://{addr}/v1)");
    })?;
    Ok(())
}

/// Checks the flags, loads the models and opens the data folder: the server's state, ready to
/// serve (also `bench serve`'s in-process server).
pub fn load(args: &ServeArgs) -> Result<Arc<AppState>> {
    let engine = engine_choice(&args.run_on)?;
    let addrs: Vec<IpAddr> = (args.host.as_str(), args.port).to_socket_addrs().with_context(|| format!("--host {}: not an address of this machine", args.host))?.map(|a| a.ip()).collect();
    if addrs.iter().any(|ip| !ip.is_loopback()) && args.api_key.is_none() {
        eprintln!("[serve] warning: listening on {}, not loopback, without --api-key: anyone who can reach this port can use the models", args.host);
    }
    if args.max_queue == 0 || args.max_tokens_cap == 0 {
        bail!("--max-queue and --max-tokens-cap must be at least 1");
    }
    std::fs::create_dir_all(&args.data).with_context(|| format!("--data {}", args.data.display()))?;
    let device = Default::default();
    if args.run_on.device == DeviceArg::Cpu {
        // On CUDA the engine takes --dtype itself; the server's burn tensors stay f32 on the CPU.
        set_float_dtype::<Flex>(&device, args.run_on.dtype)?;
    }
    let path = resolve_model(args.model.clone())?;
    let llm = LanguageModel::<Flex>::load_with(&path, &device, engine).with_context(|| format!("loading {}", path.display()))?;
    eprintln!("[serve] loaded {} in {:.2} s on {}", path.display(), llm.load_time.as_secs_f64(), device_label(&args.run_on));
    let xcomposer = match &args.xcomposer {
        Some(dir) => Some(Arc::new(XComposer::<Flex>::load_with(dir, &device, engine).with_context(|| format!("loading {}", dir.display()))?)),
        None => None,
    };
    let mut limits = Limits { queue_capacity: args.max_queue, max_tokens_cap: args.max_tokens_cap, ..Limits::default() };
    if args.fetch_images {
        let image_limits = xcomposer_vision::ImageLimits { max_pixels: limits.max_image_pixels, max_file_bytes: limits.max_image_bytes as u64 };
        limits.image_fetcher = Some(Arc::new(args.fetch.fetcher(image_limits)?));
    }
    let config = ServerConfig { api_key: args.api_key.clone(), data_dir: args.data.clone(), limits };
    let text = Arc::new(ChatLanguageModel::new(llm));
    let composers = Composers { text: text.clone(), xcomposer: xcomposer.clone(), library: args.library.clone(), scoring: args.scoring.clone() };
    let remote = args.redis.as_deref().map(|url| xcomposer_server::remote::RemoteArticles::connect(url, &args.queue)).transpose().context("--redis")?;
    Ok(AppState::with_remote(config, ServerModels { text, xcomposer, composers: Some(Arc::new(composers)) }, remote)?)
}
