//! Image input and vision encoders of xcomposer, used by stage 3 of composition (tagging library
//! images) and by image comprehension.
//!
//! - [`input`]: decoding real-world files into upright 8-bit RGB ([`ImageInput`]);
//! - [`resize`] and [`preprocess`]: Pillow-exact bicubic resizing and the resize → crop →
//!   normalise chains of each reference model ([`Preprocess`]);
//! - [`efficientnet`] and [`tagger`]: EfficientNet-Lite0 in burn and the [`ImageTagger`] that
//!   turns photos into ImageNet tags and pooled features;
//! - [`xcomposer`]: the InternLM-XComposer vision-language family (image encoder, LoRA merge,
//!   tokenizer, prompt protocol, the model).
//!
//! ```no_run
//! use burn::backend::Flex;
//! use xcomposer_vision::{ImageInput, ImageTagger};
//!
//! let models = xcomposer_llm::fetch::models_dir();
//! let tagger = ImageTagger::<Flex>::load_default(&models, &Default::default(), &mut |m| eprintln!("{m}"))?;
//! let photo = ImageInput::default().open("coffee.png".as_ref())?;
//! let tags = &tagger.tag(&[&photo.rgb], 5)[0].tags;
//! println!("{} ({:.2})", tags[0].label, tags[0].probability);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod efficientnet;
pub mod input;
pub mod preprocess;
pub mod resize;
pub mod tagger;
pub mod xcomposer;

pub use efficientnet::{EfficientNet, EfficientNetConfig};
pub use input::{Alpha, DecodedImage, ImageError, ImageInput, ImageLimits};
pub use preprocess::Preprocess;
pub use tagger::{ImageNetLabels, ImageTagger, Tag, TaggerError, Tagging};
pub use xcomposer::visual::{EvaVit, PerceiveSampler, VisualConfig, XComposerVisual};
