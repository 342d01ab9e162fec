//! Fuzz target `gguf`: see `entries::gguf`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::gguf(data);
});
