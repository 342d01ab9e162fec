//! Fuzz target `torch`: see `entries::torch`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::torch(data);
});
