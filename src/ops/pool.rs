//! Max pooling (the ImageNet stem) and global average pooling (the encoder's output).

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::pool as kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn maxpool2d(g: &mut Graph, x: Var, kernel_size: usize, stride: usize, pad: usize) -> Var {
    let xv = g.value(x);
    let (n, h, w, c) = (xv.shape[0], xv.shape[1], xv.shape[2], xv.shape[3]);
    let (oh, ow) = (
        kernel::pool_out(h, kernel_size, stride, pad),
        kernel::pool_out(w, kernel_size, stride, pad),
    );
    let mut argmax = vec![0u32; n * oh * ow * c];
    let y = with_dtype!(xv.dtype(), T => {
        let mut y = vec![T::default(); n * oh * ow * c];
        kernel::maxpool2d_forward(n, h, w, c, kernel_size, stride, pad, xv.as_slice::<T>(), &mut y, &mut argmax);
        Tensor::from_vec(&[n, oh, ow, c], y)
    });
    g.push(y, Op::MaxPool { x, argmax })
}

pub(crate) fn maxpool_backward(x: &Tensor, argmax: &[u32], dy: &Tensor) -> Tensor {
    with_dtype!(dy.dtype(), T => {
        let mut dx = vec![T::default(); x.numel()];
        kernel::maxpool2d_backward(dy.as_slice::<T>(), argmax, &mut dx);
        Tensor::from_vec(&x.shape, dx)
    })
}

/// [N, H, W, C] → [N, C].
pub fn global_avg_pool(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let (n, hw, c) = (xv.shape[0], xv.shape[1] * xv.shape[2], xv.shape[3]);
    let y = with_dtype!(xv.dtype(), T => {
        let mut y = vec![T::default(); n * c];
        kernel::global_avg_pool_forward(n, hw, c, xv.as_slice::<T>(), &mut y);
        Tensor::from_vec(&[n, c], y)
    });
    g.push(y, Op::GlobalAvgPool { x })
}

pub(crate) fn global_avg_pool_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    let (n, hw, c) = (x.shape[0], x.shape[1] * x.shape[2], x.shape[3]);
    with_dtype!(dy.dtype(), T => {
        let mut dx = vec![T::default(); x.numel()];
        kernel::global_avg_pool_backward(n, hw, c, dy.as_slice::<T>(), &mut dx);
        Tensor::from_vec(&x.shape, dx)
    })
}
