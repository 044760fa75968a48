//! ReLU and addition (the residual connection).

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::elementwise as kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn relu(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let y = with_dtype!(xv.dtype(), T => {
        let mut y = vec![T::default(); xv.numel()];
        kernel::relu_forward(xv.as_slice::<T>(), &mut y);
        Tensor::from_vec(&xv.shape, y)
    });
    g.push(y, Op::Relu { x })
}

pub(crate) fn relu_backward(y: &Tensor, dy: &Tensor) -> Tensor {
    with_dtype!(dy.dtype(), T => {
        let mut dx = vec![T::default(); dy.numel()];
        kernel::relu_backward(y.as_slice::<T>(), dy.as_slice::<T>(), &mut dx);
        Tensor::from_vec(&dy.shape, dx)
    })
}

pub fn add(g: &mut Graph, a: Var, b: Var) -> Var {
    let (av, bv) = (g.value(a), g.value(b));
    assert_eq!(av.shape, bv.shape, "add: shapes differ");
    let y = with_dtype!(av.dtype(), T => {
        let mut y = vec![T::default(); av.numel()];
        kernel::add(av.as_slice::<T>(), bv.as_slice::<T>(), &mut y);
        Tensor::from_vec(&av.shape, y)
    });
    g.push(y, Op::Add { a, b })
}
