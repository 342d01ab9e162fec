//! Building a library's index: [`Indexer`] holds the models, [`ImageLibrary::index`] walks the
//! folder, tags and embeds the new images and saves the index.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::Serialize;
use xcomposer_llm::fetch;
use xcomposer_vision::{ImageInput, ImageLimits, ImageTagger, Tag};

use super::features::{CLIP_FEATURE, METADATA_FEATURE, TAG_FEATURE};
use super::metadata::{metadata_text, read_library_meta};
use super::walk::walk;
use super::{FeatureMatrix, ImageLibrary, IndexedImage, LibraryError, ModelIds, TOP_TAGS, default_index_dir};
use crate::embedder::{EmbedderError, TextEmbedder, normalize};

/// What an indexing run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexReport {
    /// Images seen in the folder.
    pub found: usize,
    /// Images decoded and embedded in this run (new or changed content).
    pub processed: Vec<String>,
    /// Images whose stored entry was reused.
    pub unchanged: usize,
    /// Entries dropped because their file is gone.
    pub removed: Vec<String>,
    /// Images that could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Problems with metadata files (the images are still indexed).
    pub warnings: Vec<String>,
}

/// Progress of an indexing run.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// The walk found `total` images, `to_process` of which need processing.
    Planned {
        /// Images found.
        total: usize,
        /// New or changed ones.
        to_process: usize,
    },
    /// One more image was processed (or skipped).
    Processed,
}

/// The models that make an index: the tagger and the text embedder.
pub struct Indexer<B: Backend> {
    /// EfficientNet-Lite0 with labels.
    pub tagger: ImageTagger<B>,
    /// MiniLM.
    pub embedder: Arc<TextEmbedder<B>>,
    /// Images per tagger batch.
    pub batch: usize,
    /// The size limits of each image read.
    pub limits: ImageLimits,
}

impl<B: Backend> Indexer<B> {
    /// Loads the default models from the models folder, fetching them if needed.
    pub fn load_default(models_dir: &Path, device: &B::Device, log: &mut dyn FnMut(&str)) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let tagger = ImageTagger::load_default(models_dir, device, log)?;
        let embedder = Arc::new(TextEmbedder::load_default(models_dir, device, log)?);
        Ok(Self { tagger, embedder, batch: 8, limits: ImageLimits::default() })
    }

    /// The text embedded for a label (its first ImageNet name).
    pub fn label_text(&self, index: usize) -> String {
        self.tagger.labels().name(index).to_string()
    }

    /// ConSE for each image: the probability-weighted mean of its label embeddings, normalised.
    /// Labels not yet in `cache` are embedded together, once.
    fn tag_embeddings(&self, images: &[Vec<Tag>], cache: &mut HashMap<usize, Vec<f32>>) -> Result<Vec<Vec<f32>>, EmbedderError> {
        let mut missing: Vec<usize> = images.iter().flatten().map(|t| t.index).filter(|i| !cache.contains_key(i)).collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let texts: Vec<String> = missing.iter().map(|&i| self.label_text(i)).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            cache.extend(missing.into_iter().zip(self.embedder.embed(&refs)?));
        }
        Ok(images
            .iter()
            .map(|tags| {
                let mut v = vec![0f32; self.embedder.dim()];
                for t in tags {
                    for (a, b) in v.iter_mut().zip(&cache[&t.index]) {
                        *a += t.probability * b;
                    }
                }
                normalize(&mut v);
                v
            })
            .collect())
    }
}

impl ImageLibrary {
    /// Indexes (or re-indexes) the folder and saves the index; see the module documentation.
    pub fn index<B: Backend>(root: &Path, index_dir: Option<&Path>, indexer: &Indexer<B>, progress: &mut dyn FnMut(Progress)) -> Result<(Self, IndexReport), LibraryError> {
        let index_dir = index_dir.map(Path::to_path_buf).unwrap_or_else(|| default_index_dir(root));
        let models = ModelIds::default_models();
        let mut report = IndexReport::default();
        // Reuse what a compatible earlier index knows, by content hash.
        let previous = match Self::open_for(root, Some(&index_dir), &models) {
            Ok(lib) => Some(lib),
            Err(LibraryError::NoIndex { .. }) => None,
            Err(e @ (LibraryError::Stale { .. } | LibraryError::Io { .. })) => {
                report.warnings.push(format!("{e} (rebuilding the index now)"));
                None
            }
            Err(e) => return Err(e),
        };
        let files = walk(root, &mut report)?;
        report.found = files.len();
        let lib_meta = read_library_meta(root, &mut report);
        let mut known: HashMap<String, (IndexedImage, Option<Vec<f32>>)> = HashMap::new();
        // Metadata embeddings by text, so unchanged texts are not embedded again.
        let mut known_text: HashMap<String, Vec<f32>> = HashMap::new();
        if let Some(prev) = &previous {
            for (i, im) in prev.images.iter().enumerate() {
                let tag = prev.feature(TAG_FEATURE).and_then(|m| m.row(i)).map(<[f32]>::to_vec);
                known.insert(im.sha256.clone(), (im.clone(), tag));
                if let (Some(t), Some(v)) = (&im.metadata_text, prev.feature(METADATA_FEATURE).and_then(|m| m.row(i))) {
                    known_text.insert(t.clone(), v.to_vec());
                }
            }
        }
        let present: HashSet<&str> = files.iter().map(String::as_str).collect();
        if let Some(prev) = &previous {
            report.removed = prev.images.iter().filter(|im| !present.contains(im.path.as_str())).map(|im| im.path.clone()).collect();
        }
        // Hash every file (streamed, in parallel); only new content is decoded below, a batch at a
        // time, so memory stays bounded by the batch however large the library is.
        let hashed: Vec<(String, Result<String, String>)> = files.par_iter().map(|rel| (rel.clone(), fetch::sha256_file(&root.join(rel)).map_err(|e| e.to_string()))).collect();
        let mut entries: Vec<(IndexedImage, Vec<f32>)> = vec![];
        let mut todo: Vec<(String, String)> = vec![];
        for (rel, sha) in hashed {
            match sha {
                Err(e) => report.skipped.push((rel, e)),
                Ok(sha) => match known.get(&sha) {
                    Some((im, Some(tag))) => {
                        report.unchanged += 1;
                        entries.push((IndexedImage { path: rel, ..im.clone() }, tag.clone()));
                    }
                    _ => todo.push((rel, sha)),
                },
            }
        }
        progress(Progress::Planned { total: files.len(), to_process: todo.len() });
        let input = ImageInput::default().with_limits(indexer.limits);
        let preprocess = *indexer.tagger.preprocess();
        let mut label_cache = HashMap::new();
        for chunk in todo.chunks(indexer.batch.max(1)) {
            // Read, decode and preprocess in parallel; tag the batch together.
            let decoded: Vec<_> = chunk
                .par_iter()
                .map(|(rel, _)| {
                    let path = root.join(rel);
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    input.open_for(&path, &preprocess).map(|d| {
                        let pixels = preprocess.apply(&d.rgb);
                        (d, pixels, bytes)
                    })
                })
                .collect();
            let mut ok = vec![];
            let mut pixels = vec![];
            for ((rel, sha), d) in chunk.iter().zip(decoded) {
                match d {
                    Ok((d, p, bytes)) => {
                        ok.push((rel, sha, d, bytes));
                        pixels.push(p);
                    }
                    Err(e) => {
                        report.skipped.push((rel.clone(), e.to_string()));
                        progress(Progress::Processed);
                    }
                }
            }
            let tagged = indexer.tagger.tag_preprocessed(&pixels, TOP_TAGS);
            let tags: Vec<Vec<Tag>> = tagged.into_iter().map(|t| t.tags).collect();
            let tag_vectors = indexer.tag_embeddings(&tags, &mut label_cache)?;
            for (((rel, sha, d, bytes), tags), tag) in ok.into_iter().zip(tags).zip(tag_vectors) {
                let im = IndexedImage {
                    path: rel.clone(),
                    sha256: sha.clone(),
                    bytes,
                    width: d.rgb.width(),
                    height: d.rgb.height(),
                    tags,
                    exif_description: d.description,
                    metadata_text: None,
                    metadata_sources: vec![],
                    rows: BTreeMap::new(),
                };
                report.processed.push(rel.clone());
                entries.push((im, tag));
                progress(Progress::Processed);
            }
        }
        entries.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        // Metadata text is recomputed each run (sidecars may change without the image).
        let texts: Vec<Option<(String, Vec<String>)>> = entries.iter().map(|(im, _)| metadata_text(root, im, &lib_meta, &mut report)).collect();
        let mut need: Vec<&str> = texts.iter().flatten().map(|(t, _)| t.as_str()).filter(|t| !known_text.contains_key(*t)).collect();
        need.sort_unstable();
        need.dedup();
        let fresh = indexer.embedder.embed(&need)?;
        known_text.extend(need.iter().map(|t| t.to_string()).zip(fresh));
        let dim = indexer.embedder.dim();
        let mut tag_data = Vec::with_capacity(entries.len() * dim);
        let mut meta_data = vec![];
        let mut images = Vec::with_capacity(entries.len());
        for (i, ((mut im, tag), text)) in entries.into_iter().zip(texts).enumerate() {
            im.rows = BTreeMap::from([(TAG_FEATURE.to_string(), i as u32)]);
            tag_data.extend(tag);
            (im.metadata_text, im.metadata_sources) = match text {
                Some((t, sources)) => {
                    im.rows.insert(METADATA_FEATURE.into(), (meta_data.len() / dim) as u32);
                    meta_data.extend(&known_text[&t]);
                    (Some(t), sources)
                }
                None => (None, vec![]),
            };
            images.push(im);
        }
        let row_of = |name: &str| images.iter().map(|im| im.rows.get(name).copied()).collect::<Vec<_>>();
        let features = BTreeMap::from([
            (TAG_FEATURE.to_string(), FeatureMatrix { dim, data: tag_data, row_of: row_of(TAG_FEATURE) }),
            (METADATA_FEATURE.to_string(), FeatureMatrix { dim, data: meta_data, row_of: row_of(METADATA_FEATURE) }),
        ]);
        let mut lib = Self { root: root.to_path_buf(), index_dir, models, images, features };
        if let Some(prev) = &previous {
            lib.carry_clip(prev);
        }
        lib.save()?;
        Ok((lib, report))
    }

    /// Keeps the CLIP embeddings of `prev` for the images whose content is unchanged.
    fn carry_clip(&mut self, prev: &ImageLibrary) {
        let (Some(id), Some(m)) = (&prev.models.clip, prev.feature(CLIP_FEATURE)) else { return };
        let by_sha: HashMap<&str, &[f32]> = prev.images.iter().enumerate().filter_map(|(i, im)| m.row(i).map(|r| (im.sha256.as_str(), r))).collect();
        let mut data = vec![];
        for im in &mut self.images {
            if let Some(row) = by_sha.get(im.sha256.as_str()) {
                im.rows.insert(CLIP_FEATURE.into(), (data.len() / m.dim) as u32);
                data.extend_from_slice(row);
            }
        }
        let row_of = self.images.iter().map(|im| im.rows.get(CLIP_FEATURE).copied()).collect();
        self.features.insert(CLIP_FEATURE.into(), FeatureMatrix { dim: m.dim, data, row_of });
        self.models.clip = Some(id.clone());
    }
}
