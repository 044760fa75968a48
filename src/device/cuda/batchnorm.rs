//! Batch norm (kernels/batchnorm.cu) on activations viewed as [rows, c], rows = N·H·W, stored
//! as f32 or bf16 (x, y, dy, dx all the same type); the statistics, parameters and their
//! gradients are f32 [c]. Per-channel sums go through per-chunk partials combined in a fixed
//! order, so every result is deterministic.
//!
//! Global batch norm (data parallelism, `dist`): the ranks gather each other's partials, and
//! the finalize kernels combine all of them: the statistics, and the backward's dx, are those
//! of every rank's rows.

use super::{blocks_for, Arg, Buffer, Elem, Gpu};
use crate::dist::Comm;

/// The fewest rows a block of the reduction passes takes (a multiple of it: more rows when
/// there are more than enough blocks).
const MIN_CHUNK: usize = 256;
/// Blocks the reduction passes aim for: a few waves on an H100's 132 SMs, at every shape.
const TARGET_BLOCKS: usize = 1024;
/// 32 channel lanes × 8 row lanes: BN_CH × BN_RL in the kernel file.
const TILE: [u32; 3] = [32, 8, 1];
const THREADS: u32 = 256;

/// Rows per block of the reduction passes: about TARGET_BLOCKS blocks over the row chunks and
/// the 32-channel tiles together, so a wide late layer and a large early one both fill the
/// GPU, and the finalize kernels sum at most ~TARGET_BLOCKS partials per channel (at 112×112
/// and batch 512, 256-row chunks would leave them 25,088 each).
fn chunk_rows(rows: usize, c: usize) -> usize {
    let chunks = (TARGET_BLOCKS / c.div_ceil(32)).max(1);
    rows.div_ceil(chunks).next_multiple_of(MIN_CHUNK)
}

/// Grid of the per-chunk passes: chunks of rows × tiles of 32 channels.
fn chunk_grid(rows: usize, c: usize, chunk: usize) -> [u32; 3] {
    [rows.div_ceil(chunk) as u32, blocks_for(c, 32), 1]
}

/// Grid of the per-channel passes.
fn channel_grid(c: usize) -> [u32; 3] {
    [blocks_for(c, 32), 1, 1]
}

fn check_sizes(rows: usize, c: usize) -> (i32, i32) {
    assert!(rows > 0 && c > 0, "batch norm of an empty tensor");
    let n = rows.checked_mul(c).filter(|&n| n <= super::MAX_ELEMENTS);
    assert!(
        n.is_some(),
        "batch norm: {rows}×{c} exceeds the kernels' int indexing"
    );
    (rows as i32, c as i32)
}

/// A buffer argument or the null pointer the kernels read as "absent".
fn opt(b: Option<&Buffer>) -> Arg {
    b.map_or(Arg::Ptr(0), Arg::from)
}

/// Training mode: y = BN(x) with the batch statistics, plus `skip` when given (a residual
/// block's sum), then ReLU when `relu`, in one pass over x; writes the batch mean and
/// invstd = 1/√(biased var + eps) per channel for the backward pass and `update_running`.
/// `beta` is None for BN without centring.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    gpu: &Gpu,
    rows: usize,
    c: usize,
    x: &Buffer,
    gamma: &Buffer,
    beta: Option<&Buffer>,
    eps: f32,
    skip: Option<&Buffer>,
    relu: bool,
    y: &mut Buffer,
    mean: &mut Buffer,
    invstd: &mut Buffer,
    comm: &dyn Comm,
) {
    let (r, ci) = check_sizes(rows, c);
    let elem = Elem::common("batch norm forward", &[x, y]);
    assert!(x.len() == rows * c && y.len() == rows * c);
    Elem::assert_f32(
        "batch norm forward",
        [gamma, &*mean, &*invstd].into_iter().chain(beta),
    );
    let chunk = chunk_rows(rows, c);
    let chunks = rows.div_ceil(chunk);
    let mut part_mean = gpu.alloc_f32(chunks * c);
    let mut part_m2 = gpu.alloc_f32(chunks * c);
    let mut coef = gpu.alloc_f32(2 * c);
    gpu.launch(
        elem.pick("bn_stats_partial", "bn_stats_partial_bf16"),
        chunk_grid(rows, c, chunk),
        TILE,
        0,
        &[
            x.into(),
            r.into(),
            ci.into(),
            (chunk as i32).into(),
            (&mut part_mean).into(),
            (&mut part_m2).into(),
        ],
    );
    let parts = [part_mean, part_m2].map(|p| gathered(comm, gpu, p));
    gpu.launch(
        "bn_stats_finalize",
        channel_grid(c),
        TILE,
        0,
        &[
            (&parts[0]).into(),
            (&parts[1]).into(),
            r.into(),
            ci.into(),
            (chunk as i32).into(),
            (comm.size() as i32).into(),
            gamma.into(),
            opt(beta),
            eps.into(),
            mean.into(),
            invstd.into(),
            (&mut coef).into(),
        ],
    );
    affine(gpu, rows, c, x, &coef, skip, relu, y);
}

/// Moves the running statistics toward the batch's: r ← m·r + (1−m)·batch, the variance
/// unbiased by rows/(rows−1), exactly as cpu::batchnorm::update_running.
#[allow(clippy::too_many_arguments)]
pub fn update_running(
    gpu: &Gpu,
    rows: usize,
    c: usize,
    mean: &Buffer,
    invstd: &Buffer,
    eps: f32,
    momentum: f32,
    running_mean: &mut Buffer,
    running_var: &mut Buffer,
) {
    let (r, ci) = check_sizes(rows, c);
    Elem::assert_f32(
        "batch norm running update",
        [mean, invstd, &*running_mean, &*running_var],
    );
    gpu.launch(
        "bn_update_running",
        [blocks_for(c, THREADS), 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            mean.into(),
            invstd.into(),
            r.into(),
            ci.into(),
            eps.into(),
            momentum.into(),
            running_mean.into(),
            running_var.into(),
        ],
    );
}

/// Inference mode: y = BN(x) with the running statistics (plus `skip`, then ReLU when `relu`).
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    gpu: &Gpu,
    rows: usize,
    c: usize,
    x: &Buffer,
    gamma: &Buffer,
    beta: Option<&Buffer>,
    running_mean: &Buffer,
    running_var: &Buffer,
    eps: f32,
    skip: Option<&Buffer>,
    relu: bool,
    y: &mut Buffer,
) {
    let (_, ci) = check_sizes(rows, c);
    Elem::common("batch norm eval", &[x, y]);
    assert!(x.len() == rows * c && y.len() == rows * c);
    Elem::assert_f32(
        "batch norm eval",
        [gamma, running_mean, running_var].into_iter().chain(beta),
    );
    let mut coef = gpu.alloc_f32(2 * c);
    gpu.launch(
        "bn_eval_coef",
        [blocks_for(c, THREADS), 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            gamma.into(),
            opt(beta),
            running_mean.into(),
            running_var.into(),
            eps.into(),
            ci.into(),
            (&mut coef).into(),
        ],
    );
    affine(gpu, rows, c, x, &coef, skip, relu, y);
}

/// y = x·coef[ch] + coef[c + ch] (+ skip) per element, optionally followed by ReLU; x, skip
/// and y of one type.
#[allow(clippy::too_many_arguments)]
fn affine(
    gpu: &Gpu,
    rows: usize,
    c: usize,
    x: &Buffer,
    coef: &Buffer,
    skip: Option<&Buffer>,
    relu: bool,
    y: &mut Buffer,
) {
    let n = rows * c;
    if let Some(skip) = skip {
        Elem::common("batch norm + add", &[x, skip]);
        assert_eq!(skip.len(), n, "batch norm + add: the skip's size");
    }
    gpu.launch(
        x.elem().pick("bn_affine", "bn_affine_bf16"),
        [blocks_for(n, THREADS), 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            x.into(),
            opt(skip),
            coef.into(),
            (n as i32).into(),
            (c as i32).into(),
            (relu as i32).into(),
            y.into(),
        ],
    );
}

/// Backward of training-mode BN given the forward's batch mean and invstd. `y` = Some(BN
/// output after the fused ReLU) masks dy by y > 0 first. Writes dx, dγ and, when given, dβ
/// and `dsum`: the masked dy itself, a fused residual sum's gradient (which its skip receives).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    rows: usize,
    c: usize,
    x: &Buffer,
    y: Option<&Buffer>,
    dy: &Buffer,
    gamma: &Buffer,
    mean: &Buffer,
    invstd: &Buffer,
    dx: &mut Buffer,
    dgamma: &mut Buffer,
    dbeta: Option<&mut Buffer>,
    dsum: Option<&mut Buffer>,
    comm: &dyn Comm,
) {
    let (r, ci) = check_sizes(rows, c);
    let activations: Vec<&Buffer> = [x, dy, &*dx]
        .into_iter()
        .chain(y)
        .chain(dsum.as_deref())
        .collect();
    let elem = Elem::common("batch norm backward", &activations);
    assert!(activations.iter().all(|b| b.len() == rows * c));
    Elem::assert_f32(
        "batch norm backward",
        [gamma, mean, invstd, &*dgamma]
            .into_iter()
            .chain(dbeta.as_deref()),
    );
    let chunk = chunk_rows(rows, c);
    let chunks = rows.div_ceil(chunk);
    let mut part_dbeta = gpu.alloc_f32(chunks * c);
    let mut part_dgx = gpu.alloc_f32(chunks * c);
    let mut coef = gpu.alloc_f32(3 * c);
    gpu.launch(
        elem.pick("bn_backward_partial", "bn_backward_partial_bf16"),
        chunk_grid(rows, c, chunk),
        TILE,
        0,
        &[
            x.into(),
            opt(y),
            dy.into(),
            mean.into(),
            r.into(),
            ci.into(),
            (chunk as i32).into(),
            (&mut part_dbeta).into(),
            (&mut part_dgx).into(),
        ],
    );
    // dγ and dβ of the partials of `ranks` ranks, and the dx coefficients they give.
    let finalize = |parts: [&Buffer; 2], ranks: usize, dg: &mut Buffer, db, coef: &mut Buffer| {
        gpu.launch(
            "bn_backward_finalize",
            channel_grid(c),
            TILE,
            0,
            &[
                parts[0].into(),
                parts[1].into(),
                r.into(),
                ci.into(),
                (chunk as i32).into(),
                (ranks as i32).into(),
                gamma.into(),
                mean.into(),
                invstd.into(),
                dg.into(),
                opt(db),
                coef.into(),
            ],
        )
    };
    finalize(
        [&part_dbeta, &part_dgx],
        1,
        dgamma,
        dbeta.as_deref(),
        &mut coef,
    );
    if comm.size() > 1 {
        // This rank's own dγ and dβ stay (the gradient average completes them); dx takes the
        // sums of all ranks.
        let parts = [part_dbeta, part_dgx].map(|p| gathered(comm, gpu, p));
        let mut all_dgamma = gpu.alloc_f32(c);
        finalize(
            [&parts[0], &parts[1]],
            comm.size(),
            &mut all_dgamma,
            None,
            &mut coef,
        );
    }
    let n = rows * c;
    gpu.launch(
        elem.pick("bn_backward_dx", "bn_backward_dx_bf16"),
        [blocks_for(n, THREADS), 1, 1],
        [THREADS, 1, 1],
        0,
        &[
            x.into(),
            opt(y),
            dy.into(),
            (&coef).into(),
            (n as i32).into(),
            ci.into(),
            dx.into(),
            opt(dsum.as_deref()),
        ],
    );
}

/// The partials `part` of every rank of `comm`, one after the other (`part` itself alone).
fn gathered(comm: &dyn Comm, gpu: &Gpu, part: Buffer) -> Buffer {
    match comm.size() {
        1 => part,
        _ => comm.all_gather_device(gpu, &part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_passes_fill_the_gpu_at_every_resnet50_shape() {
        // (rows, channels) of ResNet-50's batch norms at 512 views, 224 px.
        for (rows, c) in [
            (512 * 112 * 112, 64),
            (512 * 56 * 56, 256),
            (512 * 7 * 7, 2048),
        ] {
            let chunk = chunk_rows(rows, c);
            let blocks = rows.div_ceil(chunk) * c.div_ceil(32);
            assert!(
                (512..=TARGET_BLOCKS).contains(&blocks),
                "{rows}×{c}: {blocks} blocks"
            );
            assert!(chunk.is_multiple_of(MIN_CHUNK));
        }
        // Small tensors keep one 256-row chunk per block.
        assert_eq!(chunk_rows(300, 5), 256);
    }
}
