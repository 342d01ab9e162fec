//! Choosing the burn backend from `--device`, and resolving the model path.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xcomposer_composer::Language;
use xcomposer_llm::fetch;

/// Where tensors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU (burn-flex).
    Cpu,
    /// An NVIDIA GPU (burn-cuda; needs a build with `--features cuda`).
    Cuda,
}

/// The float type tensors are created in (burn 0.21 takes it from the device's settings, not
/// from the backend's type parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (CUDA).
    F16,
}

impl DtypeArg {
    /// Bytes a value takes.
    pub fn bytes(self) -> u64 {
        match self {
            DtypeArg::F32 => 4,
            DtypeArg::F16 => 2,
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            DtypeArg::F32 => "f32",
            DtypeArg::F16 => "f16",
        }
    }
}

/// A block format for the fused engine's weights (`--quant`), quantized at load as ggml does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantArg {
    /// 4-bit quants, an f16 scale per 32 (4.5 bits per weight); the LM head in Q8_0.
    #[value(name = "q4_0")]
    Q4_0,
    /// 8-bit quants, an f16 scale per 32 (8.5 bits per weight).
    #[value(name = "q8_0")]
    Q8_0,
}

/// What runs InternLM-XComposer's decoder on `--device cuda`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// The fused CUDA engine (its own kernels, preallocated KV cache, cuBLAS prefill).
    Fused,
    /// burn-cuda's operations (the reference path on the GPU).
    Burn,
}

/// `--device`, `--dtype` and `--engine`, shared by the commands that run a model on a chosen device.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeviceOptions {
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// The float type the model runs in (one per process: burn fixes a device's float type at its
    /// first tensor).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    /// What runs the decoder (InternLM-XComposer's, or `generate`'s model) on `--device cuda`
    /// (the CPU always uses burn).
    #[arg(long, value_enum, default_value_t = EngineArg::Fused)]
    pub engine: EngineArg,
    /// Keep the decoder's weights in this block format (`--device cuda --dtype f16`, fused engine
    /// only); unset, they stay in `--dtype`.
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
    /// Positions the fused engine's KV cache holds per sequence (default: the model's context,
    /// 2,048 for InternLM-XComposer); fewer leave GPU memory free, longer inputs are refused.
    #[arg(long, value_name = "POSITIONS")]
    pub max_context: Option<usize>,
}

impl DeviceOptions {
    /// The decoder's engine these options ask for; `--quant` anywhere but the fused f16 engine on
    /// CUDA is refused.
    pub fn engine_choice(&self) -> Result<xcomposer_llm::text_decoder::EngineChoice> {
        use xcomposer_llm::text_decoder::EngineChoice;
        if let Some(q) = self.quant
            && (self.device != DeviceArg::Cuda || self.engine != EngineArg::Fused || self.dtype != DtypeArg::F16)
        {
            bail!("--quant {} runs on the fused engine only: add --device cuda --dtype f16 (and no --engine burn)", q.name());
        }
        if self.max_context.is_some() && (self.device != DeviceArg::Cuda || self.engine != EngineArg::Fused) {
            bail!("--max-context sizes the fused engine's KV cache: add --device cuda (and no --engine burn)");
        }
        if self.max_context == Some(0) {
            bail!("--max-context 0: the KV cache needs at least 1 position");
        }
        Ok(match (self.device, self.engine) {
            #[cfg(feature = "cuda")]
            (DeviceArg::Cuda, EngineArg::Fused) => {
                let dtype = match self.dtype {
                    DtypeArg::F16 => xcomposer_llm::cuda::EngineDtype::F16,
                    DtypeArg::F32 => xcomposer_llm::cuda::EngineDtype::F32,
                };
                let quant = self.quant.map(QuantArg::engine);
                EngineChoice::Cuda(xcomposer_llm::cuda::EngineOptions { dtype, quant, max_positions: self.max_context, ..Default::default() })
            }
            _ => EngineChoice::Burn,
        })
    }

    /// Refuses `--quant` (and `--max-context`, the other option of that decoder's fused engine)
    /// where no InternLM decoder runs (`command` names the command or mode).
    pub fn refuse_quant(&self, command: &str) -> Result<()> {
        if self.max_context.is_some() {
            bail!("--max-context applies to InternLM-XComposer's decoder (--xcomposer DIR) on the fused engine; {command} runs none");
        }
        match self.quant {
            Some(q) => bail!("--quant {} applies to InternLM-XComposer's decoder (--xcomposer DIR); {command} runs none", q.name()),
            None => Ok(()),
        }
    }
}

impl QuantArg {
    /// The name as typed.
    pub fn name(self) -> &'static str {
        match self {
            QuantArg::Q4_0 => "q4_0",
            QuantArg::Q8_0 => "q8_0",
        }
    }

    /// The engine's format.
    #[cfg(feature = "cuda")]
    pub fn engine(self) -> xcomposer_llm::cuda::WeightQuant {
        match self {
            QuantArg::Q4_0 => xcomposer_llm::cuda::WeightQuant::Q4_0,
            QuantArg::Q8_0 => xcomposer_llm::cuda::WeightQuant::Q8_0,
        }
    }
}

/// Makes `dtype` the device's float type; call before any tensor is created on it.
pub fn set_float_dtype<B: burn::tensor::backend::Backend>(device: &B::Device, dtype: DtypeArg) -> Result<()> {
    let d = match dtype {
        DtypeArg::F32 => return Ok(()),
        DtypeArg::F16 => burn::tensor::DType::F16,
    };
    burn::tensor::set_default_dtypes::<B>(device, d, burn::tensor::DType::I32).map_err(|e| anyhow::anyhow!("--dtype f16 on this device: {e:?}"))
}

/// Calls `$body` with the backend type `B` and its device bound, per `--device`.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, |$dev:ident: $b:ident| $body:expr) => {{
        match $device {
            $crate::backend::DeviceArg::Cpu => {
                type $b = burn::backend::Flex;
                let $dev: burn::tensor::Device<$b> = Default::default();
                $body
            }
            $crate::backend::DeviceArg::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    type $b = burn::backend::Cuda;
                    let $dev: burn::tensor::Device<$b> = Default::default();
                    $body
                }
                #[cfg(not(feature = "cuda"))]
                {
                    anyhow::bail!("this xcomposer was built without CUDA; rebuild with `cargo build --release --features cuda`")
                }
            }
        }
    }};
}

/// The model to load: `--model`, or the default (English) model, fetched on first use.
pub fn resolve_model(model: Option<PathBuf>) -> Result<PathBuf> {
    resolve_model_for(model, Language::En)
}

/// The model to load for text in `language`: `--model`, else the default for that language,
/// fetched on first use (SmolLM2-135M for English; Qwen2.5-Coder-0.5B for Chinese, which SmolLM2
/// cannot write).
pub fn resolve_model_for(model: Option<PathBuf>, language: Language) -> Result<PathBuf> {
    match model {
        Some(p) => {
            if !p.exists() {
                bail!("--model {}: no such file or folder (expected a .gguf file or a Hugging Face model folder)", p.display());
            }
            Ok(p)
        }
        None => default_model(language, &fetch::models_dir()),
    }
}

/// The default model for `language` in `models_dir`, fetched on first use.
fn default_model(language: Language, models_dir: &Path) -> Result<PathBuf> {
    let fetched = match language {
        Language::Zh => crate::models::fetch_split(&fetch::QWEN25_CODER_05B, models_dir)?,
        Language::En => fetch::ensure(&fetch::SMOLLM2_135M, models_dir, &mut |m| eprintln!("[models] {m}")).context("fetching the default model")?,
    };
    Ok(fetched.path().to_path_buf())
}

pub use xcomposer_llm::memory::{peak_rss_mib, reset_peak_rss};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_gets_qwen_and_english_smollm2() {
        // A planted file that is not the pinned one is reported (never downloaded over), which
        // names the model each language picked without fetching anything.
        let dir = std::env::temp_dir().join(format!("xcomposer-default-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(fetch::QWEN25_CODER_05B.file_name), b"planted").unwrap();
        std::fs::write(dir.join(fetch::SMOLLM2_135M.files[0].file_name), b"planted").unwrap();
        let zh = format!("{:#}", default_model(Language::Zh, &dir).unwrap_err());
        assert!(zh.contains("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") && zh.contains(fetch::QWEN25_CODER_05B.sha256), "{zh}");
        let en = format!("{:#}", default_model(Language::En, &dir).unwrap_err());
        assert!(en.contains("SmolLM2-135M-Instruct.Q4_1.gguf") && en.contains(fetch::SMOLLM2_135M.files[0].sha256), "{en}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
