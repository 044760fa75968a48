//! The emulator runtime: device memory is host memory, and a launch runs the kernel compiled
//! for the CPU (kernels/emu/) with one fiber per CUDA thread under a chosen schedule.

use super::runtime::Runtime;
use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::Mutex;

extern "C" {
    fn simclr_emu_set_max_dynamic_shared(
        kernel: *const c_char,
        bytes: c_uint,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn simclr_emu_launch(
        kernel: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        dynamic_shared_bytes: c_uint,
        params: *mut *mut c_void,
        schedule: c_int,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// The order in which the emulator runs a block's threads between synchronisation points.
/// Running kernel tests under two of them catches missing barriers that one order hides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Round robin by thread index.
    Rr = 0,
    /// Warp-major: a whole warp's threads before the next warp's.
    Warp = 1,
    RrReverse = 2,
    WarpReverse = 3,
}

impl Schedule {
    pub const ALL: [Schedule; 4] = [
        Schedule::Rr,
        Schedule::Warp,
        Schedule::RrReverse,
        Schedule::WarpReverse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Rr => "rr",
            Schedule::Warp => "warp",
            Schedule::RrReverse => "rr-reverse",
            Schedule::WarpReverse => "warp-reverse",
        }
    }

    pub fn parse(name: &str) -> Option<Schedule> {
        Schedule::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Device memory is 256-byte aligned, as cudaMalloc's is.
const ALIGN: usize = 256;

pub struct Emu {
    schedule: Schedule,
    /// Live allocations and their sizes (needed to free them).
    sizes: Mutex<HashMap<u64, usize>>,
    /// The emulated device's memory, from `SIMCLR_EMU_MEMORY_MB` (unlimited when unset): lets
    /// tests run into "out of device memory" as a small GPU would.
    capacity: Option<usize>,
}

impl Emu {
    pub fn new(schedule: Schedule) -> Emu {
        let capacity = std::env::var("SIMCLR_EMU_MEMORY_MB")
            .ok()
            .and_then(|mb| mb.parse::<usize>().ok())
            .map(|mb| mb << 20);
        Emu {
            schedule,
            sizes: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn allocated(&self) -> usize {
        self.sizes.lock().unwrap().values().sum()
    }
}

impl Runtime for Emu {
    fn alloc(&self, bytes: usize) -> Result<u64, String> {
        if let Some(capacity) = self.capacity {
            if self.allocated() + bytes > capacity {
                return Err(format!("the emulated device has {capacity} bytes"));
            }
        }
        let layout = Layout::from_size_align(bytes, ALIGN).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size (Gpu never asks for 0 bytes).
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(format!("host allocation of {bytes} bytes failed"));
        }
        self.sizes.lock().unwrap().insert(ptr as u64, bytes);
        Ok(ptr as u64)
    }

    unsafe fn free(&self, ptr: u64) {
        let bytes = self
            .sizes
            .lock()
            .unwrap()
            .remove(&ptr)
            .expect("unknown pointer");
        std::alloc::dealloc(
            ptr as *mut u8,
            Layout::from_size_align(bytes, ALIGN).unwrap(),
        );
    }

    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<(), String> {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len());
        Ok(())
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<(), String> {
        std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len());
        Ok(())
    }

    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
        Ok(())
    }

    unsafe fn fill_bytes(&self, dst: u64, value: u8, bytes: usize) -> Result<(), String> {
        std::ptr::write_bytes(dst as *mut u8, value, bytes);
        Ok(())
    }

    unsafe fn launch(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), String> {
        let name = CString::new(kernel).map_err(|e| e.to_string())?;
        let mut err = vec![0u8; 1024];
        let rc = simclr_emu_launch(
            name.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            shared_bytes,
            params.as_mut_ptr(),
            self.schedule as c_int,
            err.as_mut_ptr() as *mut c_char,
            err.len(),
        );
        if rc == 0 {
            return Ok(());
        }
        Err(message(&err))
    }

    fn set_max_dynamic_shared(&self, kernel: &str, bytes: u32) -> Result<(), String> {
        let name = CString::new(kernel).map_err(|e| e.to_string())?;
        let mut err = vec![0u8; 512];
        // SAFETY: NUL-terminated name, err of err.len() bytes.
        let rc = unsafe {
            simclr_emu_set_max_dynamic_shared(
                name.as_ptr(),
                bytes,
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        match rc {
            0 => Ok(()),
            _ => Err(message(&err)),
        }
    }

    fn synchronize(&self) -> Result<(), String> {
        Ok(()) // launches are synchronous
    }

    fn time_ms(&self, work: &mut dyn FnMut()) -> Result<f64, String> {
        // Launches are synchronous, so the host clock sees all of the work.
        let start = std::time::Instant::now();
        work();
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }

    fn free_memory(&self) -> Option<usize> {
        self.capacity.map(|c| c.saturating_sub(self.allocated()))
    }
}

/// The NUL-terminated message the emulator wrote into `err`.
fn message(err: &[u8]) -> String {
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    String::from_utf8_lossy(&err[..end]).into_owned()
}
