//! [`RandomWeights`]: a decoder checkpoint of any shape made of seeded random values, for tests
//! and benchmarks of the engines (no file: each tensor is generated when it is read).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::DecoderConfig;
use crate::weights::{HostTensor, WeightError, WeightSource};

/// Values per independently seeded block (so generation runs in parallel and reproducibly).
const BLOCK: usize = 1 << 16;

/// Every tensor of a llama-family decoder under its Hugging Face name, uniform random values:
/// norms `1 ± 0.2`, biases `± 0.1`, embeddings `± 1`, matrices `± 1.5/√in` (activations stay
/// of order one through the layers).
pub struct RandomWeights {
    shapes: BTreeMap<String, Vec<usize>>,
    seed: u64,
}

impl RandomWeights {
    /// The tensors `config` needs, seeded by `seed`.
    pub fn for_decoder(c: &DecoderConfig, seed: u64) -> Self {
        let (d, hd, ff) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q, kv) = (c.num_heads * hd, c.num_kv_heads * hd);
        let mut shapes = BTreeMap::new();
        shapes.insert("model.embed_tokens.weight".to_string(), vec![c.vocab_size, d]);
        if !c.tie_word_embeddings {
            shapes.insert("lm_head.weight".into(), vec![c.vocab_size, d]);
        }
        shapes.insert("model.norm.weight".into(), vec![d]);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            for (n, rows, cols) in [("self_attn.q_proj", q, d), ("self_attn.k_proj", kv, d), ("self_attn.v_proj", kv, d), ("self_attn.o_proj", d, q), ("mlp.gate_proj", ff, d), ("mlp.up_proj", ff, d), ("mlp.down_proj", d, ff)] {
                shapes.insert(format!("{p}.{n}.weight"), vec![rows, cols]);
            }
            if c.qkv_bias {
                for (n, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                    shapes.insert(format!("{p}.self_attn.{n}.bias"), vec![rows]);
                }
            }
            if c.o_bias {
                shapes.insert(format!("{p}.self_attn.o_proj.bias"), vec![d]);
            }
            shapes.insert(format!("{p}.input_layernorm.weight"), vec![d]);
            shapes.insert(format!("{p}.post_attention_layernorm.weight"), vec![d]);
        }
        RandomWeights { shapes, seed }
    }
}

/// `(offset, half-width)` of a tensor's uniform distribution, from its name and shape.
fn spread(name: &str, shape: &[usize]) -> (f32, f32) {
    if name.ends_with("norm.weight") {
        (1.0, 0.2)
    } else if name.ends_with(".bias") {
        (0.0, 0.1)
    } else if name.contains("embed_tokens") {
        (0.0, 1.0)
    } else {
        (0.0, 1.5 / (shape[1] as f32).sqrt())
    }
}

impl WeightSource for RandomWeights {
    fn source_name(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }

    fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
        let shape = self.shapes.get(name).ok_or_else(|| WeightError::Missing { source_name: self.source_name(), name: name.into() })?;
        let (base, half) = spread(name, shape);
        let n: usize = shape.iter().product();
        // The name's bytes folded into the seed, so every tensor differs.
        let name_seed = name.bytes().fold(self.seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut data = vec![0f32; n];
        data.par_chunks_mut(BLOCK).enumerate().for_each(|(i, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(name_seed.wrapping_add(i as u64));
            for x in chunk {
                *x = base + half * (rng.random::<f32>() * 2.0 - 1.0);
            }
        });
        Ok(HostTensor { data, shape: shape.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    #[test]
    fn tensors_are_shaped_by_the_config_and_reproducible() {
        let c = DecoderConfig {
            arch: Arch::InternLm,
            vocab_size: 50,
            hidden_size: 8,
            intermediate_size: 12,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            max_position: 16,
            qkv_bias: true,
            o_bias: false,
            tie_word_embeddings: true,
            rope_inv_freq_f16: false,
        };
        let w = RandomWeights::for_decoder(&c, 7);
        assert_eq!(w.load("model.layers.1.self_attn.k_proj.weight").unwrap().shape, vec![4, 8]);
        assert!(w.contains("model.layers.0.self_attn.v_proj.bias"));
        assert!(!w.contains("model.layers.0.self_attn.o_proj.bias"));
        assert!(!w.contains("lm_head.weight"));
        let norm = w.load("model.norm.weight").unwrap().data;
        assert!(norm.iter().all(|x| (0.8..=1.2).contains(x)));
        let a = w.load("model.layers.0.mlp.up_proj.weight").unwrap().data;
        assert_eq!(a, RandomWeights::for_decoder(&c, 7).load("model.layers.0.mlp.up_proj.weight").unwrap().data);
        assert_ne!(a, w.load("model.layers.1.mlp.up_proj.weight").unwrap().data);
        assert_ne!(a, RandomWeights::for_decoder(&c, 8).load("model.layers.0.mlp.up_proj.weight").unwrap().data);
        assert!(matches!(w.load("nope"), Err(WeightError::Missing { .. })));
    }
}
