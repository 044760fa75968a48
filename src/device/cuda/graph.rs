//! Training steps as CUDA graphs, so that the device runs a step's ~750 launches back to back
//! instead of waiting on the host for each.
//!
//! A step's host code runs every step, but between `Gpu::begin_step` and `Gpu::end_step` its
//! work is recorded instead of queued: the launches (kernel, shape, arguments), fills and device
//! copies in order, and the uploads apart. `end_step` then compares the recording with the
//! one two steps back (steps alternate between two sets of upload buffers, see below). Two
//! equal recordings are the steady state: the work is captured once into a graph, and from
//! then on a step whose recording equals its graph's is one graph launch. Any other step runs
//! as recorded, one launch at a time (eagerly). On the emulator,
//! which has no graphs, the "graph" is the recorded list itself, run eagerly: the recording,
//! the matching and the uploads are the same code in CI as on a GPU.
//!
//! Why recordings can be equal: the allocator hands out the lowest free address of a size
//! (`alloc.rs`), so a step that allocates and frees as the last one did gets the same
//! addresses; every per-step value that changes is in device memory (the learning rate rides
//! in the optimiser's table); and uploads go to buffers of their own, one per upload of the
//! step (`Side::inputs`), filled before the step's work, so a graph never reads host memory.
//! Equal recordings mean the same kernels on the same addresses with the same arguments, so
//! replaying the graph is exactly what running the recording would have done.
//!
//! The uploads run on the copy queue while the previous step's kernels run on the compute
//! queue. That is safe because steps alternate between two sides, each with its own upload
//! buffers: a step's uploads wait (on the device, by an event) only for the step two back, the
//! last one that read those buffers, and the step's kernels wait for its uploads. These event
//! waits are the only ordering across the two queues; every other buffer is used on the
//! compute queue alone.
//!
//! Anything the host waits for inside a recording (a download, a synchronisation) ends it: what
//! was recorded runs at once and the rest of the step runs eagerly.

use super::runtime::Queue;
use super::{alloc, Arg, Gpu, GpuError};
use std::sync::atomic::Ordering;

/// One piece of recorded device work.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Launch {
        kernel: &'static str,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        args: Vec<Arg>,
    },
    Fill {
        dst: u64,
        value: u8,
        bytes: usize,
    },
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
}

/// A step's recorded work: the uploads (destination, bytes), then the ops in order.
#[derive(Default)]
struct Recording {
    uploads: Vec<(u64, Vec<u8>)>,
    ops: Vec<Op>,
}

/// What two steps must share to run the same graph: the ops, and where and how much they upload.
#[derive(PartialEq)]
struct Shape {
    uploads: Vec<(u64, usize)>,
    ops: Vec<Op>,
}

impl Recording {
    /// The recording as a shape: its ops moved, its uploads' bytes left behind.
    fn into_shape(self) -> Shape {
        Shape {
            uploads: self.uploads.iter().map(|(d, b)| (*d, b.len())).collect(),
            ops: self.ops,
        }
    }
}

impl Shape {
    /// The kernel launches among the ops.
    fn launches(&self) -> usize {
        let launch = |op: &&Op| matches!(op, Op::Launch { .. });
        self.ops.iter().filter(launch).count()
    }
}

/// A captured step: its shape, and the driver's executable graph (None on the emulator, where
/// the shape's ops are run one by one).
struct Captured {
    shape: Shape,
    exec: Option<u64>,
}

/// A GPU's step recording state.
#[derive(Default)]
pub struct Steps {
    recording: Option<Recording>,
    /// Between begin_step and end_step (recording, or running eagerly after a wait ended it).
    open: bool,
    /// The side of the step being recorded (0 or 1, in turn).
    side: usize,
    sides: [Side; 2],
    /// Upload buffers outgrown by larger uploads: kept until the GPU closes, as a buffer of an
    /// earlier step may still point at one.
    retired: Vec<u64>,
    /// Set when the driver failed to capture a step: steps run eagerly from then on.
    broken: bool,
}

/// What the steps of one side (every other step) share.
#[derive(Default)]
struct Side {
    /// The shape of the side's last step that ran as recorded.
    last: Option<Shape>,
    graph: Option<Captured>,
    /// A device buffer of its own for the i-th upload of a step: (address, rounded size).
    inputs: Vec<(u64, usize)>,
    /// An event after the side's last step (compute queue): its upload buffers are free then.
    done: Option<u64>,
}

impl Gpu {
    /// Records the device work queued from now until `end_step` (see the module doc). Without
    /// effect when launches are synchronised one by one (SIMCLR_SYNC_LAUNCHES=1).
    pub fn begin_step(&self) {
        let mut steps = self.0.steps.lock().unwrap();
        if !self.0.sync_launches && !steps.broken {
            steps.recording = Some(Recording::default());
            steps.open = true;
            steps.side ^= 1;
            self.0.recording.store(true, Ordering::Relaxed);
        }
    }

    /// Runs the step recorded since `begin_step`: its uploads, then its work as one graph
    /// launch when the step matches the graph (or the last step, which makes the graph), else
    /// launch by launch.
    pub fn end_step(&self) {
        let mut steps = self.0.steps.lock().unwrap();
        self.0.recording.store(false, Ordering::Relaxed);
        let steps = &mut *steps;
        if !std::mem::take(&mut steps.open) {
            return;
        }
        let Some(rec) = steps.recording.take() else {
            // A wait ended the recording and the rest ran eagerly: the step ends here.
            self.mark_done(&mut steps.sides[steps.side]);
            return;
        };
        let (broken, side) = (&mut steps.broken, &mut steps.sides[steps.side]);
        self.upload_inputs(&rec.uploads, side);
        let shape = rec.into_shape();
        if side.graph.as_ref().is_some_and(|g| g.shape != shape) {
            self.drop_graph(side);
        }
        if side.graph.is_none() && side.last.as_ref() == Some(&shape) {
            side.last = None;
            match self.capture(shape, broken) {
                Ok(graph) => side.graph = Some(graph),
                // The capture failed: the step runs as recorded.
                Err(shape) => shape.ops.iter().for_each(|op| self.issue(op)),
            }
        } else if side.graph.is_none() {
            shape.ops.iter().for_each(|op| self.issue(op));
            side.last = Some(shape);
        }
        if let Some(graph) = &side.graph {
            self.launch_captured(graph);
        }
        self.mark_done(side);
    }

    /// Queues a step's uploads on the copy queue, after the side's last step (the last reader
    /// of its buffers) and before anything queued on the compute queue from now on.
    fn upload_inputs(&self, uploads: &[(u64, Vec<u8>)], side: &mut Side) {
        let runtime = &self.0.runtime;
        if let Some(done) = side.done.take() {
            self.runtime_call("copy queue wait", || runtime.queue_wait(Queue::Copy, done));
            // SAFETY: ours; an event still awaited is released once it has happened.
            unsafe { runtime.destroy_event(done) };
        }
        for (dst, data) in uploads {
            self.stage_upload(*dst, data, Queue::Copy);
        }
        self.runtime_call("compute queue wait", || {
            let copied = runtime.record_event(Queue::Copy)?;
            let waited = runtime.queue_wait(Queue::Compute, copied);
            // SAFETY: as above.
            unsafe { runtime.destroy_event(copied) };
            waited
        });
    }

    /// Notes the event after the step just queued for `side`.
    fn mark_done(&self, side: &mut Side) {
        let runtime = &self.0.runtime;
        if let Some(old) = side.done.take() {
            // SAFETY: ours; an event still awaited is released once it has happened.
            unsafe { runtime.destroy_event(old) };
        }
        match runtime.record_event(Queue::Compute) {
            Ok(event) => side.done = Some(event),
            Err(msg) => self.record(GpuError::Runtime { op: "event", msg }),
        }
    }

    /// Whether work is being recorded; `op` is recorded if so.
    pub(super) fn record_op(&self, op: impl FnOnce() -> Op) -> bool {
        // The flag spares every launch outside a recording the lock (and lets a step's own
        // launches, issued with the lock held, pass).
        if !self.0.recording.load(Ordering::Relaxed) {
            return false;
        }
        let mut steps = self.0.steps.lock().unwrap();
        match steps.recording.as_mut() {
            Some(rec) => {
                rec.ops.push(op());
                true
            }
            None => false,
        }
    }

    /// Inside a recording: `data`'s upload is recorded, to the step's buffer for its position,
    /// which is returned (and reserved: it outlives the step's buffers).
    pub(super) fn record_upload(&self, data: &[u8]) -> Option<u64> {
        if !self.0.recording.load(Ordering::Relaxed) {
            return None;
        }
        let mut steps = self.0.steps.lock().unwrap();
        let steps = &mut *steps;
        let rec = steps.recording.as_mut()?;
        let i = rec.uploads.len();
        let size = alloc::rounded(data.len());
        // Both sides' buffers at once, so that only the first step allocates.
        for inputs in steps.sides.iter_mut().map(|side| &mut side.inputs) {
            if inputs.get(i).is_some_and(|&(_, have)| have >= size) {
                continue;
            }
            // From the driver, not the cache: a cached block may have served the step earlier,
            // and the upload, which runs before the step's work, would be overwritten.
            let ptr = self.driver_alloc(size);
            self.0.cache.lock().unwrap().reserve(ptr);
            match inputs.get_mut(i) {
                Some(input) => steps.retired.push(std::mem::replace(input, (ptr, size)).0),
                None => inputs.push((ptr, size)),
            }
        }
        let dst = steps.sides[steps.side].inputs[i].0;
        rec.uploads.push((dst, data.to_vec()));
        Some(dst)
    }

    /// Before the host waits for the device: what was recorded runs now, the rest of the step
    /// eagerly (and the next step cannot reuse this one's graph); `end_step` still marks its end.
    pub(super) fn stop_recording(&self) {
        let mut steps = self.0.steps.lock().unwrap();
        self.0.recording.store(false, Ordering::Relaxed);
        let Some(rec) = steps.recording.take() else {
            return;
        };
        let steps = &mut *steps;
        let side = &mut steps.sides[steps.side];
        side.last = None;
        self.upload_inputs(&rec.uploads, side);
        rec.ops.iter().for_each(|op| self.issue(op));
    }

    /// Queues one recorded op now (called with no recording under way).
    fn issue(&self, op: &Op) {
        match op {
            Op::Launch {
                kernel,
                grid,
                block,
                shared,
                args,
            } => self.launch(kernel, *grid, *block, *shared, args),
            Op::Fill { dst, value, bytes } => self.fill(*dst, *value, *bytes),
            Op::Copy { dst, src, bytes } => self.copy_device(*dst, *src, *bytes),
        }
    }

    /// The step `shape` as a graph: captured by the driver, or kept as it is on the emulator;
    /// or, when there is none, the shape back. A capture the driver refuses is reported once,
    /// and steps run eagerly from then on.
    fn capture(&self, shape: Shape, broken: &mut bool) -> Result<Captured, Shape> {
        let runtime = &self.0.runtime;
        if !runtime.has_graphs() {
            return Ok(Captured { shape, exec: None });
        }
        if self.failed() {
            return Err(shape);
        }
        let captured = runtime.begin_capture().and_then(|()| {
            for op in &shape.ops {
                self.issue(op);
            }
            // The issued launches were counted; the graph's launches count them again.
            (self.0.launches).fetch_sub(shape.launches(), Ordering::Relaxed);
            runtime.end_capture()
        });
        match captured {
            // A launch failed while capturing (and the ops after it were skipped): the graph
            // is not the step. The error stands; the step runs as recorded (and is skipped).
            Ok(exec) if self.failed() => {
                // SAFETY: ours, never launched.
                unsafe { runtime.destroy_graph(exec) };
                Err(shape)
            }
            Ok(exec) => Ok(Captured {
                shape,
                exec: Some(exec),
            }),
            Err(msg) => {
                eprintln!("warning: a training step could not be captured as a CUDA graph ({msg}); steps run launch by launch");
                // A launch the capture refused recorded an error of the capture alone; any
                // other error is the device's and stands.
                if let Err(e) = self.take_error() {
                    if !e.to_string().to_lowercase().contains("capture") {
                        self.record(e);
                    }
                }
                *broken = true;
                Err(shape)
            }
        }
    }

    fn launch_captured(&self, graph: &Captured) {
        self.0.graph_launches.fetch_add(1, Ordering::Relaxed);
        let Some(exec) = graph.exec else {
            graph.shape.ops.iter().for_each(|op| self.issue(op));
            return;
        };
        if self.failed() {
            return;
        }
        (self.0.launches).fetch_add(graph.shape.launches(), Ordering::Relaxed);
        if let Err(msg) = self.0.runtime.launch_graph(exec) {
            let msg = self.with_hint(msg);
            self.record(GpuError::Runtime {
                op: "graph launch",
                msg,
            });
        }
    }

    fn drop_graph(&self, side: &mut Side) {
        if let Some(Captured {
            exec: Some(exec), ..
        }) = side.graph.take()
        {
            // SAFETY: ours; a graph launch still queued keeps what it needs alive in the driver.
            unsafe { self.0.runtime.destroy_graph(exec) };
        }
    }
}

impl Steps {
    /// The upload buffers, events and graphs, when the GPU closes (the device is idle).
    pub(super) fn release(self, gpu: &super::Inner) {
        let runtime = &gpu.runtime;
        for ptr in self.retired {
            // SAFETY: as below.
            unsafe { runtime.free(ptr) };
        }
        for side in self.sides {
            // SAFETY: reserved blocks, events and graphs of this GPU, which nothing uses now.
            unsafe {
                for (ptr, _) in side.inputs {
                    runtime.free(ptr);
                }
                if let Some(event) = side.done {
                    runtime.destroy_event(event);
                }
                if let Some(Captured {
                    exec: Some(exec), ..
                }) = side.graph
                {
                    runtime.destroy_graph(exec);
                }
            }
        }
    }
}
