//! Batch normalisation over the last (channel) dimension. Training mode normalises with the
//! batch statistics, records itself for backward and moves the running statistics (TF
//! momentum 0.9); eval mode uses the running statistics and is not differentiable here.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::batchnorm::{self as kernel, BnStats};
use crate::tensor::Tensor;
use crate::with_dtype;

pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.9;

pub fn batch_norm_train(
    g: &mut Graph,
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
) -> Var {
    let xv = g.value(x);
    let c = *xv.shape.last().unwrap();
    let rows = xv.numel() / c;
    let (y, stats) = with_dtype!(xv.dtype(), T => {
        let mut y = vec![T::default(); xv.numel()];
        let beta = beta.map(|b| g.value(b).as_slice::<T>());
        let stats = kernel::forward_train(xv.as_slice::<T>(), c, g.value(gamma).as_slice::<T>(), beta, EPS, &mut y);
        kernel::update_running(&stats, rows, MOMENTUM, running_mean.as_mut_slice::<T>(), running_var.as_mut_slice::<T>());
        (Tensor::from_vec(&xv.shape, y), stats)
    });
    g.push(
        y,
        Op::BatchNorm {
            x,
            gamma,
            beta,
            stats,
        },
    )
}

pub fn batch_norm_eval(
    g: &mut Graph,
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Var {
    assert!(
        !g.record,
        "eval-mode batch norm is only for inference graphs"
    );
    let xv = g.value(x);
    let c = *xv.shape.last().unwrap();
    let y = with_dtype!(xv.dtype(), T => {
        let mut y = vec![T::default(); xv.numel()];
        let beta = beta.map(|b| g.value(b).as_slice::<T>());
        kernel::forward_eval(xv.as_slice::<T>(), c, g.value(gamma).as_slice::<T>(), beta,
            running_mean.as_slice::<T>(), running_var.as_slice::<T>(), EPS, &mut y);
        Tensor::from_vec(&xv.shape, y)
    });
    g.input(y)
}

pub(crate) fn backward(
    (x, xv): (Var, &Tensor),
    (gamma, gv): (Var, &Tensor),
    beta: Option<Var>,
    stats: &BnStats,
    dy: &Tensor,
) -> Vec<(Var, Tensor)> {
    let c = gv.numel();
    let (dx, dgamma, dbeta) = with_dtype!(dy.dtype(), T => {
        let mut dx = vec![T::default(); xv.numel()];
        let (dg, db) = kernel::backward(xv.as_slice::<T>(), dy.as_slice::<T>(), c, gv.as_slice::<T>(), stats, &mut dx);
        (Tensor::from_vec(&xv.shape, dx), dg, db)
    });
    let mut out = vec![
        (x, dx),
        (gamma, Tensor::from_f64(&[c], dy.dtype(), &dgamma)),
    ];
    if let Some(beta) = beta {
        out.push((beta, Tensor::from_f64(&[c], dy.dtype(), &dbeta)));
    }
    out
}
