//! The selective-kernel ops (kernels/sk.cu) on NHWC buffers x [n, hw, 2c] holding two streams
//! (channels [0, c) and [c, 2c)); the same formulas as cpu::sk. The buffers are f32 or bf16,
//! all of one op's the same type: the logits too, which a 1×1 convolution makes from
//! activations in their precision.

use super::{Arg, Buffer, Elem, Gpu};

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
    let elem = Elem::common("sk_pool forward", &[x, y]);
    assert!(x.len() == n * hw * 2 * c && y.len() == n * c);
    let args = [x.into(), (hw as i32).into(), (c as i32).into(), y.into()];
    gpu.launch(
        elem.pick("sk_pool_forward", "sk_pool_forward_bf16"),
        reduce_grid(n, c),
        [CHANNELS, LANES, 1],
        0,
        &args,
    );
}

/// dx [n, hw, 2c] = dy [n, c] / hw, to both streams.
pub fn sk_pool_backward(gpu: &Gpu, n: usize, hw: usize, c: usize, dy: &Buffer, dx: &mut Buffer) {
    let elem = Elem::common("sk_pool backward", &[dy, dx]);
    assert!(dx.len() == n * hw * 2 * c && dy.len() == n * c);
    let args = [
        dy.into(),
        (n as i32).into(),
        (hw as i32).into(),
        (c as i32).into(),
        dx.into(),
    ];
    let kernel = elem.pick("sk_pool_backward", "sk_pool_backward_bf16");
    gpu.launch_1d(kernel, n * hw * 2 * c, &args);
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
    let elem = Elem::common("sk_combine forward", &[x, logits, y]);
    assert!(x.len() == n * hw * 2 * c && logits.len() == n * 2 * c);
    assert_eq!(y.len(), n * hw * c);
    let args = [
        x.into(),
        logits.into(),
        (n as i32).into(),
        (hw as i32).into(),
        (c as i32).into(),
        y.into(),
    ];
    let kernel = elem.pick("sk_combine_forward", "sk_combine_forward_bf16");
    gpu.launch_1d(kernel, n * hw * c, &args);
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
    let elem = Elem::common("sk_combine backward", &[x, logits, dy, dx, dlogits]);
    assert!(x.len() == n * hw * 2 * c && dx.len() == x.len());
    assert!(logits.len() == n * 2 * c && dlogits.len() == logits.len());
    assert_eq!(dy.len(), n * hw * c);
    let [n_arg, hw_arg, c_arg] = [n, hw, c].map(|v| Arg::I32(v as i32));
    let args = [logits.into(), dy.into(), n_arg, hw_arg, c_arg, dx.into()];
    let kernel = elem.pick("sk_combine_backward_x", "sk_combine_backward_x_bf16");
    gpu.launch_1d(kernel, n * hw * 2 * c, &args);
    let args = [
        x.into(),
        logits.into(),
        dy.into(),
        hw_arg,
        c_arg,
        dlogits.into(),
    ];
    gpu.launch(
        elem.pick(
            "sk_combine_backward_logits",
            "sk_combine_backward_logits_bf16",
        ),
        reduce_grid(n, c),
        [CHANNELS, LANES, 1],
        0,
        &args,
    );
}
