//! The small GPU-runtime interface the `cuda` device is written against: allocate, free, copy,
//! zero, launch a kernel by name with `cuLaunchKernel`'s `void**` parameter array, synchronise.
//! Two implementations: the real driver (`driver.rs`, through cudarc) and the emulator
//! (`emu.rs`, the same kernels compiled for the CPU). Errors are plain messages here; `Gpu`
//! adds the context (kernel name, launch shape, requested size).

use std::ffi::c_void;

pub trait Runtime: Send + Sync {
    /// A device allocation of `bytes` (> 0), as a device address.
    fn alloc(&self, bytes: usize) -> Result<u64, String>;
    /// # Safety
    /// `ptr` came from `alloc` of this runtime and is not used afterwards.
    unsafe fn free(&self, ptr: u64);
    /// # Safety
    /// `dst` is a live allocation with room for `src.len()` bytes.
    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<(), String>;
    /// # Safety
    /// `src` is a live allocation holding at least `dst.len()` bytes.
    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<(), String>;
    /// # Safety
    /// Both are live allocations of at least `bytes`.
    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), String>;
    /// # Safety
    /// `dst` is a live allocation of at least `bytes`.
    unsafe fn fill_bytes(&self, dst: u64, value: u8, bytes: usize) -> Result<(), String>;
    /// # Safety
    /// `params[i]` points at the i-th kernel argument, of the type the kernel declares; device
    /// pointers among them are live allocations large enough for what the kernel touches.
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), String>;
    /// Lets `kernel` use up to `bytes` of dynamic shared memory per block (above 48 KiB a GPU
    /// needs this opt-in).
    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), String>;
    fn synchronize(&self) -> Result<(), String>;
    /// Runs `work` (which queues launches) and returns the device time it took in ms, measured
    /// as the GPU sees it: CUDA events recorded before and after on the launch stream.
    fn time_ms(&self, work: &mut dyn FnMut()) -> Result<f64, String>;
    /// Free device memory in bytes, where the runtime knows it.
    fn free_memory(&self) -> Option<usize>;
}
