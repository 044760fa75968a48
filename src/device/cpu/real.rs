//! The element types the CPU kernels are written for: f32 for training, f64 for the
//! finite-difference gradient checks. Kernels are generic over `Real`.

use super::gemm::{self, Kernel};
use super::isa;
use super::recycle::Bin;
use num_traits::Float;
use std::cell::RefCell;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::AddAssign;
use std::sync::Mutex;
use std::thread::LocalKey;

/// Per-thread free lists of scratch buffers, one per element type (see gemm::Scratch).
pub type ScratchPool<T> = RefCell<Vec<Vec<T>>>;

thread_local! {
    static SCRATCH_F32: ScratchPool<f32> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: ScratchPool<f64> = const { RefCell::new(Vec::new()) };
}

/// Dropped tensors' buffers, one bin per element type (see recycle.rs).
static BIN_F32: Mutex<Bin<f32>> = Mutex::new(Bin::empty());
static BIN_F64: Mutex<Bin<f64>> = Mutex::new(Bin::empty());

pub trait Real: Float + Sum + AddAssign + Default + Debug + Send + Sync + 'static {
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// The gemm register-tile kernel for this type on this CPU for a gemm of `n` columns (see
    /// gemm.rs).
    fn microkernel(n: usize) -> Kernel<Self>;
    /// The values as f32, if this is f32: the kernels that exist only in f32 (bf16 products).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// This thread's pool of reusable scratch buffers of this type.
    fn scratch_pool() -> &'static LocalKey<ScratchPool<Self>>;
    /// The process's bin of dropped tensor buffers of this type.
    fn bin() -> &'static Mutex<Bin<Self>>;
}

impl Real for f32 {
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn microkernel(n: usize) -> Kernel<f32> {
        gemm::kernel_f32(isa::active(), n)
    }
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
    fn scratch_pool() -> &'static LocalKey<ScratchPool<f32>> {
        &SCRATCH_F32
    }
    fn bin() -> &'static Mutex<Bin<f32>> {
        &BIN_F32
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    // f64 only serves the gradient checks: correctness matters, speed does not.
    fn microkernel(_n: usize) -> Kernel<f64> {
        Kernel::Tile6x16(gemm::kernel_generic::<f64, 6, 16>)
    }
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
    fn scratch_pool() -> &'static LocalKey<ScratchPool<f64>> {
        &SCRATCH_F64
    }
    fn bin() -> &'static Mutex<Bin<f64>> {
        &BIN_F64
    }
}
