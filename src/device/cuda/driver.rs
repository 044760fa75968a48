//! The real driver through cudarc's thin `result` layer, loaded dynamically so that the binary
//! runs on machines without CUDA. Kernels come from the fatbins build.rs embedded (one module
//! per family); a kernel's function handle is looked up on first use and cached.
//!
//! Work goes on three streams the driver creates (non-blocking, so nothing else in the process
//! synchronises with them; and unlike the legacy default stream they can be captured into a
//! graph): the compute stream for the kernels and most copies, the copy stream for a training
//! step's uploads, the comm stream for NCCL's collectives (`Queue`). The blocking copies are asynchronous copies on the compute stream
//! followed by a wait for it.

use super::kernels::FATBINS;
use super::runtime::{Queue, Runtime};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Mutex;

pub struct Driver {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    copy_stream: sys::CUstream,
    comm_stream: sys::CUstream,
    modules: Vec<sys::CUmodule>,
    functions: Mutex<HashMap<String, sys::CUfunction>>,
}

// SAFETY: the context and module handles are process-wide driver objects; every call makes the
// context current on the calling thread first, and the function cache is behind a mutex.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

fn msg(e: result::DriverError) -> String {
    format!("{e:?}")
}

/// How many GPUs the driver sees (those `CUDA_VISIBLE_DEVICES` leaves), or why none.
pub fn device_count() -> Result<usize, String> {
    // SAFETY: checks for libcuda before any driver call (without it cudarc would panic).
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    result::init().map_err(msg)?;
    Ok(result::device::get_count().map_err(msg)? as usize)
}

impl Driver {
    /// Opens GPU `ordinal` and loads every kernel family. Returns the device's name too.
    pub fn new(ordinal: usize) -> Result<(Driver, String), String> {
        // SAFETY: checks for libcuda before any driver call (without it cudarc would panic).
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda) on this machine".into());
        }
        result::init().map_err(msg)?;
        let count = result::device::get_count().map_err(msg)? as usize;
        if ordinal >= count {
            return Err(format!(
                "cuda:{ordinal} requested but {count} GPU(s) present"
            ));
        }
        let dev = result::device::get(ordinal as i32).map_err(msg)?;
        let name = result::device::get_name(dev).map_err(msg)?;
        // SAFETY: dev is a valid device; the primary context lives as long as the process.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(msg)?;
        unsafe { result::ctx::set_current(ctx) }.map_err(msg)?;
        let mut modules = Vec::new();
        for (family, fatbin) in FATBINS {
            // SAFETY: the image is a fatbin nvcc produced, embedded by build.rs.
            let module = unsafe { result::module::load_data(fatbin.as_ptr() as *const c_void) }
                .map_err(|e| format!("loading kernels/{family}.cu: {e:?}"))?;
            modules.push(module);
        }
        let kind = || result::stream::StreamKind::NonBlocking;
        let stream = result::stream::create(kind()).map_err(msg)?;
        let copy_stream = result::stream::create(kind()).map_err(msg)?;
        let comm_stream = result::stream::create(kind()).map_err(msg)?;
        let driver = Driver {
            dev,
            ctx,
            stream,
            copy_stream,
            comm_stream,
            modules,
            functions: Mutex::new(HashMap::new()),
        };
        Ok((driver, name))
    }

    fn stream(&self, queue: Queue) -> sys::CUstream {
        match queue {
            Queue::Compute => self.stream,
            Queue::Copy => self.copy_stream,
            Queue::Comm => self.comm_stream,
        }
    }

    fn make_current(&self) -> Result<(), String> {
        // SAFETY: the context was retained in new() and is never released.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(msg)
    }

    fn function(&self, kernel: &str) -> Result<sys::CUfunction, String> {
        let mut functions = self.functions.lock().unwrap();
        if let Some(&f) = functions.get(kernel) {
            return Ok(f);
        }
        let name = CString::new(kernel).map_err(|e| e.to_string())?;
        for &module in &self.modules {
            // SAFETY: modules stay loaded for the life of the driver.
            if let Ok(f) = unsafe { result::module::get_function(module, name.clone()) } {
                functions.insert(kernel.to_string(), f);
                return Ok(f);
            }
        }
        Err(format!("no kernel named {kernel} in the embedded fatbins"))
    }
}

impl Drop for Driver {
    /// Streams, modules and the primary context go back to the driver (`Gpu`'s drop has
    /// already waited for the device and freed its memory).
    fn drop(&mut self) {
        if self.make_current().is_err() {
            return;
        }
        // SAFETY: ours, and nothing is queued or uses them any more.
        unsafe {
            let _ = result::stream::destroy(self.stream);
            let _ = result::stream::destroy(self.copy_stream);
            let _ = result::stream::destroy(self.comm_stream);
            for &module in &self.modules {
                let _ = result::module::unload(module);
            }
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

impl Runtime for Driver {
    fn alloc(&self, bytes: usize) -> Result<u64, String> {
        self.make_current()?;
        // SAFETY: a plain device allocation.
        unsafe { result::malloc_sync(bytes) }.map_err(msg)
    }

    unsafe fn free(&self, ptr: u64) {
        if self.make_current().is_ok() {
            let _ = result::free_sync(ptr);
        }
    }

    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<(), String> {
        self.make_current()?;
        result::memcpy_htod_async(dst, src, self.stream).map_err(msg)?;
        result::stream::synchronize(self.stream).map_err(msg)
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<(), String> {
        self.make_current()?;
        result::memcpy_dtoh_async(dst, src, self.stream).map_err(msg)?;
        result::stream::synchronize(self.stream).map_err(msg)
    }

    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        self.make_current()?;
        result::memcpy_dtod_async(dst, src, bytes, self.stream).map_err(msg)
    }

    unsafe fn fill_bytes(&self, dst: u64, value: u8, bytes: usize) -> Result<(), String> {
        self.make_current()?;
        result::memset_d8_async(dst, value, bytes, self.stream).map_err(msg)
    }

    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), String> {
        self.make_current()?;
        let f = self.function(kernel)?;
        result::launch_kernel(
            f,
            (grid[0], grid[1], grid[2]),
            (block[0], block[1], block[2]),
            shared_bytes,
            self.stream, // the one stream: launches and copies stay in order
            params,
        )
        .map_err(msg)
    }

    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), String> {
        self.make_current()?;
        let f = self.function(kernel)?;
        let attribute = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: f is a function of a loaded module.
        unsafe { result::function::set_function_attribute(f, attribute, bytes as i32) }.map_err(msg)
    }

    fn synchronize(&self) -> Result<(), String> {
        self.make_current()?;
        result::ctx::synchronize().map_err(msg)
    }

    fn time_ms(&self, work: &mut dyn FnMut()) -> Result<f64, String> {
        self.make_current()?;
        let events = Events::new()?;
        let [start, end] = events.0;
        // SAFETY: both events are live until `events` drops; the launches' stream.
        unsafe {
            result::event::record(start, self.stream).map_err(msg)?;
            work();
            result::event::record(end, self.stream).map_err(msg)?;
            result::event::synchronize(end).map_err(msg)?;
            result::event::elapsed(start, end)
                .map(f64::from)
                .map_err(msg)
        }
    }

    fn free_memory(&self) -> Option<usize> {
        self.make_current().ok()?;
        result::mem_get_info().ok().map(|(free, _)| free)
    }

    fn host_alloc(&self, bytes: usize) -> Result<*mut u8, String> {
        self.make_current()?;
        // SAFETY: the bytes are written before they are read (by a copy to the device).
        unsafe { result::malloc_host(bytes, 0) }
            .map(|p| p as *mut u8)
            .map_err(msg)
    }

    unsafe fn host_free(&self, ptr: *mut u8, _bytes: usize) {
        if self.make_current().is_ok() {
            let _ = result::free_host(ptr as *mut c_void);
        }
    }

    unsafe fn upload_async(
        &self,
        dst: u64,
        src: *const u8,
        bytes: usize,
        queue: Queue,
    ) -> Result<(), String> {
        self.make_current()?;
        let src = std::slice::from_raw_parts(src, bytes);
        result::memcpy_htod_async(dst, src, self.stream(queue)).map_err(msg)
    }

    unsafe fn download_async(&self, src: u64, dst: *mut u8, bytes: usize) -> Result<(), String> {
        self.make_current()?;
        let dst = std::slice::from_raw_parts_mut(dst, bytes);
        result::memcpy_dtoh_async(dst, src, self.stream).map_err(msg)
    }

    fn record_event(&self, queue: Queue) -> Result<u64, String> {
        self.make_current()?;
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        let event = result::event::create(flags).map_err(msg)?;
        // SAFETY: a live event, on one of the driver's streams.
        match unsafe { result::event::record(event, self.stream(queue)) } {
            Ok(()) => Ok(event as u64),
            Err(e) => {
                // SAFETY: created above, used nowhere else.
                let _ = unsafe { result::event::destroy(event) };
                Err(msg(e))
            }
        }
    }

    fn queue_wait(&self, queue: Queue, event: u64) -> Result<(), String> {
        self.make_current()?;
        let flags = sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
        // SAFETY: a live event of record_event, one of the driver's streams.
        unsafe { result::stream::wait_event(self.stream(queue), event as sys::CUevent, flags) }
            .map_err(msg)
    }

    fn event_done(&self, event: u64) -> Result<bool, String> {
        self.make_current()?;
        // SAFETY: a live event of record_event.
        match unsafe { result::event::query(event as sys::CUevent) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(msg(e)),
        }
    }

    fn wait_event(&self, event: u64) -> Result<(), String> {
        self.make_current()?;
        // SAFETY: a live event of record_event.
        unsafe { result::event::synchronize(event as sys::CUevent) }.map_err(msg)
    }

    unsafe fn destroy_event(&self, event: u64) {
        if self.make_current().is_ok() {
            let _ = result::event::destroy(event as sys::CUevent);
        }
    }

    fn native_stream(&self, queue: Queue) -> Result<*mut c_void, String> {
        self.make_current()?;
        Ok(self.stream(queue) as *mut c_void)
    }

    fn has_graphs(&self) -> bool {
        true
    }

    fn begin_capture(&self) -> Result<(), String> {
        self.make_current()?;
        // Thread-local: a call this thread must not make while capturing (an allocation, a
        // synchronisation) fails the capture instead of slipping into a wrong graph.
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        // SAFETY: the driver's live stream.
        unsafe { result::stream::begin_capture(self.stream, mode) }.map_err(msg)
    }

    fn end_capture(&self) -> Result<u64, String> {
        self.make_current()?;
        // SAFETY: the stream is capturing (begin_capture); the graph is only instantiated and
        // then destroyed, the executable graph lives on.
        unsafe {
            let graph = result::stream::end_capture(self.stream).map_err(msg)?;
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = result::graph::destroy(graph);
            exec.map(|e| e as u64).map_err(msg)
        }
    }

    fn launch_graph(&self, graph: u64) -> Result<(), String> {
        self.make_current()?;
        // SAFETY: an executable graph of end_capture, not destroyed.
        unsafe { result::graph::launch(graph as sys::CUgraphExec, self.stream) }.map_err(msg)
    }

    unsafe fn destroy_graph(&self, graph: u64) {
        if self.make_current().is_ok() {
            let _ = result::graph::exec_destroy(graph as sys::CUgraphExec);
        }
    }
}

/// A start and an end event, destroyed on drop (also when timing fails half-way).
struct Events([sys::CUevent; 2]);

impl Events {
    fn new() -> Result<Events, String> {
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = result::event::create(flags).map_err(msg)?;
        match result::event::create(flags) {
            Ok(end) => Ok(Events([start, end])),
            Err(e) => {
                // SAFETY: created above, used nowhere else.
                let _ = unsafe { result::event::destroy(start) };
                Err(msg(e))
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        for event in self.0 {
            // SAFETY: created in new(), recorded only on the stream that was synchronised.
            let _ = unsafe { result::event::destroy(event) };
        }
    }
}
