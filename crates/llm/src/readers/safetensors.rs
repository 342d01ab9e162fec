//! Hugging Face safetensors: one `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists (see [`super::shard_index`]). The headers are parsed by
//! the `safetensors` crate, which checks every tensor's byte range against the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::WeightError;
use crate::weights::{HostTensor, WeightSource};

/// Hugging Face safetensors: one `model.safetensors`, or shards listed by an index file.
pub struct SafetensorsWeights {
    dir: PathBuf,
    /// Tensor name → shard file.
    map: BTreeMap<String, PathBuf>,
    shards: BTreeMap<PathBuf, memmap2::Mmap>,
}

impl SafetensorsWeights {
    /// Opens the safetensors weights in a model folder.
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let file_err = |path: &Path, reason: String| WeightError::File { path: path.to_path_buf(), reason };
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            super::shard_index::ShardIndex::read(&index)?.shards
        } else if single.exists() {
            vec![single]
        } else {
            return Err(file_err(dir, "no model.safetensors or model.safetensors.index.json".into()));
        };
        let mut map = BTreeMap::new();
        let mut shards = BTreeMap::new();
        for path in files {
            let file = super::capped::open_regular(&path)?;
            // SAFETY: read-only map of a file we do not modify.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_err(&path, e.to_string()))?;
            let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| file_err(&path, e.to_string()))?;
            for name in meta.tensors().keys() {
                map.insert(name.clone(), path.clone());
            }
            shards.insert(path, mmap);
        }
        Ok(SafetensorsWeights { dir: dir.to_path_buf(), map, shards })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }
}

impl WeightSource for SafetensorsWeights {
    fn source_name(&self) -> String {
        self.dir.display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
        let path = self
            .map
            .get(name)
            .ok_or_else(|| WeightError::Missing { source_name: self.source_name(), name: name.into() })?;
        let st = SafeTensors::deserialize(&self.shards[path])
            .map_err(|e| WeightError::File { path: path.clone(), reason: e.to_string() })?;
        let view = st.tensor(name).map_err(|e| WeightError::File { path: path.clone(), reason: e.to_string() })?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(WeightError::Dtype { source_name: path.display().to_string(), name: name.into(), dtype: format!("{other:?}") });
            }
        };
        Ok(HostTensor { data, shape: view.shape().to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file holding one f32 tensor `w` = [1.5].
    fn one_tensor() -> Vec<u8> {
        let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header);
        out.extend_from_slice(&1.5f32.to_le_bytes());
        out
    }

    #[test]
    fn an_index_naming_a_shard_outside_its_folder_is_refused() {
        let root = std::env::temp_dir().join(format!("xcomposer-st-index-{}", std::process::id()));
        let dir = root.join("model");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.join("outside.safetensors"), one_tensor()).unwrap();
        std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {"w": "../outside.safetensors"}}"#).unwrap();
        let e = SafetensorsWeights::open(&dir).err().expect("the shard outside the folder was read").to_string();
        assert!(e.contains("weight_map.w") && e.contains("../outside.safetensors"), "{e}");
        std::fs::write(dir.join("inside.safetensors"), one_tensor()).unwrap();
        std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {"w": "inside.safetensors"}}"#).unwrap();
        assert_eq!(SafetensorsWeights::open(&dir).unwrap().load("w").unwrap().data, [1.5]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_shard_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = std::env::temp_dir().join(format!("xcomposer-st-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shard = dir.join("model.safetensors");
        assert!(std::process::Command::new("mkfifo").arg(&shard).status().is_ok_and(|s| s.success()), "mkfifo failed");
        // Before the check, opening it blocked until something wrote to it.
        let e = SafetensorsWeights::open(&dir).err().expect("a FIFO was opened as a shard").to_string();
        assert_eq!(e, format!("{}: not a regular file (a folder, FIFO or device); expected a file", shard.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
