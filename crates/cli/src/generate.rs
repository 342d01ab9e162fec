//! `xcomposer generate`: text generation with streaming output.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use xcomposer_llm::text_decoder::EngineChoice;
use xcomposer_llm::{GenerationConfig, LanguageModel, Message};

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
    Ok(())
}
