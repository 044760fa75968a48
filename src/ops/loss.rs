//! The three losses of SimCLRv2. Each kernel returns the loss and its gradient together;
//! the node keeps the gradient and backward scales it by the upstream gradient.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::loss as kernel;
use crate::device::cpu::real::Real;
use crate::tensor::Tensor;
use crate::with_dtype;

fn push_loss(g: &mut Graph, x: Var, loss: f64, grad: Tensor) -> Var {
    let dtype = grad.dtype();
    g.push(Tensor::from_f64(&[1], dtype, &[loss]), Op::Loss { x, grad })
}

/// NT-Xent over L2-normalised rows [2N, d] (rows i and i+N are a positive pair).
pub fn ntxent(g: &mut Graph, z: Var, temperature: f64) -> Var {
    let zv = g.value(z);
    let (loss, grad) = with_dtype!(zv.dtype(), T => {
        let (loss, grad) = kernel::ntxent(zv.as_slice::<T>(), zv.shape[1], temperature);
        (loss, Tensor::from_vec(&zv.shape, grad))
    });
    push_loss(g, z, loss, grad)
}

/// Mean softmax cross-entropy of logits [B, K] against labels.
pub fn softmax_cross_entropy(g: &mut Graph, logits: Var, labels: &[u32]) -> Var {
    let lv = g.value(logits);
    let (loss, grad) = with_dtype!(lv.dtype(), T => {
        let (loss, grad) = kernel::softmax_cross_entropy(lv.as_slice::<T>(), lv.shape[1], labels);
        (loss, Tensor::from_vec(&lv.shape, grad))
    });
    push_loss(g, logits, loss, grad)
}

pub use kernel::UNLABELLED;

/// Distillation: cross-entropy of the student's softened predictions against the teacher's
/// softened probabilities `teacher_probs` [B, K] (already computed with the same τ), mixed
/// with weight `alpha` with the label loss on rows whose label is not `UNLABELLED`.
pub fn distillation(
    g: &mut Graph,
    logits: Var,
    teacher_probs: &Tensor,
    temperature: f64,
    labels: &[u32],
    alpha: f64,
) -> Var {
    let lv = g.value(logits);
    let (loss, grad) = with_dtype!(lv.dtype(), T => {
        let (loss, grad) = kernel::distillation(lv.as_slice::<T>(), teacher_probs.as_slice::<T>(), lv.shape[1], temperature, labels, alpha);
        (loss, Tensor::from_vec(&lv.shape, grad))
    });
    push_loss(g, logits, loss, grad)
}

/// Softmax of logits / τ (the teacher's soft labels; predictions).
pub fn softmax(logits: &Tensor, temperature: f64) -> Tensor {
    with_dtype!(logits.dtype(), T => Tensor::from_vec(&logits.shape, kernel::softmax(logits.as_slice::<T>(), logits.shape[1], temperature)))
}

pub(crate) fn scale(grad: &Tensor, by: f64) -> Tensor {
    with_dtype!(grad.dtype(), T => {
        let s = T::from_f64(by);
        Tensor::from_vec(&grad.shape, grad.as_slice::<T>().iter().map(|&v| v * s).collect())
    })
}
