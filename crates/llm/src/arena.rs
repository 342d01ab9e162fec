//! Block-encoded weights in transparent huge pages: a model's matrices are placed one after
//! another in a few large anonymous mappings marked `MADV_HUGEPAGE`, so that a decode step's
//! sweep over all of them (87.5 MB a token for SmolLM2 Q4_0) takes a TLB entry per 2 MiB instead
//! of per 4 KiB. Each matrix of its own (about 0.5 MB on SmolLM2) is too small for a huge page.
//! Where the kernel gives no huge pages (THP off, another OS) the bytes are the same, in small
//! pages; where a mapping cannot be made they go to the heap.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// The size and alignment of a huge page on x86-64 and AArch64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// Virtual bytes the first region of an arena reserves (nothing is resident until written).
const FIRST_REGION: usize = 1 << 30;

/// Bytes of one weight matrix: a range of an [`Arena`]'s region, or a heap buffer.
pub struct WeightBytes {
    repr: Repr,
}

enum Repr {
    Heap(Vec<u8>),
    Region { region: Arc<Region>, offset: usize, len: usize },
}

impl WeightBytes {
    /// `len` zero bytes on the heap.
    pub fn heap(len: usize) -> Self {
        WeightBytes { repr: Repr::Heap(vec![0; len]) }
    }

    /// Whether the bytes lie in an arena's region (marked for huge pages), not on the heap.
    pub fn in_region(&self) -> bool {
        matches!(self.repr, Repr::Region { .. })
    }
}

impl Deref for WeightBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            Repr::Heap(v) => v,
            // SAFETY: `offset..offset + len` lies inside the region's mapping (checked when
            // handed out), which lives as long as this `Arc`, and no other `WeightBytes` covers it.
            Repr::Region { region, offset, len } => unsafe { std::slice::from_raw_parts(region.base.add(*offset), *len) },
        }
    }
}

impl DerefMut for WeightBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.repr {
            Repr::Heap(v) => v,
            // SAFETY: as in `deref`; the range is this value's alone, and `&mut self` is unique.
            Repr::Region { region, offset, len } => unsafe { std::slice::from_raw_parts_mut(region.base.add(*offset), *len) },
        }
    }
}

impl Clone for WeightBytes {
    /// A copy on the heap.
    fn clone(&self) -> Self {
        WeightBytes { repr: Repr::Heap(self.to_vec()) }
    }
}

/// Hands out zeroed [`WeightBytes`] from large huge-page regions, one after another; a region
/// is unmapped when the last bytes from it are dropped.
#[derive(Default)]
pub struct Arena {
    /// The region being filled and the offset of its first free byte.
    current: Mutex<Option<(Arc<Region>, usize)>>,
}

impl Arena {
    /// An arena with no region yet (the first is reserved by the first [`Arena::alloc`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// `len` zero bytes: the next bytes of the current region, of a new region (twice the last
    /// one's size, or enough for `len`) when it is full, or of the heap where no mapping can be
    /// made.
    pub fn alloc(&self, len: usize) -> WeightBytes {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let fits = |(r, next): &(Arc<Region>, usize)| next.checked_add(len).is_some_and(|end| end <= r.size);
        if !current.as_ref().is_some_and(fits) {
            let last = current.as_ref().map_or(FIRST_REGION / 2, |(r, _)| r.size);
            let Some(size) = last.checked_mul(2).map(|s| s.max(len.next_multiple_of(HUGE_PAGE))) else { return WeightBytes::heap(len) };
            match Region::map(size) {
                Some(r) => *current = Some((Arc::new(r), 0)),
                None => return WeightBytes::heap(len),
            }
        }
        let (region, next) = current.as_mut().expect("set above");
        let offset = *next;
        // Each matrix from a cache line of its own.
        *next = (offset + len).next_multiple_of(64).min(region.size);
        WeightBytes { repr: Repr::Region { region: region.clone(), offset, len } }
    }
}

/// An anonymous private mapping, its start aligned to a huge page and marked for them.
struct Region {
    /// The aligned start.
    base: *mut u8,
    /// Usable bytes from `base`.
    size: usize,
    /// The mapping `base` lies in (unmapped when dropped).
    _map: memmap2::MmapMut,
}

// SAFETY: the mapping is plain memory owned by the region; the `WeightBytes` that point into it
// cover disjoint ranges, each accessed through its own `&`/`&mut`.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `size` bytes (a multiple of [`HUGE_PAGE`]) without committing them; `None` when
    /// the system refuses the mapping.
    fn map(size: usize) -> Option<Region> {
        let total = size.checked_add(HUGE_PAGE)?;
        let mut map = memmap2::MmapOptions::new().len(total).no_reserve_swap().map_anon().ok()?;
        let p = map.as_mut_ptr();
        let start = p.align_offset(HUGE_PAGE);
        if start >= HUGE_PAGE {
            return None; // `base..base + size` would leave the mapping
        }
        // The advice only asks for huge pages; refused (THP off), the region stays in small pages.
        #[cfg(target_os = "linux")]
        let _ = map.advise_range(memmap2::Advice::HugePage, start, size);
        Some(Region { base: p.wrapping_add(start), size, _map: map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_zeroed_disjoint_and_outlive_the_arena() {
        let arena = Arena::new();
        let mut parts: Vec<WeightBytes> = [100, 4096, 1, 3 << 20, 77].into_iter().map(|n| arena.alloc(n)).collect();
        drop(arena);
        for (i, p) in parts.iter_mut().enumerate() {
            assert!(p.iter().all(|&b| b == 0), "allocation {i} is not zeroed");
            p.fill(i as u8 + 1);
        }
        for (i, p) in parts.iter().enumerate() {
            assert!(p.iter().all(|&b| b == i as u8 + 1), "allocation {i} was overwritten by another");
        }
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [100, 4096, 1, 3 << 20, 77]);
        let copy = parts[0].clone();
        assert!(!copy.in_region() && copy[..] == parts[0][..]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_region_is_followed_by_a_larger_one() {
        let arena = Arena::new();
        let a = arena.alloc(FIRST_REGION - 10);
        let b = arena.alloc(20);
        let c = arena.alloc(30);
        assert!(a.in_region() && b.in_region() && c.in_region());
        let (Repr::Region { region: ra, .. }, Repr::Region { region: rb, offset: ob, .. }, Repr::Region { region: rc, offset: oc, .. }) = (&a.repr, &b.repr, &c.repr) else { unreachable!() };
        assert!(!Arc::ptr_eq(ra, rb) && Arc::ptr_eq(rb, rc), "the 20 bytes do not fit the first region");
        assert_eq!((rb.size, *ob, *oc), (2 * FIRST_REGION, 0, 64));
        assert!((rb.base as usize).is_multiple_of(HUGE_PAGE));
    }
}
