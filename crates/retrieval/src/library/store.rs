//! The index on disk: `index.json` and one `features-NAME.f32` per feature in the index folder,
//! read within limits and not trusted (paths and feature names are checked), written through
//! renames.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xcomposer_llm::capped::{Cap, read_capped, read_within};
use xcomposer_llm::readers::WeightError;
use xcomposer_llm::readers::path_io::AtPath;

use super::{FeatureMatrix, INDEX_VERSION, ImageLibrary, IndexedImage, LibraryError, ModelIds, default_index_dir};

const FORMAT: &str = "xcomposer-image-index";
/// The largest `index.json` read, in bytes.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;
/// The cap of `index.json`: [`MAX_INDEX_BYTES`], raised by `XCOMPOSER_MAX_INDEX_JSON_BYTES`.
pub const INDEX_CAP: Cap = Cap { var: "XCOMPOSER_MAX_INDEX_JSON_BYTES", default: MAX_INDEX_BYTES };

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    format: String,
    version: u32,
    models: ModelIds,
    /// Feature name → row length.
    features: BTreeMap<String, usize>,
    images: Vec<IndexedImage>,
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
        let text = read_within(&file, INDEX_CAP)?;
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
                Err(WeightError::TooLarge { .. }) => return Err(mismatch()),
                r => r?,
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

    /// Writes the index (feature files first, then `index.json`, each through a rename).
    pub fn save(&self) -> Result<(), LibraryError> {
        std::fs::create_dir_all(&self.index_dir).at(&self.index_dir)?;
        let write = |name: &str, bytes: &[u8]| -> Result<(), LibraryError> {
            let dst = self.index_dir.join(name);
            Ok(xcomposer_llm::fetch::write_atomic(&dst, bytes).at(&dst)?)
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
