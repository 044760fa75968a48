//! Elementwise ops, the f32 ↔ bf16 conversion and the column sum (kernels/elementwise.cu). The
//! activation ops take f32 or bf16 buffers (all of one op's buffers the same type); the others
//! are f32 only.

use super::{blocks_for, Buffer, Elem, Gpu};

pub fn relu_forward(gpu: &Gpu, x: &Buffer, y: &mut Buffer) {
    let elem = Elem::common("relu_forward", &[x, y]);
    let n = x.len();
    assert_eq!(y.len(), n);
    gpu.launch_1d(
        elem.pick("ew_relu_forward", "ew_relu_forward_bf16"),
        n,
        &[x.into(), (n as i32).into(), y.into()],
    );
}

/// dx = dy where y > 0, else 0.
pub fn relu_backward(gpu: &Gpu, y: &Buffer, dy: &Buffer, dx: &mut Buffer) {
    let elem = Elem::common("relu_backward", &[y, dy, dx]);
    let n = y.len();
    assert!(dy.len() == n && dx.len() == n);
    gpu.launch_1d(
        elem.pick("ew_relu_backward", "ew_relu_backward_bf16"),
        n,
        &[y.into(), dy.into(), (n as i32).into(), dx.into()],
    );
}

pub fn add(gpu: &Gpu, a: &Buffer, b: &Buffer, y: &mut Buffer) {
    let elem = Elem::common("add", &[a, b, y]);
    let n = a.len();
    assert!(b.len() == n && y.len() == n);
    gpu.launch_1d(
        elem.pick("ew_add", "ew_add_bf16"),
        n,
        &[a.into(), b.into(), (n as i32).into(), y.into()],
    );
}

/// acc += x.
pub fn add_assign(gpu: &Gpu, acc: &mut Buffer, x: &Buffer) {
    let elem = Elem::common("add_assign", &[acc, x]);
    let n = acc.len();
    assert_eq!(x.len(), n);
    gpu.launch_1d(
        elem.pick("ew_add_assign", "ew_add_assign_bf16"),
        n,
        &[acc.into(), x.into(), (n as i32).into()],
    );
}

/// y = x converted to y's element type: f32 → bf16 rounds to nearest even, bf16 → f32 is exact.
/// The two buffers hold the same number of elements, of different types (a same-type copy is
/// `Buffer::clone`; asking for one here is refused).
pub fn cast(gpu: &Gpu, x: &Buffer, y: &mut Buffer) {
    let n = x.len();
    assert_eq!(y.len(), n, "cast: {n} elements into {}", y.len());
    let kernel = match (x.elem(), y.elem()) {
        (Elem::F32, Elem::Bf16) => "ew_to_bf16",
        (Elem::Bf16, Elem::F32) => "ew_to_f32",
        (from, to) => {
            panic!("cast: from {from:?} to {to:?} converts nothing (Buffer::clone copies)")
        }
    };
    gpu.launch_1d(kernel, n, &[x.into(), (n as i32).into(), y.into()]);
}

/// y = s[0]·x, with `s` in device memory.
pub fn scale_by(gpu: &Gpu, x: &Buffer, s: &Buffer, y: &mut Buffer) {
    let elem = Elem::common("scale_by", &[x, y]);
    Elem::assert_f32("scale_by", [s]);
    let n = x.len();
    assert!(y.len() == n && s.len_f32() >= 1);
    gpu.launch_1d(
        elem.pick("ew_scale_by", "ew_scale_by_bf16"),
        n,
        &[x.into(), s.into(), (n as i32).into(), y.into()],
    );
}

/// y[i] = value for every f32 of y, by a kernel: no host-to-device copy, so no host wait.
pub fn fill(gpu: &Gpu, y: &mut Buffer, value: f32) {
    Elem::assert_f32("fill", [&*y]);
    let n = y.len();
    gpu.launch_1d("ew_fill", n, &[y.into(), (n as i32).into(), value.into()]);
}

/// y[r, :] += b for y [rows, cols].
pub fn bias_add(gpu: &Gpu, rows: usize, cols: usize, y: &mut Buffer, b: &Buffer) {
    Elem::assert_f32("bias_add", [b]);
    let n = rows * cols;
    assert!(y.len() == n && b.len_f32() == cols);
    gpu.launch_1d(
        y.elem().pick("ew_bias_add", "ew_bias_add_bf16"),
        n,
        &[y.into(), b.into(), (n as i32).into(), (cols as i32).into()],
    );
}

/// out[c] = Σ_r x[r, c] for x [rows, cols] (deterministic: a fixed summation order).
/// x may be bf16; out is f32.
pub fn sum_rows(gpu: &Gpu, rows: usize, cols: usize, x: &Buffer, out: &mut Buffer) {
    Elem::assert_f32("sum_rows", [&*out]);
    assert!(x.len() == rows * cols && out.len_f32() == cols);
    assert!(
        rows * cols <= super::MAX_ELEMENTS,
        "sum_rows: {rows}×{cols} exceeds int indexing"
    );
    gpu.launch(
        x.elem().pick("ew_sum_rows", "ew_sum_rows_bf16"),
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
