//! The selective-kernel ops (kernels/sk.cu) on NHWC f32 buffers x [n, hw, 2c] holding two
//! streams (channels [0, c) and [c, 2c)); the same formulas as cpu::sk.

use super::{Arg, Buffer, Gpu};

/// The reduction kernels' block: 32 channels × 8 position lanes (SK_CHANNELS × SK_LANES).
const CHANNELS: u32 = 32;
const LANES: u32 = 8;

/// One block per (32 channels, image) for the kernels that sum over positions.
fn reduce_grid(n: usize, c: usize) -> [u32; 3] {
    assert!(n <= 65535, "{n} images exceed the grid's y dimension");
    [c.div_ceil(CHANNELS as usize) as u32, n as u32, 1]
}

/// y [n, c] = mean over the hw positions of the two streams' sum.
pub fn sk_pool_forward(gpu: &Gpu, n: usize, hw: usize, c: usize, x: &Buffer, y: &mut Buffer) {
    assert!(x.len_f32() == n * hw * 2 * c && y.len_f32() == n * c);
    let args = [x.into(), (hw as i32).into(), (c as i32).into(), y.into()];
    gpu.launch(
        "sk_pool_forward",
        reduce_grid(n, c),
        [CHANNELS, LANES, 1],
        0,
        &args,
    );
}

/// dx [n, hw, 2c] = dy [n, c] / hw, to both streams.
pub fn sk_pool_backward(gpu: &Gpu, n: usize, hw: usize, c: usize, dy: &Buffer, dx: &mut Buffer) {
    assert!(dx.len_f32() == n * hw * 2 * c && dy.len_f32() == n * c);
    let args = [
        dy.into(),
        (n as i32).into(),
        (hw as i32).into(),
        (c as i32).into(),
        dx.into(),
    ];
    gpu.launch_1d("sk_pool_backward", n * hw * 2 * c, &args);
}

/// y [n, hw, c] = a·stream 0 + b·stream 1, (a, b) = softmax of the logits [n, 2c] pair.
pub fn sk_combine_forward(
    gpu: &Gpu,
    n: usize,
    hw: usize,
    c: usize,
    x: &Buffer,
    logits: &Buffer,
    y: &mut Buffer,
) {
    assert!(x.len_f32() == n * hw * 2 * c && logits.len_f32() == n * 2 * c);
    assert_eq!(y.len_f32(), n * hw * c);
    let args = [
        x.into(),
        logits.into(),
        (n as i32).into(),
        (hw as i32).into(),
        (c as i32).into(),
        y.into(),
    ];
    gpu.launch_1d("sk_combine_forward", n * hw * c, &args);
}

/// dx [n, hw, 2c] and dlogits [n, 2c] of sk_combine, given dy [n, hw, c].
#[allow(clippy::too_many_arguments)]
pub fn sk_combine_backward(
    gpu: &Gpu,
    n: usize,
    hw: usize,
    c: usize,
    x: &Buffer,
    logits: &Buffer,
    dy: &Buffer,
    dx: &mut Buffer,
    dlogits: &mut Buffer,
) {
    assert!(x.len_f32() == n * hw * 2 * c && dx.len_f32() == x.len_f32());
    assert!(logits.len_f32() == n * 2 * c && dlogits.len_f32() == logits.len_f32());
    assert_eq!(dy.len_f32(), n * hw * c);
    let [n_arg, hw_arg, c_arg] = [n, hw, c].map(|v| Arg::I32(v as i32));
    let args = [logits.into(), dy.into(), n_arg, hw_arg, c_arg, dx.into()];
    gpu.launch_1d("sk_combine_backward_x", n * hw * 2 * c, &args);
    let args = [
        x.into(),
        logits.into(),
        dy.into(),
        hw_arg,
        c_arg,
        dlogits.into(),
    ];
    gpu.launch(
        "sk_combine_backward_logits",
        reduce_grid(n, c),
        [CHANNELS, LANES, 1],
        0,
        &args,
    );
}
