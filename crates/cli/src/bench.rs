//! `xcomposer bench llm`: prefill and decode speed of a model, side by side with llama.cpp on the
//! same GGUF file, same prompt, same threads, in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use xcomposer_llm::LanguageModel;
use xcomposer_llm::generation::argmax;
use xcomposer_llm::kernels::Isa;
use xcomposer_llm::matvec::Activations;

use crate::backend::{DeviceArg, peak_rss_mib, resolve_model};

/// Subcommands of `xcomposer bench`.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s of a language model (and llama.cpp beside it).
    Llm(LlmBenchArgs),
    /// Image library: indexing images/s and search latency at 10k and 100k images.
    Library(crate::bench_library::LibraryBenchArgs),
    /// InternLM-XComposer: load, image encode, prefill and decode (and PyTorch beside it with --torch).
    Xcomposer(crate::bench_xcomposer::XComposerBenchArgs),
    /// The fused CUDA engine alone on random weights of a decoder shape, part by part.
    Engine(crate::bench_engine::EngineBenchArgs),
    /// CLIP vision tower images/s (and PyTorch beside it with --torch).
    Clip(crate::bench_clip::ClipBenchArgs),
    /// Composition: wall time per stage for a 6-paragraph, 3-image article.
    Compose(crate::bench_compose::ComposeBenchArgs),
    /// The server under load: concurrent streamed chat clients, requests/s, tokens/s, latency.
    Serve(crate::bench_serve::ServeBenchArgs),
}

/// Arguments of `xcomposer bench llm`.
#[derive(clap::Args)]
pub struct LlmBenchArgs {
    /// A .gguf file or Hugging Face folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// New tokens for the decode measurement (greedy, after the prompt).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to run xcomposer.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Skip the llama.cpp measurement.
    #[arg(long)]
    no_llama_cpp: bool,
    /// llama.cpp's own `llama-bench` (a CPU build: `../shared/anchors/ensure_llama_bench.sh`
    /// prints its path), run on the same file and thread counts in the same run, instead of
    /// llama-cpp-python.
    #[arg(long)]
    llama_bench: Option<PathBuf>,
    /// Python interpreter that has llama-cpp-python installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// How the CPU decodes one token, one row each: the fused step with f32 activations (f32),
    /// 16-bit ones (int16) or 8-bit ones (int8), or burn's operations one by one (burn).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,int16,int8")]
    decode: Vec<DecodeArg>,
    /// The instruction set of the CPU's integer kernels (default: the best this CPU has).
    #[arg(long, value_enum)]
    cpu_isa: Option<IsaArg>,
}

/// `--decode`: how the CPU decodes one token.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum DecodeArg {
    /// The fused host step, activations in 8-bit blocks for the integer kernels.
    Int8,
    /// The fused host step, activations in 16-bit blocks for the integer kernels (generation's
    /// default).
    Int16,
    /// The fused host step, f32 activations (exact up to summation order).
    F32,
    /// burn's operations one by one, f32 activations (the path before the fused step).
    Burn,
}

/// `--cpu-isa`: [`Isa`] on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum IsaArg {
    /// Portable Rust.
    Scalar,
    /// AVX2 `maddubs`/`madd`.
    Avx2,
    /// AVX-VNNI `vpdpbusd`.
    Avxvnni,
    /// AVX-512 VNNI `vpdpbusd` on 256-bit registers.
    Avx512vnni,
}

impl IsaArg {
    fn isa(self) -> Isa {
        match self {
            IsaArg::Scalar => Isa::Scalar,
            IsaArg::Avx2 => Isa::Avx2,
            IsaArg::Avxvnni => Isa::AvxVnni,
            IsaArg::Avx512vnni => Isa::Avx512Vnni,
        }
    }
}

/// One measured row (NaN where the engine's measurement has no such figure).
struct Row {
    engine: String,
    threads: usize,
    prefill_tps: f64,
    /// Decoding from an empty cache (llama-bench's tg).
    decode_tps: f64,
    /// Decoding after the prompt.
    decode_deep_tps: f64,
}

const BENCH_TEXT: &str = include_str!("../../../assets/bench_prompt.txt");
const LLAMA_CPP_SCRIPT: &str = include_str!("../../../scripts/bench_llama_cpp.py");

/// Runs a `bench` subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Llm(args) => llm(args),
        BenchCommand::Library(args) => crate::bench_library::run(args),
        BenchCommand::Compose(args) => crate::bench_compose::run(args),
        BenchCommand::Clip(args) => crate::bench_clip::run(args),
        BenchCommand::Xcomposer(args) => crate::bench_xcomposer::run(args),
        BenchCommand::Engine(args) => crate::bench_engine::run(args),
        BenchCommand::Serve(args) => crate::bench_serve::run(args),
    }
}

/// `--torch` / `--python`: the PyTorch anchor of the GPU benchmarks.
#[derive(clap::Args, Clone, Debug)]
pub struct TorchAnchor {
    /// Also time PyTorch transformers beside it (needs torch with CUDA and transformers).
    #[arg(long)]
    pub torch: bool,
    /// The Python with torch and transformers.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

impl TorchAnchor {
    /// Runs an anchor script (`python -c SCRIPT ARGS…`) and reads the JSON object it prints.
    pub fn run(&self, script: &str, args: &[String]) -> Result<serde_json::Value> {
        let out = std::process::Command::new(&self.python).arg("-c").arg(script).args(args).output().with_context(|| format!("running {}", self.python))?;
        if !out.status.success() {
            bail!("the PyTorch anchor failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("reading the PyTorch anchor's JSON")
    }
}

/// One GGUF file's llama-bench results: its name, and (test, tokens/s) for pp161, pp512, tg128.
pub type LlamaRows = (String, Vec<(String, f64)>);

/// `--llama-bench BIN --gguf FILE…`: llama.cpp beside the GPU benchmarks, in the same run.
#[derive(clap::Args, Clone, Debug)]
pub struct LlamaAnchor {
    /// llama.cpp's `llama-bench` binary (built with CUDA), run on each `--gguf` in the same run.
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// GGUF files of the same decoder shape for `--llama-bench` (the first is the ratios' base).
    #[arg(long)]
    pub gguf: Vec<PathBuf>,
}

impl LlamaAnchor {
    /// Refuses `--llama-bench` without a file to run it on.
    pub fn check(&self) -> Result<()> {
        if self.llama_bench.is_some() && self.gguf.is_empty() {
            bail!("--llama-bench needs at least one --gguf file of the same decoder shape");
        }
        Ok(())
    }

    /// Each file's name with its (test, tokens/s) rows; nothing without `--llama-bench`.
    pub fn run(&self, runs: usize) -> Result<Vec<LlamaRows>> {
        let Some(bin) = &self.llama_bench else { return Ok(vec![]) };
        self.gguf.iter().map(|g| Ok((file_name(g), llama_bench(bin, g, runs)?))).collect()
    }
}

/// `llama-bench` (CUDA, all layers on the GPU, flash attention) on a GGUF file: (test, tokens/s)
/// for pp161, pp512 and tg128.
fn llama_bench(bin: &Path, gguf: &Path, runs: usize) -> Result<Vec<(String, f64)>> {
    let rows = run_llama_bench(bin, gguf, &["-ngl", "99", "-fa", "1", "-p", "161,512", "-n", "128", "-r", &runs.to_string()])?;
    Ok(rows.into_iter().map(|r| (r.test, r.tps)).collect())
}

/// One test of a `llama-bench` run.
struct LlamaBenchRow {
    /// `pp512`, `tg128`, …
    test: String,
    /// Tokens already in the cache when the test ran.
    depth: u64,
    /// Mean tokens/s.
    tps: f64,
}

/// Runs `llama-bench -m GGUF ARGS -o json` and reads its tests.
fn run_llama_bench(bin: &Path, gguf: &Path, args: &[&str]) -> Result<Vec<LlamaBenchRow>> {
    let out = std::process::Command::new(bin)
        .arg("-m")
        .arg(gguf)
        .args(args)
        .args(["-o", "json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("llama-bench failed on {}: {}", gguf.display(), String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading llama-bench's JSON")?;
    let rows = v.as_array().context("llama-bench's JSON is not a list")?;
    rows.iter()
        .map(|r| {
            let field = |k: &str| r[k].as_u64().with_context(|| format!("llama-bench's JSON row has no {k}"));
            let (p, g) = (field("n_prompt")?, field("n_gen")?);
            let test = if g > 0 { format!("tg{g}") } else { format!("pp{p}") };
            let tps = r["avg_ts"].as_f64().context("llama-bench's JSON row has no avg_ts")?;
            Ok(LlamaBenchRow { test, depth: r["n_depth"].as_u64().unwrap_or(0), tps })
        })
        .collect()
}

/// A path's file name, for table rows.
fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |f| f.to_string_lossy().into_owned())
}

/// The median of measurements.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn llm(args: LlmBenchArgs) -> Result<()> {
    if args.runs == 0 || args.threads.is_empty() || args.prompt_tokens == 0 || args.gen_tokens == 0 || args.decode.is_empty() {
        bail!("--runs, --threads, --prompt-tokens, --gen-tokens and --decode must be positive or non-empty");
    }
    if let Some(isa) = args.cpu_isa {
        isa.isa().select()?;
    }
    let path = resolve_model(args.model.clone())?;
    let (mut rows, prompt, peaks) = crate::with_backend!(args.device, |device: B| bench_xcomposer::<B>(&args, &path, &device))?;
    let peak = peak_rss_mib();
    if !args.no_llama_cpp {
        if path.is_dir() {
            eprintln!("[bench] llama.cpp needs a GGUF file; skipped for a model folder");
        } else if let Some(bin) = &args.llama_bench {
            rows.extend(bench_llama_bench(&args, bin, &path)?);
        } else {
            rows.extend(bench_llama_cpp(&args, &path, &prompt)?);
        }
    }
    print_table(&args, &path, &rows);
    if let Some(p) = peak {
        println!();
        println!("xcomposer peak resident memory: {p:.0} MiB (file {:.0} MiB)", std::fs::metadata(&path).map_or(f64::NAN, |m| m.len() as f64 / 1048576.0));
    }
    if !peaks.is_empty() {
        let each: Vec<String> = peaks.iter().map(|(mode, p)| format!("{mode} {p:.0} MiB")).collect();
        println!("peak resident memory per setting (the first from the load on, each later one from what was resident when it began): {}", each.join(", "));
    }
    Ok(())
}

/// The Markdown table of `bench llm`, each row's ratios against llama.cpp at the same thread count.
fn print_table(args: &LlmBenchArgs, path: &Path, rows: &[Row]) {
    let (p, g) = (args.prompt_tokens, args.gen_tokens);
    println!("model: {}", path.display());
    println!("pp{p}: a {p}-token prompt; tg{g}: {g} greedy tokens from an empty cache; tg{g} @ {p}: {g} more after the prompt; median of {} runs", args.runs);
    println!();
    println!("| engine | threads | pp{p} t/s | tg{g} t/s | tg{g} @ {p} t/s | pp vs llama.cpp | tg vs llama.cpp | tg @ {p} vs llama.cpp |");
    println!("|---|---|---|---|---|---|---|---|");
    let figure = |v: f64| if v.is_nan() { "–".to_string() } else { format!("{v:.1}") };
    for r in rows {
        let anchor = rows.iter().find(|a| a.engine.starts_with("llama.cpp") && a.threads == r.threads);
        let ratio = |a: f64, b: Option<f64>| match b {
            Some(b) if !(a / b).is_nan() => format!("{:.2}×", a / b),
            _ => "–".to_string(),
        };
        let threads = if r.threads == 0 { "GPU".to_string() } else { r.threads.to_string() };
        println!(
            "| {} | {threads} | {} | {} | {} | {} | {} | {} |",
            r.engine,
            figure(r.prefill_tps),
            figure(r.decode_tps),
            figure(r.decode_deep_tps),
            ratio(r.prefill_tps, anchor.map(|a| a.prefill_tps)),
            ratio(r.decode_tps, anchor.map(|a| a.decode_tps)),
            ratio(r.decode_deep_tps, anchor.map(|a| a.decode_deep_tps)),
        );
    }
}

/// llama.cpp's `llama-bench` on the same file: pp and tg from an empty cache in one call, tg
/// after a prompt's worth of cache (`-d`) in another, per thread count.
fn bench_llama_bench(args: &LlmBenchArgs, bin: &Path, path: &Path) -> Result<Vec<Row>> {
    let (p, g, r) = (args.prompt_tokens.to_string(), args.gen_tokens.to_string(), args.runs.to_string());
    let mut rows = Vec::new();
    for &threads in &args.threads {
        let t = threads.to_string();
        let mut tests = run_llama_bench(bin, path, &["-t", &t, "-p", &p, "-n", &g, "-r", &r])?;
        tests.extend(run_llama_bench(bin, path, &["-t", &t, "-p", "0", "-n", &g, "-d", &p, "-r", &r])?);
        let find = |test: &str, deep: bool| tests.iter().find(|x| x.test == test && (x.depth > 0) == deep).map_or(f64::NAN, |x| x.tps);
        let row = Row {
            engine: "llama.cpp llama-bench (GGUF as stored)".into(),
            threads,
            prefill_tps: find(&format!("pp{p}"), false),
            decode_tps: find(&format!("tg{g}"), false),
            decode_deep_tps: find(&format!("tg{g}"), true),
        };
        eprintln!("[bench] llama-bench threads {threads}: pp {:.1}, tg {:.1}, tg after the prompt {:.1} t/s", row.prefill_tps, row.decode_tps, row.decode_deep_tps);
        rows.push(row);
    }
    Ok(rows)
}

/// The benchmark prompt: the bench text's tokens, repeated to exactly `n`.
fn prompt_ids<B: Backend>(model: &LanguageModel<B>, n: usize) -> Result<Vec<u32>> {
    let base = model.tokenizer.encode(BENCH_TEXT)?;
    if base.is_empty() {
        bail!("the benchmark text encodes to no tokens");
    }
    Ok(base.iter().copied().cycle().take(n).collect())
}

/// Each `--decode` setting's name and peak resident memory in MiB (Linux).
type SettingPeaks = Vec<(String, f64)>;

/// Our rows, the prompt, and each `--decode` setting's peak resident memory.
fn bench_xcomposer<B: Backend>(args: &LlmBenchArgs, path: &Path, device: &B::Device) -> Result<(Vec<Row>, Vec<u32>, SettingPeaks)> {
    let mut model = LanguageModel::<B>::load(path, device).with_context(|| format!("loading {}", path.display()))?;
    eprintln!("[bench] loaded in {:.2} s", model.load_time.as_secs_f64());
    let prompt = prompt_ids(&model, args.prompt_tokens)?;
    let (mut rows, mut peaks) = (Vec::new(), Vec::new());
    let thread_counts: Vec<usize> = if args.device == DeviceArg::Cpu { args.threads.clone() } else { vec![0] };
    for (i, &mode) in args.decode.iter().enumerate() {
        // The first setting's peak includes the load's; the later ones start from what is resident.
        let reset = i == 0 || crate::backend::reset_peak_rss();
        let d = model.decoder.burn_mut().context("bench llm measures burn's decoder")?;
        d.set_activations(match mode {
            DecodeArg::Int8 => Activations::Int8,
            DecodeArg::Int16 => Activations::Int16,
            DecodeArg::F32 | DecodeArg::Burn => Activations::F32,
        });
        d.set_fused_step(mode != DecodeArg::Burn);
        let d = model.decoder.burn().context("bench llm measures burn's decoder")?;
        for &threads in &thread_counts {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
            let (pp, tg, tg_deep) = pool.install(|| time_decoder(d, &prompt, args));
            let engine = match args.device {
                DeviceArg::Cpu => match mode {
                    DecodeArg::Burn => "xcomposer (cpu, burn ops per token, f32 activations)".to_string(),
                    _ => format!("xcomposer (cpu, fused step, {mode:?} activations, {:?} kernels)", Isa::current()).to_lowercase(),
                },
                DeviceArg::Cuda => "xcomposer (cuda, f32)".to_string(),
            };
            eprintln!("[bench] {engine} threads {threads}: pp {pp:.1}, tg {tg:.1}, tg after the prompt {tg_deep:.1} t/s");
            rows.push(Row { engine, threads, prefill_tps: pp, decode_tps: tg, decode_deep_tps: tg_deep });
        }
        if let (true, Some(p)) = (reset, peak_rss_mib()) {
            peaks.push((format!("{mode:?}").to_lowercase(), p));
        }
    }
    Ok((rows, prompt, peaks))
}

/// Medians over `args.runs` of: prefill t/s on `prompt`; greedy decode t/s of `gen_tokens` from
/// an empty cache (the first token's one-position prefill included, as llama-bench's tg); the
/// same after the prompt. One untimed warm-up of each first.
fn time_decoder<B: Backend>(d: &xcomposer_llm::Decoder<B>, prompt: &[u32], args: &LlmBenchArgs) -> (f64, f64, f64) {
    let sync = |t: burn::Tensor<B, 3>| argmax(&t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 logits"));
    let decode = |cache: &mut xcomposer_llm::KvCache<B>, mut next: u32, n: usize| {
        let t = Instant::now();
        for _ in 0..n {
            next = sync(d.forward_ids(&[next], cache, 1));
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let mut cache = d.new_cache();
    let next = sync(d.forward_ids(&prompt[..16.min(prompt.len())], &mut cache, 1));
    decode(&mut cache, next, 2);
    let (mut pp, mut tg, mut tg_deep) = (vec![], vec![], vec![]);
    for _ in 0..args.runs {
        tg.push(decode(&mut d.new_cache(), prompt[0], args.gen_tokens));
        let mut cache = d.new_cache();
        let t = Instant::now();
        let next = sync(d.forward_ids(prompt, &mut cache, 1));
        pp.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
        tg_deep.push(decode(&mut cache, next, args.gen_tokens));
    }
    (median(pp), median(tg), median(tg_deep))
}

fn bench_llama_cpp(args: &LlmBenchArgs, path: &Path, prompt: &[u32]) -> Result<Vec<Row>> {
    let ids = serde_json::to_string(prompt)?;
    let mut rows = Vec::new();
    for &threads in &args.threads {
        let out = Command::new(&args.python)
            .arg("-c")
            .arg(LLAMA_CPP_SCRIPT)
            .arg(path)
            .arg(threads.to_string())
            .arg(args.gen_tokens.to_string())
            .arg(args.runs.to_string())
            .arg(&ids)
            .output()
            .with_context(|| format!("running {}", args.python))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            eprintln!("[bench] llama.cpp skipped ({last}); install it with `pip install llama-cpp-python==0.3.36`");
            return Ok(vec![]);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading the llama.cpp script's output")?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
        let engine = format!("llama.cpp {} (GGUF as stored)", v.get("version").and_then(|x| x.as_str()).unwrap_or("?"));
        eprintln!("[bench] {engine} threads {threads}: prefill {:.1} t/s, decode {:.1} t/s", get("prefill_tps"), get("decode_tps"));
        rows.push(Row { engine, threads, prefill_tps: get("prefill_tps"), decode_tps: f64::NAN, decode_deep_tps: get("decode_tps") });
    }
    Ok(rows)
}
