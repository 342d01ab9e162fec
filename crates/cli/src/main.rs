//! `xcomposer`: the command-line front end. Parses arguments, resolves models and devices, and
//! calls the library crates; it holds no model logic.

mod backend;
mod batch;
mod bench;
mod bench_clip;
mod bench_compose;
mod bench_engine;
mod bench_library;
mod bench_serve;
mod bench_xcomposer;
mod chat;
mod clip;
mod compose;
mod eval;
mod generate;
mod interrupt;
mod library;
mod models;
mod queue;
mod remote;
mod serve;
mod split;
mod worker;

use clap::{Parser, Subcommand};

/// Illustrated articles and image comprehension with InternLM-XComposer-style models.
#[derive(Parser)]
#[command(name = "xcomposer", version, about)]
struct Cli {
    /// Worker threads for CPU tensor work (default: all cores).
    #[arg(long, global = true, env = "XCOMPOSER_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compose an illustrated article: text, image spots, captions, images; Markdown, HTML, JSON.
    Compose(compose::ComposeArgs),
    /// Edit a composed article (OUT/article.json) and render it again.
    Edit(compose::EditArgs),
    /// Compose many articles from a jobs file (JSONL), the models loaded once; resumable.
    Batch(batch::BatchArgs),
    /// Submit jobs to a Redis Streams queue, or see where it stands.
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Compose the jobs of a Redis Streams queue until stopped (several may run, on several machines).
    Worker(worker::WorkerArgs),
    /// Generate text with a language model (streams to stdout).
    Generate(generate::GenerateArgs),
    /// Index a folder of images for search and composition.
    Index(library::IndexArgs),
    /// Rank a library's images for a caption.
    Search(library::SearchArgs),
    /// Ask about images with InternLM-XComposer (or, without its weights, the default models from image tags).
    Chat(chat::ChatArgs),
    /// CLIP with a Hugging Face CLIP folder.
    Clip {
        #[command(subcommand)]
        command: clip::ClipCommand,
    },
    /// Manage the local models folder.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Serve the models over HTTP: an OpenAI-compatible API and the web app.
    Serve(serve::ServeArgs),
    /// Run a benchmark (MME, MMBench, CCBench, SEED-Bench) as the original's evaluation code, scored locally.
    Eval(eval::EvalArgs),
    /// Benchmarks that print a table.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() {
    // Large freed buffers go back to the OS (the CPU engine's peak memory; see the function).
    xcomposer_llm::memory::return_large_buffers_to_the_os();
    let cli = Cli::parse();
    if let Some(n) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
    {
        eprintln!("error: --threads {n}: {e}");
        std::process::exit(2);
    }
    let result = match cli.command {
        Command::Compose(args) => compose::run_compose(args),
        Command::Edit(args) => compose::run_edit(args),
        Command::Batch(args) => batch::run(args),
        Command::Queue { command } => queue::run(command),
        Command::Worker(args) => worker::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Index(args) => library::run_index(args),
        Command::Search(args) => library::run_search(args),
        Command::Chat(args) => chat::run(args),
        Command::Clip { command } => clip::run(command),
        Command::Models { command } => models::run(command),
        Command::Serve(args) => serve::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench { command } => bench::run(command),
    };
    if let Err(e) = result {
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            eprintln!("error: {e:?}");
        } else {
            eprintln!("error: {e:#}");
        }
        std::process::exit(1);
    }
}
