//! Optimiser updates (kernels/optim.cu) of every parameter tensor of a step in a few launches,
//! with the formulas of cpu::optim: LARS in three (chunk norms, per-tensor norms, update), SGD
//! in one. The tensors and the learning rate are described to the kernels by a table uploaded
//! once per step (the gradients are fresh buffers every step), without a wait. See the kernel
//! file for the table and the order of the sums, which depends on the tensors' lengths only.

use super::{Buffer, Gpu};

const THREADS: u32 = 256;
/// Values per chunk, one block each (OPT_CHUNK in the kernel).
const CHUNK: usize = 4096;

/// One parameter tensor's buffers and constants.
pub struct Param<'a> {
    pub w: &'a mut Buffer,
    pub g: &'a Buffer,
    pub v: &'a mut Buffer,
    pub weight_decay: f32,
    /// LARS adapts the tensor's rate (conv and dense kernels).
    pub adapt: bool,
}

/// The kernels' table (TABLE_WORDS = 6 words per tensor, then the learning rate) and the
/// number of chunks.
fn table(params: &[Param], lr: f32) -> (Vec<u64>, usize) {
    let mut words = Vec::with_capacity(6 * params.len() + 1);
    let mut chunks = 0;
    for p in params {
        let n = p.w.len_f32();
        assert!(p.g.len_f32() == n && p.v.len_f32() == n && n > 0);
        assert!(
            n <= super::MAX_ELEMENTS,
            "optimiser: {n} values exceed int indexing"
        );
        let flags = p.weight_decay.to_bits() as u64 | (p.adapt as u64) << 32;
        words.extend([p.w.ptr, p.g.ptr, p.v.ptr, n as u64, chunks as u64, flags]);
        chunks += n.div_ceil(CHUNK);
    }
    assert!(chunks < i32::MAX as usize, "optimiser: too many chunks");
    words.push(lr.to_bits() as u64);
    (words, chunks)
}

/// LARS (TF convention): g ← g + wd·w; v ← m·v + lr·trust·g; w ← w − v, with
/// trust = η‖w‖/‖g + wd·w‖ for adapted tensors (1 when either norm is 0), else 1.
pub fn lars_step(gpu: &Gpu, params: &mut [Param], lr: f32, momentum: f32, eta: f32) {
    if params.is_empty() {
        return;
    }
    let (words, chunks) = table(params, lr);
    let (table, tensors) = (gpu.upload_pinned(&words), params.len() as i32);
    let mut partial = gpu.alloc_f32(2 * chunks);
    let mut norms = gpu.alloc_f32(2 * params.len());
    let grid = [chunks as u32, 1, 1];
    gpu.launch(
        "optim_lars_partials",
        grid,
        [THREADS, 1, 1],
        0,
        &[(&table).into(), tensors.into(), (&mut partial).into()],
    );
    gpu.launch(
        "optim_lars_norms",
        [params.len() as u32, 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            (&table).into(),
            tensors.into(),
            (chunks as i32).into(),
            (&partial).into(),
            (&mut norms).into(),
        ],
    );
    gpu.launch(
        "optim_lars_apply",
        grid,
        [THREADS, 1, 1],
        0,
        &[
            (&table).into(),
            tensors.into(),
            momentum.into(),
            eta.into(),
            (&norms).into(),
        ],
    );
}

/// SGD with momentum (PyTorch convention), optionally Nesterov:
/// g ← g + wd·w; v ← m·v + g; w ← w − lr·(g + m·v) if Nesterov else w − lr·v.
pub fn sgd_step(gpu: &Gpu, params: &mut [Param], lr: f32, momentum: f32, nesterov: bool) {
    if params.is_empty() {
        return;
    }
    let (words, chunks) = table(params, lr);
    let table = gpu.upload_pinned(&words);
    gpu.launch(
        "optim_sgd_apply",
        [chunks as u32, 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            (&table).into(),
            (params.len() as i32).into(),
            momentum.into(),
            (nesterov as i32).into(),
        ],
    );
}
