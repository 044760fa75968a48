//! Batch normalisation over the last (channel) dimension, optionally followed by a fused ReLU.
//! Training mode normalises with the batch statistics, records itself for backward and moves
//! the running statistics (TF momentum 0.9); eval mode uses the running statistics and is not
//! differentiable here.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::batchnorm::{self as kernel, BnStats};
use crate::device::cpu::elementwise::relu_backward;
use crate::device::cpu::real::Real;
use crate::device::cuda::{batchnorm as gpu_kernel, Buffer};
use crate::tensor::{Element, Tensor};
use crate::with_dtype;

pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.9;

/// What the training forward pass keeps for backward, on the device that computed it.
pub enum Saved {
    Cpu(BnStats),
    Gpu { mean: Buffer, invstd: Buffer },
}

/// Clamps negatives to zero in place (the fused ReLU of the CPU path).
fn relu_in_place<T: Real>(y: &mut [T]) {
    for v in y {
        *v = v.max(T::zero());
    }
}

pub fn batch_norm_train(
    g: &mut Graph,
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    relu: bool,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
) -> Var {
    let xv = g.value(x);
    let c = *xv.shape.last().unwrap();
    let rows = xv.numel() / c;
    let (y, saved) = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &xv.shape);
            let (mut mean, mut invstd) = (gpu.alloc_f32(c), gpu.alloc_f32(c));
            let beta = beta.map(|b| g.value(b).buffer());
            gpu_kernel::forward_train(
                gpu,
                rows,
                c,
                xv.buffer(),
                g.value(gamma).buffer(),
                beta,
                EPS as f32,
                relu,
                y.buffer_mut(),
                &mut mean,
                &mut invstd,
            );
            gpu_kernel::update_running(
                gpu,
                rows,
                c,
                &mean,
                &invstd,
                EPS as f32,
                MOMENTUM as f32,
                running_mean.buffer_mut(),
                running_var.buffer_mut(),
            );
            (y, Saved::Gpu { mean, invstd })
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); xv.numel()];
            let beta = beta.map(|b| g.value(b).as_slice::<T>());
            let stats = kernel::forward_train(xv.as_slice::<T>(), c, g.value(gamma).as_slice::<T>(), beta, EPS, &mut y);
            kernel::update_running(&stats, rows, MOMENTUM, running_mean.as_mut_slice::<T>(), running_var.as_mut_slice::<T>());
            if relu {
                relu_in_place(&mut y);
            }
            (Tensor::from_vec(&xv.shape, y), Saved::Cpu(stats))
        }),
    };
    g.push(
        y,
        Op::BatchNorm {
            x,
            gamma,
            beta,
            relu,
            saved,
        },
    )
}

pub fn batch_norm_eval(
    g: &mut Graph,
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    relu: bool,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Var {
    assert!(
        !g.record,
        "eval-mode batch norm is only for inference graphs"
    );
    let xv = g.value(x);
    let c = *xv.shape.last().unwrap();
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &xv.shape);
            let beta = beta.map(|b| g.value(b).buffer());
            gpu_kernel::forward_eval(
                gpu,
                xv.numel() / c,
                c,
                xv.buffer(),
                g.value(gamma).buffer(),
                beta,
                running_mean.buffer(),
                running_var.buffer(),
                EPS as f32,
                relu,
                y.buffer_mut(),
            );
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); xv.numel()];
            let beta = beta.map(|b| g.value(b).as_slice::<T>());
            kernel::forward_eval(xv.as_slice::<T>(), c, g.value(gamma).as_slice::<T>(), beta,
                running_mean.as_slice::<T>(), running_var.as_slice::<T>(), EPS, &mut y);
            if relu {
                relu_in_place(&mut y);
            }
            Tensor::from_vec(&xv.shape, y)
        }),
    };
    g.input(y)
}

/// `y` is the node's output: with the fused ReLU, dy passes only where y > 0.
pub(crate) fn backward(
    (x, xv): (Var, &Tensor),
    (gamma, gv): (Var, &Tensor),
    beta: Option<Var>,
    relu: Option<&Tensor>,
    saved: &Saved,
    dy: &Tensor,
) -> Vec<(Var, Tensor)> {
    let c = gv.numel();
    let (dx, dgamma, dbeta) = match saved {
        Saved::Gpu { mean, invstd } => {
            let gpu = xv.gpu().expect("gpu statistics of a cpu tensor");
            let mut dx = Tensor::gpu_output(gpu, &xv.shape);
            let mut dgamma = Tensor::gpu_output(gpu, &[c]);
            let mut dbeta = Tensor::gpu_output(gpu, &[c]);
            gpu_kernel::backward(
                gpu,
                xv.numel() / c,
                c,
                xv.buffer(),
                relu.map(|y| y.buffer()),
                dy.buffer(),
                gv.buffer(),
                mean,
                invstd,
                dx.buffer_mut(),
                dgamma.buffer_mut(),
                beta.map(|_| dbeta.buffer_mut()),
            );
            (dx, dgamma, dbeta)
        }
        Saved::Cpu(stats) => with_dtype!(dy.dtype(), T => {
            let mut dx = vec![T::default(); xv.numel()];
            let masked;
            let dy = match relu {
                Some(y) => {
                    let mut m = vec![T::default(); dy.numel()];
                    relu_backward(y.as_slice::<T>(), dy.as_slice::<T>(), &mut m);
                    masked = m;
                    &masked[..]
                }
                None => dy.as_slice::<T>(),
            };
            let (dg, db) = kernel::backward(xv.as_slice::<T>(), dy, c, gv.as_slice::<T>(), stats, &mut dx);
            (Tensor::from_vec(&xv.shape, dx), Tensor::from_f64(&[c], T::DTYPE, &dg), Tensor::from_f64(&[c], T::DTYPE, &db))
        }),
    };
    let mut out = vec![(x, dx), (gamma, dgamma)];
    if let Some(beta) = beta {
        out.push((beta, dbeta));
    }
    out
}
