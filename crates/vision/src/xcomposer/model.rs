//! InternLM-XComposer v1 as a whole (`internlm/internlm-xcomposer-7b` and `-vl-7b` folders): the
//! image encoder, the InternLM decoder with its LoRA merged, the tokenizer, and the original's
//! prompt protocol — `generate(text, image)`, multi-turn `chat` with the original's history
//! quirks, and several images per prompt through `<ImageHere>`.
//!
//! The protocol, exactly as the original composes it (`modeling_InternLM_XComposer.py`):
//! - first turn: `[BOS] "{meta}conversation\n <|User|>:" [image] "{text}" "\n<TOKENS_UNUSED_0> <|Bot|>:"`
//!   (the meta instruction and conversation line only on the first turn);
//! - a stored past turn: `[BOS] " <|User|>:" [image] "{text}" " <|Bot|>:" [BOS] "{answer}"` — no meta,
//!   no eoh, no eoa, and a BOS before the answer (it is re-tokenized with special tokens);
//! - a new turn after a history: `" <|User|>:" [image] "{text}" "\n<TOKENS_UNUSED_0> <|Bot|>:"`, no BOS.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use xcomposer_llm::beam::{BurnSteps, Chosen, EmbedGenConfig, EmbedGenOutput, Grammared, OnStep, StepDecoder, TokenChoice, beam_steps, every_step, greedy_steps};
use xcomposer_llm::generation::Sampler;
use xcomposer_llm::grammar::Constraint;
use xcomposer_llm::decoder::KeyStyle;
use xcomposer_llm::torch::TorchWeights;
use super::language::{InternLmTokenizer, LoraMerged};
use xcomposer_llm::DecoderConfig;
use xcomposer_llm::placement::{Placement, PlacementError};
use xcomposer_llm::text_decoder::DeviceSplit;
use super::image_encoder::ImageEncoder;
use super::visual::VisualConfig;
use crate::{ImageInput, Preprocess};

/// The original's meta instruction (it ends with "conversation\n").
pub const META_INSTRUCTION: &str = "meta instruction\nYou are an AI assistant whose name is 浦语.\n- 浦语 is a conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n- 浦语 can understand and communicate fluently in the language chosen by the user such as English and 中文.\nconversation\n";

/// The placeholder that splits a prompt where an image goes.
pub const IMAGE_PLACEHOLDER: &str = "<ImageHere>";

/// Errors loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum XComposerError {
    /// A file is missing or malformed (the message names it and the field).
    #[error("{0}")]
    Load(String),
    /// An image could not be read.
    #[error(transparent)]
    Image(#[from] crate::ImageError),
    /// The request does not fit the prompt (placeholders vs images, the model's context).
    #[error("{0}")]
    BadRequest(String),
    /// The GPU engine failed.
    #[error("{0}")]
    Engine(String),
}

/// One piece of a prompt.
#[derive(Debug, Clone)]
pub enum Piece<B: Backend> {
    /// Text, tokenized on its own (with BOS when `bos`).
    Text {
        /// The text.
        text: String,
        /// Whether BOS goes in front.
        bos: bool,
    },
    /// An image's embeddings `[1, tokens, hidden]`.
    Image(Tensor<B, 3>),
}

/// A past turn of a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// What the user said (with an `<ImageHere>` per image when there are several).
    pub user: String,
    /// The user's images on that turn, in order.
    pub images: Vec<PathBuf>,
    /// The answer.
    pub answer: String,
}

#[cfg(feature = "cuda")]
use xcomposer_llm::text_decoder::lock_engine as lock;
pub use xcomposer_llm::text_decoder::{EngineChoice, TextDecoder};

#[cfg(feature = "cuda")]
fn engine_error(e: xcomposer_llm::cuda::CudaError) -> XComposerError {
    XComposerError::Engine(e.to_string())
}

/// Bytes of everything in the checkpoint but the language model (the image encoder, the perceive
/// sampler, the projection) at `weight_bytes` a value: what the first device of a split holds
/// besides the embeddings and head.
pub fn image_encoder_bytes(src: &TorchWeights, weight_bytes: u64) -> u64 {
    let values = |name: &String| src.tensor(name).map_or(0, |t| t.shape.iter().product::<usize>() as u64);
    src.names().iter().filter(|n| !n.starts_with("internlm_model.")).map(values).sum::<u64>() * weight_bytes
}

/// The loaded model.
pub struct XComposer<B: Backend> {
    /// The image encoder (on burn, or beside the fused engine on the GPU).
    pub visual: ImageEncoder<B>,
    /// The language model.
    pub text: TextDecoder<B>,
    /// The device of the image encoder and of the prompt embeddings.
    pub device: B::Device,
    /// The tokenizer.
    pub tokenizer: InternLmTokenizer,
    /// Image preprocessing (squash to 224, CLIP mean/std).
    pub preprocess: Preprocess,
    /// Where it was loaded from.
    pub dir: PathBuf,
    /// Where the load's time went.
    pub load_times: LoadTimes,
    /// How the model is split across devices, when it is ([`XComposer::load_split`]).
    pub placement: Option<Placement>,
}

/// Where [`XComposer::load_with`]'s time went: the image encoder and the language model load
/// side by side, so `total` is about the larger of the two, not their sum.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadTimes {
    /// The image encoder (EVA-ViT-g, the perceive sampler, the projection) onto its device.
    pub visual: Duration,
    /// The language model, LoRA merged (on the engine: kernels compiled beside the weights).
    pub text: Duration,
    /// The whole load, shard indexes included, wall time.
    pub total: Duration,
}

impl<B: Backend> XComposer<B> {
    /// Loads an original Hugging Face folder: `config.json`, `tokenizer.model` and the PyTorch
    /// shards (`pytorch_model.bin.index.json`, mixed f16/f32; `inv_freq`/`position_ids` ignored).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, XComposerError> {
        Self::load_with(dir, device, EngineChoice::Burn)
    }

    /// [`XComposer::load`] with the language model on the engine chosen.
    pub fn load_with(dir: &Path, device: &B::Device, engine: EngineChoice) -> Result<Self, XComposerError> {
        Self::load_on(dir, device, None, engine)
    }

    /// [`XComposer::load_with`] split across `split`'s devices by memory, as the original's
    /// `--num_gpus` does: the image encoder, embeddings and head on the first device, the decoder
    /// layers in contiguous runs ([`XComposer::placement`] says which where). burn's decoder only.
    pub fn load_split(dir: &Path, split: &DeviceSplit<B>, engine: EngineChoice) -> Result<Self, XComposerError> {
        let first = split.devices.first().ok_or_else(|| XComposerError::Load(PlacementError::NoDevices.to_string()))?;
        Self::load_on(dir, first, Some(split), engine)
    }

    fn load_on(dir: &Path, device: &B::Device, split: Option<&DeviceSplit<B>>, engine: EngineChoice) -> Result<Self, XComposerError> {
        let cfg_path = dir.join("config.json");
        let load_err = |reason: String| XComposerError::Load(format!("{}: {reason}", cfg_path.display()));
        // Read capped and only when regular (a FIFO config.json would block the load forever).
        let bytes = xcomposer_llm::capped::read_within(&cfg_path, xcomposer_llm::readers::fields::CONFIG_CAP).map_err(|e| load_err(e.reason()))?;
        let text = String::from_utf8(bytes).map_err(|_| load_err("not UTF-8 text".into()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| XComposerError::Load(format!("{}: {e}", cfg_path.display())))?;
        let name = cfg_path.display().to_string();
        let visual_cfg = VisualConfig::from_json(&json, &name).map_err(XComposerError::Load)?;
        let llm_cfg = DecoderConfig::from_hf_json(&text, &name).map_err(|e| XComposerError::Load(e.to_string()))?;
        let lora = json.get("internlm_lora").filter(|v| !v.is_null());
        let scale = match lora {
            None => 0.0,
            Some(l) => {
                let lora = xcomposer_llm::readers::fields::Fields::new(l, "internlm_lora.");
                let get = |k: &str| lora.get(k).ok_or_else(|| lora.err(k, "is missing".into())).and_then(|_| lora.positive_f64(k, 0.0)).map_err(|e| XComposerError::Load(format!("{name}: {e}")));
                (get("lora_alpha")? / get("lora_r")?) as f32
            }
        };
        let start = Instant::now();
        let src = TorchWeights::open_dir(dir).map_err(|e| XComposerError::Load(e.to_string()))?;
        let llm_src = LoraMerged { inner: &src, prefix: "internlm_model.".into(), scale };
        let placement = match split {
            Some(split) => Some(split.plan(&llm_cfg, image_encoder_bytes(&src, split.weight_bytes)).map_err(|e| XComposerError::Load(format!("{}: {e}", dir.display())))?),
            None => None,
        };
        // The image encoder loads on a thread of its own while the language model loads here.
        let (visual, text) = std::thread::scope(|scope| {
            let visual = scope.spawn(|| {
                let t = Instant::now();
                ImageEncoder::load(&src, &visual_cfg, device, engine).map(|v| (v, t.elapsed()))
            });
            let t = Instant::now();
            let text = match (split, &placement) {
                (Some(split), Some(plan)) => TextDecoder::load_placed(llm_cfg, &llm_src, KeyStyle::HuggingFace, &split.devices, plan, engine),
                _ => TextDecoder::load(llm_cfg, &llm_src, KeyStyle::HuggingFace, device, engine),
            };
            let text = text.map(|d| (d, t.elapsed())).map_err(|e| XComposerError::Load(e.to_string()));
            let visual = visual.join().unwrap_or_else(|_| Err(XComposerError::Load("the image encoder's load panicked".into())));
            (visual, text)
        });
        let ((visual, visual_time), (text, text_time)) = (visual?, text?);
        let load_times = LoadTimes { visual: visual_time, text: text_time, total: start.elapsed() };
        let tokenizer = InternLmTokenizer::load(&dir.join("tokenizer.model")).map_err(|e| XComposerError::Load(format!("{}: {e}", dir.join("tokenizer.model").display())))?;
        Ok(XComposer { preprocess: Preprocess::xcomposer(visual_cfg.img_size as u32), visual, text, device: device.clone(), tokenizer, dir: dir.into(), load_times, placement })
    }

    /// The preprocessed pixels of an image file, `[3, S, S]` as a flat vector.
    pub fn pixels(&self, path: &Path) -> Result<Vec<f32>, XComposerError> {
        // The original opens with PIL and `convert("RGB")` (alpha dropped).
        let img = ImageInput::pil_compatible().open_for(path, &self.preprocess)?;
        Ok(self.preprocess.apply(&img.rgb))
    }

    /// The LLM embeddings `[n, tokens, hidden]` of `n` images' preprocessed pixels, encoded
    /// in one batch.
    pub fn encode_pixels(&self, pixels: Vec<f32>) -> Result<Tensor<B, 3>, XComposerError> {
        self.visual.encode(pixels, &self.device)
    }

    /// An image file's LLM embeddings, `[1, tokens, hidden]`.
    pub fn encode_image(&self, path: &Path) -> Result<Tensor<B, 3>, XComposerError> {
        self.encode_pixels(self.pixels(path)?)
    }

    /// The prompt embeddings of the pieces, concatenated: `[1, len, hidden]`.
    pub fn embed(&self, pieces: &[Piece<B>]) -> Result<Tensor<B, 3>, XComposerError> {
        let mut parts = vec![];
        for p in pieces {
            match p {
                Piece::Text { text, bos } => {
                    let ids = self.tokenizer.encode(text, *bos).map_err(|e| XComposerError::BadRequest(e.to_string()))?;
                    if !ids.is_empty() {
                        parts.push(self.embed_ids(&ids)?);
                    }
                }
                Piece::Image(t) => parts.push(t.clone()),
            }
        }
        if parts.is_empty() {
            return Err(XComposerError::BadRequest("the prompt is empty".into()));
        }
        Ok(Tensor::cat(parts, 1))
    }

    /// The pieces of a turn: `text` split at each `<ImageHere>`, the images spliced in order (one
    /// image and no placeholder puts the image before the text, as the original's `generate`).
    pub fn turn_pieces(&self, head: &str, text: &str, images: &[Tensor<B, 3>], tail: &str, bos: bool) -> Result<Vec<Piece<B>>, XComposerError> {
        let chunks: Vec<&str> = text.split(IMAGE_PLACEHOLDER).collect();
        let mut pieces = vec![Piece::Text { text: head.into(), bos }];
        if chunks.len() == 1 {
            match images {
                [] => {}
                [one] => pieces.push(Piece::Image(one.clone())),
                _ => return Err(XComposerError::BadRequest(format!("{} images but no {IMAGE_PLACEHOLDER} in the text to say where they go", images.len()))),
            }
            pieces.push(Piece::Text { text: text.into(), bos: false });
        } else {
            if chunks.len() - 1 != images.len() {
                return Err(XComposerError::BadRequest(format!("the text has {} {IMAGE_PLACEHOLDER} but {} images were given", chunks.len() - 1, images.len())));
            }
            for (i, c) in chunks.iter().enumerate() {
                if i > 0 {
                    pieces.push(Piece::Image(images[i - 1].clone()));
                }
                pieces.push(Piece::Text { text: c.to_string(), bos: false });
            }
        }
        pieces.push(Piece::Text { text: tail.into(), bos: false });
        Ok(pieces)
    }

    /// The first turn's prompt, as `model.generate(text, image)` builds it.
    pub fn generate_prompt(&self, text: &str, images: &[Tensor<B, 3>]) -> Result<Tensor<B, 3>, XComposerError> {
        let pieces = self.turn_pieces(&format!("{META_INSTRUCTION} <|User|>:"), text, images, "\n<TOKENS_UNUSED_0> <|Bot|>:", true)?;
        self.embed(&pieces)
    }

    /// A chat prompt with a history, as `model.chat(text, image, history)` builds it.
    /// Each past turn comes with its images' embeddings, so images given on any turn stay in the
    /// history.
    pub fn chat_prompt(&self, text: &str, images: &[Tensor<B, 3>], history: &[(Turn, Vec<Tensor<B, 3>>)]) -> Result<Tensor<B, 3>, XComposerError> {
        if history.is_empty() {
            return self.generate_prompt(text, images);
        }
        let mut pieces = vec![];
        for (turn, imgs) in history {
            pieces.extend(self.turn_pieces(" <|User|>:", &turn.user, imgs, " <|Bot|>:", true)?);
            pieces.push(Piece::Text { text: turn.answer.clone(), bos: true });
        }
        pieces.extend(self.turn_pieces(" <|User|>:", text, images, "\n<TOKENS_UNUSED_0> <|Bot|>:", false)?);
        self.embed(&pieces)
    }

    /// The input embeddings of token ids, `[1, ids.len(), hidden]`.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor<B, 3>, XComposerError> {
        match &self.text {
            TextDecoder::Burn(d) => Ok(d.embed_ids(ids)),
            #[cfg(feature = "cuda")]
            TextDecoder::Cuda(e) => {
                let mut e = lock(e);
                let rows = e.embed_ids(ids).map_err(engine_error)?;
                Ok(Tensor::from_data(burn::tensor::TensorData::new(rows, [1, ids.len(), e.config.hidden_size]), &self.device))
            }
        }
    }

    /// The logits of the prompt's last position.
    pub fn last_logits(&self, prompt: Tensor<B, 3>) -> Result<Vec<f32>, XComposerError> {
        self.check_context(prompt.dims()[1], 0)?;
        match &self.text {
            TextDecoder::Burn(d) => Ok(d.forward_embeds(prompt, &mut d.new_cache(), 1).into_data().convert::<f32>().into_vec().expect("f32 logits")),
            #[cfg(feature = "cuda")]
            TextDecoder::Cuda(e) => {
                let mut e = lock(e);
                e.prefill(&host_rows(prompt)).map_err(engine_error)?;
                Ok(e.logits().map_err(engine_error)?.swap_remove(0))
            }
        }
    }

    /// Refuses a prompt whose positions plus `new_tokens` exceed the model's context.
    pub fn check_context(&self, prompt_len: usize, new_tokens: usize) -> Result<(), XComposerError> {
        let max = self.text.config().max_position;
        if prompt_len + new_tokens > max {
            return Err(XComposerError::BadRequest(format!(
                "the prompt takes {prompt_len} positions and up to {new_tokens} new tokens were asked for, but the model's context holds {max}: shorten the prompt or the history, or ask for fewer tokens"
            )));
        }
        Ok(())
    }

    /// Decodes after a prompt: greedy for one beam, else beam search.
    pub fn decode(&self, prompt: Tensor<B, 3>, cfg: &EmbedGenConfig) -> Result<EmbedGenOutput, XComposerError> {
        self.decode_streaming(prompt, cfg, &mut every_step)
    }

    /// [`XComposer::decode`], `on_step` seeing the running sequence (the best beam) after each step
    /// and free to end decoding there.
    pub fn decode_streaming(&self, prompt: Tensor<B, 3>, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, XComposerError> {
        self.decode_seeing(prompt, &[], cfg, on_step)
    }

    /// [`XComposer::decode_streaming`] with the repetition penalty also over `seen`, as HF's
    /// `generate(inputs=ids, inputs_embeds=…)` penalises the prompt's ids (the web demo's
    /// `use_inputs`); greedy only, as the demo asks it. The sequence still starts with BOS alone.
    pub fn decode_seeing(&self, prompt: Tensor<B, 3>, seen: &[u32], cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, XComposerError> {
        if !seen.is_empty() && cfg.num_beams > 1 {
            return Err(XComposerError::BadRequest(format!("a penalised prompt decodes greedily, as the original's use_inputs; {} beams asked", cfg.num_beams)));
        }
        self.decode_with(prompt, (!seen.is_empty()).then_some(TokenChoice::SeeingPrompt(seen)), None, cfg, on_step)
    }

    /// [`XComposer::decode_streaming`] with every sequence, each beam, kept to `constraint`'s
    /// grammar ([`Grammared`]: a beam's candidates are the tokens its own parse allows).
    pub fn decode_constrained(&self, prompt: Tensor<B, 3>, constraint: &Constraint, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, XComposerError> {
        self.decode_with(prompt, None, Some(constraint), cfg, on_step)
    }

    /// Sampled decoding, the original's `do_sample=True` with one beam: each token drawn by
    /// `sampler` (temperature, top-p, seed; its repetition penalty over `[BOS] + generated`).
    pub fn decode_sampled(&self, prompt: Tensor<B, 3>, sampler: &mut Sampler, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, XComposerError> {
        if cfg.num_beams > 1 {
            return Err(XComposerError::BadRequest(format!("sampling draws one sequence; {} beams asked (the original's beam sampling is not built)", cfg.num_beams)));
        }
        self.decode_with(prompt, Some(TokenChoice::Sampled(sampler)), None, cfg, on_step)
    }

    fn decode_with(&self, prompt: Tensor<B, 3>, choice: Option<TokenChoice<'_>>, constraint: Option<&Constraint>, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, XComposerError> {
        self.check_context(prompt.dims()[1], cfg.max_new_tokens)?;
        match &self.text {
            TextDecoder::Burn(d) => {
                let Ok(out) = run_steps(BurnSteps::new(d, prompt), choice, constraint, cfg, on_step);
                Ok(out)
            }
            #[cfg(feature = "cuda")]
            TextDecoder::Cuda(e) => {
                let mut e = lock(e);
                let prompt = host_rows(prompt);
                run_steps(xcomposer_llm::cuda::EngineSteps { engine: &mut e, prompt: &prompt }, choice, constraint, cfg, on_step).map_err(engine_error)
            }
        }
    }

    /// The answer text of generated ids, as the original's `decode_text`: special tokens
    /// skipped, cut at `<TOKENS_UNUSED_1>`.
    pub fn answer_text(&self, out: &EmbedGenOutput) -> String {
        let text = self.tokenizer.decode(&out.sequence, true).unwrap_or_default();
        text.split("<TOKENS_UNUSED_1>").next().unwrap_or_default().to_string()
    }
}

/// [`pick_steps`] on `dec`, kept to `constraint` when there is one.
fn run_steps<D: StepDecoder>(dec: D, choice: Option<TokenChoice<'_>>, constraint: Option<&Constraint>, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, D::Error> {
    match constraint {
        Some(c) => pick_steps(Grammared::new(dec, c, cfg), choice, cfg, on_step),
        None => pick_steps(dec, choice, cfg, on_step),
    }
}

/// A one-sequence decode with its token choice, else greedy for one beam, else beam search.
fn pick_steps<D: StepDecoder>(mut dec: D, choice: Option<TokenChoice<'_>>, cfg: &EmbedGenConfig, on_step: &mut OnStep<'_>) -> Result<EmbedGenOutput, D::Error> {
    match choice {
        Some(choice) => greedy_steps(&mut Chosen { inner: dec, choice }, cfg, on_step),
        None if cfg.num_beams <= 1 => greedy_steps(&mut dec, cfg, on_step),
        None => beam_steps(&mut dec, cfg, on_step),
    }
}

/// A `[1, len, hidden]` tensor's values, row-major f32 on the host.
#[cfg(feature = "cuda")]
fn host_rows<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32 embeddings")
}
