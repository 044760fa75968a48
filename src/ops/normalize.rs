//! Row-wise L2 normalisation of projections before NT-Xent.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::normalize as kernel;
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn l2_normalize(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let d = xv.shape[1];
    let (z, inv_norm) = with_dtype!(xv.dtype(), T => {
        let mut z = vec![T::default(); xv.numel()];
        let inv = kernel::l2_normalize_forward(xv.as_slice::<T>(), d, &mut z);
        (Tensor::from_vec(&xv.shape, z), Tensor::from_vec(&[inv.len()], inv))
    });
    g.push(z, Op::L2Normalize { x, inv_norm })
}

pub(crate) fn l2_normalize_backward(z: &Tensor, inv_norm: &Tensor, dz: &Tensor) -> Tensor {
    let d = z.shape[1];
    with_dtype!(dz.dtype(), T => {
        let mut dx = vec![T::default(); dz.numel()];
        kernel::l2_normalize_backward(z.as_slice::<T>(), dz.as_slice::<T>(), inv_norm.as_slice::<T>(), d, &mut dx);
        Tensor::from_vec(&dz.shape, dx)
    })
}
