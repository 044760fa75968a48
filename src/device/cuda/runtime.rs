//! The small GPU-runtime interface the `cuda` device is written against: allocate, free, copy,
//! zero, launch a kernel by name with `cuLaunchKernel`'s `void**` parameter array, synchronise.
//! Two implementations: the real driver (`driver.rs`, through cudarc) and the emulator
//! (`emu.rs`, the same kernels compiled for the CPU). Errors are plain messages here; `Gpu`
//! adds the context (kernel name, launch shape, requested size).

use std::ffi::c_void;

/// Where queued work goes: the kernels and most copies on `Compute`; a training step's uploads
/// on `Copy`, so that they overlap the previous step's kernels (`graph.rs`); the gradients'
/// collectives (NCCL) on `Comm`, so that they overlap the rest of the backward (`dist::nccl`).
/// Work on one queue is ordered; across queues only by events (`record_event`, `queue_wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    Compute,
    Copy,
    Comm,
}

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

    // Copies that do not wait. The defaults are the emulator's: its launches run to completion
    // as they are made, so a queued copy can be done at once, every event is already done and
    // the two queues are one. The driver queues them on its streams, from page-locked memory.

    /// Page-locked host memory of `bytes` (> 0), which copies that do not wait need.
    fn host_alloc(&self, bytes: usize) -> Result<*mut u8, String> {
        let layout = std::alloc::Layout::from_size_align(bytes, 64).map_err(|e| e.to_string())?;
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(format!("{bytes} bytes of host memory"));
        }
        Ok(ptr)
    }
    /// # Safety
    /// `ptr` came from `host_alloc(bytes)` of this runtime, no queued copy uses it, and it is
    /// not used afterwards.
    unsafe fn host_free(&self, ptr: *mut u8, bytes: usize) {
        std::alloc::dealloc(ptr, std::alloc::Layout::from_size_align(bytes, 64).unwrap());
    }
    /// Queues on `queue` a copy of `bytes` from host memory of `host_alloc` to `dst`, and
    /// returns at once.
    /// # Safety
    /// `src` stays valid and unchanged until an event recorded after this copy is done; `dst`
    /// is a live allocation of at least `bytes` that no work queued on another queue uses
    /// unless ordered by events.
    unsafe fn upload_async(
        &self,
        dst: u64,
        src: *const u8,
        bytes: usize,
        _queue: Queue,
    ) -> Result<(), String> {
        self.upload(dst, std::slice::from_raw_parts(src, bytes))
    }
    /// Queues a copy of `bytes` from `src` to host memory of `host_alloc` after the work
    /// queued so far, and returns at once.
    /// # Safety
    /// `dst` stays valid and unread until an event recorded after this copy is done; `src`
    /// is a live allocation of at least `bytes`.
    unsafe fn download_async(&self, src: u64, dst: *mut u8, bytes: usize) -> Result<(), String> {
        self.download(src, std::slice::from_raw_parts_mut(dst, bytes))
    }
    /// An event after the work queued so far on `queue` (a handle for the calls below).
    fn record_event(&self, _queue: Queue) -> Result<u64, String> {
        Ok(0)
    }
    /// Makes the work queued on `queue` from now on wait for `event`, on the device.
    fn queue_wait(&self, _queue: Queue, _event: u64) -> Result<(), String> {
        Ok(())
    }
    /// Whether the work before `event` is done, without waiting.
    fn event_done(&self, _event: u64) -> Result<bool, String> {
        Ok(true)
    }
    /// Waits until the work before `event` is done.
    fn wait_event(&self, _event: u64) -> Result<(), String> {
        Ok(())
    }
    /// # Safety
    /// `event` came from `record_event` of this runtime and is not used afterwards.
    unsafe fn destroy_event(&self, _event: u64) {}
    /// `queue`'s stream as a raw `CUstream`, with the device's context made current on this
    /// thread: for a library that queues its own work (NCCL). The emulator has none.
    fn native_stream(&self, _queue: Queue) -> Result<*mut c_void, String> {
        Err("the emulator runs no outside GPU library (NCCL)".into())
    }

    // Graphs (`graph.rs`). The emulator has none: there `Gpu` replays a step's recorded work
    // one launch at a time.

    fn has_graphs(&self) -> bool {
        false
    }
    /// From now on the launches and copies queued are captured into a graph, not run.
    fn begin_capture(&self) -> Result<(), String> {
        Err("this runtime has no graphs".into())
    }
    /// Ends the capture: the graph, ready to launch.
    fn end_capture(&self) -> Result<u64, String> {
        Err("this runtime has no graphs".into())
    }
    /// Queues the graph's work after the work queued so far.
    fn launch_graph(&self, _graph: u64) -> Result<(), String> {
        Err("this runtime has no graphs".into())
    }
    /// # Safety
    /// `graph` came from `end_capture` of this runtime and is not used afterwards.
    unsafe fn destroy_graph(&self, _graph: u64) {}
}
