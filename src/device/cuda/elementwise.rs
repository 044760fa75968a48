//! Elementwise ops and the column sum (kernels/elementwise.cu) over f32 buffers.

use super::{blocks_for, Buffer, Gpu};

pub fn relu_forward(gpu: &Gpu, x: &Buffer, y: &mut Buffer) {
    let n = x.len_f32();
    assert_eq!(y.len_f32(), n);
    gpu.launch_1d(
        "ew_relu_forward",
        n,
        &[x.into(), (n as i32).into(), y.into()],
    );
}

/// dx = dy where y > 0, else 0.
pub fn relu_backward(gpu: &Gpu, y: &Buffer, dy: &Buffer, dx: &mut Buffer) {
    let n = y.len_f32();
    assert!(dy.len_f32() == n && dx.len_f32() == n);
    gpu.launch_1d(
        "ew_relu_backward",
        n,
        &[y.into(), dy.into(), (n as i32).into(), dx.into()],
    );
}

pub fn add(gpu: &Gpu, a: &Buffer, b: &Buffer, y: &mut Buffer) {
    let n = a.len_f32();
    assert!(b.len_f32() == n && y.len_f32() == n);
    gpu.launch_1d(
        "ew_add",
        n,
        &[a.into(), b.into(), (n as i32).into(), y.into()],
    );
}

/// acc += x.
pub fn add_assign(gpu: &Gpu, acc: &mut Buffer, x: &Buffer) {
    let n = acc.len_f32();
    assert_eq!(x.len_f32(), n);
    gpu.launch_1d(
        "ew_add_assign",
        n,
        &[acc.into(), x.into(), (n as i32).into()],
    );
}

/// y = s[0]·x, with `s` in device memory.
pub fn scale_by(gpu: &Gpu, x: &Buffer, s: &Buffer, y: &mut Buffer) {
    let n = x.len_f32();
    assert!(y.len_f32() == n && s.len_f32() >= 1);
    gpu.launch_1d(
        "ew_scale_by",
        n,
        &[x.into(), s.into(), (n as i32).into(), y.into()],
    );
}

/// y[r, :] += b for y [rows, cols].
pub fn bias_add(gpu: &Gpu, rows: usize, cols: usize, y: &mut Buffer, b: &Buffer) {
    let n = rows * cols;
    assert!(y.len_f32() == n && b.len_f32() == cols);
    gpu.launch_1d(
        "ew_bias_add",
        n,
        &[y.into(), b.into(), (n as i32).into(), (cols as i32).into()],
    );
}

/// out[c] = Σ_r x[r, c] for x [rows, cols] (deterministic: a fixed summation order).
pub fn sum_rows(gpu: &Gpu, rows: usize, cols: usize, x: &Buffer, out: &mut Buffer) {
    assert!(x.len_f32() == rows * cols && out.len_f32() == cols);
    assert!(
        rows * cols <= super::MAX_ELEMENTS,
        "sum_rows: {rows}×{cols} exceeds int indexing"
    );
    gpu.launch(
        "ew_sum_rows",
        [blocks_for(cols, 32), 1, 1],
        [32, 8, 1],
        0,
        &[
            x.into(),
            (rows as i32).into(),
            (cols as i32).into(),
            out.into(),
        ],
    );
}
