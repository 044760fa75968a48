//! 2-D convolution without bias (batch norm always follows): x NHWC, w KRSC, y NHWC.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::conv::{self as kernel, ConvShape};
use crate::device::cuda::conv as gpu_kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn conv2d(g: &mut Graph, x: Var, w: Var, stride: usize, pad: usize) -> Var {
    let (xv, wv) = (g.value(x), g.value(w));
    let (xs, ws) = (&xv.shape, &wv.shape);
    assert_eq!(xs.len(), 4, "conv2d input must be NHWC, got {xs:?}");
    assert_eq!(
        ws[3], xs[3],
        "conv2d: weight {ws:?} does not fit input {xs:?}"
    );
    let shape = ConvShape {
        n: xs[0],
        h: xs[1],
        w: xs[2],
        c: xs[3],
        k: ws[0],
        r: ws[1],
        s: ws[2],
        stride,
        pad,
    };
    let out_shape = [shape.n, shape.out_h(), shape.out_w(), shape.k];
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &out_shape);
            gpu_kernel::forward(gpu, &shape, xv.buffer(), wv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); out_shape.iter().product()];
            kernel::conv2d_forward(&shape, xv.as_slice::<T>(), wv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&out_shape, y)
        }),
    };
    g.push(y, Op::Conv2d { x, w, shape })
}

/// The weight gradient, and the input gradient when `x_wants_grad` (not for the images).
pub(crate) fn backward(
    shape: &ConvShape,
    (x, xv, x_wants_grad): (Var, &Tensor, bool),
    (w, wv): (Var, &Tensor),
    dy: &Tensor,
) -> Vec<(Var, Tensor)> {
    let mut grads = Vec::new();
    match xv.gpu() {
        Some(gpu) => {
            let mut dw = Tensor::gpu_output(gpu, &wv.shape);
            gpu_kernel::backward_weight(gpu, shape, xv.buffer(), dy.buffer(), dw.buffer_mut());
            grads.push((w, dw));
            if x_wants_grad {
                let mut dx = Tensor::gpu_output(gpu, &xv.shape);
                gpu_kernel::backward_input(gpu, shape, dy.buffer(), wv.buffer(), dx.buffer_mut());
                grads.push((x, dx));
            }
        }
        None => with_dtype!(dy.dtype(), T => {
            let mut dw = vec![T::default(); wv.numel()];
            kernel::conv2d_backward_weight(shape, xv.as_slice::<T>(), dy.as_slice::<T>(), &mut dw);
            grads.push((w, Tensor::from_vec(&wv.shape, dw)));
            if x_wants_grad {
                let mut dx = vec![T::default(); xv.numel()];
                kernel::conv2d_backward_input(shape, dy.as_slice::<T>(), wv.as_slice::<T>(), &mut dx);
                grads.push((x, Tensor::from_vec(&xv.shape, dx)));
            }
        }),
    }
    grads
}
