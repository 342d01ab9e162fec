//! `xcomposer bench xcomposer`: an InternLM-XComposer folder's load time and peak memory, image
//! encode latency, prompt prefill and greedy decode tokens/s after one image, 5-beam decoding;
//! and beside it in the same run: PyTorch (`--torch`, `scripts/bench_xcomposer_torch.py`:
//! transformers' `LlamaForCausalLM` with `attention_bias=True` at the same shapes, the same math
//! as InternLM's decoder, and BLIP-2's EVA ViT-g + Q-Former for the image) and llama.cpp
//! (`--llama-bench BIN --gguf FILE…`: `llama-bench` on GGUF files of the same decoder shape).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use xcomposer_vision::xcomposer::model::{TextDecoder, XComposer};

use crate::backend::{DeviceOptions, peak_rss_mib};
use crate::bench::{LlamaAnchor, LlamaRows, TorchAnchor, median};

const TORCH_SCRIPT: &str = include_str!("../../../scripts/bench_xcomposer_torch.py");

/// Arguments of `xcomposer bench xcomposer`.
#[derive(clap::Args)]
pub struct XComposerBenchArgs {
    /// An InternLM-XComposer folder (`scripts/make_xcomposer_random.py` writes a random one of the real shapes).
    #[arg(long)]
    model: PathBuf,
    /// New tokens decoded greedily after the prompt.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Beams of the beam-decoding measurement (0 skips it).
    #[arg(long, default_value_t = 5)]
    beams: usize,
    /// Device, float type and engine.
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// Several devices to split the model across (burn's operations).
    #[command(flatten)]
    split: crate::split::SplitOptions,
    /// The PyTorch anchor.
    #[command(flatten)]
    anchor: TorchAnchor,
    /// The llama.cpp anchor.
    #[command(flatten)]
    llama: LlamaAnchor,
}

/// Our measurements.
struct Numbers {
    engine: &'static str,
    load_s: f64,
    /// Where the load's time went, in words.
    load_detail: String,
    rss_mib: f64,
    encode_ms: f64,
    prompt_len: usize,
    prefill_tps: f64,
    prefill512_tps: f64,
    decode_tps: f64,
    /// Tokens/s of each beam in beam decoding (steps/s).
    beam_tps: Option<f64>,
    /// µs per burn operation on the device (a tiny element-wise op, launched back to back).
    burn_op_us: f64,
}

/// Times `f` `runs` times after one warm-up call; the median seconds.
fn timed(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = vec![];
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// The load's parts: the image encoder and the language model load side by side, and on the
/// engine its kernels compile beside the weights.
fn load_detail<B: Backend>(model: &XComposer<B>) -> String {
    let t = model.load_times;
    let compile = match &model.text {
        #[cfg(feature = "cuda")]
        TextDecoder::Cuda(e) => format!(", kernels compiled in {:.1} s beside the weights", xcomposer_llm::text_decoder::lock_engine(e).load_times.compile.as_secs_f64()),
        _ => String::new(),
    };
    format!("image encoder {:.1} s beside the language model {:.1} s{compile}", t.visual.as_secs_f64(), t.text.as_secs_f64())
}

/// The cost of one burn operation on the device: 2,000 dependent `x + 1` on a 4096-wide row.
fn burn_op_us<B: Backend>(device: &B::Device) -> f64 {
    let x = Tensor::<B, 2>::zeros([1, 4096], device);
    let run = |n: usize| {
        let mut y = x.clone();
        for _ in 0..n {
            y = y + 1.0;
        }
        let _ = y.into_data();
    };
    run(100);
    let t = Instant::now();
    run(2000);
    t.elapsed().as_secs_f64() * 1e6 / 2000.0
}

fn measure<B: crate::split::SplitBackend>(args: &XComposerBenchArgs, device: &B::Device, specs: &[crate::split::DeviceSpec]) -> Result<Numbers> {
    let t = Instant::now();
    let model = crate::split::load_xcomposer::<B>(&args.model, device, &args.run_on, specs, "bench")?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_mib = peak_rss_mib().unwrap_or(f64::NAN);
    let load_detail = load_detail(&model);
    eprintln!("[bench] loaded in {load_s:.1} s ({load_detail}), peak resident memory {rss_mib:.0} MiB");
    let s = model.visual.config.img_size;
    let device = &model.device;
    let pixels: Vec<f32> = Tensor::<B, 4>::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), device).into_data().convert::<f32>().into_vec().expect("f32 pixels");
    let encode_s = timed(args.runs.max(10), || {
        let _ = model.encode_pixels(pixels.clone())?.into_data();
        Ok(())
    })?;
    let image = model.encode_pixels(pixels.clone())?;
    let prompt = model.generate_prompt("Describe this image in detail.", std::slice::from_ref(&image))?;
    let prompt_len = prompt.dims()[1];
    let hidden = model.text.config().hidden_size;
    let long = Tensor::<B, 3>::random([1, 512, hidden], Distribution::Normal(0.0, 0.02), device);
    let burn_op_us = burn_op_us::<B>(device);
    let engine = if model.placement.as_ref().is_some_and(|p| p.devices_used() > 1) { "burn, split across devices" } else { "burn" };
    let mut n = Numbers { engine, load_s, load_detail, rss_mib, encode_ms: encode_s * 1e3, prompt_len, prefill_tps: 0.0, prefill512_tps: 0.0, decode_tps: 0.0, beam_tps: None, burn_op_us };
    match &model.text {
        TextDecoder::Burn(dec) => {
            let argmax = |logits: Tensor<B, 3>| xcomposer_llm::generation::argmax(&logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32"));
            let prefill = |p: &Tensor<B, 3>| {
                let mut cache = dec.new_cache();
                let next = argmax(dec.forward_embeds(p.clone(), &mut cache, 1));
                (cache, next)
            };
            n.prefill_tps = prompt_len as f64 / timed(args.runs, || {
                prefill(&prompt);
                Ok(())
            })?;
            n.prefill512_tps = 512.0 / timed(args.runs, || {
                prefill(&long);
                Ok(())
            })?;
            let mut decode_times = vec![];
            for run in 0..=args.runs {
                let (mut cache, mut next) = prefill(&prompt);
                let t = Instant::now();
                for _ in 0..args.new_tokens {
                    next = argmax(dec.forward_ids(&[next], &mut cache, 1));
                }
                if run > 0 {
                    decode_times.push(t.elapsed().as_secs_f64());
                }
            }
            n.decode_tps = args.new_tokens as f64 / median(decode_times);
        }
        #[cfg(feature = "cuda")]
        TextDecoder::Cuda(engine) => {
            n.engine = "fused CUDA engine";
            let mut e = engine.lock().map_err(|_| anyhow::anyhow!("the engine's lock is poisoned"))?;
            engine_numbers(&mut e, args, &prompt_rows(prompt), &prompt_rows(long), &mut n)?;
        }
    }
    Ok(n)
}

#[cfg(feature = "cuda")]
fn prompt_rows<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().expect("f32")
}

/// The engine's speeds, by the same measurement as `bench engine`.
#[cfg(feature = "cuda")]
fn engine_numbers(e: &mut xcomposer_llm::cuda::CudaDecoder, args: &XComposerBenchArgs, prompt: &[f32], long: &[f32], n: &mut Numbers) -> Result<()> {
    let beams = args.beams.clamp(1, xcomposer_llm::cuda::MAX_SEQS);
    let s = crate::bench_engine::speeds(e, prompt, long, args.new_tokens, beams, args.runs)?;
    (n.prefill_tps, n.prefill512_tps, n.decode_tps) = (s.pp, s.pp512, s.tg);
    n.beam_tps = (args.beams > 1).then_some(s.beam);
    Ok(())
}

/// Runs the benchmark.
pub fn run(mut args: XComposerBenchArgs) -> Result<()> {
    if args.new_tokens == 0 || args.runs == 0 {
        bail!("--new-tokens and --runs must be positive");
    }
    args.llama.check()?;
    let specs = args.split.resolve(&mut args.run_on)?;
    let ours = crate::with_backend!(args.run_on.device, |device: B| measure::<B>(&args, &device, &specs))?;
    let dtype = args.run_on.dtype.name();
    let mut torch = None;
    if args.anchor.torch {
        torch = Some(args.anchor.run(TORCH_SCRIPT, &[dtype.to_string(), ours.prompt_len.to_string(), args.new_tokens.to_string(), args.runs.to_string()])?);
    }
    let llama = args.llama.run(args.runs)?;
    print_table(&args, &ours, torch.as_ref(), &llama);
    Ok(())
}

fn print_table(args: &XComposerBenchArgs, ours: &Numbers, torch: Option<&serde_json::Value>, llama: &[LlamaRows]) {
    let dtype = args.run_on.dtype.name();
    println!("{}: prompt of {} positions (one image), {} greedy new tokens, {dtype}, median of {} runs", args.model.display(), ours.prompt_len, args.new_tokens, args.runs);
    println!("xcomposer ({}): loaded in {:.1} s (LoRA merged; {}), peak resident memory {:.0} MiB; burn on this device: {:.1} µs per operation", ours.engine, ours.load_s, ours.load_detail, ours.rss_mib, ours.burn_op_us);
    let llama_f16 = llama.first().and_then(|(_, r)| r.iter().find(|(t, _)| t.starts_with("tg")).map(|x| x.1));
    let llama_pp512 = llama.first().and_then(|(_, r)| r.iter().find(|(t, _)| t == "pp512").map(|x| x.1));
    let ratio = |x: f64, base: Option<f64>| base.map_or("–".to_string(), |b| format!("{:.2}×", x / b));
    println!();
    println!("| engine | image encode ms | prefill t/s ({} pos.) | prefill t/s (512) | decode t/s | decode vs first llama.cpp | {}-beam t/s per beam |", ours.prompt_len, args.beams);
    println!("|---|---|---|---|---|---|---|");
    let beam = ours.beam_tps.map_or("–".into(), |b| format!("{b:.1} ({:.2}× single)", b / ours.decode_tps));
    println!(
        "| xcomposer ({}, {dtype}) | {:.1} | {:.0} | {:.0} ({}) | {:.1} | {} | {beam} |",
        ours.engine, ours.encode_ms, ours.prefill_tps, ours.prefill512_tps, ratio(ours.prefill512_tps, llama_pp512), ours.decode_tps, ratio(ours.decode_tps, llama_f16)
    );
    if let Some(v) = torch {
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| PyTorch {} + transformers {} eager ({dtype}) | {:.1} | {:.0} | {:.0} | {:.1} | {} | – |",
            v["torch"].as_str().unwrap_or("?"),
            v["transformers"].as_str().unwrap_or("?"),
            f("encode_ms"),
            f("prefill_tps"),
            f("prefill512_tps"),
            f("decode_tps"),
            ratio(f("decode_tps"), llama_f16)
        );
    }
    for (name, rows) in llama {
        let get = |t: &str| rows.iter().find(|(x, _)| x == t).map_or(f64::NAN, |x| x.1);
        let tg = rows.iter().find(|(t, _)| t.starts_with("tg")).map_or(f64::NAN, |x| x.1);
        println!("| llama.cpp CUDA, {name} | – | {:.0} | {:.0} | {:.1} | {} | – |", get("pp161"), get("pp512"), tg, ratio(tg, llama_f16));
    }
}
