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
/// graphs or (`graphs` false) launched kernel by kernel; the decode attention on the warp kernel
/// (`attention_dec{E}`, where the head size has one) and on the tile kernel.
fn check(c: DecoderConfig, dtype: EngineDtype, tol: f32, seed: u64, graphs: bool) {
    let src = RandomWeights::for_decoder(&c, seed);
    // f16: the beams' products on the tensor cores and on the CUDA cores.
    let modes: &[(bool, bool)] = if dtype == EngineDtype::F16 { &[(true, true), (false, true), (true, false)] } else { &[(false, true), (false, false)] };
    for &(tensor_cores, warp_attention) in modes {
        // A cache growing by 8 positions: the 20-position prompt's chunks, the beams' steps and
        // their reorders all grow it.
        let opts = EngineOptions { dtype, prefill_chunk: 9, cuda_graphs: graphs, quant: None, tensor_cores, max_positions: None, cache_step: 8 };
        check_against(c.clone(), &src, &src, opts, warp_attention, tol, seed);
    }
}

/// [`check`] with the engine loading `engine_src` and the CPU decoder `reference_src`.
fn check_against(c: DecoderConfig, engine_src: &dyn WeightSource, reference_src: &dyn WeightSource, opts: EngineOptions, warp_attention: bool, tol: f32, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dev = Default::default();
    let reference = Decoder::<Flex>::load(c.clone(), reference_src, KeyStyle::HuggingFace, &dev).unwrap();
    let mut engine = CudaDecoder::load(c.clone(), engine_src, KeyStyle::HuggingFace, opts).unwrap();
    engine.set_warp_attention(warp_attention);
    let d = c.hidden_size;
    let label = format!(
        "{:?} {:?} hidden {d}, {} heads / {} kv, graphs {}, tensor cores {}, warp attention {warp_attention}",
        opts.dtype, opts.quant, c.num_heads, c.num_kv_heads, opts.cuda_graphs, opts.tensor_cores
    );

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
    // Vector loads (hidden and ffn multiples of 8), and the scalar path (196 and 300 are not);
    // heads of 64, 98 (no warp attention), 128 (query groups of 2) and 32 (and 256 in f16, which
    // f32 runs on the tile kernel).
    check(config(256, 4, 4, 688), EngineDtype::F32, 1e-4, 1, true);
    check(config(196, 2, 1, 300), EngineDtype::F32, 1e-4, 2, true);
    check(config(256, 4, 4, 688), EngineDtype::F32, 1e-4, 5, false);
    check(config(512, 4, 2, 688), EngineDtype::F32, 1e-4, 13, true);
    check(config(256, 8, 8, 688), EngineDtype::F32, 1e-4, 14, false);
}

#[test]
fn engine_f16_matches_the_cpu_decoder() {
    check(config(256, 4, 4, 688), EngineDtype::F16, 2e-2, 3, true);
    check(config(196, 2, 1, 300), EngineDtype::F16, 2e-2, 4, true);
    check(config(512, 4, 2, 688), EngineDtype::F16, 2e-2, 15, true);
    check(config(256, 8, 8, 688), EngineDtype::F16, 2e-2, 16, false);
    check(config(512, 2, 2, 688), EngineDtype::F16, 2e-2, 18, true);
}

/// The greedy choice and beam candidates over a vocabulary of many blocks of their kernels (41
/// of the argmax's 1,024 logits, 11 shares of the candidates' 4,096, the last of each partial):
/// the device's ids against the host's from the same logits after the repetition penalty, step
/// after step, the penalty flags growing; then three beams' candidates.
#[test]
fn the_device_choices_read_every_block_of_a_large_vocabulary() {
    let c = DecoderConfig { vocab_size: 41_000, ..config(64, 2, 2, 128) };
    let src = RandomWeights::for_decoder(&c, 17);
    let mut engine = CudaDecoder::load(c.clone(), &src, KeyStyle::HuggingFace, EngineOptions::default()).unwrap();
    let prompt: Vec<f32> = (0..3 * 64).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    engine.prefill(&prompt).unwrap();
    let mut seq = vec![1u32, 40_999, 20_500];
    for _ in 0..6 {
        let mut row = engine.logits().unwrap().remove(0);
        apply_repetition_penalty(&mut row, &seq, 1.3);
        let want = argmax(&row);
        let got = engine.greedy_token(&seq, 1.3).unwrap();
        assert_eq!(got, want, "greedy choice after {seq:?}");
        seq.push(got);
        engine.step(&[got]).unwrap();
    }
    engine.reorder(&[0, 0, 0]).unwrap();
    engine.step(&[5, 40_998, 12_345]).unwrap();
    let seqs = vec![seq.clone(), vec![1, 40_998, 4_096], vec![1, 12_345, 12_345, 8_191]];
    let host = top_logprobs_host(engine.logits().unwrap(), &seqs, 1.5, 12);
    let device = engine.top_logprobs(&seqs, 1.5, 12).unwrap();
    for (b, (h, g)) in host.iter().zip(&device).enumerate() {
        let ids = |v: &[(f32, u32)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
        assert_eq!(ids(g), ids(h), "beam {b} candidates");
        assert!(h.iter().zip(g).all(|(x, y)| (x.0 - y.0).abs() < 1e-4), "beam {b} log-probs {h:?} vs {g:?}");
    }
}

/// A prompt's attention on the tensor cores (f16, `attention_prefill_mma_{64,128}`) against the
/// CPU decoder position by position: every row's final hidden state, so that a row seeing a key
/// past its own position (the causal mask) shows where the last logits would hide it. Heads of
/// 128 (4 query heads over 2 kv heads) and 64; 200 positions in chunks of 150 and 50: several
/// blocks of 64 query rows, a partial last block, several chunks of 64 keys, and a second pass
/// whose first position (150) is not a multiple of 64. Then decode steps over that cache.
#[test]
fn a_long_prompt_attends_causally_on_the_tensor_cores() {
    for (hidden, heads, kv_heads, seed) in [(512, 4, 2, 11u64), (256, 4, 4, 12)] {
        let c = DecoderConfig { max_position: 256, ..config(hidden, heads, kv_heads, 688) };
        let src = RandomWeights::for_decoder(&c, seed);
        let dev = Default::default();
        let reference = Decoder::<Flex>::load(c.clone(), &src, KeyStyle::HuggingFace, &dev).unwrap();
        let opts = EngineOptions { prefill_chunk: 150, cache_step: 64, ..Default::default() };
        let mut engine = CudaDecoder::load(c.clone(), &src, KeyStyle::HuggingFace, opts).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (len, d) = (200, hidden);
        let prompt: Vec<f32> = (0..len * d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        let mut cache = reference.new_cache();
        let x = Tensor::<Flex, 3>::from_data(TensorData::new(prompt.clone(), [1, len, d]), &dev);
        let want: Vec<f32> = reference.hidden_states(x, &mut cache).into_data().into_vec().unwrap();
        let norm = src.load("model.norm.weight").unwrap().data;
        let got = engine.prefill_states(&prompt).unwrap();
        let mut worst = (0f32, 0);
        for (p, (g, w)) in got.chunks(d).zip(want.chunks(d)).enumerate() {
            // The CPU's states are after the final RMSNorm; the engine's before it.
            let rms = (g.iter().map(|x| x * x).sum::<f32>() / d as f32 + c.rms_norm_eps).sqrt();
            let g: Vec<f32> = g.iter().zip(&norm).map(|(x, n)| x / rms * n).collect();
            let e = rel(&g, w);
            if e > worst.0 {
                worst = (e, p);
            }
        }
        println!("prompt attention, heads of {}: worst position {} rel. error {:.2e}", d / heads, worst.1, worst.0);
        assert!(worst.0 < 1e-2, "heads of {}: position {} rel. error {}", d / heads, worst.1, worst.0);
        let want = burn_rows(reference.forward_ids(&[7], &mut cache, 1)).remove(0);
        engine.step(&[7]).unwrap();
        let e = rel(&engine.logits().unwrap()[0], &want);
        assert!(e < 2e-2, "heads of {}: step after the prompt: {e}", d / heads);
    }
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
            let opts = EngineOptions { dtype: EngineDtype::F16, prefill_chunk: 9, cuda_graphs: graphs, quant: Some(quant), tensor_cores, max_positions: None, cache_step: 8 };
            check_against(c.clone(), &engine_src, &reference_src, opts, true, 3e-2, 6);
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

/// Attention of one (item, head) on the host in f64: `q [nq, hd]`, `k`/`v [nk, hd]`.
fn attention_host(q: &[f64], k: &[f64], v: &[f64], nq: usize, nk: usize, hd: usize) -> Vec<f64> {
    let mut out = vec![0.0; nq * hd];
    for i in 0..nq {
        let s: Vec<f64> = (0..nk).map(|j| (0..hd).map(|e| q[i * hd + e] * k[j * hd + e]).sum::<f64>() / (hd as f64).sqrt()).collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = w.iter().sum();
        for e in 0..hd {
            out[i * hd + e] = (0..nk).map(|j| w[j] * v[j * hd + e]).sum::<f64>() / z;
        }
    }
    out
}

/// The encoder runtime's attention (fused tensor-core kernel and batched products) against the
/// host: queries and keys/values from two products' outputs at column offsets, with biases.
#[test]
fn encoder_attention_matches_the_host() {
    use xcomposer_llm::cuda::encoder::{AttentionKernel, EncoderRuntime, Heads};
    let round = |x: f32| half::f16::from_f32(x).to_f32();
    // (batch, heads, hd, nq, nk): CLIP's 64-wide heads, EVA-ViT-g's 88, cross-attention (the
    // Q-Former's 32 queries on 257 image tokens), key counts that are not whole chunks (one key
    // past 4 chunks, fewer keys than a tile of 16), query blocks with idle warps.
    for (batch, heads, hd, nq, nk) in [(2, 2, 64, 70, 257), (1, 3, 88, 32, 257), (2, 2, 88, 129, 65), (1, 2, 64, 17, 9), (1, 1, 64, 5, 3)] {
        let mut rng = ChaCha8Rng::seed_from_u64((hd * 1000 + nq + nk) as u64);
        let d = heads * hd;
        // q in columns [8, 8 + d) of a d + 16 wide output; k at 0 and v at d of a 2d wide one
        // (16-byte aligned rows: the fused kernel's loads); one case with q at column 5 runs
        // the batched products instead.
        let q_col = if nq == 5 { 5 } else { 8 };
        let (ldq, ldkv) = (d + 16, 2 * d);
        let mut random = |n: usize| (0..n).map(|_| round(rng.random_range(-1.0f32..1.0))).collect::<Vec<f32>>();
        let (yq, ykv, bq, bkv) = (random(batch * nq * ldq), random(batch * nk * ldkv), random(ldq), random(ldkv));
        for dtype in [EngineDtype::F16, EngineDtype::F32] {
            for fused in [AttentionKernel::Fused, AttentionKernel::Batched] {
                let mut rt = EncoderRuntime::new(dtype).unwrap();
                rt.set_attention(fused);
                let (gq, gkv) = (rt.upload_typed(&yq).unwrap(), rt.upload_typed(&ykv).unwrap());
                let (gbq, gbkv) = (rt.upload_f32(&bq).unwrap(), rt.upload_f32(&bkv).unwrap());
                let out = rt.upload_typed(&vec![0.0; batch * nq * d]).unwrap();
                let q = Heads { y: gq.ptr, ld: ldq, col0: q_col, bias: gbq.ptr };
                let (k, v) = (Heads { y: gkv.ptr, ld: ldkv, col0: 0, bias: gbkv.ptr }, Heads { y: gkv.ptr, ld: ldkv, col0: d, bias: gbkv.ptr });
                rt.attention(q, k, v, batch, nq, nk, heads, hd, out.ptr).unwrap();
                let got = rt.download_typed(out.ptr, batch * nq * d).unwrap();
                let mut worst = 0f64;
                for b in 0..batch {
                    for h in 0..heads {
                        let take = |y: &[f32], ld: usize, bias: &[f32], n: usize, col: usize| -> Vec<f64> {
                            (0..n).flat_map(|t| (0..hd).map(move |e| (t, e))).map(|(t, e)| (y[(b * n + t) * ld + col + h * hd + e] + bias[col + h * hd + e]) as f64).collect()
                        };
                        let want = attention_host(&take(&yq, ldq, &bq, nq, q_col), &take(&ykv, ldkv, &bkv, nk, 0), &take(&ykv, ldkv, &bkv, nk, d), nq, nk, hd);
                        for t in 0..nq {
                            for e in 0..hd {
                                worst = worst.max((got[(b * nq + t) * d + h * hd + e] as f64 - want[t * hd + e]).abs());
                            }
                        }
                    }
                }
                let tol = if dtype == EngineDtype::F16 { 4e-3 } else { 1e-5 };
                println!("attention {dtype:?} {fused:?} batch {batch} heads {heads} hd {hd} nq {nq} nk {nk}: max-abs {worst:.2e}");
                assert!(worst < tol, "{dtype:?} {fused:?} hd {hd} nq {nq} nk {nk}: {worst:e} ≥ {tol:e}");
            }
        }
    }
}

#[test]
fn a_shorter_kv_cache_refuses_longer_inputs_and_takes_less_memory() {
    let c = config(256, 4, 4, 704);
    let src = RandomWeights::for_decoder(&c, 8);
    let rows = vec![0.01f32; 13 * 256];
    let mut full = CudaDecoder::load(c.clone(), &src, KeyStyle::HuggingFace, EngineOptions::default()).unwrap();
    full.prefill(&rows).unwrap();
    let short_opts = EngineOptions { max_positions: Some(12), ..Default::default() };
    let mut short = CudaDecoder::load(c.clone(), &src, KeyStyle::HuggingFace, short_opts).unwrap();
    assert_eq!(short.context_len(), 12);
    assert!(matches!(short.prefill(&rows), Err(CudaError::Context { needed: 13, max: 12 })));
    short.prefill(&rows[..12 * 256]).unwrap();
    assert!(short.allocated_bytes() < full.allocated_bytes(), "{} vs {}", short.allocated_bytes(), full.allocated_bytes());
    let zero = EngineOptions { max_positions: Some(0), ..Default::default() };
    assert!(matches!(CudaDecoder::load(c, &src, KeyStyle::HuggingFace, zero), Err(CudaError::Unsupported(_))));
}

#[test]
fn the_kv_cache_grows_with_the_sequences() {
    let c = DecoderConfig { max_position: 600, ..config(256, 4, 4, 704) };
    let src = RandomWeights::for_decoder(&c, 9);
    let rows = vec![0.01f32; 300 * 256];
    let mut e = CudaDecoder::load(c.clone(), &src, KeyStyle::HuggingFace, EngineOptions::default()).unwrap();
    e.prefill(&rows[..13 * 256]).unwrap();
    assert_eq!(e.cache_positions(), 256);
    let small = e.allocated_bytes();
    e.prefill(&rows).unwrap();
    assert_eq!(e.cache_positions(), 512);
    assert!(e.allocated_bytes() > small, "{} vs {small}", e.allocated_bytes());
    // Never past the context, however the step falls.
    e.prefill(&rows[..(300 - 1) * 256]).unwrap();
    for t in 0..(600 - 299) {
        e.step(&[t as u32]).unwrap();
    }
    assert_eq!((e.len(), e.cache_positions()), (600, 600));
    assert!(matches!(e.step(&[1]), Err(CudaError::Context { needed: 601, max: 600 })));
    let once = EngineOptions { cache_step: 600, ..Default::default() };
    let mut whole = CudaDecoder::load(c, &src, KeyStyle::HuggingFace, once).unwrap();
    whole.prefill(&rows[..13 * 256]).unwrap();
    assert_eq!(whole.cache_positions(), 600);
}

/// The encoder runtime's bias + activation and residual add (8 f16 values a thread where the
/// width allows, one value a thread otherwise) against the host.
#[test]
fn encoder_bias_activation_and_residual_add_match_the_host() {
    use xcomposer_llm::cuda::encoder::{Activation, EncoderRuntime};
    let erf_gelu = |x: f64| 0.5 * x * (1.0 + libm_erf(x / std::f64::consts::SQRT_2));
    for n in [24, 20] {
        let rows = 3;
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let mut random = |k: usize| (0..k).map(|_| half::f16::from_f32(rng.random_range(-3.0f32..3.0)).to_f32()).collect::<Vec<f32>>();
        let (y, bias, h) = (random(rows * n), random(n), random(rows * n));
        let rt = EncoderRuntime::new(EngineDtype::F16).unwrap();
        for (act, f) in [(Activation::Gelu, &erf_gelu as &dyn Fn(f64) -> f64), (Activation::QuickGelu, &|x: f64| x / (1.0 + (-1.702 * x).exp()))] {
            let (gy, gb) = (rt.upload_typed(&y).unwrap(), rt.upload_f32(&bias).unwrap());
            let out = rt.upload_typed(&vec![0.0; rows * n]).unwrap();
            rt.bias_act(gy.ptr, gb.ptr, out.ptr, rows, n, act).unwrap();
            let got = rt.download_typed(out.ptr, rows * n).unwrap();
            let worst = (0..rows * n).map(|i| (got[i] as f64 - f(y[i] as f64 + bias[i % n] as f64)).abs()).fold(0.0, f64::max);
            println!("bias_act {act:?} n {n}: max-abs {worst:.2e}");
            assert!(worst < 8e-3, "bias_act {act:?} n {n}: {worst:e}");
        }
        let (gy, gb, gh) = (rt.upload_typed(&y).unwrap(), rt.upload_f32(&bias).unwrap(), rt.upload_f32(&h).unwrap());
        rt.residual_add(gh.ptr, gy.ptr, gb.ptr, rows, n).unwrap();
        let got = rt.download_f32(gh.ptr, rows * n).unwrap();
        let worst = (0..rows * n).map(|i| (got[i] - (h[i] + y[i] + bias[i % n])).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "residual_add n {n}: {worst:e}");
    }
}

/// The encoder runtime's LayerNorm and residual add + LayerNorm (a warp per row in registers
/// where the width allows, a block per row otherwise) against the host: widths of whole and
/// partial lanes' chunks, rows read at a stride, the f32 copy written back into the stream.
#[test]
fn encoder_layer_norms_match_the_host() {
    use xcomposer_llm::cuda::encoder::{EncoderRuntime, HostNorm};
    for (dim, rows) in [(1024, 5), (1408, 3), (768, 17), (20, 2), (2056, 2)] {
        let mut rng = ChaCha8Rng::seed_from_u64(dim as u64);
        let mut random = |k: usize, lo: f32, hi: f32| (0..k).map(|_| half::f16::from_f32(rng.random_range(lo..hi)).to_f32()).collect::<Vec<f32>>();
        let (h, y, yb) = (random(rows * dim * 2, -4.0, 6.0), random(rows * dim, -1.0, 1.0), random(dim, -0.5, 0.5));
        let (w, b) = (random(dim, 0.5, 1.5), random(dim, -0.3, 0.3));
        let host_norm = |x: &[f64]| -> Vec<f64> {
            let mean = x.iter().sum::<f64>() / dim as f64;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (var + 1e-5).sqrt();
            (0..dim).map(|i| (x[i] - mean) * inv * w[i] as f64 + b[i] as f64).collect()
        };
        let rt = EncoderRuntime::new(EngineDtype::F16).unwrap();
        let norm = rt.norm(HostNorm { weight: w.clone(), bias: b.clone(), eps: 1e-5 }).unwrap();
        // LayerNorm of every other row of a [2·rows, dim] stream (stride 2·dim).
        let gh = rt.upload_f32(&h).unwrap();
        let out = rt.upload_typed(&vec![0.0; rows * dim]).unwrap();
        rt.layer_norm(gh.ptr, 2 * dim, &norm, out.ptr, 0, rows).unwrap();
        let got = rt.download_typed(out.ptr, rows * dim).unwrap();
        let mut worst = 0f64;
        for r in 0..rows {
            let want = host_norm(&h[2 * r * dim..(2 * r + 1) * dim].iter().map(|&v| v as f64).collect::<Vec<_>>());
            worst = (0..dim).map(|i| (got[r * dim + i] as f64 - want[i]).abs()).fold(worst, f64::max);
        }
        println!("layer_norm dim {dim}: max-abs {worst:.2e}");
        assert!(worst < 8e-3, "layer_norm dim {dim}: {worst:e}");
        // h += y + bias, then LN into out (f16) and back into h (f32); then into y itself.
        let gyb = rt.upload_f32(&yb).unwrap();
        for in_place in [false, true] {
            let (gh, gy) = (rt.upload_f32(&h[..rows * dim]).unwrap(), rt.upload_typed(&y).unwrap());
            let (dst, dst_f) = if in_place { (gy.ptr, 0) } else { (out.ptr, gh.ptr) };
            rt.residual_add_norm(gh.ptr, gy.ptr, gyb.ptr, rows, &norm, dst, dst_f).unwrap();
            let got = rt.download_typed(dst, rows * dim).unwrap();
            let got_h = rt.download_f32(gh.ptr, rows * dim).unwrap();
            let (mut worst, mut worst_h) = (0f64, 0f64);
            for r in 0..rows {
                let x: Vec<f64> = (0..dim).map(|i| h[r * dim + i] as f64 + y[r * dim + i] as f64 + yb[i] as f64).collect();
                // h holds the normalised rows in f32 when they were asked for, the sums otherwise.
                let (want, want_h) = (host_norm(&x), if in_place { x.clone() } else { host_norm(&x) });
                worst = (0..dim).map(|i| (got[r * dim + i] as f64 - want[i]).abs()).fold(worst, f64::max);
                worst_h = (0..dim).map(|i| (got_h[r * dim + i] as f64 - want_h[i]).abs()).fold(worst_h, f64::max);
            }
            println!("residual_add_norm dim {dim} in place {in_place}: max-abs f16 {worst:.2e}, stream {worst_h:.2e}");
            assert!(worst < 8e-3 && worst_h < 1e-4, "residual_add_norm dim {dim} in place {in_place}: {worst:e} / {worst_h:e}");
        }
    }
}

/// erf by Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7), enough for a test of f16 outputs.
fn libm_erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496735) * t + 0.254829592) * t * (-x * x).exp();
    y.copysign(x)
}
