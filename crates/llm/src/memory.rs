//! Process-wide allocator settings that keep the CPU engine's peak resident memory near its goal
//! (issue 15: at most 1.5 × the GGUF file plus the KV cache).

/// Buffers of at least this many bytes are mapped from the OS and given back to it when freed; a
/// step's logits over a 49,152-token vocabulary (192 KiB) stay below it, on the heap.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. Left to itself glibc raises the threshold
/// to the size of each large buffer freed, after which such buffers (KV caches, prefill chunks)
/// come from the heap and stay resident once freed: `bench llm` on SmolLM2 Q4_0 (three runs each of
/// pp512, tg128 and tg128 after the prompt, at 1 and 2 threads) peaked at 161 MiB without this
/// and 152 with it (1.5 × the file + the KV cache: 159.3). Returns whether the setting took (never
/// off glibc). Call it once, early, from a program (it affects the whole process).
pub fn return_large_buffers_to_the_os() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes a malloc parameter; any value is accepted or refused.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_threshold() {
        assert!(super::return_large_buffers_to_the_os(), "mallopt(M_MMAP_THRESHOLD) refused");
    }
}
