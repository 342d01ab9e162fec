//! `xcomposer clip embed`: a CLIP folder's normalised image and text embeddings and the
//! image × text logits, for users and for checking parity from outside.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use xcomposer_retrieval::ClipEmbedder;
use xcomposer_retrieval::embedder::dot;
use xcomposer_vision::ImageInput;

use crate::backend::{DeviceOptions, set_float_dtype};

/// `xcomposer clip …`.
#[derive(clap::Subcommand)]
pub enum ClipCommand {
    /// Embed images and texts with a Hugging Face CLIP folder and print the logits.
    Embed(EmbedArgs),
}

/// Arguments of `xcomposer clip embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {
    /// A Hugging Face CLIP folder (config.json, model.safetensors or pytorch_model.bin, vocab.json, merges.txt, preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// An image to embed (repeatable).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// A text to embed (repeatable).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// Print one JSON object (token ids, embeddings, logits) instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Device and float type.
    #[command(flatten)]
    pub run_on: DeviceOptions,
}

/// Runs `xcomposer clip`.
pub fn run(cmd: ClipCommand) -> Result<()> {
    match cmd {
        ClipCommand::Embed(args) => {
            if args.images.is_empty() && args.texts.is_empty() {
                bail!("nothing to embed: give --image PATH and/or --text STR");
            }
            args.run_on.refuse_quant("`clip embed`")?;
            crate::with_backend!(args.run_on.device, |device: B| embed::<B>(&args, &device))
        }
    }
}

fn embed<B: Backend>(args: &EmbedArgs, device: &B::Device) -> Result<()>
where
    ClipEmbedder<B>: Send + Sync,
{
    set_float_dtype::<B>(device, args.run_on.dtype)?;
    let clip = ClipEmbedder::<B>::load(&args.model, device).with_context(|| format!("loading {}", args.model.display()))?;
    // CLIPImageProcessor's convert("RGB") drops alpha rather than compositing it.
    let input = ImageInput::pil_compatible();
    let images = args.images.iter().map(|p| input.open_for(p, &clip.preprocess).map(|d| d.rgb)).collect::<Result<Vec<_>, _>>()?;
    let image_embeds = clip.embed_images(&images);
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let tokens = clip.tokenizer.encode(&texts);
    let text_embeds = clip.embed_texts(&texts);
    let scale = clip.model.logit_scale;
    let logits: Vec<Vec<f32>> = image_embeds.iter().map(|i| text_embeds.iter().map(|t| scale * dot(i, t)).collect()).collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "model": args.model,
            "logit_scale": scale,
            "images": args.images.iter().zip(&image_embeds).map(|(p, e)| serde_json::json!({"path": p, "embedding": e})).collect::<Vec<_>>(),
            "texts": texts.iter().zip(&text_embeds).zip(&tokens.ids).map(|((t, e), ids)| serde_json::json!({"text": t, "input_ids": ids, "embedding": e})).collect::<Vec<_>>(),
            "logits_per_image": logits,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}: embeddings of {} dimensions, logit scale {scale:.3}", args.model.display(), clip.dim())?;
        let head = |e: &[f32]| e.iter().take(4).map(|v| format!("{v:+.4}")).collect::<Vec<_>>().join(" ");
        for (p, e) in args.images.iter().zip(&image_embeds) {
            writeln!(out, "image {}: [{} …]", p.display(), head(e))?;
        }
        for (t, e) in texts.iter().zip(&text_embeds) {
            writeln!(out, "text {t:?}: [{} …]", head(e))?;
        }
        if !logits.is_empty() && !texts.is_empty() {
            writeln!(out, "logits (image × text):")?;
            for (p, row) in args.images.iter().zip(&logits) {
                let cells: Vec<String> = row.iter().map(|v| format!("{v:8.3}")).collect();
                writeln!(out, "  {} {}", cells.join(" "), p.display())?;
            }
        }
    }
    Ok(())
}
