//! Batch normalisation over the last (channel) dimension, optionally followed by a fused ReLU.
//! Training mode normalises with the batch statistics, records itself for backward and moves
//! the running statistics in place (TF momentum 0.9); eval mode uses the running statistics
//! and is not differentiable here.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend::{self, BnSaved};
use crate::tensor::Tensor;

pub use crate::device::cpu::batchnorm::{EPS, MOMENTUM};

pub fn batch_norm_train(
    g: &mut Graph,
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    relu: bool,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
) -> Var {
    let (xv, gv) = (g.value(x), g.value(gamma));
    let bv = beta.map(|b| g.value(b));
    let (y, saved) = backend::of(xv).batchnorm_train(xv, gv, bv, relu, running_mean, running_var);
    let node = BatchNorm {
        x,
        gamma,
        beta,
        relu,
        saved,
    };
    g.push(y, node)
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
    let (xv, gv) = (g.value(x), g.value(gamma));
    let bv = beta.map(|b| g.value(b));
    let y = backend::of(xv).batchnorm_eval(xv, gv, bv, relu, running_mean, running_var);
    g.input(y)
}

struct BatchNorm {
    x: Var,
    gamma: Var,
    beta: Option<Var>,
    relu: bool,
    saved: BnSaved,
}

impl Backward for BatchNorm {
    /// With the fused ReLU, dy passes only where the output is positive.
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let (x, gamma) = (v.get(self.x), v.get(self.gamma));
        let relu_out = self.relu.then(|| v.out());
        let (dx, dgamma, dbeta) = backend::of(&dy).batchnorm_backward(
            x,
            relu_out,
            &dy,
            gamma,
            &self.saved,
            self.beta.is_some(),
        );
        let mut grads = vec![(self.x, dx), (self.gamma, dgamma)];
        grads.extend(self.beta.zip(dbeta));
        grads
    }
}
