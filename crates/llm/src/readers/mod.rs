//! The readers of model files that users hand in, in one place so they are easy to find and to
//! check: GGUF ([`gguf`]), PyTorch zip and legacy pickles ([`torch`]), safetensors
//! ([`safetensors`]), the shard indexes that list a sharded checkpoint's files
//! ([`shard_index`]), capped reads of regular files ([`capped`]) and the optional fields of JSON
//! configurations ([`fields`]). Every size, offset and count
//! read from a file is checked before it is used, and a refusal names the file and the field.

pub mod capped;
pub mod fields;
pub mod gguf;
pub mod safetensors;
pub mod shard_index;
pub mod torch;
