//! Row-wise L2 normalisation of projections before NT-Xent.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::normalize as kernel;
use crate::device::cuda::normalize as gpu_kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn l2_normalize(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let (rows, d) = (xv.shape[0], xv.shape[1]);
    let (z, inv_norm) = match xv.gpu() {
        Some(gpu) => {
            let mut z = Tensor::gpu_output(gpu, &xv.shape);
            let mut inv = Tensor::gpu_output(gpu, &[rows]);
            gpu_kernel::l2_normalize_forward(
                gpu,
                rows,
                d,
                xv.buffer(),
                z.buffer_mut(),
                inv.buffer_mut(),
            );
            (z, inv)
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut z = vec![T::default(); xv.numel()];
            let inv = kernel::l2_normalize_forward(xv.as_slice::<T>(), d, &mut z);
            (Tensor::from_vec(&xv.shape, z), Tensor::from_vec(&[inv.len()], inv))
        }),
    };
    g.push(z, Op::L2Normalize { x, inv_norm })
}

pub(crate) fn l2_normalize_backward(z: &Tensor, inv_norm: &Tensor, dz: &Tensor) -> Tensor {
    let (rows, d) = (z.shape[0], z.shape[1]);
    match z.gpu() {
        Some(gpu) => {
            let mut dx = Tensor::gpu_output(gpu, &dz.shape);
            gpu_kernel::l2_normalize_backward(
                gpu,
                rows,
                d,
                z.buffer(),
                dz.buffer(),
                inv_norm.buffer(),
                dx.buffer_mut(),
            );
            dx
        }
        None => with_dtype!(dz.dtype(), T => {
            let mut dx = vec![T::default(); dz.numel()];
            kernel::l2_normalize_backward(z.as_slice::<T>(), dz.as_slice::<T>(), inv_norm.as_slice::<T>(), d, &mut dx);
            Tensor::from_vec(&dz.shape, dx)
        }),
    }
}
