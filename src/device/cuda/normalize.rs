//! Row-wise L2 normalisation (kernels/normalize.cu): one warp per row, 8 rows per block.

use super::{blocks_for, Buffer, Elem, Gpu};

/// ROWS_PER_BLOCK in the kernel file: 8 warps of 32 lanes.
const ROWS_PER_BLOCK: u32 = 8;

fn grid(rows: usize, d: usize) -> [u32; 3] {
    assert!(
        rows * d <= super::MAX_ELEMENTS,
        "l2_normalize: {rows}×{d} exceeds int indexing"
    );
    [blocks_for(rows, ROWS_PER_BLOCK), 1, 1]
}

/// z = x·rsqrt(max(Σx², 1e-12)) per row of x [rows, d]; inv_norm [rows] keeps 1/‖x‖ for backward.
pub fn l2_normalize_forward(
    gpu: &Gpu,
    rows: usize,
    d: usize,
    x: &Buffer,
    z: &mut Buffer,
    inv_norm: &mut Buffer,
) {
    let elem = Elem::common("l2_normalize_forward", &[x, z]);
    Elem::assert_f32("l2_normalize_forward", [&*inv_norm]);
    assert!(x.len() == rows * d && z.len() == rows * d && inv_norm.len_f32() == rows);
    gpu.launch(
        elem.pick("l2norm_forward", "l2norm_forward_bf16"),
        grid(rows, d),
        [32 * ROWS_PER_BLOCK, 1, 1],
        0,
        &[
            x.into(),
            (rows as i32).into(),
            (d as i32).into(),
            z.into(),
            inv_norm.into(),
        ],
    );
}

/// dx = (dz − z·(z·dz))·inv_norm per row.
#[allow(clippy::too_many_arguments)]
pub fn l2_normalize_backward(
    gpu: &Gpu,
    rows: usize,
    d: usize,
    z: &Buffer,
    dz: &Buffer,
    inv_norm: &Buffer,
    dx: &mut Buffer,
) {
    let elem = Elem::common("l2_normalize_backward", &[z, dz, dx]);
    Elem::assert_f32("l2_normalize_backward", [inv_norm]);
    assert!(z.len() == rows * d && dz.len() == rows * d && dx.len() == rows * d);
    assert_eq!(inv_norm.len_f32(), rows);
    gpu.launch(
        elem.pick("l2norm_backward", "l2norm_backward_bf16"),
        grid(rows, d),
        [32 * ROWS_PER_BLOCK, 1, 1],
        0,
        &[
            z.into(),
            dz.into(),
            inv_norm.into(),
            (rows as i32).into(),
            (d as i32).into(),
            dx.into(),
        ],
    );
}
