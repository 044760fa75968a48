//! The two ops of a selective-kernel convolution (SimCLRv2's `sk_conv2d`). Its 3×3 conv makes
//! two streams as one [N, H, W, 2C] tensor (stream 0 in channels [0, C), stream 1 in [C, 2C));
//! `sk_pool` gives the global descriptor the mixing logits are computed from (by 1×1 convs),
//! and `sk_combine` mixes the two streams with a softmax over each channel's pair of logits.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::sk as kernel;
use crate::device::cuda::sk as gpu_kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

/// (n, hw, c) of a two-stream tensor [N, H, W, 2C]; c is one stream's channel count.
fn two_streams(op: &str, shape: &[usize]) -> (usize, usize, usize) {
    assert!(
        shape.len() == 4 && shape[3].is_multiple_of(2),
        "{op}: expected two streams [N, H, W, 2C], got {shape:?}"
    );
    (shape[0], shape[1] * shape[2], shape[3] / 2)
}

/// x [N, H, W, 2C] → [N, 1, 1, C]: the mean over H, W of the two streams' sum.
pub fn sk_pool(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let (n, hw, c) = two_streams("sk_pool", &xv.shape);
    let out_shape = [n, 1, 1, c];
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &out_shape);
            gpu_kernel::sk_pool_forward(gpu, n, hw, c, xv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); n * c];
            kernel::sk_pool_forward(n, hw, c, xv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&out_shape, y)
        }),
    };
    g.push(y, Op::SkPool { x })
}

pub(crate) fn sk_pool_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    let (n, hw, c) = two_streams("sk_pool", &x.shape);
    match dy.gpu() {
        Some(gpu) => {
            let mut dx = Tensor::gpu_output(gpu, &x.shape);
            gpu_kernel::sk_pool_backward(gpu, n, hw, c, dy.buffer(), dx.buffer_mut());
            dx
        }
        None => with_dtype!(dy.dtype(), T => {
            let mut dx = vec![T::default(); x.numel()];
            kernel::sk_pool_backward(n, hw, c, dy.as_slice::<T>(), &mut dx);
            Tensor::from_vec(&x.shape, dx)
        }),
    }
}

/// x [N, H, W, 2C], logits [N, 1, 1, 2C] → y [N, H, W, C] with
/// y[.., c] = a·x[.., c] + b·x[.., C + c], (a, b) = softmax(logits[n, c], logits[n, C + c]).
pub fn sk_combine(g: &mut Graph, x: Var, logits: Var) -> Var {
    let (xv, lv) = (g.value(x), g.value(logits));
    let (n, hw, c) = two_streams("sk_combine", &xv.shape);
    assert_eq!(
        lv.shape,
        [n, 1, 1, 2 * c],
        "sk_combine: logits do not match the streams {:?}",
        xv.shape
    );
    let out_shape = [n, xv.shape[1], xv.shape[2], c];
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &out_shape);
            gpu_kernel::sk_combine_forward(gpu, n, hw, c, xv.buffer(), lv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); n * hw * c];
            kernel::sk_combine_forward(n, hw, c, xv.as_slice::<T>(), lv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&out_shape, y)
        }),
    };
    g.push(y, Op::SkCombine { x, logits })
}

/// (dx, dlogits) of sk_combine.
pub(crate) fn sk_combine_backward(x: &Tensor, logits: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
    let (n, hw, c) = two_streams("sk_combine", &x.shape);
    match dy.gpu() {
        Some(gpu) => {
            let mut dx = Tensor::gpu_output(gpu, &x.shape);
            let mut dlogits = Tensor::gpu_output(gpu, &logits.shape);
            gpu_kernel::sk_combine_backward(
                gpu,
                n,
                hw,
                c,
                x.buffer(),
                logits.buffer(),
                dy.buffer(),
                dx.buffer_mut(),
                dlogits.buffer_mut(),
            );
            (dx, dlogits)
        }
        None => with_dtype!(dy.dtype(), T => {
            let mut dx = vec![T::default(); x.numel()];
            let mut dlogits = vec![T::default(); logits.numel()];
            kernel::sk_combine_backward(
                n,
                hw,
                c,
                x.as_slice::<T>(),
                logits.as_slice::<T>(),
                dy.as_slice::<T>(),
                &mut dx,
                &mut dlogits,
            );
            (Tensor::from_vec(&x.shape, dx), Tensor::from_vec(&logits.shape, dlogits))
        }),
    }
}
