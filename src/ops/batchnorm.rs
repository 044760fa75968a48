//! Batch normalisation over the last (channel) dimension, optionally followed, in the same pass,
//! by a residual add (`skip`) and a ReLU: a residual block's last BN, its sum and its ReLU are
//! one op, so the sum and its ReLU cost no pass of their own, forward or backward.
//! Training mode normalises with the batch statistics, records itself for backward and moves
//! the running statistics in place (TF momentum 0.9); eval mode uses the running statistics
//! and is not differentiable here.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend::{self, BnSaved};
use crate::dist::Comm;
use crate::tensor::Tensor;
use std::sync::Arc;

pub use crate::device::cpu::batchnorm::{EPS, MOMENTUM};

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    g: &mut Graph,
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    skip: Option<Var>,
    relu: bool,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
) -> Var {
    let (xv, gv) = (g.value(x), g.value(gamma));
    let (bv, sv) = (beta.map(|b| g.value(b)), skip.map(|s| g.value(s)));
    if let Some(sv) = sv {
        assert_eq!(sv.shape, xv.shape, "batch norm + add: shapes differ");
    }
    let comm = g.comm.clone();
    let (y, saved) =
        backend::of(xv).batchnorm_train(xv, gv, bv, sv, relu, running_mean, running_var, &*comm);
    let node = BatchNorm {
        x,
        gamma,
        beta,
        skip,
        relu,
        saved,
        comm,
    };
    g.push(y, node)
}

#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(
    g: &mut Graph,
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    skip: Option<Var>,
    relu: bool,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Var {
    assert!(
        !g.record,
        "eval-mode batch norm is only for inference graphs"
    );
    let (xv, gv) = (g.value(x), g.value(gamma));
    let (bv, sv) = (beta.map(|b| g.value(b)), skip.map(|s| g.value(s)));
    let y = backend::of(xv).batchnorm_eval(xv, gv, bv, sv, relu, running_mean, running_var);
    g.input(y)
}

struct BatchNorm {
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    skip: Option<Var>,
    relu: bool,
    saved: BnSaved,
    /// The ranks whose rows the statistics were over (the backward's sums are too).
    comm: Arc<dyn Comm>,
}

impl Backward for BatchNorm {
    /// With the fused ReLU, dy passes only where the output is positive. With a skip, that
    /// masked gradient is the sum's, which the skip receives as it is (written by the same pass
    /// that computes dx).
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let (x, gamma) = (v.get(self.x), v.get(self.gamma));
        let relu_out = self.relu.then(|| v.out());
        let (with_beta, with_sum) = (self.beta.is_some(), self.skip.is_some());
        let g = backend::of(&dy).batchnorm_backward(
            x,
            relu_out,
            &dy,
            gamma,
            &self.saved,
            with_beta,
            with_sum,
            &*self.comm,
        );
        let mut grads = vec![(self.x, g.dx), (self.gamma, g.dgamma)];
        grads.extend(self.beta.zip(g.dbeta));
        grads.extend(self.skip.zip(g.dsum));
        grads
    }
}
