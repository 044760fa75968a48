//! Host side of `kernels/ntxent.cu`: the fused NT-Xent forward+backward. See the kernel file's
//! top comment for the algorithm and why its extra memory is O(N): the only workspace here is
//! the 2N log-sum-exps.

use super::{Buffer, Elem, Gpu};

/// Rows (of i, and of j per step) one block handles (NT_TILE in the kernel), 256 threads.
const TILE: usize = 64;
/// Gradient columns per block of `ntxent_grad` (NT_DC).
const COLS: usize = 128;

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
    Elem::assert_f32("ntxent", [z, &*loss, &*grad]);
    assert!(
        rows >= 2 && rows.is_multiple_of(2) && d > 0,
        "NT-Xent needs 2N rows of width d > 0"
    );
    assert!(z.len_f32() >= rows * d && grad.len_f32() >= rows * d && loss.len_f32() >= 1);
    let (n, dim, inv_t) = (rows as i32, d as i32, 1.0 / temperature);
    let lse = gpu.alloc_f32(rows);
    let row_blocks = rows.div_ceil(TILE) as u32;
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
        &[
            z.into(),
            n.into(),
            dim.into(),
            inv_t.into(),
            (&lse).into(),
            loss.into(),
        ],
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
