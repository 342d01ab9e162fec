//! `xcomposer eval`: MME, MMBench (EN/CN), CCBench and SEED-Bench run as InternLM-XComposer's
//! original evaluation code runs them, scored locally (no remote service, no LLM judge).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use xcomposer_eval::answerer::XComposerAnswerer;
use xcomposer_eval::predictions::PredictionLog;
use xcomposer_eval::report::{Results, markdown};
use xcomposer_eval::runner::{self, Bench, DataPaths, Dataset, RunStats};

use crate::backend::DeviceOptions;

/// The benchmark to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchArg {
    /// MME: `--data` the images root (task folders), `--questions` the task files (default DATA/eval_tool/Your_Results).
    Mme,
    /// MMBench (English): `--data` the TSV (dev split to be scored).
    Mmbench,
    /// MMBench-CN: `--data` the TSV.
    MmbenchCn,
    /// CCBench: `--data` the TSV.
    Ccbench,
    /// SEED-Bench (image questions): `--data` the image folder, `--questions` SEED-Bench.json.
    Seed,
}

impl BenchArg {
    fn bench(self) -> Bench {
        match self {
            BenchArg::Mme => Bench::Mme,
            BenchArg::Mmbench => Bench::Mmbench,
            BenchArg::MmbenchCn => Bench::MmbenchCn,
            BenchArg::Ccbench => Bench::Ccbench,
            BenchArg::Seed => Bench::Seed,
        }
    }
}

/// Arguments of `xcomposer eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The benchmark.
    #[arg(value_enum)]
    pub bench: BenchArg,
    /// The benchmark's data (see each benchmark's line above).
    #[arg(long)]
    pub data: PathBuf,
    /// MME's task-file folder, or SEED-Bench's JSON.
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// An InternLM-XComposer folder; not needed when the predictions file already answers every pass.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output folder: predictions.jsonl, results.json, results.md, the official tools' files.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the first N questions (whole images for MME, whole circular groups for MMBench).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Continue the predictions already in OUT/predictions.jsonl.
    #[arg(long)]
    pub resume: bool,
    /// Skip bad rows (listed in the results) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Device and float type.
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// Several devices to split the model across.
    #[command(flatten)]
    pub split: crate::split::SplitOptions,
}

/// Runs `eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let bench = args.bench.bench();
    let (mut dataset, skipped) = Dataset::load(bench, &DataPaths { data: args.data.clone(), questions: args.questions.clone() }, args.skip_bad)?;
    for s in &skipped {
        eprintln!("[eval] skipped: {}", s.error);
    }
    if let Some(n) = args.limit {
        dataset.limit(n);
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("eval-results").join(bench.name()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut log = PredictionLog::open(&out.join("predictions.jsonl"), args.resume)?;
    let stats = if runner::all_answered(&dataset, &log) {
        eprintln!("[eval] every pass has a prediction in {}: scoring only", out.join("predictions.jsonl").display());
        RunStats { resumed: dataset.passes().len(), ..Default::default() }
    } else {
        let Some(dir) = &args.model else { bail!("--model DIR is needed: {} passes have no prediction yet", dataset.passes().len() - log.records.len().min(dataset.passes().len())) };
        let mut run_on = args.run_on;
        let specs = args.split.resolve(&mut run_on)?;
        crate::with_backend!(run_on.device, |device: B| answer::<B>(&run_on, &specs, dir, &device, &dataset, &mut log))?
    };
    let predictions = log.texts();
    let scores = dataset.score(&predictions);
    let official = dataset.write_official(&predictions, &out)?;
    let rotations_generated = match &dataset {
        Dataset::Mc { bench, .. } => Some(bench.rotations_generated),
        _ => None,
    };
    let results = Results {
        benchmark: bench,
        data: args.data.display().to_string(),
        model: args.model.as_ref().map(|m| m.display().to_string()),
        limit: args.limit,
        passes: dataset.passes().len(),
        headline: scores.headline(),
        scores,
        published: bench.published(),
        rotations_generated,
        skipped,
        run: stats,
    };
    write(&out.join("results.json"), &(serde_json::to_string_pretty(&results)? + "\n"))?;
    let md = markdown(&results);
    write(&out.join("results.md"), &md)?;
    print!("{md}");
    eprintln!("[eval] wrote {} and {} ({})", out.join("results.json").display(), out.join("results.md").display(), official.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Loads the model and answers the passes without a prediction.
fn answer<B: crate::split::SplitBackend>(
    run_on: &DeviceOptions,
    specs: &[crate::split::DeviceSpec],
    dir: &Path,
    device: &B::Device,
    dataset: &Dataset,
    log: &mut PredictionLog,
) -> Result<RunStats> {
    let t = Instant::now();
    let model = crate::split::load_xcomposer::<B>(dir, device, run_on, specs, "eval")?;
    eprintln!("[eval] loaded {} in {:.1} s", dir.display(), t.elapsed().as_secs_f64());
    let mut answerer = XComposerAnswerer::new(&model);
    let stats = runner::run(dataset, &mut answerer, log, &mut |done, total| {
        if done % 10 == 0 || done == total {
            eprintln!("[eval] {done}/{total}");
        }
    })?;
    eprintln!("[eval] {} passes in {:.1} s: {:.3} passes/s", stats.answered, stats.seconds, stats.passes_per_second);
    Ok(stats)
}
