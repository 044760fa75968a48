//! `Comm` over NCCL, the GPUs' transport: one process per GPU, collectives queued on the
//! device's streams and run in device memory (NVLink, InfiniBand, sockets: NCCL picks).
//!
//! NCCL comes through cudarc's `nccl` module, loaded at run time like the driver, so the
//! binary still runs where there is none. cudarc's loader asks for `libnccl.so` by name, which
//! only development installs provide: the runtime is `libnccl.so.2` (the `nvidia-nccl-cu13`
//! wheel that PyTorch installs, a CUDA or Debian install). `load` finds that file and, when
//! the loader cannot, restarts the process once with a folder holding a `libnccl.so` link to
//! it first on `LD_LIBRARY_PATH` (the dynamic loader reads that variable only at start-up).
//!
//! NCCL has no bootstrap of its own: rank 0 makes a 128-byte id and the others must get it,
//! through the TCP rendezvous of a torchrun-style launch (`rendezvous`) or through MPI.

use super::Comm;
use crate::device::cuda::{Buffer, Elem, Gpu, Queue};
use crate::tensor::Tensor;
use cudarc::nccl::{result, sys};
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};

/// Set by `load` when it restarts the process: the folder it put first on the library path.
const RESTARTED: &str = "SIMCLR_NCCL_DIR";

/// Makes NCCL loadable and returns its version and where it came from, or one line saying
/// what is missing. `SIMCLR_NCCL` names the library file outright; otherwise the loader's own
/// search comes first, then the places users have NCCL (`candidates`). May restart the
/// process (same arguments): call it before anything the restart would repeat.
pub fn load() -> Result<String, String> {
    let chosen = match std::env::var_os("SIMCLR_NCCL") {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(format!("SIMCLR_NCCL={}: no such file", path.display()));
            }
            Some(path)
        }
        // SAFETY: only tries to open the library.
        None if unsafe { sys::is_culib_present() } => None,
        None => Some(find()?),
    };
    let from = match &chosen {
        None => "the library path".to_string(),
        Some(lib) => {
            let dir = link_folder(lib)?;
            if std::env::var_os(RESTARTED).as_deref() != Some(dir.as_os_str()) {
                return Err(restart_with(&dir));
            }
            // SAFETY: only tries to open the library.
            if !unsafe { sys::is_culib_present() } {
                return Err(format!(
                    "NCCL at {} does not load: {}",
                    lib.display(),
                    why_not(lib)
                ));
            }
            lib.display().to_string()
        }
    };
    let v = result::get_nccl_version().map_err(|e| error(e, None))?;
    Ok(format!(
        "NCCL {}.{}.{} from {from}",
        v / 10000,
        v / 100 % 100,
        v % 100
    ))
}

/// The first `libnccl.so.2` among the places users have it, or the list of places tried.
fn find() -> Result<PathBuf, String> {
    let places = candidates();
    places
        .iter()
        .flat_map(|dir| ["libnccl.so.2", "libnccl.so"].map(|name| dir.join(name)))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "NCCL (libnccl.so.2) not found: pip install nvidia-nccl-cu13, or set \
                 SIMCLR_NCCL=/path/to/libnccl.so.2 (looked in {})",
                places
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Folders that may hold NCCL, in order: `LD_LIBRARY_PATH`; the `nvidia-nccl-*` wheel in the
/// site-packages of the `python3` on the PATH (the active virtual environment, PyTorch's); a
/// CUDA install; the system's library folders (Debian's libnccl2).
fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    let script =
        "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))";
    if let Ok(out) = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        dirs.extend(text.lines().map(|sp| Path::new(sp).join("nvidia/nccl/lib")));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(Path::new(&home).join("lib64"));
        }
    }
    dirs.extend(
        [
            "/usr/local/cuda/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// A folder of this user's own in the temporary directory holding `libnccl.so`, a link to
/// `lib` (one per user and library, shared by the user's ranks: each makes the link under its
/// own name and renames it). Made with mode 0700 and checked to be the user's and closed to
/// others, since a link there decides what code this process loads.
fn link_folder(lib: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let lib = lib
        .canonicalize()
        .map_err(|e| format!("{}: {e}", lib.display()))?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("simclr-nccl-{uid}-{:016x}", super::hash64(&lib)));
    let fail = |e: std::io::Error| format!("linking {} for NCCL: {e}", dir.display());
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(fail(e)),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(fail)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private folder of this user: remove it, or set TMPDIR",
            dir.display()
        ));
    }
    let link = dir.join("libnccl.so");
    if std::fs::read_link(&link).is_ok_and(|to| to == lib) {
        return Ok(dir);
    }
    let mine = dir.join(format!("libnccl.so.{}", std::process::id()));
    let _ = std::fs::remove_file(&mine);
    std::os::unix::fs::symlink(&lib, &mine).map_err(fail)?;
    std::fs::rename(&mine, &link).map_err(fail)?;
    Ok(dir)
}

/// Restarts this process with `dir` first on the library path; returns only on failure.
fn restart_with(dir: &Path) -> String {
    use std::os::unix::process::CommandExt;
    let mut path = dir.as_os_str().to_owned();
    // (An empty entry would put the working directory on the search path.)
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(old);
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return format!("restarting with NCCL on the library path: {e}"),
    };
    let e = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("LD_LIBRARY_PATH", path)
        .env(RESTARTED, dir)
        .exec();
    format!("restarting with NCCL on the library path: {e}")
}

/// The dynamic loader's reason for not loading `lib`.
fn why_not(lib: &Path) -> String {
    let Ok(name) = std::ffi::CString::new(lib.as_os_str().as_encoded_bytes()) else {
        return "a path with a NUL byte".into();
    };
    // SAFETY: a NUL-terminated path; a handle we get is closed at once; dlerror's text is
    // copied before any other loader call.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW);
        if !handle.is_null() {
            libc::dlclose(handle);
            return "it opens by path, but not by name".into();
        }
        let e = libc::dlerror();
        if e.is_null() {
            return "unknown".into();
        }
        CStr::from_ptr(e).to_string_lossy().into_owned()
    }
}

/// One line for an NCCL error: its name and, with a communicator, NCCL's last message.
fn error(e: result::NcclError, comm: Option<sys::ncclComm_t>) -> String {
    // SAFETY: NCCL returns static NUL-terminated strings (or null).
    let text = |p: *const c_char| match p.is_null() {
        true => String::new(),
        false => unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
    };
    let name = text(unsafe { sys::ncclGetErrorString(e.0) });
    match comm.map(|c| text(unsafe { sys::ncclGetLastError(c) })) {
        Some(last) if !last.is_empty() => format!("NCCL: {name} ({last})"),
        _ => format!("NCCL: {name}"),
    }
}

/// A new NCCL id (rank 0 makes it; `load` first).
pub fn unique_id() -> Result<Vec<u8>, String> {
    let id = result::get_uniqueid().map_err(|e| error(e, None))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// This GPU's NCCL communicator in a world of `size` ranks.
pub struct Nccl {
    comm: sys::ncclComm_t,
    gpu: Gpu,
    rank: usize,
    size: usize,
    /// What brought the ranks together (MPI's world), kept for the job's life.
    _bootstrap: Box<dyn std::any::Any + Send + Sync>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; the trainer makes every call from its one thread.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl Nccl {
    /// Joins the communicator of id `id` (from rank 0) as `rank` of `size`, on `gpu`. Every
    /// rank must call it: it returns when all have.
    pub fn new(
        gpu: &Gpu,
        rank: usize,
        size: usize,
        id: &[u8],
        bootstrap: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<Nccl, String> {
        if id.len() != 128 {
            return Err(format!("an NCCL id has 128 bytes, not {}", id.len()));
        }
        let mut uid = sys::ncclUniqueId { internal: [0; 128] };
        for (to, &from) in uid.internal.iter_mut().zip(id) {
            *to = from as c_char;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        gpu.native("NCCL init", Queue::Compute, |_| {
            // SAFETY: `comm` is written by NCCL; the device's context is current.
            unsafe { result::comm_init_rank(&mut comm, size as i32, uid, rank as i32) }
                .map(drop)
                .map_err(|e| error(e, None))
        });
        gpu.check().map_err(|e| e.to_string())?;
        Ok(Nccl {
            comm,
            gpu: gpu.clone(),
            rank,
            size,
            _bootstrap: bootstrap,
        })
    }

    /// Queues one NCCL call on `queue` (an error is recorded on the GPU, as a launch's).
    fn queue(
        &self,
        op: &'static str,
        queue: Queue,
        call: impl FnOnce(sys::cudaStream_t) -> Result<result::NcclStatus, result::NcclError>,
    ) {
        let comm = self.comm;
        self.gpu.native(op, queue, |stream| {
            call(stream as sys::cudaStream_t)
                .map(drop)
                .map_err(|e| error(e, Some(comm)))
        });
    }
}

impl Nccl {
    /// Queues the all-gather of the first `bytes` bytes of `send` into `recv` (room for
    /// `bytes` × size()), on the compute stream.
    fn gather(&self, send: &Buffer, bytes: usize, recv: &Buffer) {
        self.queue("NCCL all-gather", Queue::Compute, |stream| unsafe {
            let (s, r) = (send.ptr() as *const _, recv.ptr() as *mut _);
            let u8 = sys::ncclDataType_t::ncclUint8;
            result::all_gather(s, r, bytes, u8, self.comm, stream)
        });
    }
}

fn nccl_type(elem: Elem) -> sys::ncclDataType_t {
    match elem {
        Elem::F32 => sys::ncclDataType_t::ncclFloat32,
        Elem::Bf16 => sys::ncclDataType_t::ncclBfloat16,
    }
}

impl Comm for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    // The host collectives (a loss, the settings' hash) go through the device and wait.

    fn all_reduce_sum(&self, x: &mut [f64]) {
        let buf = self.gpu.upload(x);
        self.queue("NCCL all-reduce", Queue::Compute, |stream| unsafe {
            let p = buf.ptr() as *mut _;
            let f64 = sys::ncclDataType_t::ncclFloat64;
            result::all_reduce(
                p,
                p,
                x.len(),
                f64,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream,
            )
        });
        x.copy_from_slice(&self.gpu.download::<f64>(&buf));
    }

    fn all_gather_bytes(&self, x: &[u8]) -> Vec<u8> {
        let send = self.gpu.upload(x);
        // Rounded up to whole f32 (the buffer's type): only the first bytes are NCCL's.
        let all = self.gpu.alloc_f32((x.len() * self.size).div_ceil(4));
        self.gather(&send, x.len(), &all);
        let mut out: Vec<u8> = self.gpu.download(&all);
        out.truncate(x.len() * self.size);
        out
    }

    fn reduce_scatter_sum(&self, x: &[f32]) -> Vec<f32> {
        let send = self.gpu.upload(x);
        let n = x.len() / self.size;
        let recv = self.gpu.alloc_f32(n);
        self.queue("NCCL reduce-scatter", Queue::Compute, |stream| unsafe {
            let (s, r) = (send.ptr() as *const _, recv.ptr() as *mut _);
            let f32 = sys::ncclDataType_t::ncclFloat32;
            result::reduce_scatter(s, r, n, f32, sys::ncclRedOp_t::ncclSum, self.comm, stream)
        });
        self.gpu.download(&recv)
    }

    // The device collectives of the step (batch norm's partial sums, NT-Xent's rows) stay on
    // the compute stream: the kernels before and after them are ordered as any others.

    fn all_gather_device(&self, gpu: &Gpu, x: &Buffer) -> Buffer {
        let out = gpu.alloc(x.len() * self.size, x.elem());
        self.gather(x, x.bytes(), &out);
        out
    }

    fn all_reduce_device(&self, _gpu: &Gpu, x: &mut Buffer) {
        self.queue("NCCL all-reduce", Queue::Compute, |stream| unsafe {
            let p = x.ptr() as *mut _;
            let t = nccl_type(x.elem());
            result::all_reduce(
                p,
                p,
                x.len(),
                t,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                stream,
            )
        });
    }

    /// A bucket of gradients averaged in place (NCCL's average), as one group of all-reduces
    /// on the comm stream once the compute stream has made them: the backward goes on while
    /// they run. `join` makes the compute stream wait for them.
    fn average(&self, grads: &mut [Tensor]) {
        // A gradient the tape shares with another value (a fan-out) is copied first: the
        // compute stream may still read the shared one while this stream averages it.
        for g in grads.iter_mut().filter(|g| !g.is_unique()) {
            *g = g.deep_copy();
        }
        self.gpu.order(Queue::Compute, Queue::Comm);
        self.queue("NCCL gradient average", Queue::Comm, |stream| unsafe {
            result::group_start()?;
            for g in grads.iter() {
                let b = g.buffer();
                let p = b.ptr() as *mut _;
                let t = nccl_type(b.elem());
                let avg = sys::ncclRedOp_t::ncclAvg;
                if let Err(e) = result::all_reduce(p, p, b.len(), t, avg, self.comm, stream) {
                    let _ = result::group_end();
                    return Err(e);
                }
            }
            result::group_end()
        });
    }

    fn join(&self) {
        self.gpu.order(Queue::Comm, Queue::Compute);
    }
}

impl Drop for Nccl {
    /// Waits for the queued collectives, then frees the communicator; after a device error,
    /// aborts it instead (a collective may never complete).
    fn drop(&mut self) {
        // SAFETY: the communicator is ours and used by nothing after this.
        unsafe {
            match self.gpu.check() {
                Ok(()) => drop(result::comm_destroy(self.comm)),
                Err(_) => drop(result::comm_abort(self.comm)),
            }
        }
    }
}
