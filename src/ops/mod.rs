//! Ops: each module holds an op family's forward (which computes through the device's
//! kernels and records a node on the tape) and its hand-written backward.

pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod linear;
pub mod loss;
pub mod normalize;
pub mod pool;
pub mod sk;

use crate::autograd::{Op, Var};
use crate::tensor::Tensor;

/// The gradients an op sends to its inputs, given its output's gradient `dy`.
/// `wants_grad[i]` says whether value i needs its gradient (ops whose input gradient is costly
/// skip it when not).
pub(crate) fn backward(
    op: &Op,
    values: &[Tensor],
    wants_grad: &[bool],
    out: Var,
    dy: Tensor,
) -> Vec<(Var, Tensor)> {
    let v = |var: Var| &values[var.0];
    match op {
        Op::Conv2d { x, w, shape } => {
            let x = (*x, v(*x), wants_grad[x.0]);
            conv::backward(shape, x, (*w, v(*w)), &dy)
        }
        Op::BatchNorm {
            x,
            gamma,
            beta,
            relu,
            saved,
        } => {
            let y = relu.then(|| v(out));
            batchnorm::backward((*x, v(*x)), (*gamma, v(*gamma)), *beta, y, saved, &dy)
        }
        Op::Relu { x } => vec![(*x, elementwise::relu_backward(v(out), &dy))],
        // The sum hands its gradient to both inputs unchanged.
        Op::Add { a, b } => vec![(*a, dy.clone()), (*b, dy)],
        Op::MaxPool { x, shape } => vec![(*x, pool::maxpool_backward(shape, v(*x), &dy))],
        Op::GlobalAvgPool { x } => vec![(*x, pool::global_avg_pool_backward(v(*x), &dy))],
        Op::AvgPool { x, shape } => vec![(*x, pool::avg_pool_backward(shape, &dy))],
        Op::SkPool { x } => vec![(*x, sk::sk_pool_backward(v(*x), &dy))],
        Op::SkCombine { x, logits } => {
            let (dx, dlogits) = sk::sk_combine_backward(v(*x), v(*logits), &dy);
            vec![(*x, dx), (*logits, dlogits)]
        }
        Op::Linear { x, w, b } => linear::backward((*x, v(*x)), (*w, v(*w)), *b, &dy),
        Op::L2Normalize { x, inv_norm } => {
            vec![(*x, normalize::l2_normalize_backward(v(out), inv_norm, &dy))]
        }
        Op::Loss { x, grad } => vec![(*x, elementwise::scale(grad, dy.item()))],
    }
}
