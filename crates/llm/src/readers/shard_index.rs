//! Shard indexes (`model.safetensors.index.json`, `pytorch_model.bin.index.json`): the
//! `weight_map` from tensor names to the shard files of a sharded checkpoint. Every shard must be
//! a plain file name in the index's own folder, so an index cannot point the loader at another
//! folder, a device or a FIFO elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::WeightError;

/// The largest index file read (a 70-billion-parameter model's is about 100 KiB).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// The cap of index files: [`MAX_INDEX_BYTES`], raised by `XCOMPOSER_MAX_SHARD_INDEX_BYTES`.
pub const INDEX_CAP: super::capped::Cap = super::capped::Cap { var: "XCOMPOSER_MAX_SHARD_INDEX_BYTES", default: MAX_INDEX_BYTES };

/// A parsed shard index.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    /// Tensor name → shard file name, as the index lists them.
    pub weight_map: BTreeMap<String, String>,
    /// The shard files (in the index's folder), sorted, each once.
    pub shards: Vec<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Raw {
    weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Reads the index at `path`: a regular file within [`INDEX_CAP`] whose
    /// `weight_map` maps names to plain file names (no folder, not hidden).
    pub fn read(path: &Path) -> Result<Self, WeightError> {
        let err = |reason: String| WeightError::File { path: path.to_path_buf(), reason };
        let bytes = super::capped::read_within(path, INDEX_CAP)?;
        let raw: Raw = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut shards = Vec::new();
        for (tensor, file) in &raw.weight_map {
            if !is_plain_file_name(file) {
                return Err(err(format!("weight_map.{tensor}: shard {file:?} is not a plain file name in the index's folder")));
            }
            shards.push(dir.join(file));
        }
        shards.sort();
        shards.dedup();
        Ok(ShardIndex { weight_map: raw.weight_map, shards })
    }
}

/// Whether `name` names a file directly inside a folder: one normal path component, not hidden.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(p)), None) if p == name) && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(dir: &Path, shard: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, format!(r#"{{"weight_map": {{"w": "{shard}"}}}}"#)).unwrap();
        path
    }

    #[test]
    fn shards_outside_the_folder_are_refused_naming_the_entry() {
        let dir = std::env::temp_dir().join(format!("xcomposer-shard-index-{}", std::process::id()));
        for bad in ["../model.safetensors", "/dev/zero", "a/b.safetensors", ".hidden", ""] {
            let e = ShardIndex::read(&index_with(&dir, bad)).unwrap_err().to_string();
            assert!(e.contains("weight_map.w") && e.contains("not a plain file name"), "{bad}: {e}");
        }
        let ok = ShardIndex::read(&index_with(&dir, "model-1.safetensors")).unwrap();
        assert_eq!(ok.shards, [dir.join("model-1.safetensors")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_index_over_the_cap_is_refused_naming_its_variable() {
        let dir = std::env::temp_dir().join(format!("xcomposer-shard-index-cap-{}", std::process::id()));
        let path = index_with(&dir, "model-1.safetensors");
        // A sparse file one byte over the cap: nothing is written or read.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(MAX_INDEX_BYTES + 1).unwrap();
        let e = ShardIndex::read(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: larger than the limit of 67108864 bytes (raise it with the environment variable XCOMPOSER_MAX_SHARD_INDEX_BYTES)", path.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_index_that_is_not_a_regular_file_is_refused_unread() {
        let e = ShardIndex::read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.starts_with("/dev/zero: not a regular file"), "{e}");
    }
}
