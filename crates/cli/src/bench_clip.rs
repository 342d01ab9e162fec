//! `xcomposer bench clip`: images/s of a CLIP vision tower (+ projection) at several batch
//! sizes, in f32 and (on CUDA) f16, beside PyTorch transformers' CLIPModel on the same weights
//! and device in the same run (`scripts/bench_clip_torch.py`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use xcomposer_retrieval::Clip;

use crate::backend::{DeviceArg, DeviceOptions, set_float_dtype};
use crate::bench::{TorchAnchor, median};

const TORCH_SCRIPT: &str = include_str!("../../../scripts/bench_clip_torch.py");

/// Arguments of `xcomposer bench clip`.
#[derive(clap::Args)]
pub struct ClipBenchArgs {
    /// A Hugging Face CLIP folder (`scripts/bench_clip_torch.py make B/32 DIR` writes one with random weights).
    #[arg(long)]
    model: PathBuf,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    batches: Vec<usize>,
    /// Timed calls per batch size (after 3 warm-up calls); the median is reported.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Device and float type.
    #[command(flatten)]
    pub run_on: DeviceOptions,
    /// The PyTorch anchor.
    #[command(flatten)]
    anchor: TorchAnchor,
}

/// Images/s at each batch size: `call(b)` encodes a batch of `b` (3 warm-up calls, then the
/// median of `runs`).
fn images_per_s(batches: &[usize], runs: usize, mut call: impl FnMut(usize) -> Result<()>) -> Result<Vec<f64>> {
    let mut out = vec![];
    for &b in batches {
        for _ in 0..3 {
            call(b)?;
        }
        let mut times = vec![];
        for _ in 0..runs {
            let t = Instant::now();
            call(b)?;
            times.push(t.elapsed().as_secs_f64());
        }
        out.push(b as f64 / median(times));
    }
    Ok(out)
}

/// Images/s of burn's tower at each batch size.
fn time_vision<B: Backend>(args: &ClipBenchArgs, device: &B::Device) -> Result<Vec<f64>> {
    args.run_on.refuse_quant("`bench clip`")?;
    set_float_dtype::<B>(device, args.run_on.dtype)?;
    let t = Instant::now();
    let clip = Clip::<B>::load(&args.model, device).with_context(|| format!("loading {}", args.model.display()))?;
    eprintln!("[bench] loaded {} in {:.1} s", args.model.display(), t.elapsed().as_secs_f64());
    let s = clip.config.vision.image_size;
    let inputs: Vec<Tensor<B, 4>> = args.batches.iter().map(|&b| Tensor::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), device)).collect();
    images_per_s(&args.batches, args.runs, |b| {
        let i = args.batches.iter().position(|&x| x == b).expect("a listed batch");
        clip.image_features(inputs[i].clone()).into_data();
        Ok(())
    })
}

/// Images/s of the tower on the CUDA encoder runtime: with the pixels already on the device
/// (as the PyTorch anchor holds its input), then uploaded from the host in each call.
#[cfg(feature = "cuda")]
fn time_encoder(args: &ClipBenchArgs) -> Result<[Vec<f64>; 2]> {
    use xcomposer_llm::cuda::EngineDtype;
    args.run_on.refuse_quant("`bench clip`")?;
    let dtype = if args.run_on.dtype == crate::backend::DtypeArg::F16 { EngineDtype::F16 } else { EngineDtype::F32 };
    let t = Instant::now();
    let mut clip = xcomposer_retrieval::clip_cuda::CudaClipVision::load(&args.model, dtype).with_context(|| format!("loading {}", args.model.display()))?;
    eprintln!("[bench] loaded {} onto the CUDA encoder in {:.1} s", args.model.display(), t.elapsed().as_secs_f64());
    let s = clip.config.vision.image_size;
    let max = args.batches.iter().copied().max().unwrap_or(1);
    let pixels: Vec<f32> = (0..max * 3 * s * s).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let on_device = clip.upload_pixels(&pixels)?;
    let resident = images_per_s(&args.batches, args.runs, |b| {
        clip.image_features_on_device(&on_device, b)?;
        Ok(())
    })?;
    let uploaded = images_per_s(&args.batches, args.runs, |b| {
        clip.image_features(&pixels[..b * 3 * s * s], b)?;
        Ok(())
    })?;
    Ok([resident, uploaded])
}

/// Runs the benchmark.
pub fn run(args: ClipBenchArgs) -> Result<()> {
    if args.runs == 0 || args.batches.is_empty() || args.batches.contains(&0) {
        bail!("--runs and --batches must be positive");
    }
    let mut rows: Vec<(String, String, Vec<f64>)> = vec![];
    let dtype = args.run_on.dtype.name();
    match args.run_on.device {
        DeviceArg::Cpu => rows.push(("xcomposer (burn-flex)".into(), dtype.into(), time_vision::<burn::backend::Flex>(&args, &Default::default())?)),
        DeviceArg::Cuda => {
            #[cfg(feature = "cuda")]
            match args.run_on.engine {
                crate::backend::EngineArg::Fused => {
                    let [resident, uploaded] = time_encoder(&args)?;
                    rows.push(("xcomposer (CUDA encoder)".into(), dtype.into(), resident));
                    rows.push(("xcomposer (CUDA encoder), pixels uploaded in each call".into(), dtype.into(), uploaded));
                }
                crate::backend::EngineArg::Burn => rows.push(("xcomposer (burn-cuda)".into(), dtype.into(), time_vision::<burn::backend::Cuda>(&args, &Default::default())?)),
            }
            #[cfg(not(feature = "cuda"))]
            bail!("this xcomposer was built without CUDA; rebuild with `cargo build --release --features cuda`");
        }
    }
    let mut header = String::new();
    if args.anchor.torch {
        let batches: Vec<String> = args.batches.iter().map(usize::to_string).collect();
        let v = args.anchor.run(TORCH_SCRIPT, &["time".into(), args.model.display().to_string(), batches.join(","), args.runs.to_string(), dtype.to_string()])?;
        header = format!("anchor: torch {} + transformers {} on {}", v["torch"].as_str().unwrap_or("?"), v["transformers"].as_str().unwrap_or("?"), v["gpu"].as_str().unwrap_or("?"));
        let ips: Vec<f64> = args.batches.iter().map(|b| v["images_per_s"][format!("{dtype}-{b}")].as_f64().unwrap_or(f64::NAN)).collect();
        rows.push(("PyTorch CLIPModel".into(), dtype.into(), ips));
    }
    let c = xcomposer_retrieval::ClipConfig::from_file(&args.model.join("config.json")).ok();
    if let Some(c) = c {
        println!(
            "{}: vision tower {} layers, width {}, patch {}, {}×{} px; images/s (median of {} calls)",
            args.model.display(),
            c.vision.tower.num_hidden_layers,
            c.vision.tower.hidden_size,
            c.vision.patch_size,
            c.vision.image_size,
            c.vision.image_size,
            args.runs
        );
    }
    if !header.is_empty() {
        println!("{header}");
    }
    println!();
    let cols: Vec<String> = args.batches.iter().map(|b| format!("batch {b}")).collect();
    let ratio_cols: Vec<String> = args.batches.iter().map(|b| format!("vs PyTorch, batch {b}")).collect();
    println!("| engine | dtype | {} | {} |", cols.join(" | "), ratio_cols.join(" | "));
    println!("|---|---|{}{}", "---|".repeat(cols.len()), "---|".repeat(cols.len()));
    for (engine, dtype, ips) in &rows {
        let anchor = rows.iter().find(|r| r.0.starts_with("PyTorch") && &r.1 == dtype).map(|r| r.2.clone());
        let cells: Vec<String> = ips.iter().map(|v| format!("{v:.1}")).collect();
        let ratios: Vec<String> = match &anchor {
            Some(a) => ips.iter().zip(a).map(|(x, y)| format!("{:.2}×", x / y)).collect(),
            None => vec!["–".into(); ips.len()],
        };
        println!("| {engine} | {dtype} | {} | {} |", cells.join(" | "), ratios.join(" | "));
    }
    Ok(())
}
