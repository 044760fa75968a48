//! Optimiser updates (kernels/optim.cu), one parameter tensor at a time, with the formulas of
//! cpu::optim. Sums of squares are two-stage trees over a grid that depends on the length only,
//! so they are deterministic; LARS's trust ratio is computed on the device.

use super::{blocks_for, Buffer, Gpu};

const THREADS: u32 = 256;
/// At most this many first-stage blocks (partials for the second stage's single block).
const MAX_PARTIALS: u32 = 256;

/// First-stage blocks for `n` values: about 4 values per thread, at most MAX_PARTIALS blocks.
fn partial_blocks(n: usize) -> u32 {
    assert!(
        n <= super::MAX_ELEMENTS,
        "optimiser: {n} values exceed int indexing"
    );
    blocks_for(n, THREADS * 4).min(MAX_PARTIALS)
}

/// out[0] = Σ x².
pub fn sum_sq(gpu: &Gpu, x: &Buffer, out: &mut Buffer) {
    let n = x.len_f32();
    let blocks = partial_blocks(n);
    let mut partial = gpu.alloc_f32(blocks as usize);
    gpu.launch(
        "optim_sum_sq_partial",
        [blocks, 1, 1],
        [THREADS, 1, 1],
        0,
        &[x.into(), (n as i32).into(), (&mut partial).into()],
    );
    gpu.launch(
        "optim_sum_partials",
        [1, 1, 1],
        [THREADS, 1, 1],
        0,
        &[(&partial).into(), (blocks as i32).into(), out.into()],
    );
}

/// LARS (TF convention): g ← g + wd·w; v ← m·v + lr·trust·g; w ← w − v, with
/// trust = η‖w‖/‖g + wd·w‖ when `adapt` (1 when either norm is 0), else 1. The norms are summed
/// into `norms` (2 floats: Σw², Σ(g + wd·w)²) and read there by the update kernel.
#[allow(clippy::too_many_arguments)]
pub fn lars_update(
    gpu: &Gpu,
    w: &mut Buffer,
    g: &Buffer,
    v: &mut Buffer,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    eta: f32,
    adapt: bool,
    norms: &mut Buffer,
) {
    let n = w.len_f32();
    assert!(g.len_f32() == n && v.len_f32() == n && norms.len_f32() >= 2);
    if adapt {
        let blocks = partial_blocks(n);
        let mut partial = gpu.alloc_f32(2 * blocks as usize);
        gpu.launch(
            "optim_lars_partial",
            [blocks, 1, 1],
            [THREADS, 1, 1],
            0,
            &[
                (&*w).into(),
                g.into(),
                weight_decay.into(),
                (n as i32).into(),
                (&mut partial).into(),
            ],
        );
        gpu.launch(
            "optim_sum_partials",
            [2, 1, 1],
            [THREADS, 1, 1],
            0,
            &[
                (&partial).into(),
                (blocks as i32).into(),
                (&mut *norms).into(),
            ],
        );
    }
    gpu.launch(
        "optim_lars_update",
        [blocks_for(n, THREADS), 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            w.into(),
            g.into(),
            v.into(),
            (n as i32).into(),
            lr.into(),
            momentum.into(),
            weight_decay.into(),
            eta.into(),
            (adapt as i32).into(),
            norms.into(),
        ],
    );
}

/// SGD with momentum (PyTorch convention), optionally Nesterov:
/// g ← g + wd·w; v ← m·v + g; w ← w − lr·(g + m·v) if Nesterov else w − lr·v.
#[allow(clippy::too_many_arguments)]
pub fn sgd_update(
    gpu: &Gpu,
    w: &mut Buffer,
    g: &Buffer,
    v: &mut Buffer,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
) {
    let n = w.len_f32();
    assert!(g.len_f32() == n && v.len_f32() == n);
    assert!(
        n <= super::MAX_ELEMENTS,
        "sgd: {n} values exceed int indexing"
    );
    gpu.launch(
        "optim_sgd_update",
        [blocks_for(n, THREADS), 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            w.into(),
            g.into(),
            v.into(),
            (n as i32).into(),
            lr.into(),
            momentum.into(),
            weight_decay.into(),
            (nesterov as i32).into(),
        ],
    );
}
