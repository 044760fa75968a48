//! 2-D convolution without bias (batch norm always follows): x NHWC, w KRSC, y NHWC.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::conv::{self as kernel, ConvShape};
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn conv2d(g: &mut Graph, x: Var, w: Var, stride: usize, pad: usize) -> Var {
    let (xs, ws) = (&g.value(x).shape, &g.value(w).shape);
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
    let y = with_dtype!(g.value(x).dtype(), T => {
        let mut y = vec![T::default(); out_shape.iter().product()];
        kernel::conv2d_forward(&shape, g.value(x).as_slice::<T>(), g.value(w).as_slice::<T>(), &mut y);
        Tensor::from_vec(&out_shape, y)
    });
    g.push(y, Op::Conv2d { x, w, shape })
}

pub(crate) fn backward(
    shape: &ConvShape,
    (x, xv): (Var, &Tensor),
    (w, wv): (Var, &Tensor),
    dy: &Tensor,
) -> Vec<(Var, Tensor)> {
    with_dtype!(dy.dtype(), T => {
        let mut dx = vec![T::default(); xv.numel()];
        let mut dw = vec![T::default(); wv.numel()];
        kernel::conv2d_backward_input(shape, dy.as_slice::<T>(), wv.as_slice::<T>(), &mut dx);
        kernel::conv2d_backward_weight(shape, xv.as_slice::<T>(), dy.as_slice::<T>(), &mut dw);
        vec![(x, Tensor::from_vec(&xv.shape, dx)), (w, Tensor::from_vec(&wv.shape, dw))]
    })
}
