//! Recycled tensor buffers. A training step allocates the same activations and gradients every
//! step, and safe Rust fills a fresh buffer of floats before a kernel may write it: a memset of
//! every output that the kernel then overwrites, 10% of the ResNet-8 step. Instead, a dropped
//! cpu tensor's buffer waits here, and the backend's next output of the same length takes it
//! back, stale (but initialised) values and all, for a kernel that writes every element.

use super::real::Real;
use std::collections::VecDeque;

/// Smaller buffers are not kept: allocating and filling them costs little.
const MIN_BYTES: usize = 64 << 10;
/// The most that waits here. The oldest buffers go first: they are of shapes no longer in
/// use, such as a finished stage's.
const MAX_BYTES: usize = 2 << 30;

/// The buffers of one element type that wait for reuse, oldest first, at most `max` bytes.
pub struct Bin<T> {
    buffers: VecDeque<Vec<T>>,
    bytes: usize,
    max: usize,
}

impl<T> Bin<T> {
    /// No buffers yet, at most MAX_BYTES of them later (a `const fn`, for the statics).
    pub const fn empty() -> Self {
        Bin {
            buffers: VecDeque::new(),
            bytes: 0,
            max: MAX_BYTES,
        }
    }

    /// The newest buffer of `len` elements (the likeliest to be in cache), if one waits.
    pub(super) fn take(&mut self, len: usize) -> Option<Vec<T>> {
        let i = self.buffers.iter().rposition(|v| v.len() == len)?;
        let v = self.buffers.remove(i)?;
        self.bytes -= bytes(&v);
        Some(v)
    }

    /// Keeps `v`, making room by freeing the oldest buffers.
    pub(super) fn keep(&mut self, v: Vec<T>) {
        let size = bytes(&v);
        if !(MIN_BYTES..=self.max).contains(&size) {
            return;
        }
        while self.bytes + size > self.max {
            let old = self.buffers.pop_front().unwrap();
            self.bytes -= bytes(&old);
        }
        self.bytes += size;
        self.buffers.push_back(v);
    }
}

fn bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// A buffer of `len` elements whose values are unspecified (a dropped tensor's, or zeros): only
/// for an output that the kernel overwrites whole.
pub fn take<T: Real>(len: usize) -> Vec<T> {
    let kept = (len * size_of::<T>() >= MIN_BYTES)
        .then(|| T::bin().lock().unwrap().take(len))
        .flatten();
    kept.unwrap_or_else(|| vec![T::zero(); len])
}

/// Keeps a dropped tensor's buffer for `take`.
pub fn give_back<T: Real>(v: Vec<T>) {
    if bytes(&v) >= MIN_BYTES {
        T::bin().lock().unwrap().keep(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_comes_back_for_its_length_only() {
        // f64 and a length no other test uses, as tests share the bin.
        let len = (MIN_BYTES / 8) + 12_345;
        let v = vec![7.0f64; len];
        let ptr = v.as_ptr();
        give_back(v);
        assert!(take::<f64>(len - 1).iter().all(|&x| x == 0.0));
        let again = take::<f64>(len);
        assert_eq!((again.as_ptr(), again.len(), again[0]), (ptr, len, 7.0));
        // Taken, it is no longer there.
        assert!(take::<f64>(len).iter().all(|&x| x == 0.0));
    }

    #[test]
    fn small_buffers_are_not_kept() {
        let len = MIN_BYTES / 8 / 2 + 7;
        give_back(vec![1.0f64; len]);
        assert!(take::<f64>(len).iter().all(|&x| x == 0.0));
    }

    #[test]
    fn the_bin_frees_its_oldest_to_stay_under_its_bound() {
        let mut bin = Bin::<u8> {
            max: 3 * MIN_BYTES,
            ..Bin::empty()
        };
        for fill in 1..=3 {
            bin.keep(vec![fill; 2 * MIN_BYTES - fill as usize]);
            assert!(bin.bytes <= bin.max);
        }
        // Each new buffer pushed the one before out.
        assert_eq!(bin.buffers.len(), 1);
        assert_eq!(bin.take(2 * MIN_BYTES - 3).unwrap()[0], 3);
        assert_eq!(bin.bytes, 0);
        // Larger than the bound: not kept.
        bin.keep(vec![0; 3 * MIN_BYTES + 1]);
        assert!(bin.buffers.is_empty());
    }
}
