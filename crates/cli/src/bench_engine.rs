//! `xcomposer bench engine`: the fused CUDA engine alone at a decoder shape, on random weights
//! made in memory (no checkpoint to write or read): prefill, greedy decode, beam steps, and
//! where a decode step's time goes, part by part, with the bandwidth each projection reaches;
//! beside it in the same run, PyTorch eager (`--torch`, the decoder part of
//! `scripts/bench_xcomposer_torch.py`) and llama.cpp (`--llama-bench BIN --gguf FILE…`).

use anyhow::{Result, bail};

use crate::backend::{DtypeArg, QuantArg};
use crate::bench::{LlamaAnchor, TorchAnchor};
#[cfg(feature = "cuda")]
use crate::bench::LlamaRows;

/// Arguments of `xcomposer bench engine`.
#[derive(clap::Args)]
pub struct EngineBenchArgs {
    /// The decoder shape.
    #[arg(long, value_enum, default_value_t = Shape::Internlm7b)]
    shape: Shape,
    /// Weight and cache type.
    #[arg(long, value_enum, default_value_t = DtypeArg::F16)]
    dtype: DtypeArg,
    /// Prompt positions before decoding.
    #[arg(long, default_value_t = 161)]
    prompt: usize,
    /// New tokens per decode measurement.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Beams of the beam-step measurement.
    #[arg(long, default_value_t = 5)]
    beams: usize,
    /// Also measure the engine with its weights quantized to these formats (a row each, beside
    /// the llama.cpp row of the same format when one is given), e.g. `--quant q4_0,q8_0`.
    #[arg(long, value_enum, value_delimiter = ',')]
    quant: Vec<QuantArg>,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Positions the KV cache holds per sequence (default: the shape's context); the memory
    /// columns change with it, the speeds do not.
    #[arg(long, value_name = "POSITIONS")]
    max_context: Option<usize>,
    /// The PyTorch anchor.
    #[command(flatten)]
    anchor: TorchAnchor,
    /// The llama.cpp anchor.
    #[command(flatten)]
    llama: LlamaAnchor,
}

/// The engine's speeds, tokens/s (beam: per beam).
#[cfg(feature = "cuda")]
pub(crate) struct Ours {
    /// Prefill of the prompt.
    pub pp: f64,
    /// Prefill of 512 positions.
    pub pp512: f64,
    /// Greedy decode (each step a replayed CUDA graph).
    pub tg: f64,
    /// Greedy decode with every kernel launched from the host (graphs off).
    pub tg_launched: f64,
    /// Beam steps, per beam.
    pub beam: f64,
    /// Beam steps, per beam, with the beams' products on the CUDA cores (tensor cores off).
    pub beam_cuda_cores: f64,
    /// Greedy decode with the decode attention on the tile kernel (`attention`) instead of the
    /// warp kernel (`attention_dec{E}`).
    pub tg_tile: f64,
    /// Beam steps, per beam, with the decode attention on the tile kernel.
    pub beam_tile: f64,
}

/// One engine configuration's measurements.
#[cfg(feature = "cuda")]
struct Variant {
    /// `f16`, `f16 + Q4_0`, ….
    label: String,
    quant: Option<QuantArg>,
    speeds: Ours,
    /// Weights on the device; the engine's allocations (weights, one sequence's KV cache as
    /// grown by the prompt and the new tokens, scratch); all device memory in use then (adds
    /// the CUDA context and cuBLAS); the same with the cache at the full context, GB.
    weights_gb: f64,
    engine_gb: f64,
    in_use_gb: f64,
    full_in_use_gb: f64,
    /// Positions the KV cache held for the first three.
    cache_positions: usize,
    profiles: Vec<String>,
    profiled_at: usize,
}

/// Decoder shapes to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// InternLM-7B, XComposer's decoder: 32 layers, width 4096, 32 heads, FFN 11008, vocab 103168, q/k/v/o biases.
    Internlm7b,
    /// SmolLM2-135M, the default text model: 30 layers, width 576, 9 heads over 3 kv heads, FFN
    /// 1536, vocab 49152, tied embeddings, no biases.
    Smollm2,
}

/// Runs the benchmark.
pub fn run(args: EngineBenchArgs) -> Result<()> {
    if args.runs == 0 || args.new_tokens == 0 || args.prompt == 0 {
        bail!("--runs, --new-tokens and --prompt must be positive");
    }
    args.llama.check()?;
    #[cfg(feature = "cuda")]
    {
        measure(&args)
    }
    #[cfg(not(feature = "cuda"))]
    bail!("this xcomposer was built without CUDA; rebuild with `cargo build --release --features cuda`")
}

#[cfg(feature = "cuda")]
fn measure(args: &EngineBenchArgs) -> Result<()> {
    use std::time::Instant;

    use rand::{Rng, SeedableRng};
    use xcomposer_llm::config::{Arch, DecoderConfig};
    use xcomposer_llm::cuda::{CudaDecoder, EngineDtype, EngineOptions};
    use xcomposer_llm::decoder::KeyStyle;
    use xcomposer_llm::random_weights::RandomWeights;


    let c = match args.shape {
        Shape::Internlm7b => DecoderConfig::internlm_7b(),
        Shape::Smollm2 => DecoderConfig {
            arch: Arch::Llama,
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rope_theta: 100000.0,
            rms_norm_eps: 1e-5,
            max_position: 8192,
            qkv_bias: false,
            o_bias: false,
            tie_word_embeddings: true,
            rope_inv_freq_f16: false,
        },
    };
    let dtype = match args.dtype {
        DtypeArg::F16 => EngineDtype::F16,
        DtypeArg::F32 => EngineDtype::F32,
    };
    let d = c.hidden_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut embeds = |n: usize| -> Vec<f32> { (0..n * d).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * 0.02).collect() };
    let (prompt, long) = (embeds(args.prompt), embeds(512));
    let k = args.beams.clamp(1, xcomposer_llm::cuda::MAX_SEQS);
    let mut variants = vec![];
    for quant in std::iter::once(None).chain(args.quant.iter().copied().map(Some)) {
        let t = Instant::now();
        let opts = EngineOptions { dtype, quant: quant.map(QuantArg::engine), max_positions: args.max_context, ..Default::default() };
        let mut e = CudaDecoder::load(c.clone(), &RandomWeights::for_decoder(&c, 0), KeyStyle::HuggingFace, opts)?;
        let label = match quant {
            None => args.dtype.name().to_string(),
            Some(q) => format!("{} + {}", args.dtype.name(), q.name()),
        };
        eprintln!("[bench] {label}: random {:?} weights made, converted and uploaded in {:.1} s", args.shape, t.elapsed().as_secs_f64());
        // Memory with one sequence after the prompt and the new tokens, before beam search grows
        // the cache to more; then with the cache at the full context.
        e.prefill(&prompt)?;
        for step in 0..args.new_tokens {
            e.step(&[(50 + step) as u32])?;
        }
        let gb = |b: usize| b as f64 / 1e9;
        // Synchronised first: memory freed on the stream (the cache before it grew) is back then.
        e.synchronize()?;
        let (weights_gb, engine_gb, in_use_gb, cache_positions) = (gb(e.weight_bytes()), gb(e.allocated_bytes()), gb(e.memory_in_use()?), e.cache_positions());
        e.reserve_positions(e.context_len())?;
        e.synchronize()?;
        let full_in_use_gb = gb(e.memory_in_use()?);
        let speeds = speeds(&mut e, &prompt, &long, args.new_tokens, k, args.runs)?;
        let profiled_at = args.prompt + args.new_tokens;
        let mut profiles = vec![];
        for rows in [1, k] {
            e.prefill(&prompt)?;
            e.reorder(&vec![0; rows])?;
            for step in 0..args.new_tokens {
                e.step(&(0..rows).map(|b| (50 + step + b) as u32).collect::<Vec<_>>())?;
            }
            profiles.push(profile(&mut e, &c, rows, dtype, quant)?);
            e.set_warp_attention(false);
            let tile = e.profile_step(rows, 50)?.into_iter().find(|(name, _)| name.starts_with("attention"));
            e.set_warp_attention(true);
            if let Some((_, us)) = tile {
                profiles.push(format!("| {rows} sequence(s): attention on the tile kernel (`XC_DECODE_ATTENTION=tile`) | {us:.1} |\n"));
            }
        }
        e.prefill(&long)?;
        profiles.push(prefill_profile(&mut e, &c, long.len() / d)?);
        let Ours { pp, pp512, tg, tg_launched, beam, .. } = speeds;
        eprintln!("[bench] {label}: prefill {pp:.0} t/s ({} pos.), {pp512:.0} t/s (512); decode {tg:.1} t/s ({tg_launched:.1} without graphs); {k}-beam {beam:.1} t/s per beam; weights {weights_gb:.2} GB, engine {engine_gb:.2} GB, {in_use_gb:.2} GB in use ({cache_positions} cached positions), {full_in_use_gb:.2} GB at the full context", args.prompt);
        variants.push(Variant { label, quant, speeds, weights_gb, engine_gb, in_use_gb, full_in_use_gb, cache_positions, profiles, profiled_at });
    }
    let torch = if args.anchor.torch {
        Some(args.anchor.run(TORCH_SCRIPT, &[args.dtype.name().to_string(), args.prompt.to_string(), args.new_tokens.to_string(), args.runs.to_string()])?)
    } else {
        None
    };
    let llama = args.llama.run(args.runs)?;
    println!("{:?} decoder shape, {}, random weights; prompt {} positions, {} greedy new tokens, median of {} runs; same GPU, same run", args.shape, args.dtype.name(), args.prompt, args.new_tokens, args.runs);
    println!();
    let context = args.max_context.map_or(c.max_position, |n| c.max_position.min(n));
    print_table(args, k, context, &variants, torch.as_ref(), &llama);
    for v in variants {
        println!();
        println!("Where a {} decode step's time goes at {} positions, and a 512-position prefill's (µs per launch, layer 0, launched back to back; × layers):", v.label, v.profiled_at);
        for p in v.profiles {
            println!();
            print!("{p}");
        }
    }
    Ok(())
}

#[cfg(feature = "cuda")]
const TORCH_SCRIPT: &str = include_str!("../../../scripts/bench_xcomposer_torch.py");

/// The llama.cpp row a variant compares with: the GGUF whose file name names its format (`q4_0`
/// in `m-q4_0.gguf` or `q4` in `m-q4.gguf`), else the first (f16).
#[cfg(feature = "cuda")]
fn anchor_for(quant: Option<QuantArg>, llama: &[LlamaRows]) -> Option<&LlamaRows> {
    let named = |tag: &str| llama.iter().find(|(name, _)| name.to_lowercase().contains(tag));
    match quant {
        Some(q) => named(q.name()).or_else(|| named(&q.name()[..2])),
        None => llama.first(),
    }
}

#[cfg(feature = "cuda")]
fn print_table(args: &EngineBenchArgs, k: usize, context: usize, variants: &[Variant], torch: Option<&serde_json::Value>, llama: &[LlamaRows]) {
    let tg_of = |rows: &[(String, f64)]| rows.iter().find(|(t, _)| t.starts_with("tg")).map(|x| x.1);
    let pp_of = |rows: &[(String, f64)], t: &str| rows.iter().find(|(x, _)| x == t).map(|x| x.1);
    let ratio = |x: f64, b: Option<f64>| b.map_or("–".to_string(), |b| format!("{:.2}×", x / b));
    let f16_base = llama.first().map(|(_, r)| (pp_of(r, "pp512"), tg_of(r)));
    println!("Ratios are to the llama.cpp row of the same weight format (f16 for PyTorch).");
    println!();
    println!("Memory with one sequence after the prompt and {} new tokens (the KV cache grows by {} positions): the weights on the device, everything the engine allocates there (adds the KV cache and scratch), the device memory in use (adds the CUDA context, kernels and cuBLAS), and that with the cache at the full context ({context} positions).", args.new_tokens, xcomposer_llm::cuda::CACHE_STEP);
    println!();
    println!("| engine | weights GB | engine GB | in use GB | in use, full context GB | prefill t/s ({}) | prefill t/s (512) | decode t/s | {k}-beam t/s per beam |", args.prompt);
    println!("|---|---|---|---|---|---|---|---|---|");
    for v in variants {
        let (base_pp, base_tg) = anchor_for(v.quant, llama).map_or((None, None), |(_, r)| (pp_of(r, "pp512"), tg_of(r)));
        let o = &v.speeds;
        println!(
            "| xcomposer fused CUDA engine, {} | {:.2} | {:.2} | {:.2} ({} positions) | {:.2} | {:.0} | {:.0} ({}) | {:.1} ({}) | {:.1} ({:.2}× single) |",
            v.label, v.weights_gb, v.engine_gb, v.in_use_gb, v.cache_positions, v.full_in_use_gb, o.pp, o.pp512, ratio(o.pp512, base_pp), o.tg, ratio(o.tg, base_tg), o.beam, o.beam / o.tg
        );
        println!("| the same, kernels launched from the host (no CUDA graph) | | | | | – | – | {:.1} ({}) | – |", o.tg_launched, ratio(o.tg_launched, base_tg));
        if args.dtype == DtypeArg::F16 {
            println!("| the same, beams' products on the CUDA cores (tensor cores off) | | | | | – | – | – | {:.1} ({:.2}× single) |", o.beam_cuda_cores, o.beam_cuda_cores / o.tg);
        }
        println!("| the same, decode attention on the tile kernel (`XC_DECODE_ATTENTION=tile`) | | | | | – | – | {:.1} ({}) | {:.1} ({:.2}× its single) |", o.tg_tile, ratio(o.tg_tile, base_tg), o.beam_tile, o.beam_tile / o.tg_tile);
    }
    let (base_pp, base) = f16_base.unwrap_or((None, None));
    if let Some(v) = torch {
        let f = |key: &str| v[key].as_f64().unwrap_or(f64::NAN);
        let name = format!("PyTorch {} + transformers {} eager", v["torch"].as_str().unwrap_or("?"), v["transformers"].as_str().unwrap_or("?"));
        println!("| {name} | | | | | {:.0} | {:.0} ({}) | {:.1} ({}) | – |", f("prefill_tps"), f("prefill512_tps"), ratio(f("prefill512_tps"), base_pp), f("decode_tps"), ratio(f("decode_tps"), base));
    }
    for (name, rows) in llama {
        let get = |t: &str| pp_of(rows, t).unwrap_or(f64::NAN);
        println!("| llama.cpp CUDA, {name} | | | | | {:.0} | {:.0} | {:.1} | – |", get("pp161"), get("pp512"), tg_of(rows).unwrap_or(f64::NAN));
    }
}

/// Prefill (of `prompt` and of `long`), greedy decode with the choice made on the device, and
/// beam search with `beams` beams (every step after the first, per beam, with no end token so
/// it runs `new_tokens` steps): tokens/s, median of `runs` after a warm-up.
#[cfg(feature = "cuda")]
pub(crate) fn speeds(e: &mut xcomposer_llm::cuda::CudaDecoder, prompt: &[f32], long: &[f32], new_tokens: usize, beams: usize, runs: usize) -> Result<Ours> {
    use std::time::Instant;

    use xcomposer_llm::beam::{EmbedGenConfig, beam_steps};
    use xcomposer_llm::cuda::{CudaDecoder, EngineSteps};

    use crate::bench::median;

    let d = e.config.hidden_size;
    let timed = |e: &mut CudaDecoder, f: &mut dyn FnMut(&mut CudaDecoder) -> Result<f64>| -> Result<f64> {
        f(e)?;
        let v: Vec<f64> = (0..runs).map(|_| f(e)).collect::<Result<_>>()?;
        Ok(median(v))
    };
    let prefill = |e: &mut CudaDecoder, p: &[f32]| -> Result<f64> {
        let t = Instant::now();
        e.prefill(p)?;
        e.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let pp = (prompt.len() / d) as f64 / timed(e, &mut |e| prefill(e, prompt))?;
    let pp512 = (long.len() / d) as f64 / timed(e, &mut |e| prefill(e, long))?;
    let decode = |e: &mut CudaDecoder, graphs: bool| -> Result<f64> {
        e.set_cuda_graphs(graphs);
        let tps = new_tokens as f64
            / timed(e, &mut |e| {
                prefill(e, prompt)?;
                let mut seq = vec![1u32];
                let t = Instant::now();
                for _ in 0..new_tokens {
                    let next = e.greedy_token(&seq, 1.0)?;
                    seq.push(next);
                    e.step(&[next])?;
                }
                e.synchronize()?;
                Ok(t.elapsed().as_secs_f64())
            })?;
        Ok(tps)
    };
    let tg_launched = decode(e, false)?;
    let tg = decode(e, true)?;
    let cfg = EmbedGenConfig { num_beams: beams, max_new_tokens: new_tokens, repetition_penalty: 1.5, length_penalty: 1.0, bos_id: 1, eos_id: u32::MAX, stop_ids: vec![] };
    let beam = |e: &mut CudaDecoder, tensor_cores: bool| -> Result<f64> {
        e.set_tensor_cores(tensor_cores);
        let tps = (new_tokens - 1) as f64
            / timed(e, &mut |e| {
                // Timed from the first step's candidates (the prompt is prefilled by then).
                let mut start = None;
                beam_steps(&mut EngineSteps { engine: e, prompt }, &cfg, &mut |_| {
                    start.get_or_insert_with(Instant::now);
                    std::ops::ControlFlow::Continue(())
                })?;
                Ok(start.map_or(f64::NAN, |t| t.elapsed().as_secs_f64()))
            })?;
        Ok(tps)
    };
    let beam_cuda_cores = beam(e, false)?;
    e.set_warp_attention(false);
    let (tg_tile, beam_tile) = (decode(e, true)?, beam(e, true)?);
    e.set_warp_attention(true);
    let beam = beam(e, true)?;
    Ok(Ours { pp, pp512, tg, tg_launched, beam, beam_cuda_cores, tg_tile, beam_tile })
}

/// The time of each part of one layer's prefill pass over `positions` positions (prefilled).
#[cfg(feature = "cuda")]
fn prefill_profile(e: &mut xcomposer_llm::cuda::CudaDecoder, c: &xcomposer_llm::config::DecoderConfig, positions: usize) -> Result<String> {
    use std::fmt::Write;
    let parts = e.profile_prefill(positions, 10)?;
    let mut out = String::new();
    writeln!(out, "| prefill of {positions} positions: part | µs |")?;
    writeln!(out, "|---|---|")?;
    let mut layer = 0.0;
    // The last two parts (LM head, greedy choice) run once per prompt, on its last row only.
    for (name, us) in &parts[..parts.len() - 2] {
        writeln!(out, "| {name} | {us:.1} |")?;
        layer += us;
    }
    let total = layer * c.num_layers as f64;
    writeln!(out, "| **sum over {} layers** | {total:.0} | ⇒ {:.0} positions/s |", c.num_layers, positions as f64 / total * 1e6)?;
    Ok(out)
}

/// Prints the time of each part of one layer's decode step at the current length.
#[cfg(feature = "cuda")]
fn profile(e: &mut xcomposer_llm::cuda::CudaDecoder, c: &xcomposer_llm::config::DecoderConfig, rows: usize, dtype: xcomposer_llm::cuda::EngineDtype, quant: Option<QuantArg>) -> Result<String> {
    use std::fmt::Write;
    let parts = e.profile_step(rows, 50)?;
    let plain = if dtype == xcomposer_llm::cuda::EngineDtype::F16 { 2.0 } else { 4.0 };
    // Bytes per weight of the layers, and of the LM head (Q8_0 whenever the layers are quantized).
    let (eb, head_eb) = match quant {
        Some(q) => (q.engine().bytes_per_weight(), xcomposer_llm::cuda::WeightQuant::Q8_0.bytes_per_weight()),
        None => (plain, plain),
    };
    let (d, ff, hd) = (c.hidden_size as f64, c.intermediate_size as f64, c.head_dim as f64);
    let (q, kv) = (c.num_heads as f64 * hd, c.num_kv_heads as f64 * hd);
    let bytes = |name: &str| -> Option<f64> {
        let has = |part: &str| name.contains(part);
        Some(eb * match () {
            _ if has("q/k/v") => (q + 2.0 * kv) * d,
            _ if has("output projection") => d * q,
            _ if has("gate/up") => 2.0 * ff * d,
            _ if has("down projection") => d * ff,
            _ if has("lm head") => c.vocab_size as f64 * d * head_eb / eb,
            _ if has("attention (") => 2.0 * kv * e.len() as f64 * rows as f64 * plain / eb,
            _ => return None,
        })
    };
    let mut out = String::new();
    writeln!(out, "| {rows} sequence(s): part | µs | GB/s |")?;
    writeln!(out, "|---|---|---|")?;
    let (mut layer, mut rest) = (0.0, 0.0);
    for (i, (name, us)) in parts.iter().enumerate() {
        let bw = bytes(name).map_or("–".to_string(), |b| format!("{:.0}", b / us / 1e3));
        writeln!(out, "| {name} | {us:.1} | {bw} |")?;
        // Once per step: the LM head, the greedy choice and (several rows) the beams' candidates.
        if i < parts.len() - 2 - usize::from(rows > 1) { layer += us } else { rest += us }
    }
    let per_token = layer * c.num_layers as f64 + rest;
    writeln!(out, "| **sum per token** ({} layers) | {per_token:.0} | ⇒ {:.1} steps/s |", c.num_layers, 1e6 / per_token)?;
    Ok(out)
}
