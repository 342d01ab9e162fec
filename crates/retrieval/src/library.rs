//! `ImageLibrary`: a folder of the user's images as a persisted index.
//!
//! [`ImageLibrary::index`] walks the folder (recursively; hidden entries skipped; a symbolic
//! link is followed only when its target lies inside the folder), reads each image's bytes,
//! and keeps the stored entry of any image whose sha256 it already knows, so re-indexing
//! processes only new or changed images; removed images are dropped, and an unreadable or
//! corrupt image is reported and skipped. New images are decoded in parallel, tagged with
//! EfficientNet-Lite0 in batches, and their tag and metadata embeddings computed with MiniLM.
//!
//! On disk (in `FOLDER/.xcomposer/` unless told otherwise): `index.json` (format version, the
//! models it was built with, one entry per image: path, sha256, size, dimensions, tags,
//! metadata text) and one little-endian f32 matrix per feature (`features-NAME.f32`). An index
//! of another format version or other models is refused with a "re-index" message.
//!
//! Image text comes from, in order: the folder's `library.json` (`{"images": {"PATH": {...}}}`),
//! a sidecar `IMAGE.json` (both with `title`, `description`, `alt`), the EXIF
//! `ImageDescription`, and the file name (words of the stem, camera-style names ignored).
//!
//! Every file is read with a size cap, and only if it is a regular file (a FIFO or device next
//! to an image is reported, never opened); `index.json` is not trusted: an image path that is
//! absolute or climbs out with `..`, or a feature name that is not a plain word, is refused with
//! the field named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xcomposer_llm::capped::{CappedReadError, read_capped};
use xcomposer_llm::fetch;
use xcomposer_vision::{ImageInput, ImageLimits, ImageTagger, Tag};

use crate::clip_scorer::{CLIP_FEATURE, ClipEmbedder};
use crate::embedder::{EmbedderError, TextEmbedder, normalize};
use crate::scorer::{METADATA_FEATURE, Score, ScoreError, Scorer, TAG_FEATURE};
#[cfg(test)]
use crate::scorer::{PartScores, ScoreMatrix};

/// The on-disk format version this build reads and writes.
pub const INDEX_VERSION: u32 = 1;
/// The index folder's name inside a library.
pub const INDEX_DIR: &str = ".xcomposer";
/// How many top labels an image keeps (and ConSE averages over).
pub const TOP_TAGS: usize = 5;
const FORMAT: &str = "xcomposer-image-index";
const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "gif", "jpe"];
/// The largest `index.json` read, in bytes.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;
/// The largest `library.json` read, in bytes.
pub const MAX_LIBRARY_META_BYTES: u64 = 64 << 20;
/// The largest sidecar `IMAGE.json` read, in bytes.
pub const MAX_SIDECAR_BYTES: u64 = 1 << 20;

/// Errors of the library.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// A file operation failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// There is no index yet.
    #[error("{index}: no image index here; build it with `xcomposer index {root}`")]
    NoIndex {
        /// Where it was looked for.
        index: PathBuf,
        /// The library folder.
        root: PathBuf,
    },
    /// The index is from another version, other models, or damaged.
    #[error("{index}: {reason}; re-index with `xcomposer index {root}`")]
    Stale {
        /// The index folder.
        index: PathBuf,
        /// The library folder.
        root: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// Embedding failed.
    #[error(transparent)]
    Embedder(#[from] EmbedderError),
    /// Scoring failed.
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// The default models or photos could not be fetched or loaded.
    #[error("{0}")]
    Models(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LibraryError + '_ {
    move |e| LibraryError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

/// Which models made an index's features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIds {
    /// Image tagger.
    pub tagger: String,
    /// Text embedder.
    pub embedder: String,
    /// How tags become the ConSE vector (which labels, which label text).
    pub tag_embedding: String,
    /// The CLIP model of the `clip` feature, when the index has one (`index --clip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<String>,
}

impl ModelIds {
    /// The default models.
    pub fn default_models() -> Self {
        Self {
            tagger: format!("efficientnet-lite0@{}", &xcomposer_vision::tagger::EFFICIENTNET_LITE0.files[0].sha256[..12]),
            embedder: format!("all-MiniLM-L6-v2@{}", &crate::embedder::MINILM_L6_V2.files[0].sha256[..12]),
            tag_embedding: format!("conse-top{TOP_TAGS}-first-name"),
            clip: None,
        }
    }

    /// Whether the tag and metadata features are the same (the optional CLIP feature aside).
    pub fn same_base(&self, other: &ModelIds) -> bool {
        (&self.tagger, &self.embedder, &self.tag_embedding) == (&other.tagger, &other.embedder, &other.tag_embedding)
    }
}

/// One indexed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedImage {
    /// Path relative to the library folder, with `/` separators.
    pub path: String,
    /// sha256 of the file's bytes.
    pub sha256: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Width in pixels (after EXIF orientation).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The top ImageNet tags.
    pub tags: Vec<Tag>,
    /// The EXIF `ImageDescription`, if the file has one.
    #[serde(default)]
    pub exif_description: Option<String>,
    /// The image's own text, if any.
    pub metadata_text: Option<String>,
    /// Where that text came from (`library.json`, `sidecar`, `exif`, `file name`).
    pub metadata_sources: Vec<String>,
    /// Row of each stored feature.
    #[serde(default)]
    pub rows: BTreeMap<String, u32>,
}

/// A feature matrix, one optional row per image.
#[derive(Debug, Clone, Default)]
pub struct FeatureMatrix {
    /// Row length.
    pub dim: usize,
    data: Vec<f32>,
    row_of: Vec<Option<u32>>,
}

impl FeatureMatrix {
    /// The feature row of image `i`, if it has one.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let r = self.row_of.get(i).copied().flatten()? as usize;
        self.data.get(r * self.dim..(r + 1) * self.dim)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    format: String,
    version: u32,
    models: ModelIds,
    /// Feature name → row length.
    features: BTreeMap<String, usize>,
    images: Vec<IndexedImage>,
}

/// A library folder with its loaded index.
#[derive(Debug, Clone)]
pub struct ImageLibrary {
    root: PathBuf,
    index_dir: PathBuf,
    models: ModelIds,
    images: Vec<IndexedImage>,
    features: BTreeMap<String, FeatureMatrix>,
}

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// Index of the image in the library.
    pub image: usize,
    /// Its path relative to the library.
    pub path: String,
    /// Its score and the parts of it.
    pub score: Score,
}

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

/// Text fields of a metadata entry.
#[derive(Debug, Default, Deserialize)]
struct MetaEntry {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    alt: Option<String>,
}

impl MetaEntry {
    fn text(&self) -> Option<String> {
        let parts: Vec<String> = [&self.title, &self.description, &self.alt]
            .into_iter()
            .flatten()
            .map(|s| s.trim().trim_end_matches('.').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(". ") + ".")
    }
}

#[derive(Debug, Default, Deserialize)]
struct LibraryMeta {
    #[serde(default)]
    images: BTreeMap<String, MetaEntry>,
}

/// Words of a file name worth embedding: `grace_hopper.jpg` → "grace hopper";
/// `IMG_2034.JPG` → none.
pub fn file_name_words(path: &str) -> Option<String> {
    let stem = Path::new(path).file_stem()?.to_string_lossy().to_lowercase();
    const CAMERA: [&str; 8] = ["img", "dsc", "dscn", "dscf", "pxl", "photo", "image", "screenshot"];
    let words: Vec<&str> = stem
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_digit()) && !CAMERA.contains(w))
        .filter(|w| !(w.len() > 2 && w.chars().any(|c| c.is_ascii_digit()) && w.chars().any(|c| c.is_alphabetic())))
        .filter(|w| !matches!(*w, "left" | "right"))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Finds image files under `root`, as relative paths with `/` separators.
fn walk(root: &Path, report: &mut IndexReport) -> Result<Vec<String>, LibraryError> {
    let canon_root = root.canonicalize().map_err(io(root))?;
    let mut out = vec![];
    let mut seen = HashSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    seen.insert(canon_root.clone());
    while let Some((dir, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                report.skipped.push((rel.clone(), format!("folder not readable: {e}")));
                continue;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel_path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let Ok(ft) = entry.file_type() else { continue };
            // Follow a link only when its target stays inside the library.
            let target = if ft.is_symlink() {
                match path.canonicalize() {
                    Ok(t) if t.starts_with(&canon_root) => Some(t),
                    _ => continue,
                }
            } else {
                None
            };
            let (is_dir, is_file) = target.as_deref().map_or((ft.is_dir(), ft.is_file()), |t| (t.is_dir(), t.is_file()));
            if is_dir {
                // Each real folder once, so link cycles end.
                if let Some(c) = target.or_else(|| path.canonicalize().ok())
                    && seen.insert(c)
                {
                    stack.push((path, rel_path));
                }
            } else if is_file && Path::new(&name).extension().is_some_and(|e| EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str())) {
                out.push(rel_path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The default index folder of a library.
pub fn default_index_dir(root: &Path) -> PathBuf {
    root.join(INDEX_DIR)
}

impl ImageLibrary {
    /// Opens the index of the library at `root` (in `index_dir`, default `root/.xcomposer`).
    pub fn open(root: &Path, index_dir: Option<&Path>) -> Result<Self, LibraryError> {
        let index_dir = index_dir.map(Path::to_path_buf).unwrap_or_else(|| default_index_dir(root));
        let file = index_dir.join("index.json");
        if !file.exists() {
            return Err(LibraryError::NoIndex { index: file, root: root.to_path_buf() });
        }
        let stale = |reason: String| LibraryError::Stale { index: file.clone(), root: root.to_path_buf(), reason };
        let text = read_capped(&file, MAX_INDEX_BYTES).map_err(|e| LibraryError::Io { path: file.clone(), reason: io_reason(e) })?;
        let head: serde_json::Value = serde_json::from_slice(&text).map_err(|e| stale(format!("not a readable index ({e})")))?;
        if head.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(stale("not an xcomposer image index".into()));
        }
        let version = head.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != INDEX_VERSION as u64 {
            return Err(stale(format!("written in index format version {version}, this xcomposer reads version {INDEX_VERSION}")));
        }
        let idx: IndexFile = serde_json::from_value(head).map_err(|e| stale(format!("damaged index ({e})")))?;
        check_index_fields(&idx).map_err(stale)?;
        let mut features = BTreeMap::new();
        for (name, &dim) in &idx.features {
            let path = index_dir.join(format!("features-{name}.f32"));
            let row_of: Vec<Option<u32>> = idx.images.iter().map(|im| im.rows.get(name).copied()).collect();
            let rows = row_of.iter().flatten().map(|&r| r as u64 + 1).max().unwrap_or(0);
            let mismatch = || stale(format!("{} does not match index.json", path.display()));
            let expected = rows.checked_mul(dim as u64).and_then(|n| n.checked_mul(4)).filter(|_| dim > 0).ok_or_else(mismatch)?;
            let bytes = match read_capped(&path, expected) {
                Err(CappedReadError::TooLarge { .. }) => return Err(mismatch()),
                r => r.map_err(|e| LibraryError::Io { path: path.clone(), reason: io_reason(e) })?,
            };
            if bytes.len() as u64 != expected {
                return Err(mismatch());
            }
            let data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            features.insert(name.clone(), FeatureMatrix { dim, data, row_of });
        }
        Ok(Self { root: root.to_path_buf(), index_dir, models: idx.models, images: idx.images, features })
    }

    /// Opens the index and checks that it was built with `models`.
    pub fn open_for(root: &Path, index_dir: Option<&Path>, models: &ModelIds) -> Result<Self, LibraryError> {
        let lib = Self::open(root, index_dir)?;
        if !lib.models.same_base(models) {
            return Err(LibraryError::Stale {
                index: lib.index_dir.join("index.json"),
                root: root.to_path_buf(),
                reason: format!(
                    "built with {} + {} ({}), but this xcomposer uses {} + {} ({})",
                    lib.models.tagger, lib.models.embedder, lib.models.tag_embedding, models.tagger, models.embedder, models.tag_embedding
                ),
            });
        }
        Ok(lib)
    }

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

    /// Writes the index (feature files first, then `index.json`, each through a rename).
    pub fn save(&self) -> Result<(), LibraryError> {
        std::fs::create_dir_all(&self.index_dir).map_err(io(&self.index_dir))?;
        let write = |name: &str, bytes: &[u8]| -> Result<(), LibraryError> {
            let dst = self.index_dir.join(name);
            xcomposer_llm::fetch::write_atomic(&dst, bytes).map_err(io(&dst))
        };
        for (name, m) in &self.features {
            let bytes: Vec<u8> = m.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            write(&format!("features-{name}.f32"), &bytes)?;
        }
        let file = IndexFile {
            format: FORMAT.into(),
            version: INDEX_VERSION,
            models: self.models.clone(),
            features: self.features.iter().map(|(k, m)| (k.clone(), m.dim)).collect(),
            images: self.images.clone(),
        };
        write("index.json", serde_json::to_string_pretty(&file).expect("serialisable").as_bytes())
    }

    /// Builds a library in memory from entries and feature rows (for tests and benchmarks).
    pub fn from_parts(root: &Path, images: Vec<IndexedImage>, features: BTreeMap<String, (usize, Vec<f32>)>) -> Self {
        let features = features
            .into_iter()
            .map(|(name, (dim, data))| {
                let row_of = images.iter().map(|im| im.rows.get(&name).copied()).collect();
                (name, FeatureMatrix { dim, data, row_of })
            })
            .collect();
        Self { root: root.to_path_buf(), index_dir: default_index_dir(root), models: ModelIds::default_models(), images, features }
    }

    /// The library folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index folder.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    /// The models the index was built with.
    pub fn models(&self) -> &ModelIds {
        &self.models
    }

    /// The indexed images, sorted by path.
    pub fn images(&self) -> &[IndexedImage] {
        &self.images
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether the library has no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// A stored feature matrix.
    pub fn feature(&self, name: &str) -> Option<&FeatureMatrix> {
        self.features.get(name)
    }

    /// The absolute path of image `i`.
    pub fn path_of(&self, i: usize) -> PathBuf {
        self.root.join(&self.images[i].path)
    }

    /// The `k` best images for each caption, best first (images the scorer has no opinion on
    /// are not returned).
    pub fn search(&self, scorer: &dyn Scorer, captions: &[&str], k: usize) -> Result<Vec<Vec<Hit>>, LibraryError> {
        let scores = scorer.score(captions, self)?;
        Ok((0..captions.len())
            .map(|c| {
                let mut ranked: Vec<(usize, f32)> = (0..self.len()).filter_map(|i| scores.total(c, i).map(|t| (i, t))).collect();
                let k = k.min(ranked.len());
                if k > 0 && k < ranked.len() {
                    ranked.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                }
                ranked.truncate(k);
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(self.images[a.0].path.cmp(&self.images[b.0].path)));
                ranked.into_iter().map(|(i, _)| Hit { image: i, path: self.images[i].path.clone(), score: scores.explain(c, i).expect("ranked images have a score") }).collect()
            })
            .collect())
    }
}

/// The reason of a capped read's error, without the path (the caller's message names it).
fn io_reason(e: CappedReadError) -> String {
    match e {
        CappedReadError::Io { source, .. } => source.to_string(),
        CappedReadError::NotRegular { .. } => "not a regular file (a folder, FIFO or device); expected a file".into(),
        CappedReadError::TooLarge { cap, .. } => format!("larger than the limit of {cap} bytes"),
    }
}

/// Refuses what `index.json` must not say: an image path that is empty, absolute or not plainly
/// inside the library (`..`, `.`), or a feature name that is not a plain word (it names a file).
fn check_index_fields(idx: &IndexFile) -> Result<(), String> {
    use std::path::Component::Normal;
    for (i, im) in idx.images.iter().enumerate() {
        let p = Path::new(&im.path);
        if im.path.is_empty() || !p.components().all(|c| matches!(c, Normal(_))) {
            return Err(format!("images[{i}].path {:?} is not a relative path inside the library (absolute paths and `..` are refused)", im.path));
        }
        if let Some(name) = im.rows.keys().find(|n| !plain_name(n)) {
            return Err(format!("images[{i}].rows names feature {name:?}; expected letters, digits, `-` or `_`"));
        }
    }
    match idx.features.keys().find(|n| !plain_name(n)) {
        Some(name) => Err(format!("features names {name:?}; expected letters, digits, `-` or `_`")),
        None => Ok(()),
    }
}

/// Letters, digits, `-` and `_`, at most 64 of them.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Reads a metadata file: `None` when it is absent; a file that cannot be read (not a regular
/// file, over `cap`, unreadable) is reported in `report.warnings` and ignored.
fn read_meta_file(path: &Path, cap: u64, report: &mut IndexReport) -> Option<Vec<u8>> {
    match read_capped(path, cap) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            report.warnings.push(format!("{}: ignored, {}", path.display(), io_reason(e)));
            None
        }
    }
}

fn read_library_meta(root: &Path, report: &mut IndexReport) -> LibraryMeta {
    let path = root.join(crate::default_library::METADATA_FILE);
    match read_meta_file(&path, MAX_LIBRARY_META_BYTES, report) {
        None => LibraryMeta::default(),
        Some(text) => serde_json::from_slice(&text).unwrap_or_else(|e| {
            report.warnings.push(format!("{}: ignored, not valid library metadata ({e}); expected {{\"images\": {{\"PATH\": {{\"title\": …, \"description\": …}}}}}}", path.display()));
            LibraryMeta::default()
        }),
    }
}

/// The image's text and where it came from.
fn metadata_text(root: &Path, im: &IndexedImage, lib: &LibraryMeta, report: &mut IndexReport) -> Option<(String, Vec<String>)> {
    let mut parts = vec![];
    let mut sources = vec![];
    if let Some(t) = lib.images.get(&im.path).and_then(MetaEntry::text) {
        parts.push(t);
        sources.push(crate::default_library::METADATA_FILE.to_string());
    }
    let sidecar = root.join(format!("{}.json", im.path));
    if let Some(text) = read_meta_file(&sidecar, MAX_SIDECAR_BYTES, report) {
        match serde_json::from_slice::<MetaEntry>(&text) {
            Ok(m) => {
                if let Some(t) = m.text() {
                    parts.push(t);
                    sources.push("sidecar".into());
                }
            }
            Err(e) => report.warnings.push(format!("{}: ignored, not a valid sidecar ({e}); expected {{\"title\": …, \"description\": …, \"alt\": …}}", sidecar.display())),
        }
    }
    if let Some(desc) = &im.exif_description {
        parts.push(desc.clone());
        sources.push("exif".into());
    }
    if let Some(words) = file_name_words(&im.path) {
        parts.push(words);
        sources.push("file name".into());
    }
    (!parts.is_empty()).then(|| (parts.join(" "), sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_become_words_unless_they_are_camera_names() {
        assert_eq!(file_name_words("grace_hopper.jpg").as_deref(), Some("grace hopper"));
        assert_eq!(file_name_words("trips/Eiffel-Tower at night.JPG").as_deref(), Some("eiffel tower at night"));
        assert_eq!(file_name_words("IMG_2034.JPG"), None);
        assert_eq!(file_name_words("DSC01234.jpg"), None);
        assert_eq!(file_name_words("PXL_20230101_123456789.jpg"), None);
        assert_eq!(file_name_words("motorcycle_left.png").as_deref(), Some("motorcycle"));
    }

    #[test]
    fn metadata_entries_join_their_fields() {
        let m = MetaEntry { title: Some("Chelsea the cat".into()), description: Some("A tabby cat.".into()), alt: None };
        assert_eq!(m.text().as_deref(), Some("Chelsea the cat. A tabby cat."));
        assert_eq!(MetaEntry::default().text(), None);
    }

    #[test]
    fn search_ranks_by_total_and_skips_images_without_an_opinion() {
        struct Fixed;
        impl Scorer for Fixed {
            fn name(&self) -> &str {
                "fixed"
            }
            fn score(&self, captions: &[&str], lib: &ImageLibrary) -> Result<ScoreMatrix, ScoreError> {
                let values = captions.iter().map(|_| (0..lib.len()).map(|i| (i != 1).then_some(i as f32 * 0.1)).collect()).collect();
                Ok(ScoreMatrix { parts: vec![PartScores { scorer: "fixed".into(), weight: 1.0, values }] })
            }
        }
        let im = |p: &str| IndexedImage { path: p.into(), sha256: String::new(), bytes: 0, width: 1, height: 1, tags: vec![], exif_description: None, metadata_text: None, metadata_sources: vec![], rows: BTreeMap::new() };
        let lib = ImageLibrary::from_parts(Path::new("/lib"), vec![im("a"), im("b"), im("c"), im("d")], BTreeMap::new());
        let hits = lib.search(&Fixed, &["q"], 2).unwrap();
        assert_eq!(hits[0].iter().map(|h| h.path.as_str()).collect::<Vec<_>>(), ["d", "c"]);
        let all = lib.search(&Fixed, &["q"], 10).unwrap();
        assert_eq!(all[0].len(), 3);
    }

    fn temp_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("xcomposer-library-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    fn image(path: &str, rows: &[(&str, u32)]) -> IndexedImage {
        let rows = rows.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        IndexedImage { path: path.into(), sha256: String::new(), bytes: 0, width: 1, height: 1, tags: vec![], exif_description: None, metadata_text: None, metadata_sources: vec![], rows }
    }

    #[test]
    fn metadata_files_that_are_devices_fifos_or_too_large_are_reported_not_read() {
        let root = temp_root("meta");
        let not_regular = "ignored, not a regular file (a folder, FIFO or device); expected a file";
        // library.json → /dev/zero would be read for ever.
        let lib_json = root.join("library.json");
        std::os::unix::fs::symlink("/dev/zero", &lib_json).unwrap();
        let mut report = IndexReport::default();
        assert!(read_library_meta(&root, &mut report).images.is_empty());
        assert_eq!(report.warnings, [format!("{}: {not_regular}", lib_json.display())]);
        // A FIFO next to an image would block the read until someone writes to it.
        let sidecar = root.join("IMG_0001.png.json");
        assert!(std::process::Command::new("mkfifo").arg(&sidecar).status().unwrap().success());
        let text = metadata_text(&root, &image("cat.png", &[]), &LibraryMeta::default(), &mut report);
        assert_eq!(text, Some(("cat".to_string(), vec!["file name".to_string()])));
        let text = metadata_text(&root, &image("IMG_0001.png", &[]), &LibraryMeta::default(), &mut report);
        assert_eq!(text, None);
        assert_eq!(report.warnings[1], format!("{}: {not_regular}", sidecar.display()));
        // A regular library.json over the cap (a sparse file: nothing is written or read).
        std::fs::remove_file(&lib_json).unwrap();
        std::fs::File::create(&lib_json).unwrap().set_len(MAX_LIBRARY_META_BYTES + 1).unwrap();
        assert!(read_library_meta(&root, &mut report).images.is_empty());
        assert_eq!(report.warnings[2], format!("{}: ignored, larger than the limit of 67108864 bytes", lib_json.display()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn index_json_image_paths_and_feature_names_are_not_trusted() {
        let root = temp_root("index");
        let lib = ImageLibrary::from_parts(&root, vec![image("a.png", &[(TAG_FEATURE, 0)])], BTreeMap::from([(TAG_FEATURE.to_string(), (2, vec![1.0, 0.0]))]));
        lib.save().unwrap();
        assert_eq!(ImageLibrary::open(&root, None).unwrap().feature(TAG_FEATURE).unwrap().row(0), Some(&[1.0f32, 0.0][..]));
        let index = root.join(INDEX_DIR).join("index.json");
        let good = std::fs::read_to_string(&index).unwrap();
        let cases = [
            ("\"path\": \"a.png\"", "\"path\": \"/etc/passwd\"", "images[0].path \"/etc/passwd\" is not a relative path inside the library"),
            ("\"path\": \"a.png\"", "\"path\": \"../../outside.png\"", "images[0].path \"../../outside.png\" is not a relative path inside the library"),
            ("\"tags\": 2", "\"../../../etc/x\": 2", "features names \"../../../etc/x\"; expected letters, digits, `-` or `_`"),
            ("\"tags\": 0", "\"/x\": 0", "images[0].rows names feature \"/x\""),
        ];
        for (from, to, want) in cases {
            assert!(good.contains(from), "{good}");
            std::fs::write(&index, good.replace(from, to)).unwrap();
            let e = ImageLibrary::open(&root, None).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: {want}", index.display())) && e.contains("re-index"), "{e}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
