//! Process-wide allocator settings that keep the CPU engine's peak resident memory near its goal
//! (issue 15: at most 1.5 × the GGUF file plus the KV cache), and this process's resident memory
//! as Linux reports it, for the benchmarks that check that goal.

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

/// Resident memory of this process in MiB (Linux's VmRSS), if known.
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// Peak resident memory of this process in MiB (Linux's VmHWM), if known.
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Starts [`peak_rss_mib`] again from the memory resident now (Linux: writes 5 to
/// /proc/self/clear_refs); false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `kB` field of /proc/self/status (`VmRSS:`, `VmHWM:`) in MiB.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_threshold() {
        assert!(super::return_large_buffers_to_the_os(), "mallopt(M_MMAP_THRESHOLD) refused");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_peak_starts_again_from_what_is_resident() {
        // 256 MiB touched (ones, not zeroed pages), far more than the other tests hold meanwhile.
        let big = vec![1u8; 256 << 20];
        std::hint::black_box(&big);
        let peak = super::peak_rss_mib().unwrap();
        assert!(peak >= 256.0, "peak {peak} MiB with 256 MiB touched");
        drop(big);
        assert!(super::reset_peak_rss(), "/proc/self/clear_refs not writable");
        let after = super::peak_rss_mib().unwrap();
        assert!(after < peak - 128.0, "peak {after} MiB after the reset, {peak} before");
        assert!(super::rss_mib().unwrap() > 0.0, "VmRSS read");
    }
}
