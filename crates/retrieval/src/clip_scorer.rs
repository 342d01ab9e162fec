//! CLIP as the library's image scorer: [`ClipEmbedder`] (a CLIP folder's model, tokenizer and
//! preprocessing together: images and captions → unit embeddings) and [`ClipScorer`], which
//! compares caption embeddings with the image embeddings stored in the index (feature
//! [`CLIP_FEATURE`], made by `xcomposer index --clip DIR`).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use rayon::prelude::*;
use xcomposer_vision::{ImageInput, ImageLimits, Preprocess};

use crate::clip::{Clip, ClipError, l2_normalize};
use crate::clip_tokenizer::ClipTokenizer;
pub use crate::library::features::CLIP_FEATURE;
use crate::library::{FeatureMatrix, ImageLibrary, LibraryError, Progress};
use crate::scorer::{ScoreError, ScoreMatrix, Scorer, cosine_scores};


/// A CLIP folder ready to embed images and captions.
pub struct ClipEmbedder<B: Backend> {
    /// The dual encoder.
    pub model: Clip<B>,
    /// Its tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Its image preprocessing.
    pub preprocess: Preprocess,
    /// Where it was loaded from.
    pub dir: PathBuf,
    id: String,
}

impl<B: Backend> ClipEmbedder<B> {
    /// Loads `config.json`, the weights, `vocab.json` + `merges.txt` and
    /// `preprocessor_config.json` (CLIP's defaults when absent) from a Hugging Face CLIP folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ClipError> {
        let model = Clip::load(dir, device)?;
        let tokenizer = ClipTokenizer::from_dir(dir, model.config.text.max_position_embeddings)?;
        let pp = dir.join("preprocessor_config.json");
        let size = model.config.vision.image_size as u32;
        let preprocess = if pp.exists() { Preprocess::from_hf_config(&pp).map_err(|e| ClipError::Config { path: e.path, reason: e.reason })? } else { Preprocess::clip(size) };
        if preprocess.crop != Some((size, size)) {
            return Err(ClipError::Config { path: pp, reason: format!("crop_size {:?} does not give the {size}×{size} images vision_config.image_size asks for", preprocess.crop) });
        }
        // The index remembers which model made its features: the folder name and the weights' size.
        let weights_bytes: u64 = ["model.safetensors", "pytorch_model.bin"].iter().filter_map(|f| std::fs::metadata(dir.join(f)).ok()).map(|m| m.len()).sum();
        let name = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let c = &model.config;
        let id = format!("clip:{name}:vit-{}x{}-d{}-e{}:{weights_bytes}", c.vision.tower.num_hidden_layers, c.vision.patch_size, c.vision.tower.hidden_size, c.projection_dim);
        Ok(ClipEmbedder { model, tokenizer, preprocess, dir: dir.into(), id })
    }

    /// What identifies the model in an index.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.model.config.projection_dim
    }

    /// Unit image embeddings of already preprocessed `[3, S, S]` pixel arrays.
    pub fn embed_pixels(&self, pixels: &[Vec<f32>]) -> Vec<Vec<f32>> {
        if pixels.is_empty() {
            return vec![];
        }
        let s = self.model.config.vision.image_size;
        let flat: Vec<f32> = pixels.iter().flatten().copied().collect();
        let device = self.model.vision_device();
        let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [pixels.len(), 3, s, s]), &device);
        rows(l2_normalize(self.model.image_features(x)))
    }

    /// Unit image embeddings of decoded RGB images (preprocessed here).
    pub fn embed_images(&self, images: &[RgbImage]) -> Vec<Vec<f32>> {
        let pixels: Vec<Vec<f32>> = images.iter().map(|im| self.preprocess.apply(im)).collect();
        self.embed_pixels(&pixels)
    }

    /// Unit caption embeddings.
    pub fn embed_texts(&self, captions: &[&str]) -> Vec<Vec<f32>> {
        if captions.is_empty() {
            return vec![];
        }
        let t = self.tokenizer.encode(captions);
        rows(l2_normalize(self.model.text_features(&t.ids, &t.mask)))
    }
}

/// The rows of a `[n, d]` tensor.
fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    let data: Vec<f32> = t.into_data().convert::<f32>().into_vec().expect("f32 data");
    data.chunks(d.max(1)).map(<[f32]>::to_vec).collect()
}

/// Scores images by CLIP: `logit_scale · cos(caption, image)`, CLIP's own logits (about 0–35
/// for the published models, where 20–30 is a match).
pub struct ClipScorer<B: Backend> {
    embedder: std::sync::Arc<ClipEmbedder<B>>,
}

impl<B: Backend> ClipScorer<B> {
    /// A scorer over the index's CLIP features, which `embedder` must have made.
    pub fn new(embedder: std::sync::Arc<ClipEmbedder<B>>) -> Self {
        ClipScorer { embedder }
    }
}

impl<B: Backend> Scorer for ClipScorer<B>
where
    ClipEmbedder<B>: Send + Sync,
{
    fn name(&self) -> &str {
        "clip"
    }

    fn score(&self, captions: &[&str], library: &ImageLibrary) -> Result<ScoreMatrix, ScoreError> {
        if let Some(other) = library.models().clip.as_deref().filter(|id| *id != self.embedder.id()) {
            return Err(ScoreError::OtherModel { index: library.index_dir().display().to_string(), found: other.into(), wanted: self.embedder.id().into() });
        }
        let queries = self.embedder.embed_texts(captions);
        let mut part = cosine_scores("clip", CLIP_FEATURE, &queries, library)?;
        let scale = self.embedder.model.logit_scale;
        for v in part.values.iter_mut().flatten().flatten() {
            *v *= scale;
        }
        Ok(ScoreMatrix { parts: vec![part] })
    }
}

impl ImageLibrary {
    /// Adds CLIP image embeddings made by `clip` for every image that lacks one (all of them
    /// when the index holds another CLIP model's) and saves the index; returns how many were
    /// embedded. Images that no longer decode, or are over `limits`, are reported in `skipped`.
    pub fn index_clip<B: Backend>(&mut self, clip: &ClipEmbedder<B>, batch: usize, limits: ImageLimits, progress: &mut dyn FnMut(Progress), skipped: &mut Vec<(String, String)>) -> Result<usize, LibraryError> {
        let dim = clip.dim();
        let same = self.models.clip.as_deref() == Some(clip.id());
        let old = if same { self.features.remove(CLIP_FEATURE) } else { None };
        let mut vectors: Vec<Option<Vec<f32>>> = (0..self.images.len()).map(|i| old.as_ref().and_then(|m| m.row(i)).map(<[f32]>::to_vec)).collect();
        let todo: Vec<usize> = (0..self.images.len()).filter(|&i| vectors[i].is_none()).collect();
        progress(Progress::Planned { total: self.images.len(), to_process: todo.len() });
        // CLIPImageProcessor's convert("RGB") drops alpha rather than compositing it.
        let input = ImageInput::pil_compatible().with_limits(limits);
        for chunk in todo.chunks(batch.max(1)) {
            let decoded: Vec<Result<Vec<f32>, String>> = chunk.par_iter().map(|&i| input.open_for(&self.root.join(&self.images[i].path), &clip.preprocess).map(|d| clip.preprocess.apply(&d.rgb)).map_err(|e| e.to_string())).collect();
            let mut ok = vec![];
            let mut pixels = vec![];
            for (&i, d) in chunk.iter().zip(decoded) {
                match d {
                    Ok(p) => {
                        ok.push(i);
                        pixels.push(p);
                    }
                    Err(e) => skipped.push((self.images[i].path.clone(), e)),
                }
            }
            for (i, v) in ok.into_iter().zip(clip.embed_pixels(&pixels)) {
                vectors[i] = Some(v);
            }
            for _ in chunk {
                progress(Progress::Processed);
            }
        }
        let mut data = Vec::new();
        for (im, v) in self.images.iter_mut().zip(&vectors) {
            im.rows.remove(CLIP_FEATURE);
            if let Some(v) = v {
                im.rows.insert(CLIP_FEATURE.into(), (data.len() / dim) as u32);
                data.extend_from_slice(v);
            }
        }
        let row_of = self.images.iter().map(|im| im.rows.get(CLIP_FEATURE).copied()).collect();
        self.features.insert(CLIP_FEATURE.into(), FeatureMatrix { dim, data, row_of });
        self.models.clip = Some(clip.id().to_string());
        self.save()?;
        Ok(todo.len())
    }
}
