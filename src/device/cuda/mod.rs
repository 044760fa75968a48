//! The `cuda` device: the ops' device side as launches of the hand-written kernels in
//! `kernels/*.cu`, over a small runtime interface with two implementations — the real driver
//! (cudarc) and the emulator (the same kernels compiled for the CPU). Each family module
//! (`conv.rs`, `batchnorm.rs`, ...) holds the launch-configuration maths beside its launches.
//!
//! Errors are sticky, as in CUDA itself: the first failed allocation or launch is recorded with
//! its context and later launches are skipped, so op code stays free of error plumbing and
//! callers check `Gpu::check` at step boundaries.

pub mod alloc;
pub mod augment;
pub mod batchnorm;
pub mod conv;
pub mod driver;
pub mod elementwise;
pub mod emu;
pub mod gemm;
pub mod graph;
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
pub use runtime::Queue;
use runtime::Runtime;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    #[error("kernel {kernel} (grid {grid:?}, block {block:?}, {shared} B shared, arguments ({args})): {msg}")]
    Launch {
        kernel: String,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        /// The scalar arguments (the problem's sizes), `*` for each pointer.
        args: String,
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
    /// Synchronise after every launch (`SIMCLR_SYNC_LAUNCHES=1`), so that a fault while a
    /// kernel runs is reported under that kernel's name rather than a later one's.
    sync_launches: bool,
    /// Kernel launches so far.
    launches: AtomicUsize,
    /// Host waits for the device so far: synchronisations and blocking copies.
    host_syncs: AtomicUsize,
    /// Bytes copied host to device so far.
    h2d_bytes: AtomicUsize,
    /// Steps run as one graph launch so far.
    graph_launches: AtomicUsize,
    /// The step being recorded, the last steps' shapes and the graphs (`graph.rs`).
    steps: Mutex<graph::Steps>,
    /// Whether `steps` holds a recording under way.
    recording: AtomicBool,
    /// The page-locked buffers `upload_pinned` copies through, in turn.
    staging: Mutex<Staging>,
    /// The dynamic shared memory each kernel was allowed (a real GPU keeps the attribute, so
    /// it is set once, not before every launch).
    opted_in: Mutex<std::collections::HashMap<String, u32>>,
}

/// The page-locked host buffers that uploads without a wait copy through, oldest first. A
/// buffer is reused once the device has read it (its event is done), by an upload it fits; a
/// step's uploads (the batch, the labels, the optimiser's table) each find one of their size,
/// so the pool settles at a few buffers, and the host waits only when it is so far ahead of
/// the device that all of them are still being read.
#[derive(Default)]
struct Staging {
    slots: Vec<Slot>,
}

/// The most staging buffers: past this many the host waits for the oldest.
const MAX_STAGING: usize = 8;

struct Slot {
    ptr: *mut u8,
    bytes: usize,
    /// After the last copy out of it.
    event: u64,
}

// SAFETY: the raw pointers are page-locked host buffers only the staging's owner touches,
// under its mutex.
unsafe impl Send for Staging {}

/// What a GPU has been asked to do, counted exactly on the driver and the emulator alike: the
/// work of a training step, as `metrics.jsonl` logs it (the difference of two readings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub launches: usize,
    /// Times the host waited for the device: `check`'s synchronisations and the blocking copies
    /// (a copy from pageable host memory, or back to the host, waits for the queued work).
    pub host_syncs: usize,
    /// Allocations the caching allocator had to ask the driver for.
    pub driver_allocs: usize,
    pub h2d_bytes: usize,
    /// Steps run as one CUDA graph launch (their kernels are counted in `launches` too).
    pub graphs: usize,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, c: Counters) {
        self.launches += c.launches;
        self.host_syncs += c.host_syncs;
        self.driver_allocs += c.driver_allocs;
        self.h2d_bytes += c.h2d_bytes;
        self.graphs += c.graphs;
    }
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, before: Counters) -> Counters {
        Counters {
            launches: self.launches - before.launches,
            host_syncs: self.host_syncs - before.host_syncs,
            driver_allocs: self.driver_allocs - before.driver_allocs,
            h2d_bytes: self.h2d_bytes - before.h2d_bytes,
            graphs: self.graphs - before.graphs,
        }
    }
}

/// The dynamic shared memory a kernel may use without an opt-in.
const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;

/// The environment variable that turns on `Inner::sync_launches`.
pub const SYNC_LAUNCHES_VAR: &str = "SIMCLR_SYNC_LAUNCHES";

/// Added to errors a real GPU reports asynchronously, when launches are not synchronised.
const ASYNC_HINT: &str = "a fault while a kernel runs surfaces at a later launch or \
     synchronisation, so this may be an earlier kernel's: rerun with SIMCLR_SYNC_LAUNCHES=1 to \
     name it";

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

/// The element type of a device buffer: f32, or bf16 (activations and their gradients under
/// `--precision bf16`; see docs/ARCHITECTURE.md, "Precision").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    Bf16,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 => 2,
        }
    }

    /// The element type all of an op's activation `buffers` share (asserted).
    pub fn common(op: &str, buffers: &[&Buffer]) -> Elem {
        let elem = buffers[0].elem;
        for b in buffers {
            assert_eq!(b.elem, elem, "{op}: activation buffers mix element types");
        }
        elem
    }

    /// Asserts that `buffers` are f32: statistics, parameters and their gradients stay f32 under
    /// bf16 storage, and the kernels read them as f32.
    pub fn assert_f32<'a>(op: &str, buffers: impl IntoIterator<Item = &'a Buffer>) {
        for b in buffers {
            assert_eq!(b.elem, Elem::F32, "{op}: an f32-only buffer");
        }
    }

    /// A kernel's name for this element type: each kernel that handles activations exists as
    /// `name` (f32) and `name_bf16`, two instantiations of one template.
    pub fn pick(self, f32_kernel: &'static str, bf16_kernel: &'static str) -> &'static str {
        match self {
            Elem::F32 => f32_kernel,
            Elem::Bf16 => bf16_kernel,
        }
    }
}

/// Device memory, returned to its GPU's cache when dropped.
pub struct Buffer {
    ptr: u64,
    bytes: usize,
    elem: Elem,
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
        let mut out = self.gpu.alloc_bytes(self.bytes);
        out.elem = self.elem;
        self.gpu.copy_device(out.ptr, self.ptr, self.bytes);
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

    /// The number of elements of the buffer's type.
    pub fn len(&self) -> usize {
        self.bytes / self.elem.size()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn elem(&self) -> Elem {
        self.elem
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The device address, for an outside library that works in device memory (NCCL).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The same bytes taken as elements of type `elem`.
    pub fn with_elem(mut self, elem: Elem) -> Buffer {
        self.elem = elem;
        self
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

impl Arg {
    /// The argument's bytes in a u64 slot, as the kernel receives them.
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::U32(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

impl PartialEq for Arg {
    /// What the kernel receives is the same (so a NaN scalar equals itself).
    fn eq(&self, other: &Arg) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && self.slot() == other.slot()
    }
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
        let sync_launches = std::env::var(SYNC_LAUNCHES_VAR).is_ok_and(|v| v == "1");
        Gpu(Arc::new(Inner {
            name,
            runtime,
            cache: Mutex::new(Cache::default()),
            error: Mutex::new(None),
            poison,
            sync_launches,
            launches: AtomicUsize::new(0),
            host_syncs: AtomicUsize::new(0),
            h2d_bytes: AtomicUsize::new(0),
            graph_launches: AtomicUsize::new(0),
            steps: Mutex::new(graph::Steps::default()),
            recording: AtomicBool::new(false),
            staging: Mutex::new(Staging::default()),
            opted_in: Mutex::new(std::collections::HashMap::new()),
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
        self.stop_recording();
        self.0.host_syncs.fetch_add(1, Ordering::Relaxed);
        self.runtime_call("synchronize", || {
            self.0
                .runtime
                .synchronize()
                .map_err(|msg| self.with_hint(msg))
        });
        self.take_error()
    }

    /// Returns (and clears) the first error recorded so far, without waiting: right after a
    /// blocking copy back to the host, which has waited for the queued work already.
    pub fn take_error(&self) -> Result<(), GpuError> {
        match self.0.error.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `msg` with ASYNC_HINT where an error may belong to an earlier launch: on a real GPU
    /// whose launches are not synchronised (the emulator runs each launch to completion).
    fn with_hint(&self, msg: String) -> String {
        if self.0.poison || self.0.sync_launches {
            msg
        } else {
            format!("{msg} ({ASYNC_HINT})")
        }
    }

    /// Runs `work`, which queues launches, and returns how long the device took for it in ms
    /// (CUDA events on a real GPU; the host clock on the emulator, whose launches are
    /// synchronous). Benches time with this.
    pub fn time_ms(&self, mut work: impl FnMut()) -> Result<f64, GpuError> {
        self.stop_recording();
        self.0
            .runtime
            .time_ms(&mut work)
            .map_err(|msg| GpuError::Runtime {
                op: "event timing",
                msg: self.with_hint(msg),
            })
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
        let ptr = self.block(size);
        if self.0.poison && ptr != 0 {
            self.fill(ptr, 0xFF, size);
        }
        Buffer {
            ptr,
            bytes,
            elem: Elem::F32,
            gpu: self.clone(),
        }
    }

    /// A block of `size` (rounded) bytes, from the cache or the driver (0 after a failure).
    fn block(&self, size: usize) -> u64 {
        let cached = self.0.cache.lock().unwrap().take(size);
        cached.unwrap_or_else(|| self.driver_alloc(size))
    }

    /// Sets `bytes` bytes at `dst` to `value`, queued (or recorded, in a step).
    fn fill(&self, dst: u64, value: u8, bytes: usize) {
        if bytes > 0 && !self.record_op(|| graph::Op::Fill { dst, value, bytes }) {
            // SAFETY: `dst` is a live block of at least `bytes`.
            self.runtime_call("fill", || unsafe {
                self.0.runtime.fill_bytes(dst, value, bytes)
            });
        }
    }

    /// Copies `bytes` bytes from `src` to `dst` on the device, queued (or recorded).
    fn copy_device(&self, dst: u64, src: u64, bytes: usize) {
        if bytes > 0 && !self.record_op(|| graph::Op::Copy { dst, src, bytes }) {
            // SAFETY: both are live blocks of at least `bytes`.
            self.runtime_call("copy", || unsafe { self.0.runtime.copy(dst, src, bytes) });
        }
    }

    /// Queues an outside library's work (NCCL's collectives) on `queue`: `work` gets the
    /// queue's stream as a raw `CUstream`, with the device's context current. Never recorded
    /// into a step's graph: a recording ends here. A failure is recorded like a launch's.
    pub fn native(
        &self,
        op: &'static str,
        queue: Queue,
        work: impl FnOnce(*mut c_void) -> Result<(), String>,
    ) {
        self.stop_recording();
        let runtime = &self.0.runtime;
        self.runtime_call(op, || work(runtime.native_stream(queue)?));
    }

    /// Makes the work queued on `waiter` from now on wait, on the device, for the work queued
    /// so far on `on` (an event; the host does not wait). Ends a recording, as `native` does.
    pub fn order(&self, on: Queue, waiter: Queue) {
        self.stop_recording();
        let runtime = &self.0.runtime;
        self.runtime_call("queue order", || {
            let event = runtime.record_event(on)?;
            let waited = runtime.queue_wait(waiter, event);
            // SAFETY: from record_event; a queued wait keeps what it needs of it.
            unsafe { runtime.destroy_event(event) };
            waited
        });
    }

    fn driver_alloc(&self, size: usize) -> u64 {
        let runtime = &self.0.runtime;
        let first = runtime.alloc(size).or_else(|e| {
            // Inside a recorded step, cached blocks may still be used by recorded work not yet
            // queued: they cannot be freed.
            if self.0.recording.load(Ordering::Relaxed) {
                return Err(e);
            }
            // Queued work may still use cached blocks: let it finish before freeing them.
            let _ = runtime.synchronize();
            for ptr in self.0.cache.lock().unwrap().drain() {
                // SAFETY: cached blocks are owned by no buffer, and the device is idle.
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

    /// `len` values of type `elem`, contents undefined (NaN on the emulator).
    pub fn alloc(&self, len: usize, elem: Elem) -> Buffer {
        let mut buf = self.alloc_bytes(len * elem.size());
        buf.elem = elem;
        buf
    }

    /// The first `len` elements of each buffer, one after another in a new buffer of their
    /// type (device copies, recorded into a step like launches).
    pub fn concat(&self, parts: &[(&Buffer, usize)]) -> Buffer {
        let elem = parts[0].0.elem();
        let out = self.alloc(parts.iter().map(|(_, len)| len).sum(), elem);
        let mut at = out.ptr;
        for &(buf, len) in parts {
            assert!(
                buf.elem() == elem && len <= buf.len(),
                "concat: {len} elements of a {:?} buffer of {} into {elem:?}",
                buf.elem(),
                buf.len()
            );
            self.copy_device(at, buf.ptr, len * elem.size());
            at += (len * elem.size()) as u64;
        }
        out
    }

    pub fn zeros_f32(&self, len: usize) -> Buffer {
        self.zeros(len, Elem::F32)
    }

    /// `len` zeros of type `elem` (all-zero bits are 0.0 in f32 and bf16 alike).
    pub fn zeros(&self, len: usize, elem: Elem) -> Buffer {
        let buf = self.alloc(len, elem);
        self.fill(buf.ptr, 0, buf.bytes);
        buf
    }

    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Buffer {
        self.stop_recording();
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.alloc_bytes(bytes.len());
        self.0.host_syncs.fetch_add(1, Ordering::Relaxed);
        self.0.h2d_bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        self.runtime_call("upload", || unsafe {
            self.0.runtime.upload(buf.ptr, bytes)
        });
        buf
    }

    /// `data` on the device without the host waiting for the device: copied into a
    /// page-locked staging buffer (`Staging`), from which the device copies it after the work
    /// queued so far. Inside a recorded step (`graph.rs`), into the step's buffer for this
    /// upload, before the step's work.
    pub fn upload_pinned<T: bytemuck::Pod>(&self, data: &[T]) -> Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if let Some(ptr) = self.record_upload(bytes) {
            return Buffer {
                ptr,
                bytes: bytes.len(),
                elem: Elem::F32,
                gpu: self.clone(),
            };
        }
        let buf = self.alloc_bytes(bytes.len());
        self.stage_upload(buf.ptr, bytes, Queue::Compute);
        buf
    }

    /// Queues on `queue` the copy of `bytes` to `dst` through a staging buffer.
    fn stage_upload(&self, dst: u64, bytes: &[u8], queue: Queue) {
        if bytes.is_empty() || self.failed() {
            return;
        }
        let mut staging = self.0.staging.lock().unwrap();
        let (ptr, size) = match self.staging_slot(&mut staging, bytes.len()) {
            Ok(slot) => slot,
            Err(msg) => {
                self.record(GpuError::Runtime { op: "staging", msg });
                return;
            }
        };
        self.0.h2d_bytes.fetch_add(bytes.len(), Ordering::Relaxed);
        // SAFETY: the slot holds at least `bytes` and no copy uses it now; the event recorded
        // after the copy keeps it unchanged until the device has read it.
        let copied = unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len());
            self.0.runtime.upload_async(dst, ptr, bytes.len(), queue)
        };
        match self.event_after(copied, queue) {
            Ok(event) => staging.slots.push(Slot {
                ptr,
                bytes: size,
                event,
            }),
            Err(msg) => {
                // SAFETY: no copy uses the slot any more (`event_after` made sure).
                unsafe { self.0.runtime.host_free(ptr, size) };
                self.record(GpuError::Runtime { op: "upload", msg });
            }
        }
    }

    /// An event after a copy on `queue` that `queued` says was queued. On any failure the
    /// error comes back and no queued copy may still use the host memory: when the copy was
    /// queued but no event could follow it, the device is drained first.
    fn event_after(&self, queued: Result<(), String>, queue: Queue) -> Result<u64, String> {
        let runtime = &self.0.runtime;
        queued?;
        runtime.record_event(queue).inspect_err(|_| {
            let _ = runtime.synchronize();
        })
    }

    /// A staging buffer of at least `bytes` that no copy uses, taken out of the pool: the
    /// smallest idle one that fits, else a new one while the pool has room, else any idle one
    /// (replaced by a larger one), else the oldest once the device is done with it (the one
    /// host wait, counted).
    fn staging_slot(
        &self,
        staging: &mut Staging,
        bytes: usize,
    ) -> Result<(*mut u8, usize), String> {
        let runtime = &self.0.runtime;
        let idle: Vec<bool> = (staging.slots.iter())
            .map(|s| runtime.event_done(s.event).unwrap_or(false))
            .collect();
        let fit = (staging.slots.iter().enumerate())
            .filter(|&(i, s)| idle[i] && s.bytes >= bytes)
            .min_by_key(|(_, s)| s.bytes)
            .map(|(i, _)| i);
        let slot = match fit {
            Some(i) => staging.slots.remove(i),
            None if staging.slots.len() < MAX_STAGING => {
                return runtime.host_alloc(bytes).map(|ptr| (ptr, bytes));
            }
            None => match idle.iter().position(|&done| done) {
                Some(i) => staging.slots.remove(i),
                None => {
                    let oldest = staging.slots.remove(0);
                    self.0.host_syncs.fetch_add(1, Ordering::Relaxed);
                    if let Err(msg) = runtime.wait_event(oldest.event) {
                        // SAFETY: ours; after a failed wait the device is unusable anyway.
                        unsafe {
                            runtime.destroy_event(oldest.event);
                            runtime.host_free(oldest.ptr, oldest.bytes);
                        }
                        return Err(msg);
                    }
                    oldest
                }
            },
        };
        // SAFETY: the copy that used the slot is done.
        unsafe { runtime.destroy_event(slot.event) };
        if slot.bytes >= bytes {
            return Ok((slot.ptr, slot.bytes));
        }
        // SAFETY: idle and ours.
        unsafe { runtime.host_free(slot.ptr, slot.bytes) };
        runtime.host_alloc(bytes).map(|ptr| (ptr, bytes))
    }

    /// `buf`'s f32 values copied back to the host without waiting now: `Pending::wait` returns
    /// them, waiting only if the device has not got to the copy yet. The copy goes into a
    /// buffer of the staging pool, which goes back to the pool when the `Pending` drops.
    pub fn download_later(&self, buf: &Buffer) -> Pending {
        self.stop_recording();
        assert_eq!(buf.elem, Elem::F32, "download_later reads f32 values");
        let bytes = buf.bytes;
        let mut pending = Pending {
            gpu: self.clone(),
            slot: None,
            bytes,
            event: None,
        };
        if bytes == 0 || self.failed() {
            return pending;
        }
        let slot = self.staging_slot(&mut self.0.staging.lock().unwrap(), bytes);
        let (host, size) = match slot {
            Ok(slot) => slot,
            Err(msg) => {
                self.record(GpuError::Runtime { op: "staging", msg });
                return pending;
            }
        };
        pending.slot = Some((host, size));
        // SAFETY: `host` holds `bytes` and stays in `pending` until the copy is done.
        let copied = unsafe { self.0.runtime.download_async(buf.ptr, host, bytes) };
        match self.event_after(copied, Queue::Compute) {
            Ok(event) => pending.event = Some(event),
            Err(msg) => self.record(GpuError::Runtime {
                op: "download",
                msg,
            }),
        }
        pending
    }

    /// f32 values stored as `elem` (rounded to nearest even for bf16).
    pub fn upload_as(&self, data: &[f32], elem: Elem) -> Buffer {
        match elem {
            Elem::F32 => self.upload(data),
            Elem::Bf16 => {
                let bits: Vec<u16> = data
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect();
                let mut buf = self.upload(&bits);
                buf.elem = Elem::Bf16;
                buf
            }
        }
    }

    /// The buffer's values as f32, whatever its element type.
    pub fn download_f32(&self, buf: &Buffer) -> Vec<f32> {
        match buf.elem {
            Elem::F32 => self.download(buf),
            Elem::Bf16 => {
                let bits: Vec<u16> = self.download(buf);
                bits.into_iter()
                    .map(|b| half::bf16::from_bits(b).to_f32())
                    .collect()
            }
        }
    }

    /// The whole buffer as host values (zeros after an error).
    pub fn download<T: bytemuck::Pod>(&self, buf: &Buffer) -> Vec<T> {
        self.stop_recording();
        let mut out = vec![T::zeroed(); buf.bytes / std::mem::size_of::<T>()];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        self.0.host_syncs.fetch_add(1, Ordering::Relaxed);
        self.runtime_call("download", || unsafe {
            self.0.runtime.download(buf.ptr, bytes)
        });
        out
    }

    /// Launches `kernel`; a failure is recorded (see `check`), and skipped after an earlier one.
    /// Dynamic shared memory above the default 48 KiB gets the kernel's opt-in first.
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
        if shared > DEFAULT_DYNAMIC_SHARED {
            if let Err(e) = self.allow_dynamic_shared(kernel, shared) {
                self.record(e);
                return;
            }
        }
        let recorded = self.record_op(|| graph::Op::Launch {
            kernel,
            grid,
            block,
            shared,
            args: args.to_vec(),
        });
        if recorded {
            return;
        }
        let launched = self.try_launch(kernel, grid, block, shared, args);
        let result = launched.and_then(|()| match self.0.sync_launches {
            true => {
                self.0.host_syncs.fetch_add(1, Ordering::Relaxed);
                self.0.runtime.synchronize().map_err(|msg| {
                    let msg = format!("failed while running: {msg}");
                    launch_error(kernel, grid, block, shared, args, msg)
                })
            }
            false => Ok(()),
        });
        if let Err(e) = result {
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
        self.0.launches.fetch_add(1, Ordering::Relaxed);
        // Each argument's bytes sit in a u64 slot; params[i] points at slot i, as
        // cuLaunchKernel expects (it copies sizeof(parameter) bytes from each pointer).
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
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
        .map_err(|msg| launch_error(kernel, grid, block, shared, args, self.with_hint(msg)))
    }

    /// Lets `kernel` use up to `bytes` of dynamic shared memory per block: above 48 KiB a GPU
    /// refuses the launch without this opt-in (and so does the emulator).
    /// The emulator's opt-in is process-wide (one table for every emulated GPU), so there it
    /// is set every time.
    pub fn allow_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), GpuError> {
        let mut opted_in = self.0.opted_in.lock().unwrap();
        if !self.0.poison && opted_in.get(kernel) == Some(&bytes) {
            return Ok(());
        }
        self.0
            .runtime
            .set_max_dynamic_shared(kernel, bytes)
            .map_err(|msg| GpuError::Runtime {
                op: "dynamic shared memory opt-in",
                msg,
            })?;
        opted_in.insert(kernel.to_string(), bytes);
        Ok(())
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

    /// Kernel launches since this GPU was opened.
    pub fn launches(&self) -> usize {
        self.0.launches.load(Ordering::Relaxed)
    }

    /// Everything counted since this GPU was opened.
    pub fn counters(&self) -> Counters {
        Counters {
            launches: self.launches(),
            host_syncs: self.0.host_syncs.load(Ordering::Relaxed),
            driver_allocs: self.memory().driver_allocs,
            h2d_bytes: self.0.h2d_bytes.load(Ordering::Relaxed),
            graphs: self.0.graph_launches.load(Ordering::Relaxed),
        }
    }

    pub fn memory(&self) -> MemStats {
        self.0.cache.lock().unwrap().stats
    }

    pub fn reset_peak_memory(&self) {
        self.0.cache.lock().unwrap().reset_peak();
    }
}

/// Values on their way back to the host (`Gpu::download_later`).
pub struct Pending {
    gpu: Gpu,
    /// The staging buffer the copy writes into, and its size (None when there is none).
    slot: Option<(*mut u8, usize)>,
    bytes: usize,
    /// After the copy; None when it was never queued (an earlier error).
    event: Option<u64>,
}

impl Pending {
    /// The values (f32), waiting for the copy if the device has not done it yet (a host wait
    /// counted only then); zeros, and the error, after a failure (see `Gpu::take_error`).
    pub fn wait(self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.bytes / 4];
        let (Some(event), Some((host, _))) = (self.event, self.slot) else {
            return out;
        };
        let (gpu, runtime) = (&self.gpu, &self.gpu.0.runtime);
        let done = match runtime.event_done(event) {
            Ok(true) => Ok(()),
            _ => {
                gpu.0.host_syncs.fetch_add(1, Ordering::Relaxed);
                runtime.wait_event(event).map_err(|msg| gpu.with_hint(msg))
            }
        };
        match done {
            // SAFETY: the copy into `host` is done.
            Ok(()) => unsafe {
                std::ptr::copy_nonoverlapping(host, out.as_mut_ptr() as *mut u8, 4 * out.len())
            },
            Err(msg) => gpu.record(GpuError::Runtime {
                op: "download",
                msg,
            }),
        }
        out
    }
}

impl Drop for Pending {
    /// The staging buffer goes back to the pool, with the copy's event (the pool reuses it
    /// once that is done); without an event no copy uses it, and it is freed.
    fn drop(&mut self) {
        let Some((ptr, bytes)) = self.slot.take() else {
            return;
        };
        match self.event.take() {
            Some(event) => {
                let mut staging = self.gpu.0.staging.lock().unwrap();
                staging.slots.push(Slot { ptr, bytes, event });
            }
            // SAFETY: from the pool's host_alloc, and no copy uses it.
            None => unsafe { self.gpu.0.runtime.host_free(ptr, bytes) },
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Kernels of the last step may still use the memory freed below.
        let _ = self.runtime.synchronize();
        let steps = std::mem::take(self.steps.get_mut().unwrap());
        steps.release(self);
        for slot in self.staging.get_mut().unwrap().slots.drain(..) {
            // SAFETY: nothing can queue work any more; wait for the last copy, then free.
            let _ = self.runtime.wait_event(slot.event);
            unsafe {
                self.runtime.destroy_event(slot.event);
                self.runtime.host_free(slot.ptr, slot.bytes);
            }
        }
        for ptr in self.cache.get_mut().unwrap().drain() {
            // SAFETY: every buffer holds a clone of the Gpu, so none is alive here.
            unsafe { self.runtime.free(ptr) };
        }
    }
}

fn launch_error(
    kernel: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    args: &[Arg],
    msg: String,
) -> GpuError {
    let args: Vec<String> = args
        .iter()
        .map(|a| match *a {
            Arg::Ptr(_) => "*".to_string(),
            Arg::I32(v) => v.to_string(),
            Arg::U32(v) => v.to_string(),
            Arg::F32(v) => v.to_string(),
        })
        .collect();
    GpuError::Launch {
        kernel: kernel.to_string(),
        grid,
        block,
        shared,
        args: args.join(", "),
        msg,
    }
}

/// The most elements a kernel indexes with `int`: below 2³¹ with room for the last block's
/// threads and the widest grid-stride step (2²⁰), so no index computation can wrap.
pub const MAX_ELEMENTS: usize = (1 << 31) - (1 << 21);

/// Blocks of `threads` covering `n` items, for one-dimensional launches.
pub fn blocks_for(n: usize, threads: u32) -> u32 {
    (n.div_ceil(threads as usize)).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime that faults as a real GPU does: launching `faulty` succeeds, the fault shows
    /// at the next launch or synchronisation, and it stays (a sticky context error).
    #[derive(Default)]
    struct LateFaults {
        faulted: Mutex<bool>,
    }

    impl LateFaults {
        fn sticky(&self) -> Result<(), String> {
            match *self.faulted.lock().unwrap() {
                true => Err("CUDA_ERROR_ILLEGAL_ADDRESS".into()),
                false => Ok(()),
            }
        }
    }

    impl Runtime for LateFaults {
        fn alloc(&self, _: usize) -> Result<u64, String> {
            Ok(256)
        }
        unsafe fn free(&self, _: u64) {}
        unsafe fn upload(&self, _: u64, _: &[u8]) -> Result<(), String> {
            self.sticky()
        }
        unsafe fn download(&self, _: u64, _: &mut [u8]) -> Result<(), String> {
            self.sticky()
        }
        unsafe fn copy(&self, _: u64, _: u64, _: usize) -> Result<(), String> {
            self.sticky()
        }
        unsafe fn fill_bytes(&self, _: u64, _: u8, _: usize) -> Result<(), String> {
            self.sticky()
        }
        unsafe fn launch(
            &self,
            kernel: &str,
            _: [u32; 3],
            _: [u32; 3],
            _: u32,
            _: &mut [*mut c_void],
        ) -> Result<(), String> {
            self.sticky()?;
            if kernel == "faulty" {
                *self.faulted.lock().unwrap() = true;
            }
            Ok(())
        }
        fn set_max_dynamic_shared(&self, _: &str, _: u32) -> Result<(), String> {
            Ok(())
        }
        fn synchronize(&self) -> Result<(), String> {
            self.sticky()
        }
        fn time_ms(&self, work: &mut dyn FnMut()) -> Result<f64, String> {
            work();
            self.sticky().map(|()| 0.0)
        }
        fn free_memory(&self) -> Option<usize> {
            None
        }
    }

    /// The error `faulty` then `fine` leave, with launches synchronised or not.
    fn error_after_fault(sync_launches: bool) -> String {
        let mut gpu = Gpu::new("late".into(), Box::new(LateFaults::default()), false);
        Arc::get_mut(&mut gpu.0).unwrap().sync_launches = sync_launches;
        let out = gpu.alloc_f32(8);
        gpu.launch(
            "faulty",
            [3, 1, 1],
            [64, 1, 1],
            0,
            &[(&out).into(), 7i32.into()],
        );
        gpu.launch("fine", [1, 1, 1], [32, 1, 1], 0, &[(&out).into()]);
        gpu.check().unwrap_err().to_string()
    }

    #[test]
    fn unsynchronised_faults_name_a_later_kernel_and_say_how_to_find_it() {
        let e = error_after_fault(false);
        assert!(e.starts_with("kernel fine "), "{e}");
        assert!(e.contains("SIMCLR_SYNC_LAUNCHES=1"), "{e}");
    }

    #[test]
    fn synchronised_launches_name_the_faulting_kernel_and_its_shape() {
        let e = error_after_fault(true);
        assert!(
            e.starts_with("kernel faulty (grid [3, 1, 1], block [64, 1, 1]"),
            "{e}"
        );
        assert!(e.contains("arguments (*, 7)"), "{e}");
        assert!(
            e.contains("failed while running: CUDA_ERROR_ILLEGAL_ADDRESS"),
            "{e}"
        );
        assert!(!e.contains("SIMCLR_SYNC_LAUNCHES"), "{e}");
    }
}
