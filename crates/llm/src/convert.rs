//! Writing a GGUF model out as a Hugging Face model folder (`config.json`, f32 safetensors,
//! sharded with an index past a size, `tokenizer.json`, `tokenizer_config.json`), with q/k rows
//! back in Hugging Face's rotate-half order. Used to check the folder loader against the same
//! reference numbers as the GGUF loader, and by users who want a folder other tools read.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, tensor::TensorView};

use crate::config::{Arch, DecoderConfig};
use crate::decoder::{KEY_MAP, KeyStyle, unpermute_rows};
use crate::gguf::Gguf;
use crate::model::LoadError;
use crate::readers::path_io::AtPath;
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufWeights, HostTensor, WeightSource};

/// Converts `gguf_path` into a Hugging Face folder at `out` (which must not exist), splitting
/// the weights into shards of at most `max_shard_bytes`.
pub fn gguf_to_hf(gguf_path: &Path, out: &Path, max_shard_bytes: usize) -> Result<(), LoadError> {
    if out.exists() {
        return Err(LoadError::File { path: out.into(), reason: "already exists; choose a new folder".into() });
    }
    let gguf = Gguf::open(gguf_path).map_err(|source| LoadError::Gguf { path: gguf_path.into(), source })?;
    let c = DecoderConfig::from_gguf(&gguf).map_err(|e| e.in_file(gguf_path))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|source| LoadError::Tokenizer { path: gguf_path.into(), source })?;
    std::fs::create_dir_all(out).at(out)?;

    let model_type = match c.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::InternLm => "internlm",
    };
    let config = serde_json::json!({
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "torch_dtype": "float32",
    });
    let write = |name: &str, v: &serde_json::Value| {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).expect("json")).at(&p)
    };
    write("config.json", &config)?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut tok_config = serde_json::json!({
        "bos_token": token(tokenizer.bos_id),
        "eos_token": token(tokenizer.eos_id),
        "add_bos_token": tokenizer.add_bos,
    });
    if let Some(t) = gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        tok_config["chat_template"] = t.into();
    }
    write("tokenizer_config.json", &tok_config)?;
    let tok_path = out.join("tokenizer.json");
    tokenizer.save_json(&tok_path).map_err(|source| LoadError::Tokenizer { path: tok_path.clone(), source })?;

    // Every tensor the decoder reads, under its HF name.
    let src = GgufWeights { gguf: &gguf, path: gguf_path.into() };
    let style = KeyStyle::Gguf { permuted_qk: c.arch == Arch::Llama };
    let mut entries: Vec<(&str, usize)> = Vec::new();
    for (hf, _) in KEY_MAP {
        if hf.contains("{}") {
            entries.extend((0..c.num_layers).map(|l| (*hf, l)));
        } else {
            entries.push((hf, 0));
        }
    }
    let mut shard: Vec<(String, HostTensor)> = Vec::new();
    let mut shard_bytes = 0;
    let mut shards: Vec<Vec<(String, HostTensor)>> = Vec::new();
    for (template, layer) in entries {
        let name = template.replace("{}", &layer.to_string());
        let gguf_name = style.name(template, layer);
        if !src.contains(&gguf_name) {
            continue; // optional tensors: biases, an untied head
        }
        let mut t = src.load(&gguf_name)?;
        if c.arch == Arch::Llama {
            if name.ends_with("q_proj.weight") {
                t = unpermute_rows(&t, c.num_heads);
            } else if name.ends_with("k_proj.weight") {
                t = unpermute_rows(&t, c.num_kv_heads);
            }
        }
        let bytes = t.data.len() * 4;
        if shard_bytes + bytes > max_shard_bytes && !shard.is_empty() {
            shards.push(std::mem::take(&mut shard));
            shard_bytes = 0;
        }
        shard_bytes += bytes;
        shard.push((name, t));
    }
    shards.push(shard);

    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = shard
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = raw
            .iter()
            .map(|(name, shape, bytes)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("consistent view")))
            .collect();
        let p = out.join(&file);
        safetensors::serialize_to_file(views, None, &p).map_err(|e| LoadError::File { path: p.clone(), reason: e.to_string() })?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    if n > 1 {
        write("model.safetensors.index.json", &serde_json::json!({ "metadata": {}, "weight_map": weight_map }))?;
    }
    Ok(())
}
