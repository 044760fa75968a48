//! Host side of `kernels/ntxent.cu` (f32) and `kernels/ntxent_tc.cu` (bf16 rows, tensor cores):
//! the fused NT-Xent forward+backward, by z's element type. See ntxent.cu's top comment for the
//! algorithm and why its extra memory is O(N): the workspace here is the 2N log-sum-exps (and,
//! in bf16 when d is not a multiple of 16, a zero-padded copy of z, O(N·d)).

use super::{Buffer, Elem, Gpu};

/// Rows (of i, and of j per step) one block handles (NT_TILE in the kernel), 256 threads.
const TILE: usize = 64;
/// Gradient columns per block of `ntxent_grad` (NT_DC) and `ntxent_grad_bf16` (COLS); the
/// bf16 kernels also take 64-row tiles, in 128-thread blocks.
const COLS: usize = 128;
/// The widest (padded) rows the tensor-core kernels take: three 64-row tiles of them must fit
/// in shared memory (3 · 64 · (256 + 8) bf16 = 99 KiB).
const TC_MAX_DIM: usize = 256;

/// NT-Xent over `rows` = 2N L2-normalised rows z [rows, d] (row i's positive is (i + N) mod 2N):
/// loss[0] = the mean loss over the 2N anchors, grad [rows, d] = dL/dz — `cpu::ntxent::ntxent`.
pub fn ntxent(
    gpu: &Gpu,
    rows: usize,
    d: usize,
    z: &Buffer,
    temperature: f32,
    loss: &mut Buffer,
    grad: &mut Buffer,
) {
    let elem = Elem::common("ntxent", &[z, grad]);
    Elem::assert_f32("ntxent", [&*loss]);
    assert!(
        rows >= 2 && rows.is_multiple_of(2) && d > 0,
        "NT-Xent needs 2N rows of width d > 0"
    );
    assert!(z.len() == rows * d && grad.len() == rows * d && loss.len_f32() >= 1);
    let (n, dim, inv_t) = (rows as i32, d as i32, 1.0 / temperature);
    let lse = gpu.alloc_f32(rows);
    let row_blocks = rows.div_ceil(TILE) as u32;
    let loss_args = |z: &Buffer, loss: &mut Buffer| {
        [
            z.into(),
            n.into(),
            dim.into(),
            inv_t.into(),
            (&lse).into(),
            loss.into(),
        ]
    };
    if elem == Elem::Bf16 {
        // The tensor-core path (kernels/ntxent_tc.cu) on rows zero-padded to a multiple of 16.
        let dp = d.next_multiple_of(16);
        assert!(
            dp <= TC_MAX_DIM,
            "NT-Xent in bf16: d = {d} over {TC_MAX_DIM}"
        );
        let padded = (dp != d).then(|| {
            let zp = gpu.alloc(rows * dp, Elem::Bf16);
            let args = [
                z.into(),
                n.into(),
                dim.into(),
                (dp as i32).into(),
                (&zp).into(),
            ];
            gpu.launch_1d("ntxent_pack_bf16", rows * dp, &args);
            zp
        });
        let zp = padded.as_ref().unwrap_or(z);
        let shared = (3 * TILE * (dp + 8) * 2) as u32;
        let dpi = dp as i32;
        let args = [zp.into(), n.into(), dpi.into(), inv_t.into(), (&lse).into()];
        gpu.launch(
            "ntxent_lse_bf16",
            [row_blocks, 1, 1],
            [128, 1, 1],
            shared,
            &args,
        );
        gpu.launch(
            "ntxent_loss_bf16",
            [1, 1, 1],
            [256, 1, 1],
            0,
            &loss_args(z, loss),
        );
        let grid = [row_blocks, dp.div_ceil(COLS) as u32, 1];
        let args = [
            zp.into(),
            n.into(),
            dim.into(),
            dpi.into(),
            inv_t.into(),
            (&lse).into(),
            grad.into(),
        ];
        gpu.launch("ntxent_grad_bf16", grid, [128, 1, 1], shared, &args);
        return;
    }
    gpu.launch(
        "ntxent_lse",
        [row_blocks, 1, 1],
        [256, 1, 1],
        0,
        &[z.into(), n.into(), dim.into(), inv_t.into(), (&lse).into()],
    );
    gpu.launch(
        "ntxent_loss",
        [1, 1, 1],
        [256, 1, 1],
        0,
        &loss_args(z, loss),
    );
    gpu.launch(
        "ntxent_grad",
        [row_blocks, d.div_ceil(COLS) as u32, 1],
        [256, 1, 1],
        0,
        &[
            z.into(),
            n.into(),
            dim.into(),
            inv_t.into(),
            (&lse).into(),
            grad.into(),
        ],
    );
}
