//! `xcomposer generate`: text generation with streaming output.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use std::sync::Arc;

use xcomposer_llm::grammar::{Constraint, Grammar, Vocabulary, json_schema};
use xcomposer_llm::text_decoder::EngineChoice;
use xcomposer_llm::{GenerationConfig, Generator, LanguageModel, Message};

use crate::backend::{DeviceOptions, peak_rss_mib, resolve_model, set_float_dtype};

/// Arguments of `xcomposer generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// The prompt.
    pub prompt: String,
    /// A .gguf file or a Hugging Face model folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Apply the model's chat template (the default).
    #[arg(long, conflicts_with = "raw")]
    pub chat: bool,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// A system message (chat mode).
    #[arg(long, conflicts_with = "raw")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Repetition penalty, Hugging Face semantics (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this string appears (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Where and how the decoder runs (`--device cuda` runs the fused engine unless `--engine burn`).
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// Print one JSON object (prompt ids, generated ids, text) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Constrain the answer to a grammar (a GBNF file, the subset the README describes).
    #[arg(long, value_name = "FILE", conflicts_with = "json_schema")]
    pub grammar: Option<PathBuf>,
    /// Constrain the answer to JSON that a schema describes (its supported subset).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// Also write the logits of the prompt's last position (before any penalty or sampling) to
    /// this new file, as a JSON array: for comparing engines, dtypes and `--quant` formats.
    #[arg(long, value_name = "FILE")]
    pub logits: Option<PathBuf>,
}

/// Writes `logits` to `path` as a JSON array, refusing to replace an existing file.
fn write_logits(path: &std::path::Path, logits: &[f32]) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {} for --logits (it must not exist yet)", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut out, logits).with_context(|| format!("writing {}", path.display()))?;
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The constraint of `--grammar` / `--json-schema`, with its vocabulary built from the model's
/// tokenizer (the time it took is reported).
fn constraint<B: Backend>(args: &GenerateArgs, model: &LanguageModel<B>) -> Result<Option<Constraint>> {
    let grammar = match (&args.grammar, &args.json_schema) {
        (Some(path), _) => Grammar::from_file(path)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            json_schema(&path.display().to_string(), &text)?
        }
        (None, None) => return Ok(None),
    };
    let t = std::time::Instant::now();
    let vocabulary = Vocabulary::new(&model.tokenizer);
    eprintln!("[generate] grammar: the vocabulary's {} token strings computed in {:.0} ms", vocabulary.len(), t.elapsed().as_secs_f64() * 1e3);
    Ok(Some(Constraint { grammar: Arc::new(grammar), vocabulary: Arc::new(vocabulary) }))
}

/// Runs `generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let path = resolve_model(args.model.clone())?;
    let engine = args.run_on.engine_choice()?;
    crate::with_backend!(args.run_on.device, |device: B| generate::<B>(&args, &path, &device, engine))
}

fn generate<B: Backend>(args: &GenerateArgs, path: &std::path::Path, device: &B::Device, engine: EngineChoice) -> Result<()> {
    set_float_dtype::<B>(device, args.run_on.dtype)?;
    let model = LanguageModel::<B>::load_with(path, device, engine).with_context(|| format!("loading {}", path.display()))?;
    eprintln!("[generate] loaded {} in {:.2} s", path.display(), model.load_time.as_secs_f64());
    let constraint = constraint(args, &model)?;
    let prompt_ids = if args.raw {
        model.tokenizer.encode_prompt(&args.prompt)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &args.prompt));
        model.encode_chat(&messages)?
    };
    if let Some(path) = &args.logits {
        let logits = Generator { model: &model.decoder, tokenizer: &model.tokenizer }.prompt_logits(&prompt_ids)?;
        write_logits(path, &logits)?;
    }
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
        stop_tokens: vec![],
        stop_strings: args.stop.clone(),
        max_lines: 0,
        penalize_prompt: true,
        constraint,
    };
    let streaming = !args.json;
    // Generate on a rayon worker thread: the per-token parallel matrix products then start on
    // their own pool instead of waking it from outside for every operation.
    let out = rayon::scope(|_| {
        let mut stdout = std::io::stdout();
        model.generate(&prompt_ids, &cfg, &mut |piece| {
            if streaming {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        })
    })?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "prompt_ids": out.prompt_ids,
            "generated_ids": out.ids,
            "text": out.text,
            "stop_reason": out.stop_reason,
        });
        writeln!(stdout, "{v}")?;
    } else {
        writeln!(stdout)?;
    }
    let (n_prompt, n_new) = (out.prompt_ids.len(), out.ids.len());
    let decode_tps = if n_new > 1 { (n_new - 1) as f64 / out.decode_time.as_secs_f64() } else { 0.0 };
    eprintln!(
        "[generate] prompt {n_prompt} tokens in {:.3} s ({:.1} t/s); {n_new} new tokens, decode {decode_tps:.1} t/s; stop: {:?}; peak memory {}",
        out.prefill_time.as_secs_f64(),
        n_prompt as f64 / out.prefill_time.as_secs_f64(),
        out.stop_reason,
        peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB")),
    );
    if cfg.constraint.is_some() && n_new > 0 {
        let per_token = out.grammar_time.as_secs_f64() * 1e3 / n_new as f64;
        let step = (out.prefill_time + out.decode_time).as_secs_f64() * 1e3 / n_new as f64;
        eprintln!("[generate] grammar: {per_token:.2} ms per token of the {step:.1} ms per token in all ({:.1} %)", 100.0 * per_token / step);
    }
    Ok(())
}
