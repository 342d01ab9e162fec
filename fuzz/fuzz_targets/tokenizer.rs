//! Fuzz target `tokenizer`: see `entries::tokenizer`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::tokenizer(data);
});
