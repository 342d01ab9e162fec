//! Fuzz target `shard_index`: see `entries::shard_index`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::shard_index(data);
});
