//! Fuzz target `safetensors`: see `entries::safetensors`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::safetensors(data);
});
