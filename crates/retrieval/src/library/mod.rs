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
//!
//! The module's parts, by job: [`store`] (the index on disk: open, check, save), [`walk`]
//! (finding the images), [`metadata`] (their text), [`indexer`] (building the index) and
//! [`features`] (the names of the stored features and the scores made from them). The scorers
//! build on this module and it on none of them: `ImageLibrary::search` is defined in
//! [`crate::scorer`], `ImageLibrary::index_clip` in [`crate::clip_scorer`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xcomposer_llm::readers::WeightError;
use xcomposer_llm::readers::path_io::PathIoError;
use xcomposer_vision::Tag;

use crate::embedder::EmbedderError;

pub mod features;
pub mod indexer;
pub mod metadata;
pub mod store;
pub mod walk;

pub use features::{Score, ScoreError};
pub use indexer::{IndexReport, Indexer, Progress};
pub use metadata::{MAX_LIBRARY_META_BYTES, MAX_SIDECAR_BYTES, file_name_words};
pub use store::MAX_INDEX_BYTES;

/// The on-disk format version this build reads and writes.
pub const INDEX_VERSION: u32 = 1;
/// The index folder's name inside a library.
pub const INDEX_DIR: &str = ".xcomposer";
/// How many top labels an image keeps (and ConSE averages over).
pub const TOP_TAGS: usize = 5;

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

impl From<PathIoError> for LibraryError {
    fn from(e: PathIoError) -> Self {
        LibraryError::Io { path: e.path, reason: e.error.to_string() }
    }
}

impl From<WeightError> for LibraryError {
    fn from(e: WeightError) -> Self {
        LibraryError::Io { path: e.path().map(Path::to_path_buf).unwrap_or_default(), reason: e.reason() }
    }
}

/// The reason of a capped read's error, without the path (the caller's message names it).
pub(crate) fn io_reason(e: WeightError) -> String {
    e.reason()
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
    pub(crate) data: Vec<f32>,
    pub(crate) row_of: Vec<Option<u32>>,
}

impl FeatureMatrix {
    /// The feature row of image `i`, if it has one.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let r = self.row_of.get(i).copied().flatten()? as usize;
        self.data.get(r * self.dim..(r + 1) * self.dim)
    }
}

/// A library folder with its loaded index.
#[derive(Debug, Clone)]
pub struct ImageLibrary {
    pub(crate) root: PathBuf,
    pub(crate) index_dir: PathBuf,
    pub(crate) models: ModelIds,
    pub(crate) images: Vec<IndexedImage>,
    pub(crate) features: BTreeMap<String, FeatureMatrix>,
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

/// The default index folder of a library.
pub fn default_index_dir(root: &Path) -> PathBuf {
    root.join(INDEX_DIR)
}

impl ImageLibrary {
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
}

#[cfg(test)]
mod tests {
    use super::features::TAG_FEATURE;
    use super::metadata::{LibraryMeta, MetaEntry, metadata_text, read_library_meta};
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
        assert_eq!(report.warnings[2], format!("{}: ignored, larger than the limit of 67108864 bytes (raise it with the environment variable XCOMPOSER_MAX_LIBRARY_JSON_BYTES)", lib_json.display()));
        // A sidecar over its cap, likewise.
        std::fs::remove_file(&sidecar).unwrap();
        std::fs::File::create(&sidecar).unwrap().set_len(MAX_SIDECAR_BYTES + 1).unwrap();
        assert_eq!(metadata_text(&root, &image("IMG_0001.png", &[]), &LibraryMeta::default(), &mut report), None);
        assert_eq!(report.warnings[3], format!("{}: ignored, larger than the limit of 1048576 bytes (raise it with the environment variable XCOMPOSER_MAX_SIDECAR_BYTES)", sidecar.display()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_index_json_over_its_cap_is_refused_naming_its_variable() {
        let root = temp_root("index-cap");
        ImageLibrary::from_parts(&root, vec![], BTreeMap::new()).save().unwrap();
        let index = root.join(INDEX_DIR).join("index.json");
        // A sparse file one byte over the cap: nothing is written or read.
        std::fs::OpenOptions::new().write(true).open(&index).unwrap().set_len(MAX_INDEX_BYTES + 1).unwrap();
        let e = ImageLibrary::open(&root, None).unwrap_err().to_string();
        assert!(e.contains(&format!("{}: larger than the limit of 1073741824 bytes (raise it with the environment variable XCOMPOSER_MAX_INDEX_JSON_BYTES)", index.display())), "{e}");
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
