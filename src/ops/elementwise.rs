//! ReLU and addition (the residual connection).

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::elementwise as kernel;
use crate::device::cpu::real::Real;
use crate::device::cuda::elementwise as gpu_kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn relu(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &xv.shape);
            gpu_kernel::relu_forward(gpu, xv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); xv.numel()];
            kernel::relu_forward(xv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&xv.shape, y)
        }),
    };
    g.push(y, Op::Relu { x })
}

pub(crate) fn relu_backward(y: &Tensor, dy: &Tensor) -> Tensor {
    match y.gpu() {
        Some(gpu) => {
            let mut dx = Tensor::gpu_output(gpu, &dy.shape);
            gpu_kernel::relu_backward(gpu, y.buffer(), dy.buffer(), dx.buffer_mut());
            dx
        }
        None => with_dtype!(dy.dtype(), T => {
            let mut dx = vec![T::default(); dy.numel()];
            kernel::relu_backward(y.as_slice::<T>(), dy.as_slice::<T>(), &mut dx);
            Tensor::from_vec(&dy.shape, dx)
        }),
    }
}

pub fn add(g: &mut Graph, a: Var, b: Var) -> Var {
    let (av, bv) = (g.value(a), g.value(b));
    assert_eq!(av.shape, bv.shape, "add: shapes differ");
    let y = match av.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &av.shape);
            gpu_kernel::add(gpu, av.buffer(), bv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(av.dtype(), T => {
            let mut y = vec![T::default(); av.numel()];
            kernel::add(av.as_slice::<T>(), bv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&av.shape, y)
        }),
    };
    g.push(y, Op::Add { a, b })
}

/// `x` times a scalar (a loss's saved gradient times the upstream gradient).
pub(crate) fn scale(x: &Tensor, by: f64) -> Tensor {
    match x.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &x.shape);
            gpu_kernel::scale(gpu, x.buffer(), by as f32, y.buffer_mut());
            y
        }
        None => with_dtype!(x.dtype(), T => {
            let s = T::from_f64(by);
            Tensor::from_vec(&x.shape, x.as_slice::<T>().iter().map(|&v| v * s).collect())
        }),
    }
}
