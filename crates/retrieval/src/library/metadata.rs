//! An image's own text: the folder's `library.json`, a sidecar `IMAGE.json`, the EXIF
//! description and the words of the file name; each file is read only when it is a regular file
//! within its size limit (others are reported and ignored).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use xcomposer_llm::capped::{Cap, read_within};

use super::{IndexReport, IndexedImage};

/// The name of a library's metadata file.
pub const METADATA_FILE: &str = "library.json";
/// The largest `library.json` read, in bytes.
pub const MAX_LIBRARY_META_BYTES: u64 = 64 << 20;
/// The largest sidecar `IMAGE.json` read, in bytes.
pub const MAX_SIDECAR_BYTES: u64 = 1 << 20;
/// The cap of `library.json` (and `library-urls.json`): [`MAX_LIBRARY_META_BYTES`], raised by
/// `XCOMPOSER_MAX_LIBRARY_JSON_BYTES`.
pub const LIBRARY_META_CAP: Cap = Cap { var: "XCOMPOSER_MAX_LIBRARY_JSON_BYTES", default: MAX_LIBRARY_META_BYTES };
/// The cap of a sidecar `IMAGE.json`: [`MAX_SIDECAR_BYTES`], raised by `XCOMPOSER_MAX_SIDECAR_BYTES`.
pub const SIDECAR_CAP: Cap = Cap { var: "XCOMPOSER_MAX_SIDECAR_BYTES", default: MAX_SIDECAR_BYTES };

/// Text fields of a metadata entry.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct MetaEntry {
    #[serde(default)]
    pub(crate) title: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) alt: Option<String>,
}

impl MetaEntry {
    pub(crate) fn text(&self) -> Option<String> {
        let parts: Vec<String> = [&self.title, &self.description, &self.alt]
            .into_iter()
            .flatten()
            .map(|s| s.trim().trim_end_matches('.').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(". ") + ".")
    }
}

/// A folder's `library.json`: metadata entries by image path.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LibraryMeta {
    #[serde(default)]
    pub(crate) images: BTreeMap<String, MetaEntry>,
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

/// Reads a metadata file: `None` when it is absent; a file that cannot be read (not a regular
/// file, over `cap`, unreadable) is reported in `report.warnings` and ignored.
fn read_meta_file(path: &Path, cap: Cap, report: &mut IndexReport) -> Option<Vec<u8>> {
    match read_within(path, cap) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            report.warnings.push(format!("{}: ignored, {}", path.display(), e.reason()));
            None
        }
    }
}

/// The folder's `library.json`, empty when it is absent or unusable (reported).
pub(crate) fn read_library_meta(root: &Path, report: &mut IndexReport) -> LibraryMeta {
    let path = root.join(METADATA_FILE);
    match read_meta_file(&path, LIBRARY_META_CAP, report) {
        None => LibraryMeta::default(),
        Some(text) => serde_json::from_slice(&text).unwrap_or_else(|e| {
            report.warnings.push(format!("{}: ignored, not valid library metadata ({e}); expected {{\"images\": {{\"PATH\": {{\"title\": …, \"description\": …}}}}}}", path.display()));
            LibraryMeta::default()
        }),
    }
}

/// The image's text and where it came from.
pub(crate) fn metadata_text(root: &Path, im: &IndexedImage, lib: &LibraryMeta, report: &mut IndexReport) -> Option<(String, Vec<String>)> {
    let mut parts = vec![];
    let mut sources = vec![];
    if let Some(t) = lib.images.get(&im.path).and_then(MetaEntry::text) {
        parts.push(t);
        sources.push(METADATA_FILE.to_string());
    }
    let sidecar = root.join(format!("{}.json", im.path));
    if let Some(text) = read_meta_file(&sidecar, SIDECAR_CAP, report) {
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
