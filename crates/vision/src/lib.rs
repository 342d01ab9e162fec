//! Image input and vision encoders of xcomposer, used by stage 3 of composition (tagging library
//! images) and by image comprehension (the EVA-ViT + perceive sampler of InternLM-XComposer).
//!
//! Filled by later issues: image decoding and preprocessing, the EfficientNet-Lite0 tagger, and
//! the XComposer visual encoder.
