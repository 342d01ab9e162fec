//! `xcomposer bench xcomposer`: an InternLM-XComposer folder's load time and peak memory, image
//! encode latency, prompt prefill and greedy decode tokens/s after one image; with `--torch`,
//! PyTorch beside it on the same device in the same run (`scripts/bench_xcomposer_torch.py`:
//! transformers' `LlamaForCausalLM` with `attention_bias=True` at the same shapes, the same math
//! as InternLM's decoder, and BLIP-2's EVA ViT-g + Q-Former for the image).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use xcomposer_composer::xcomposer_model::XComposer;

use crate::backend::{DeviceArg, DeviceOptions, peak_rss_mib, set_float_dtype};
use crate::bench::{TorchAnchor, median};

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
    /// Timed image encodes (the median is reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Device and float type.
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// The PyTorch anchor.
    #[command(flatten)]
    anchor: TorchAnchor,
}

struct Numbers {
    load_s: f64,
    rss_mib: f64,
    encode_ms: f64,
    prompt_len: usize,
    prefill_tps: f64,
    decode_tps: f64,
}

fn measure<B: Backend>(args: &XComposerBenchArgs, device: &B::Device) -> Result<Numbers> {
    set_float_dtype::<B>(device, args.run_on.dtype)?;
    let t = Instant::now();
    let model = XComposer::<B>::load(&args.model, device).with_context(|| format!("loading {}", args.model.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_mib = peak_rss_mib().unwrap_or(f64::NAN);
    eprintln!("[bench] loaded in {load_s:.1} s, peak resident memory {rss_mib:.0} MiB");
    let s = model.visual.config.img_size;
    let pixels = Tensor::<B, 4>::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), device);
    let encode = || model.visual.forward(pixels.clone());
    for _ in 0..2 {
        let _ = encode().into_data();
    }
    let times: Vec<f64> = (0..args.runs.max(1))
        .map(|_| {
            let t = Instant::now();
            let _ = encode().into_data();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let encode_ms = median(times) * 1e3;
    let image = encode();
    let prompt = model.generate_prompt("Describe this image in detail.", std::slice::from_ref(&image))?;
    let prompt_len = prompt.dims()[1];
    let argmax = |logits: Tensor<B, 3>| xcomposer_llm::generation::argmax(&logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32"));
    // Prefill, then `steps` greedy tokens on a fresh cache: (prefill seconds, decode seconds).
    let pass = |steps: usize| {
        let mut cache = model.decoder.new_cache();
        let t = Instant::now();
        let mut next = argmax(model.decoder.forward_embeds(prompt.clone(), &mut cache, 1));
        let prefill_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..steps {
            next = argmax(model.decoder.forward_ids(&[next], &mut cache, 1));
        }
        (prefill_s, t.elapsed().as_secs_f64())
    };
    // A warm-up pass first: burn-cuda compiles kernels for each new shape on first use.
    pass(4);
    let (prefill_s, decode_s) = pass(args.new_tokens);
    let decode_tps = args.new_tokens as f64 / decode_s;
    Ok(Numbers { load_s, rss_mib, encode_ms, prompt_len, prefill_tps: prompt_len as f64 / prefill_s, decode_tps })
}

/// Runs the benchmark.
pub fn run(args: XComposerBenchArgs) -> Result<()> {
    if args.new_tokens == 0 {
        bail!("--new-tokens must be positive");
    }
    let ours = match args.run_on.device {
        DeviceArg::Cpu => measure::<burn::backend::Flex>(&args, &Default::default())?,
        DeviceArg::Cuda => {
            #[cfg(feature = "cuda")]
            {
                measure::<burn::backend::Cuda>(&args, &Default::default())?
            }
            #[cfg(not(feature = "cuda"))]
            bail!("this xcomposer was built without CUDA; rebuild with `cargo build --release --features cuda`")
        }
    };
    let dtype = args.run_on.dtype.name();
    println!("{}: prompt of {} positions (one image), {} greedy new tokens, {dtype}", args.model.display(), ours.prompt_len, args.new_tokens);
    println!("xcomposer: loaded in {:.1} s (LoRA merged), peak resident memory {:.0} MiB", ours.load_s, ours.rss_mib);
    println!();
    println!("| engine | image encode ms | prefill t/s | decode t/s | decode vs PyTorch |");
    println!("|---|---|---|---|---|");
    let mut torch_decode = None;
    let mut torch_row = None;
    if args.anchor.torch {
        let v = args.anchor.run(TORCH_SCRIPT, &[dtype.to_string(), ours.prompt_len.to_string(), args.new_tokens.to_string(), args.runs.to_string()])?;
        torch_decode = v["decode_tps"].as_f64();
        torch_row = Some(format!(
            "| PyTorch {} + transformers {} (LlamaForCausalLM attention_bias; BLIP-2 ViT-g + Q-Former) | {:.1} | {:.1} | {:.1} | 1.00× |",
            v["torch"].as_str().unwrap_or("?"),
            v["transformers"].as_str().unwrap_or("?"),
            v["encode_ms"].as_f64().unwrap_or(f64::NAN),
            v["prefill_tps"].as_f64().unwrap_or(f64::NAN),
            v["decode_tps"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let ratio = torch_decode.map_or("–".into(), |t| format!("{:.2}×", ours.decode_tps / t));
    println!("| xcomposer (burn) | {:.1} | {:.1} | {:.1} | {ratio} |", ours.encode_ms, ours.prefill_tps, ours.decode_tps);
    if let Some(r) = torch_row {
        println!("{r}");
    }
    Ok(())
}
