//! `--devices` / `--num-gpus`: InternLM-XComposer split across several devices by memory, as the
//! original's `--num_gpus` does, and the plan printed at load.

use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use xcomposer_llm::text_decoder::DeviceSplit;
use xcomposer_vision::xcomposer::model::XComposer;

use crate::backend::{DeviceArg, DeviceOptions, DtypeArg, EngineArg, set_float_dtype};

/// One device of `--devices`: `cpu`, or `cuda:N` (`cuda` alone is `cuda:0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The kind of device.
    pub kind: DeviceArg,
    /// The GPU's index (0 for the CPU).
    pub ordinal: usize,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected `cpu` or `cuda:N` (N a GPU's index)");
        match s.split_once(':') {
            None if s == "cpu" => Ok(DeviceSpec { kind: DeviceArg::Cpu, ordinal: 0 }),
            None if s == "cuda" => Ok(DeviceSpec { kind: DeviceArg::Cuda, ordinal: 0 }),
            Some(("cuda", n)) => n.parse().map(|ordinal| DeviceSpec { kind: DeviceArg::Cuda, ordinal }).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// `--devices` and `--num-gpus`, for the commands that load InternLM-XComposer.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SplitOptions {
    /// Split InternLM-XComposer across these devices by their free memory, as the original's
    /// `--num_gpus` does (`cuda:0,cuda:1`; `cpu,cpu` checks a split on one machine): the image
    /// encoder, embeddings and head on the first, the decoder layers in contiguous runs, each
    /// layer's KV cache beside it; the plan is printed at load. burn's operations run a split
    /// (on CUDA too: the fused engine runs on one GPU).
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    pub devices: Vec<DeviceSpec>,
    /// Split across the first N GPUs (`--devices cuda:0,…,cuda:N-1`).
    #[arg(long, value_name = "N", conflicts_with = "devices")]
    pub num_gpus: Option<usize>,
}

impl SplitOptions {
    /// The devices asked for (empty: no split), after checking them against `run_on`, whose
    /// `--device` and `--engine` they set (`--devices cuda:0,cuda:1` alone runs on CUDA, on
    /// burn's operations).
    pub fn resolve(&self, run_on: &mut DeviceOptions) -> Result<Vec<DeviceSpec>> {
        let specs = match self.num_gpus {
            Some(0) => bail!("--num-gpus 0: a split needs at least one GPU"),
            Some(n) => (0..n).map(|ordinal| DeviceSpec { kind: DeviceArg::Cuda, ordinal }).collect(),
            None => self.devices.clone(),
        };
        let Some(first) = specs.first() else { return Ok(specs) };
        if let Some(other) = specs.iter().find(|s| s.kind != first.kind) {
            bail!("--devices mixes {} and {}: a split runs on one kind of device", name(first), name(other));
        }
        match (first.kind, run_on.device) {
            (DeviceArg::Cuda, DeviceArg::Cpu) => run_on.device = DeviceArg::Cuda,
            (DeviceArg::Cpu, DeviceArg::Cuda) => bail!("--device cuda with --devices {}: name CUDA devices (cuda:0,cuda:1)", name(first)),
            _ => {}
        }
        if run_on.quant.is_some() || run_on.max_context.is_some() {
            bail!("--devices splits the model on burn's operations; --quant and --max-context belong to the fused engine, which runs on one GPU");
        }
        run_on.engine = EngineArg::Burn;
        Ok(specs)
    }
}

/// `cpu` or `cuda:N`.
fn name(s: &DeviceSpec) -> String {
    match s.kind {
        DeviceArg::Cpu => "cpu".into(),
        DeviceArg::Cuda => format!("cuda:{}", s.ordinal),
    }
}

/// Backends whose devices `--devices` names, and what each offers.
pub trait SplitBackend: Backend {
    /// The backend's device for `spec`, and the bytes it offers when `sharers` entries of the
    /// list name the same device (each gets an equal part of its free memory).
    fn device(spec: &DeviceSpec, sharers: usize) -> Result<(Self::Device, u64)>;
}

impl SplitBackend for burn::backend::Flex {
    /// The CPU, offering the machine's available memory (shared equally by every `cpu` entry).
    fn device(_spec: &DeviceSpec, sharers: usize) -> Result<(Self::Device, u64)> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("/proc/meminfo: the CPU's free memory")?;
        let kb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .context("/proc/meminfo: no MemAvailable line")?;
        Ok((Default::default(), kb * 1024 / sharers.max(1) as u64))
    }
}

#[cfg(feature = "cuda")]
impl SplitBackend for burn::backend::Cuda {
    /// GPU `spec.ordinal`, offering its free memory as the driver reports it.
    fn device(spec: &DeviceSpec, sharers: usize) -> Result<(Self::Device, u64)> {
        let count = xcomposer_llm::cuda::device_count()?;
        if spec.ordinal >= count {
            bail!("--devices cuda:{}: this machine has {count} CUDA device(s)", spec.ordinal);
        }
        let free = xcomposer_llm::cuda::free_memory(spec.ordinal)?;
        Ok((burn::backend::cuda::CudaDevice::new(spec.ordinal), free / sharers.max(1) as u64))
    }
}

/// Of each device's free memory, the part a plan places weights and KV caches in (the rest is
/// left to activations and the backend's own buffers).
const PLANNED_SHARE: f64 = 0.9;

/// The devices of `specs` with what each offers, for weights in `dtype` and the KV caches of
/// the original's 5 beams.
pub fn device_split<B: SplitBackend>(specs: &[DeviceSpec], dtype: DtypeArg) -> Result<DeviceSplit<B>> {
    let sequences = xcomposer_vision::xcomposer::language::gen_config().num_beams;
    let mut split = DeviceSplit { devices: vec![], capacities: vec![], weight_bytes: dtype.bytes(), sequences };
    for spec in specs {
        let sharers = specs.iter().filter(|s| *s == spec).count();
        let (device, bytes) = B::device(spec, sharers)?;
        split.devices.push(device);
        split.capacities.push((bytes as f64 * PLANNED_SHARE) as u64);
    }
    Ok(split)
}

/// Loads InternLM-XComposer from `dir` on `device` in `--dtype`, or split across `specs` when
/// there are any (`device` then unused; the plan printed, `tag` naming the command). The model's
/// `device` is where its inputs go.
pub fn load_xcomposer<B: SplitBackend>(dir: &Path, device: &B::Device, run_on: &DeviceOptions, specs: &[DeviceSpec], tag: &str) -> Result<XComposer<B>> {
    let engine = run_on.engine_choice()?;
    let model = if specs.is_empty() {
        set_float_dtype::<B>(device, run_on.dtype)?;
        XComposer::<B>::load_with(dir, device, engine)
    } else {
        let split = device_split::<B>(specs, run_on.dtype)?;
        // Each device takes the float type once (burn refuses a second setting).
        let mut typed: Vec<B::Device> = vec![];
        for d in &split.devices {
            if !typed.contains(d) {
                set_float_dtype::<B>(d, run_on.dtype)?;
                typed.push(d.clone());
            }
        }
        XComposer::<B>::load_split(dir, &split, engine)
    };
    let model = model.with_context(|| format!("loading {}", dir.display()))?;
    if let Some(plan) = &model.placement {
        let names: Vec<String> = specs.iter().map(name).collect();
        eprintln!("[{tag}] split across {} on burn's operations (estimated bytes: weights, and the KV caches of 5 beams at the full context):", names.join(", "));
        for line in plan.to_string().lines() {
            eprintln!("[{tag}]   {line}");
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_bad_ones_are_named() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec { kind: DeviceArg::Cpu, ordinal: 0 }));
        assert_eq!("cuda".parse(), Ok(DeviceSpec { kind: DeviceArg::Cuda, ordinal: 0 }));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec { kind: DeviceArg::Cuda, ordinal: 3 }));
        for bad in ["gpu:1", "cuda:x", "cpu:1", "cuda:-1", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.contains("expected `cpu` or `cuda:N`"), "{bad}: {err}");
        }
    }
}
