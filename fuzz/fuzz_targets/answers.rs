//! Fuzz target `answers`: see `entries::answers`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::answers(data);
});
