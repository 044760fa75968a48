//! Max pooling, average pooling and global average pooling (kernels/pool.cu) on NHWC buffers,
//! f32 or bf16 (all of one op's buffers the same type). Max pooling's backward recomputes each
//! window's winner from x (the same rule as cpu::pool), so the forward keeps no argmax.

use super::{Arg, Buffer, Elem, Gpu};
use crate::device::cpu::pool::{AvgPoolShape, PoolShape};

/// The shape as the kernels take it: n, h, w, c, k, stride, pad, oh, ow.
fn shape_args(s: &PoolShape) -> [Arg; 9] {
    [
        s.n,
        s.h,
        s.w,
        s.c,
        s.kernel,
        s.stride,
        s.pad,
        s.out_h(),
        s.out_w(),
    ]
    .map(|v| Arg::I32(v as i32))
}

/// y [n, oh, ow, c] = max over each window of x [n, h, w, c] (padding never wins).
pub fn maxpool_forward(gpu: &Gpu, s: &PoolShape, x: &Buffer, y: &mut Buffer) {
    let elem = Elem::common("maxpool forward", &[x, y]);
    let n = s.n * s.out_h() * s.out_w() * s.c;
    assert!(x.len() == s.n * s.h * s.w * s.c && y.len() == n);
    let mut args = vec![Arg::from(x)];
    args.extend(shape_args(s));
    args.push(y.into());
    gpu.launch_1d(
        elem.pick("maxpool_forward", "maxpool_forward_bf16"),
        n,
        &args,
    );
}

/// dx = Σ of dy over the windows each input element won (first maximum in scan order).
pub fn maxpool_backward(gpu: &Gpu, s: &PoolShape, x: &Buffer, dy: &Buffer, dx: &mut Buffer) {
    let elem = Elem::common("maxpool backward", &[x, dy, dx]);
    let n = s.n * s.h * s.w * s.c;
    assert!(x.len() == n && dx.len() == n);
    assert_eq!(dy.len(), s.n * s.out_h() * s.out_w() * s.c);
    let mut args = vec![Arg::from(x), Arg::from(dy)];
    args.extend(shape_args(s));
    args.push(dx.into());
    gpu.launch_1d(
        elem.pick("maxpool_backward", "maxpool_backward_bf16"),
        n,
        &args,
    );
}

/// The shape as the average-pool kernels take it: n, h, w, c, k, stride, pad_top, pad_left,
/// oh, ow.
fn avg_shape_args(s: &AvgPoolShape) -> [Arg; 10] {
    [
        s.n,
        s.h,
        s.w,
        s.c,
        s.kernel,
        s.stride,
        s.pad_top(),
        s.pad_left(),
        s.out_h(),
        s.out_w(),
    ]
    .map(|v| Arg::I32(v as i32))
}

/// y [n, oh, ow, c] = mean of each 'SAME'-padded window's in-image elements of x [n, h, w, c].
pub fn avg_pool_forward(gpu: &Gpu, s: &AvgPoolShape, x: &Buffer, y: &mut Buffer) {
    let elem = Elem::common("avg pool forward", &[x, y]);
    let n = s.n * s.out_h() * s.out_w() * s.c;
    assert!(x.len() == s.n * s.h * s.w * s.c && y.len() == n);
    let mut args = vec![Arg::from(x)];
    args.extend(avg_shape_args(s));
    args.push(y.into());
    gpu.launch_1d(
        elem.pick("avg_pool_forward", "avg_pool_forward_bf16"),
        n,
        &args,
    );
}

/// dx = Σ of dy / (window element count) over the windows holding each input element.
pub fn avg_pool_backward(gpu: &Gpu, s: &AvgPoolShape, dy: &Buffer, dx: &mut Buffer) {
    let elem = Elem::common("avg pool backward", &[dy, dx]);
    let n = s.n * s.h * s.w * s.c;
    assert_eq!(dx.len(), n);
    assert_eq!(dy.len(), s.n * s.out_h() * s.out_w() * s.c);
    let mut args = vec![Arg::from(dy)];
    args.extend(avg_shape_args(s));
    args.push(dx.into());
    gpu.launch_1d(
        elem.pick("avg_pool_backward", "avg_pool_backward_bf16"),
        n,
        &args,
    );
}

/// y [n, c] = mean of x [n, hw, c] over the hw positions.
pub fn global_avg_pool_forward(
    gpu: &Gpu,
    n: usize,
    hw: usize,
    c: usize,
    x: &Buffer,
    y: &mut Buffer,
) {
    let elem = Elem::common("global avg pool forward", &[x, y]);
    assert!(x.len() == n * hw * c && y.len() == n * c);
    let args = [
        x.into(),
        (n as i32).into(),
        (hw as i32).into(),
        (c as i32).into(),
        y.into(),
    ];
    let kernel = elem.pick("global_avg_pool_forward", "global_avg_pool_forward_bf16");
    gpu.launch_1d(kernel, n * c, &args);
}

/// dx [n, hw, c] = dy [n, c] / hw.
pub fn global_avg_pool_backward(
    gpu: &Gpu,
    n: usize,
    hw: usize,
    c: usize,
    dy: &Buffer,
    dx: &mut Buffer,
) {
    let elem = Elem::common("global avg pool backward", &[dy, dx]);
    assert!(dx.len() == n * hw * c && dy.len() == n * c);
    let args = [
        dy.into(),
        (n as i32).into(),
        (hw as i32).into(),
        (c as i32).into(),
        dx.into(),
    ];
    let kernel = elem.pick("global_avg_pool_backward", "global_avg_pool_backward_bf16");
    gpu.launch_1d(kernel, n * hw * c, &args);
}
