//! Max pooling (the ImageNet stem), average pooling (the ResNet-D shortcut) and global average
//! pooling (the encoder's output).

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::pool::{self as kernel, AvgPoolShape, PoolShape};
use crate::device::cuda::pool as gpu_kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn maxpool2d(g: &mut Graph, x: Var, kernel_size: usize, stride: usize, pad: usize) -> Var {
    let xv = g.value(x);
    let shape = PoolShape {
        n: xv.shape[0],
        h: xv.shape[1],
        w: xv.shape[2],
        c: xv.shape[3],
        kernel: kernel_size,
        stride,
        pad,
    };
    let out_shape = [shape.n, shape.out_h(), shape.out_w(), shape.c];
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &out_shape);
            gpu_kernel::maxpool_forward(gpu, &shape, xv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); out_shape.iter().product()];
            kernel::maxpool2d_forward(&shape, xv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&out_shape, y)
        }),
    };
    g.push(y, Op::MaxPool { x, shape })
}

pub(crate) fn maxpool_backward(shape: &PoolShape, x: &Tensor, dy: &Tensor) -> Tensor {
    match x.gpu() {
        Some(gpu) => {
            let mut dx = Tensor::gpu_output(gpu, &x.shape);
            gpu_kernel::maxpool_backward(gpu, shape, x.buffer(), dy.buffer(), dx.buffer_mut());
            dx
        }
        None => with_dtype!(dy.dtype(), T => {
            let mut dx = vec![T::default(); x.numel()];
            kernel::maxpool2d_backward(shape, x.as_slice::<T>(), dy.as_slice::<T>(), &mut dx);
            Tensor::from_vec(&x.shape, dx)
        }),
    }
}

/// Average pooling with TensorFlow's 'SAME' padding: [N, H, W, C] → [N, ⌈H/stride⌉,
/// ⌈W/stride⌉, C], each window averaging only its in-image elements (padding not counted), as
/// the official ResNet-D shortcut's `AveragePooling2D(2, 2, 'SAME')`.
pub fn avg_pool2d(g: &mut Graph, x: Var, kernel_size: usize, stride: usize) -> Var {
    let xv = g.value(x);
    assert!(
        xv.shape.len() == 4 && xv.shape[1] * xv.shape[2] > 0 && kernel_size * stride > 0,
        "avg_pool2d: expected an [N, H, W, C] input with H, W > 0 and a nonzero kernel and \
         stride, got {:?}, kernel {kernel_size}, stride {stride}",
        xv.shape
    );
    let shape = AvgPoolShape {
        n: xv.shape[0],
        h: xv.shape[1],
        w: xv.shape[2],
        c: xv.shape[3],
        kernel: kernel_size,
        stride,
    };
    let out_shape = [shape.n, shape.out_h(), shape.out_w(), shape.c];
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &out_shape);
            gpu_kernel::avg_pool_forward(gpu, &shape, xv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); out_shape.iter().product()];
            kernel::avg_pool2d_forward(&shape, xv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&out_shape, y)
        }),
    };
    g.push(y, Op::AvgPool { x, shape })
}

pub(crate) fn avg_pool_backward(shape: &AvgPoolShape, dy: &Tensor) -> Tensor {
    let x_shape = [shape.n, shape.h, shape.w, shape.c];
    match dy.gpu() {
        Some(gpu) => {
            let mut dx = Tensor::gpu_output(gpu, &x_shape);
            gpu_kernel::avg_pool_backward(gpu, shape, dy.buffer(), dx.buffer_mut());
            dx
        }
        None => with_dtype!(dy.dtype(), T => {
            let mut dx = vec![T::default(); x_shape.iter().product()];
            kernel::avg_pool2d_backward(shape, dy.as_slice::<T>(), &mut dx);
            Tensor::from_vec(&x_shape, dx)
        }),
    }
}

/// [N, H, W, C] → [N, C].
pub fn global_avg_pool(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let (n, hw, c) = (xv.shape[0], xv.shape[1] * xv.shape[2], xv.shape[3]);
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &[n, c]);
            gpu_kernel::global_avg_pool_forward(gpu, n, hw, c, xv.buffer(), y.buffer_mut());
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); n * c];
            kernel::global_avg_pool_forward(n, hw, c, xv.as_slice::<T>(), &mut y);
            Tensor::from_vec(&[n, c], y)
        }),
    };
    g.push(y, Op::GlobalAvgPool { x })
}

pub(crate) fn global_avg_pool_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    let (n, hw, c) = (x.shape[0], x.shape[1] * x.shape[2], x.shape[3]);
    match x.gpu() {
        Some(gpu) => {
            let mut dx = Tensor::gpu_output(gpu, &x.shape);
            gpu_kernel::global_avg_pool_backward(gpu, n, hw, c, dy.buffer(), dx.buffer_mut());
            dx
        }
        None => with_dtype!(dy.dtype(), T => {
            let mut dx = vec![T::default(); x.numel()];
            kernel::global_avg_pool_backward(n, hw, c, dy.as_slice::<T>(), &mut dx);
            Tensor::from_vec(&x.shape, dx)
        }),
    }
}
