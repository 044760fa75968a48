//! The CPU device: plain Rust over slices, parallel with rayon. These functions are the
//! reference every other device's kernels are checked against, and generic over the element
//! type so that the gradient checks can run them in f64.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod batchnorm;
pub mod conv;
#[cfg(target_arch = "x86_64")]
pub mod conv_amx;
pub mod elementwise;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub mod gemm_amx;
pub mod gemm_bf16;
pub mod isa;
pub mod loss;
pub mod normalize;
pub mod ntxent;
pub mod optim;
pub mod pool;
pub mod real;
pub mod recycle;
pub mod sk;

/// Keeps freed buffers in the process. Every op allocates its output, and glibc serves large
/// allocations with fresh mmap'd pages by default, so each step paid a page fault per 4 KiB
/// of activations; with a high mmap threshold and no trimming, steps reuse the same memory.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Uniform values in [-1, 1), seeded: the kernels' tests compare against naive references on
/// fresh random inputs.
#[cfg(test)]
pub(crate) fn random_vec<T: real::Real>(len: usize, seed: u64) -> Vec<T> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..len)
        .map(|_| T::from_f64(rng.range(-1.0, 1.0)))
        .collect()
}
