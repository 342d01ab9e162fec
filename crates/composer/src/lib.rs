//! The xcomposer pipeline: instruction → article text → image slots → candidates → chosen images →
//! Markdown / HTML / JSON, each stage a replaceable component.
//!
//! Filled by a later issue: the stage traits and their defaults, the `Article` model, renderers
//! and edit operations.
