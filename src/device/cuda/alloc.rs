//! A caching allocator: freed device buffers go to a free list keyed by their rounded size and
//! are handed out again, so that once a training step has run, the next one asks the driver for
//! nothing (every step allocates the same sizes). The high-water mark of bytes in use is what
//! tests use to bound a kernel's extra memory.
//!
//! A free list hands out its lowest address first, so the blocks a step gets depend only on
//! which blocks are free, not on the order earlier steps freed them in: a step that allocates
//! and frees as the last one did gets the very same addresses, and can replay the last one's
//! CUDA graph (`graph.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};

/// Sizes round up to this granularity, so near-equal requests share a free list.
const GRANULE: usize = 512;

pub fn rounded(bytes: usize) -> usize {
    bytes.max(1).div_ceil(GRANULE) * GRANULE
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Bytes in live buffers (rounded sizes).
    pub in_use: usize,
    /// The most bytes in use at once since the last `reset_peak`.
    pub peak: usize,
    /// Bytes held in free lists, ready for reuse.
    pub cached: usize,
    /// Allocations that went to the driver (or the emulator's host allocator).
    pub driver_allocs: usize,
}

#[derive(Default)]
pub struct Cache {
    free: HashMap<usize, BTreeSet<u64>>,
    /// Blocks with an owner of their own (a step's upload buffers, `graph.rs`): their buffers'
    /// drops do not free them.
    reserved: HashSet<u64>,
    pub stats: MemStats,
}

impl Cache {
    /// A cached block of `size` (already rounded) bytes, if one is free.
    pub fn take(&mut self, size: usize) -> Option<u64> {
        let ptr = self.free.get_mut(&size)?.pop_first()?;
        self.stats.cached -= size;
        self.note_in_use(size);
        Some(ptr)
    }

    /// Books a fresh driver allocation of `size` bytes.
    pub fn note_driver_alloc(&mut self, size: usize) {
        self.stats.driver_allocs += 1;
        self.note_in_use(size);
    }

    fn note_in_use(&mut self, size: usize) {
        self.stats.in_use += size;
        self.stats.peak = self.stats.peak.max(self.stats.in_use);
    }

    pub fn give_back(&mut self, ptr: u64, size: usize) {
        if ptr == 0 || self.reserved.contains(&ptr) {
            return; // the stand-in for an allocation that failed (never booked), or reserved
        }
        self.stats.in_use -= size;
        self.stats.cached += size;
        self.free.entry(size).or_default().insert(ptr);
    }

    /// Takes a live block out of the allocator's hands for good: its buffers' drops leave it
    /// alone (its owner frees it when the GPU closes).
    pub fn reserve(&mut self, ptr: u64) {
        self.reserved.insert(ptr);
    }

    /// Empties the free lists (before retrying an allocation the driver refused).
    pub fn drain(&mut self) -> Vec<u64> {
        self.stats.cached = 0;
        self.free.drain().flat_map(|(_, ptrs)| ptrs).collect()
    }

    pub fn reset_peak(&mut self) {
        self.stats.peak = self.stats.in_use;
    }
}
