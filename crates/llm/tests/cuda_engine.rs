//! The CUDA engine against burn's decoder on the CPU (plain f32 computation), on random small
//! models: prefill through cuBLAS and through the matrix-vector kernels, chunked prefill, decode
//! steps, beams reordered, the device-side greedy choice and beam candidates, embeddings, the
//! context check.
//! Needs a GPU: built only with `--features cuda`, run on the GPU machine by `scripts/gpu-engine.sh`.
#![cfg(feature = "cuda")]

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xcomposer_llm::config::Arch;
use xcomposer_llm::cuda::{CudaDecoder, CudaError, EngineDtype, EngineOptions, WeightQuant};
use xcomposer_llm::quant::{GgmlType, dequantize, quantize};
use xcomposer_llm::weights::{HostTensor, WeightError, WeightSource};
use xcomposer_llm::beam::top_logprobs_host;
use xcomposer_llm::decoder::KeyStyle;
use xcomposer_llm::generation::{apply_repetition_penalty, argmax};
use xcomposer_llm::random_weights::RandomWeights;
use xcomposer_llm::{Decoder, DecoderConfig};

fn config(hidden: usize, heads: usize, kv_heads: usize, ff: usize) -> DecoderConfig {
    DecoderConfig {
        arch: Arch::InternLm,
        vocab_size: 1003,
        hidden_size: hidden,
        intermediate_size: ff,
        num_layers: 2,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hidden / heads,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        max_position: 64,
        qkv_bias: true,
        o_bias: true,
        tie_word_embeddings: false,
        rope_inv_freq_f16: true,
    }
}

/// ‖a − b‖ / ‖b‖.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "non-finite engine output");
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn burn_rows(t: Tensor<Flex, 3>) -> Vec<Vec<f32>> {
    let [b, _, v] = t.dims();
    let data: Vec<f32> = t.reshape([b, v]).into_data().into_vec().unwrap();
    data.chunks(v).map(<[f32]>::to_vec).collect()
}

/// Runs every comparison for one model shape and engine type, decode steps replayed from CUDA
/// graphs or (`graphs` false) launched kernel by kernel.
fn check(c: DecoderConfig, dtype: EngineDtype, tol: f32, seed: u64, graphs: bool) {
    let src = RandomWeights::for_decoder(&c, seed);
    // f16: the beams' products on the tensor cores and on the CUDA cores.
    let modes: &[bool] = if dtype == EngineDtype::F16 { &[true, false] } else { &[false] };
    for &tensor_cores in modes {
        let opts = EngineOptions { dtype, prefill_chunk: 9, cuda_graphs: graphs, quant: None, tensor_cores };
        check_against(c.clone(), &src, &src, opts, tol, seed);
    }
}

/// [`check`] with the engine loading `engine_src` and the CPU decoder `reference_src`.
fn check_against(c: DecoderConfig, engine_src: &dyn WeightSource, reference_src: &dyn WeightSource, opts: EngineOptions, tol: f32, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dev = Default::default();
    let reference = Decoder::<Flex>::load(c.clone(), reference_src, KeyStyle::HuggingFace, &dev).unwrap();
    let mut engine = CudaDecoder::load(c.clone(), engine_src, KeyStyle::HuggingFace, opts).unwrap();
    let d = c.hidden_size;
    let label = format!("{:?} {:?} hidden {d}, {} heads / {} kv, graphs {}, tensor cores {}", opts.dtype, opts.quant, c.num_heads, c.num_kv_heads, opts.cuda_graphs, opts.tensor_cores);

    // Embeddings.
    let ids = [5u32, 1002, 0, 77];
    let want: Vec<f32> = reference.embed_ids(&ids).into_data().into_vec().unwrap();
    let got = engine.embed_ids(&ids).unwrap();
    assert!(rel(&got, &want) < tol, "{label}: embeddings {}", rel(&got, &want));

    // Prefill: 20 positions = chunks of 9, 9 (cuBLAS) and 2 (matrix-vector kernels); then 5 alone.
    for len in [20usize, 5] {
        let prompt: Vec<f32> = (0..len * d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let mut cache = reference.new_cache();
        let x = Tensor::<Flex, 3>::from_data(TensorData::new(prompt.clone(), [1, len, d]), &dev);
        let want = burn_rows(reference.forward_embeds(x, &mut cache, 1)).remove(0);
        engine.prefill(&prompt).unwrap();
        let got = engine.logits().unwrap().remove(0);
        let e = rel(&got, &want);
        println!("{label}: prefill {len} positions, logits rel. error {e:.2e}");
        assert!(e < tol, "{label}: prefill {len}: {e}");

        // Device greedy choice with a repetition penalty, against the host's.
        let seq = [1u32, argmax(&want), 3, 3];
        let mut row = got.clone();
        apply_repetition_penalty(&mut row, &seq, 1.5);
        assert_eq!(engine.greedy_token(&seq, 1.5).unwrap(), argmax(&row), "{label}: greedy choice");

        // Decode steps, one sequence.
        for tok in [7u32, 900, 7] {
            let want = burn_rows(reference.forward_ids(&[tok], &mut cache, 1)).remove(0);
            engine.step(&[tok]).unwrap();
            let e = rel(&engine.logits().unwrap()[0], &want);
            assert!(e < tol, "{label}: step after {len}: {e}");
        }

        // Beams: one sequence becomes three, steps with a token each, reorders with repeats.
        cache.reorder(&[0, 0, 0]);
        engine.reorder(&[0, 0, 0]).unwrap();
        for (toks, order) in [([4u32, 8, 15], vec![2, 0, 1]), ([16, 23, 42], vec![1, 1, 0]), ([99, 98, 97], vec![0, 1, 2])] {
            let x = reference.embed_ids(&toks).reshape([3, 1, d]);
            let want = burn_rows(reference.forward_embeds(x, &mut cache, 1));
            engine.step(&toks).unwrap();
            let got = engine.logits().unwrap();
            for b in 0..3 {
                let e = rel(&got[b], &want[b]);
                assert!(e < tol, "{label}: beam {b} after {len}: {e}");
            }
            // Beam candidates on the device against the host's, from the same logits.
            let seqs = vec![vec![1u32, toks[0], toks[0], 7], vec![1, toks[1]], vec![1, toks[2], 900]];
            let host = top_logprobs_host(got.clone(), &seqs, 1.5, 6);
            let device = engine.top_logprobs(&seqs, 1.5, 6).unwrap();
            for (b, (h, g)) in host.iter().zip(&device).enumerate() {
                let ids = |v: &[(f32, u32)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
                assert_eq!(ids(g), ids(h), "{label}: beam {b} candidates");
                assert!(h.iter().zip(g).all(|(x, y)| (x.0 - y.0).abs() < 1e-4), "{label}: beam {b} log-probs {h:?} vs {g:?}");
            }
            cache.reorder(&order);
            engine.reorder(&order).unwrap();
        }
    }

    // Ids outside the vocabulary are refused before any kernel indexes a table with them.
    assert!(matches!(engine.greedy_token(&[1, c.vocab_size as u32], 1.0), Err(CudaError::Unsupported(_))));
    assert!(matches!(engine.embed_ids(&[c.vocab_size as u32]), Err(CudaError::Unsupported(_))));

    // A prompt longer than the context is refused, not sliced.
    let too_long = vec![0.5f32; (c.max_position + 1) * d];
    assert!(matches!(engine.prefill(&too_long), Err(CudaError::Context { needed: 65, max: 64 })));
}

#[test]
fn engine_f32_matches_the_cpu_decoder() {
    // Vector loads (hidden and ffn multiples of 8), and the scalar path (196 and 300 are not).
    check(config(256, 4, 4, 688), EngineDtype::F32, 1e-4, 1, true);
    check(config(196, 2, 1, 300), EngineDtype::F32, 1e-4, 2, true);
    check(config(256, 4, 4, 688), EngineDtype::F32, 1e-4, 5, false);
}

#[test]
fn engine_f16_matches_the_cpu_decoder() {
    check(config(256, 4, 4, 688), EngineDtype::F16, 2e-2, 3, true);
    check(config(196, 2, 1, 300), EngineDtype::F16, 2e-2, 4, true);
}

/// Random weights with unit RMSNorm weights (so that folding them into the products before
/// quantizing changes nothing), and, with `quant`, every matrix replaced by its quantized values
/// as ggml dequantizes them: the layers and embeddings to `quant`, the LM head to Q8_0 (what
/// the engine keeps). The CPU decoder on these is the plain computation the quantized engine
/// must match, up to the quantization of its products' inputs to bytes.
struct QuantizedRandom {
    inner: RandomWeights,
    quant: Option<GgmlType>,
}

impl WeightSource for QuantizedRandom {
    fn source_name(&self) -> String {
        "random weights, quantized".into()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
        let mut t = self.inner.load(name)?;
        if name.ends_with("layernorm.weight") {
            t.data.iter_mut().for_each(|x| *x = 1.0);
        }
        let ty = if name.contains("lm_head") { self.quant.map(|_| GgmlType::Q8_0) } else { self.quant };
        if let (Some(ty), 2) = (ty, t.shape.len()) {
            let blocks = quantize(ty, &t.data).unwrap();
            t.data = dequantize(ty, &blocks, t.data.len()).unwrap();
        }
        Ok(t)
    }
}

#[test]
fn quantized_engine_matches_the_cpu_decoder_on_the_dequantized_weights() {
    let c = config(256, 4, 2, 704);
    for (quant, ty) in [(WeightQuant::Q8_0, GgmlType::Q8_0), (WeightQuant::Q4_0, GgmlType::Q4_0)] {
        let engine_src = QuantizedRandom { inner: RandomWeights::for_decoder(&c, 6), quant: None };
        let reference_src = QuantizedRandom { inner: RandomWeights::for_decoder(&c, 6), quant: Some(ty) };
        // Beams' products on the tensor cores (weights expanded to f16, inputs f16) and on the
        // CUDA cores (inputs quantized to bytes); each with and without graphs.
        for (graphs, tensor_cores) in [(true, true), (false, true), (true, false)] {
            let opts = EngineOptions { dtype: EngineDtype::F16, prefill_chunk: 9, cuda_graphs: graphs, quant: Some(quant), tensor_cores };
            check_against(c.clone(), &engine_src, &reference_src, opts, 3e-2, 6);
        }
    }
}

#[test]
fn quantized_weights_are_refused_where_the_engine_cannot_run_them() {
    let src = RandomWeights::for_decoder(&config(256, 4, 4, 688), 7);
    let f32_q4 = EngineOptions { dtype: EngineDtype::F32, quant: Some(WeightQuant::Q4_0), ..Default::default() };
    assert!(matches!(CudaDecoder::load(config(256, 4, 4, 704), &src, KeyStyle::HuggingFace, f32_q4), Err(CudaError::Unsupported(m)) if m.contains("f16")));
    let q8 = EngineOptions { quant: Some(WeightQuant::Q8_0), ..Default::default() };
    let err = CudaDecoder::load(config(256, 4, 4, 688), &src, KeyStyle::HuggingFace, q8).err().expect("688 is not whole blocks");
    assert!(err.to_string().contains("intermediate_size"), "{err}");
}
