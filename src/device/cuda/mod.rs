//! The `cuda` device: the ops' device side as launches of the hand-written kernels in
//! `kernels/*.cu`, over a small runtime interface with two implementations — the real driver
//! (cudarc) and the emulator (the same kernels compiled for the CPU). Each family module
//! (`conv.rs`, `batchnorm.rs`, ...) holds the launch-configuration maths beside its launches.
//!
//! Errors are sticky, as in CUDA itself: the first failed allocation or launch is recorded with
//! its context and later launches are skipped, so op code stays free of error plumbing and
//! callers check `Gpu::check` at step boundaries.

pub mod alloc;
pub mod batchnorm;
pub mod conv;
pub mod driver;
pub mod elementwise;
pub mod emu;
pub mod gemm;
pub mod loss;
pub mod normalize;
pub mod ntxent;
pub mod optim;
pub mod pool;
pub mod runtime;
pub mod sk;

/// The fatbins and ptxas reports build.rs produced.
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

use alloc::{Cache, MemStats};
pub use emu::Schedule;
use runtime::Runtime;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cuda device unavailable: {0}")]
    Unavailable(String),
    #[error(
        "this binary was built without nvcc, so it has no GPU kernels: install nvcc (a CUDA \
         toolkit, or in a venv: pip install nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
         nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85), set \
         NVCC=<path to nvcc> and rebuild"
    )]
    NoKernels,
    #[error("kernel {kernel} (grid {grid:?}, block {block:?}, {shared} B shared): {msg}")]
    Launch {
        kernel: String,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        msg: String,
    },
    #[error("out of device memory: {bytes} bytes requested with {in_use} in use, {} free ({msg})", free.map_or("unknown".into(), |f| format!("{f} bytes")))]
    OutOfMemory {
        bytes: usize,
        /// Bytes in live buffers when the request failed.
        in_use: usize,
        free: Option<usize>,
        msg: String,
    },
    #[error("{op}: {msg}")]
    Runtime { op: &'static str, msg: String },
}

struct Inner {
    name: String,
    runtime: Box<dyn Runtime>,
    cache: Mutex<Cache>,
    /// The first error since the last `check`.
    error: Mutex<Option<GpuError>>,
    /// Fill fresh buffers with NaN (the emulator), so that reads of unwritten memory show.
    poison: bool,
}

/// A GPU (real or emulated); a cheap handle, cloned into every buffer it allocates.
#[derive(Clone)]
pub struct Gpu(Arc<Inner>);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.name)
    }
}

impl PartialEq for Gpu {
    fn eq(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Device memory, returned to its GPU's cache when dropped.
pub struct Buffer {
    ptr: u64,
    bytes: usize,
    gpu: Gpu,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes on {:?})", self.bytes, self.gpu)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let size = alloc::rounded(self.bytes);
        self.gpu.0.cache.lock().unwrap().give_back(self.ptr, size);
    }
}

impl Clone for Buffer {
    /// A device-to-device copy.
    fn clone(&self) -> Buffer {
        let out = self.gpu.alloc_bytes(self.bytes);
        self.gpu.runtime_call("copy", || unsafe {
            self.gpu.0.runtime.copy(out.ptr, self.ptr, self.bytes)
        });
        out
    }
}

impl Buffer {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len_f32(&self) -> usize {
        self.bytes / 4
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

/// A kernel argument: a device pointer or a scalar, stored as cuLaunchKernel reads it.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    U32(u32),
    F32(f32),
}

impl From<&Buffer> for Arg {
    fn from(b: &Buffer) -> Arg {
        Arg::Ptr(b.ptr)
    }
}
impl From<&mut Buffer> for Arg {
    fn from(b: &mut Buffer) -> Arg {
        Arg::Ptr(b.ptr)
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg::I32(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}

impl Gpu {
    fn new(name: String, runtime: Box<dyn Runtime>, poison: bool) -> Gpu {
        Gpu(Arc::new(Inner {
            name,
            runtime,
            cache: Mutex::new(Cache::default()),
            error: Mutex::new(None),
            poison,
        }))
    }

    /// The emulator: the kernels compiled for the CPU, run under `schedule`.
    pub fn emu(schedule: Schedule) -> Gpu {
        Gpu::new(
            format!("emu ({} schedule)", schedule.name()),
            Box::new(emu::Emu::new(schedule)),
            true,
        )
    }

    /// GPU number `ordinal` through the driver.
    pub fn cuda(ordinal: usize) -> Result<Gpu, GpuError> {
        if kernels::NVCC_VERSION.is_none() {
            return Err(GpuError::NoKernels);
        }
        let (driver, name) = driver::Driver::new(ordinal).map_err(GpuError::Unavailable)?;
        Ok(Gpu::new(
            format!("cuda:{ordinal} ({name})"),
            Box::new(driver),
            false,
        ))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn is_emulated(&self) -> bool {
        self.0.poison
    }

    /// Returns (and clears) the first error since the last check, after waiting for the
    /// device to finish its queued work.
    pub fn check(&self) -> Result<(), GpuError> {
        self.runtime_call("synchronize", || self.0.runtime.synchronize());
        match self.0.error.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn failed(&self) -> bool {
        self.0.error.lock().unwrap().is_some()
    }

    fn record(&self, e: GpuError) {
        self.0.error.lock().unwrap().get_or_insert(e);
    }

    fn runtime_call(&self, op: &'static str, f: impl FnOnce() -> Result<(), String>) {
        if self.failed() {
            return;
        }
        if let Err(msg) = f() {
            self.record(GpuError::Runtime { op, msg });
        }
    }

    /// Memory from the cache, or from the driver when the cache has no block of this size. On a
    /// failed allocation the cache is emptied and the allocation retried once; if it still fails
    /// the error is recorded and the buffer is null (launches are skipped from then on).
    fn alloc_bytes(&self, bytes: usize) -> Buffer {
        let size = alloc::rounded(bytes);
        let cached = self.0.cache.lock().unwrap().take(size);
        let ptr = cached.unwrap_or_else(|| self.driver_alloc(size));
        let buf = Buffer {
            ptr,
            bytes,
            gpu: self.clone(),
        };
        if self.0.poison && ptr != 0 {
            self.runtime_call("fill", || unsafe {
                self.0.runtime.fill_bytes(ptr, 0xFF, size)
            });
        }
        buf
    }

    fn driver_alloc(&self, size: usize) -> u64 {
        let runtime = &self.0.runtime;
        let first = runtime.alloc(size).or_else(|_| {
            for ptr in self.0.cache.lock().unwrap().drain() {
                // SAFETY: cached blocks are owned by no buffer.
                unsafe { runtime.free(ptr) };
            }
            runtime.alloc(size)
        });
        match first {
            Ok(ptr) => {
                self.0.cache.lock().unwrap().note_driver_alloc(size);
                ptr
            }
            Err(msg) => {
                self.record(GpuError::OutOfMemory {
                    bytes: size,
                    in_use: self.memory().in_use,
                    free: runtime.free_memory(),
                    msg,
                });
                0 // a null buffer: launches are skipped from now on
            }
        }
    }

    /// `len` f32 values, contents undefined (NaN on the emulator).
    pub fn alloc_f32(&self, len: usize) -> Buffer {
        self.alloc_bytes(len * 4)
    }

    pub fn zeros_f32(&self, len: usize) -> Buffer {
        let buf = self.alloc_bytes(len * 4);
        self.runtime_call("memset", || unsafe {
            self.0.runtime.fill_bytes(buf.ptr, 0, len * 4)
        });
        buf
    }

    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.alloc_bytes(bytes.len());
        self.runtime_call("upload", || unsafe {
            self.0.runtime.upload(buf.ptr, bytes)
        });
        buf
    }

    /// The whole buffer as host values (zeros after an error).
    pub fn download<T: bytemuck::Pod>(&self, buf: &Buffer) -> Vec<T> {
        let mut out = vec![T::zeroed(); buf.bytes / std::mem::size_of::<T>()];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        self.runtime_call("download", || unsafe {
            self.0.runtime.download(buf.ptr, bytes)
        });
        out
    }

    /// Launches `kernel`; a failure is recorded (see `check`), and skipped after an earlier one.
    pub fn launch(
        &self,
        kernel: &'static str,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        args: &[Arg],
    ) {
        if self.failed() {
            return;
        }
        if let Err(e) = self.try_launch(kernel, grid, block, shared, args) {
            self.record(e);
        }
    }

    /// Launches `kernel` and returns its error instead of recording it (emulator tests).
    pub fn try_launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        args: &[Arg],
    ) -> Result<(), GpuError> {
        // Each argument's bytes sit in a u64 slot; params[i] points at slot i, as
        // cuLaunchKernel expects (it copies sizeof(parameter) bytes from each pointer).
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) => p,
                Arg::I32(v) => v as u32 as u64,
                Arg::U32(v) => v as u64,
                Arg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: the slots outlive the call; the family modules pass arguments of the types
        // their kernels declare, with buffers sized for the launch.
        unsafe {
            self.0
                .runtime
                .launch(kernel, grid, block, shared, &mut params)
        }
        .map_err(|msg| GpuError::Launch {
            kernel: kernel.to_string(),
            grid,
            block,
            shared,
            msg,
        })
    }

    /// One thread per element of an `n`-element output, in blocks of 256.
    pub fn launch_1d(&self, kernel: &'static str, n: usize, args: &[Arg]) {
        assert!(
            n <= MAX_ELEMENTS,
            "{kernel}: {n} elements exceed the kernels' int indexing"
        );
        let threads = 256;
        self.launch(
            kernel,
            [blocks_for(n, threads), 1, 1],
            [threads, 1, 1],
            0,
            args,
        );
    }

    pub fn memory(&self) -> MemStats {
        self.0.cache.lock().unwrap().stats
    }

    pub fn reset_peak_memory(&self) {
        self.0.cache.lock().unwrap().reset_peak();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for ptr in self.cache.get_mut().unwrap().drain() {
            // SAFETY: every buffer holds a clone of the Gpu, so none is alive here.
            unsafe { self.runtime.free(ptr) };
        }
    }
}

/// The most elements a kernel indexes with `int`: below 2³¹ with room for the last block's
/// threads and the widest grid-stride step (2²⁰), so no index computation can wrap.
pub const MAX_ELEMENTS: usize = (1 << 31) - (1 << 21);

/// Blocks of `threads` covering `n` items, for one-dimensional launches.
pub fn blocks_for(n: usize, threads: u32) -> u32 {
    (n.div_ceil(threads as usize)).max(1) as u32
}
