//! `xcomposer chat`: questions about images with InternLM-XComposer (`--model DIR`), one-shot or
//! interactive and multi-turn. Without XComposer weights the default models answer instead: the
//! image's EfficientNet tags go into SmolLM2's prompt, and the answer says it is tag-grounded.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use xcomposer_vision::xcomposer::model::{Turn, XComposer};
use xcomposer_llm::beam::EmbedGenConfig;
use xcomposer_llm::{GenerationConfig, LanguageModel, Message};
use xcomposer_vision::{ImageInput, ImageLimits, ImageTagger};

use crate::backend::{DeviceOptions, peak_rss_mib, resolve_model};

/// Arguments of `xcomposer chat`.
#[derive(clap::Args)]
pub struct ChatArgs {
    /// The question (none: an interactive, multi-turn chat on stdin).
    pub question: Option<String>,
    /// An InternLM-XComposer folder (config.json, pytorch_model*.bin, tokenizer.model). Without it,
    /// the default models answer from the image's tags.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// An image file or http(s) URL (repeatable; with several, put `<ImageHere>` in the question
    /// where each goes).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// Beams (the original: 5; 1 is greedy).
    #[arg(long, default_value_t = 5)]
    pub beams: usize,
    /// New tokens at most (the original: 500).
    #[arg(long, default_value_t = 500)]
    pub max_new_tokens: usize,
    /// Repetition penalty over the answer (the original: 1.5).
    #[arg(long, default_value_t = 1.5)]
    pub repeat_penalty: f32,
    /// Print one JSON object per answer: prompt length, generated ids, text.
    #[arg(long)]
    pub json: bool,
    /// Device and float type.
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// Several devices to split the model across.
    #[command(flatten)]
    pub split: crate::split::SplitOptions,
    /// Write the logits at the prompt's last position (f32, little-endian) to this file, for
    /// checking a device against the reference (XComposer only).
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
    /// The size limits of each image.
    #[command(flatten)]
    pub image_limits: crate::library::ImageLimitOptions,
    /// How an `--image` (or `/image`) given as an http(s) URL is fetched.
    #[command(flatten)]
    pub fetch: crate::remote::FetchArgs,
}

/// Runs `chat`.
pub fn run(mut args: ChatArgs) -> Result<()> {
    if args.beams == 0 || args.max_new_tokens == 0 || args.repeat_penalty <= 0.0 {
        bail!("--beams, --max-new-tokens and --repeat-penalty must be positive");
    }
    args.images = args.images.iter().map(|p| crate::remote::local_image(p, &args.fetch, args.image_limits.limits())).collect::<Result<_>>()?;
    for p in &args.images {
        if !p.is_file() {
            bail!("{}: no such image file", p.display());
        }
    }
    let specs = args.split.resolve(&mut args.run_on)?;
    if !specs.is_empty() && args.model.is_none() {
        bail!("--devices splits InternLM-XComposer (--model DIR); chat without it runs no model to split");
    }
    match &args.model {
        Some(dir) => crate::with_backend!(args.run_on.device, |device: B| xcomposer_chat::<B>(&args, dir, &device, &specs)),
        None => tag_grounded(&args),
    }
}

/// The questions with their images: the one given with `--image`, or lines from stdin until EOF
/// (each a new turn; `--image` goes with the first, and a line `/image PATH` adds an image to
/// the next question).
fn questions(args: &ChatArgs, mut each: impl FnMut(&str, &[PathBuf]) -> Result<()>) -> Result<()> {
    if let Some(q) = &args.question {
        return each(q, &args.images);
    }
    eprintln!("[chat] one question per line; --image goes with the first, `/image PATH` adds one to the next; Ctrl-D ends");
    let stdin = std::io::stdin();
    let mut images = args.images.clone();
    for line in stdin.lock().lines() {
        let line = line?;
        let line = line.trim();
        if let Some(path) = line.strip_prefix("/image ") {
            match crate::remote::local_image(Path::new(path.trim()), &args.fetch, args.image_limits.limits()) {
                Ok(path) if path.is_file() => images.push(path),
                Ok(path) => eprintln!("[chat] {}: no such image file", path.display()),
                Err(e) => eprintln!("[chat] {e}"),
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        each(line, &images)?;
        images.clear();
    }
    Ok(())
}

fn xcomposer_chat<B: crate::split::SplitBackend>(args: &ChatArgs, dir: &Path, device: &B::Device, specs: &[crate::split::DeviceSpec]) -> Result<()> {
    let t = Instant::now();
    let model = crate::split::load_xcomposer::<B>(dir, device, &args.run_on, specs, "chat")?;
    eprintln!("[chat] loaded {} in {:.1} s; peak memory {}", dir.display(), t.elapsed().as_secs_f64(), peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB")));
    let cfg = EmbedGenConfig { num_beams: args.beams, max_new_tokens: args.max_new_tokens, repetition_penalty: args.repeat_penalty, ..xcomposer_vision::xcomposer::language::gen_config() };
    let mut history: Vec<(Turn, Vec<burn::tensor::Tensor<B, 3>>)> = vec![];
    questions(args, |q, paths| {
        let t = Instant::now();
        let images = paths.iter().map(|p| encode_image(&model, p, args.image_limits.limits())).collect::<Result<Vec<_>>>()?;
        let encode_s = t.elapsed().as_secs_f64();
        let prompt = model.chat_prompt(q, &images, &history)?;
        let prompt_len = prompt.dims()[1];
        if let Some(path) = &args.logits_out {
            let logits = model.last_logits(prompt.clone())?;
            let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        let t = Instant::now();
        let out = model.decode(prompt, &cfg)?;
        let secs = t.elapsed().as_secs_f64();
        let text = model.answer_text(&out);
        let mut stdout = std::io::stdout().lock();
        if args.json {
            writeln!(stdout, "{}", serde_json::json!({"prompt_length": prompt_len, "generated_ids": out.new_tokens(), "text": text, "score": out.score}))?;
        } else {
            writeln!(stdout, "{text}")?;
        }
        eprintln!("[chat] prompt {prompt_len} positions; image encode {encode_s:.2} s; {} tokens in {secs:.2} s", out.new_tokens().len());
        history.push((Turn { user: q.to_string(), images: paths.to_vec(), answer: text }, images));
        Ok(())
    })
}

/// An image's XComposer embeddings, read within `limits` (as `XComposer::encode_image` reads
/// it otherwise: PIL-compatible, alpha dropped).
fn encode_image<B: Backend>(model: &XComposer<B>, path: &Path, limits: ImageLimits) -> Result<burn::tensor::Tensor<B, 3>> {
    let img = ImageInput::pil_compatible().with_limits(limits).open_for(path, &model.preprocess)?;
    Ok(model.encode_pixels(model.preprocess.apply(&img.rgb))?)
}

/// The default models: the image's top tags written into SmolLM2's prompt.
fn tag_grounded(args: &ChatArgs) -> Result<()> {
    let models = xcomposer_llm::fetch::models_dir();
    let device = Default::default();
    let tagger = ImageTagger::<burn::backend::Flex>::load_default(&models, &device, &mut |m| eprintln!("[models] {m}"))?;
    let llm = LanguageModel::<burn::backend::Flex>::load(&resolve_model(None)?, &device)?;
    let input = ImageInput::default().with_limits(args.image_limits.limits());
    let mut seen = vec![];
    for p in &args.images {
        let img = input.open_for(p, tagger.preprocess())?;
        let tags = tagger.tag(&[&img.rgb], 5).remove(0).tags;
        let names: Vec<String> = tags.iter().map(|t| format!("{} ({:.0}%)", t.label, t.probability * 100.0)).collect();
        seen.push(format!("{}: {}", p.file_name().unwrap_or_default().to_string_lossy(), names.join(", ")));
    }
    eprintln!("[chat] no --model: answering with SmolLM2 from the images' EfficientNet tags (tag-grounded, not a vision-language model)");
    let system = if seen.is_empty() {
        "You are a helpful assistant.".to_string()
    } else {
        format!("You cannot see images. An image classifier labelled the user's images as follows (label and confidence):\n{}\nAnswer from these labels only, and say when they are not enough.", seen.join("\n"))
    };
    let mut messages = vec![Message::new("system", &system)];
    let cfg = GenerationConfig { max_new_tokens: args.max_new_tokens.min(256), repetition_penalty: 1.1, ..Default::default() };
    questions(args, |q, _| {
        messages.push(Message::new("user", q));
        let ids = llm.encode_chat(&messages)?;
        let out = rayon::scope(|_| llm.generate(&ids, &cfg, &mut |_| {}))?;
        let text = format!("[tag-grounded] {}", out.text.trim());
        let mut stdout = std::io::stdout().lock();
        if args.json {
            writeln!(stdout, "{}", serde_json::json!({"prompt_length": ids.len(), "generated_ids": out.ids, "text": text, "tags": seen}))?;
        } else {
            writeln!(stdout, "{text}")?;
        }
        messages.push(Message::new("assistant", out.text.trim()));
        Ok(())
    })
}
