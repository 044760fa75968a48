//! The supervised losses of SimCLRv2 (NT-Xent is in ntxent.rs): softmax cross-entropy for
//! fine-tuning and distillation from a teacher's softened predictions. Each backend computes a
//! loss and its gradient together; the node keeps the gradient and backward scales it by the
//! upstream gradient.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::dist::Comm;
use crate::ops::cast::widen;
use crate::tensor::{DType, Tensor};

pub use crate::device::cpu::loss::UNLABELLED;

/// The node of a loss whose kernel computed d(loss)/dx with the loss.
pub(crate) struct Loss {
    pub x: Var,
    pub grad: Tensor,
}

impl Backward for Loss {
    fn backward(&self, _: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        vec![(self.x, backend::of(&dy).scale_by(&self.grad, &dy))]
    }
}

/// Checks that logits are [B, K] with one label per row.
fn check_rows(op: &str, logits: &Tensor, labels: &[u32]) {
    let s = &logits.shape;
    assert!(
        s.len() == 2 && s[0] == labels.len(),
        "{op}: logits {s:?} do not fit {} labels",
        labels.len()
    );
}

/// Mean softmax cross-entropy of logits [B, K] against labels. Losses are computed in f32 (or
/// f64): bf16 logits are widened first (as in `distillation` and `softmax`).
pub fn softmax_cross_entropy(g: &mut Graph, logits: Var, labels: &[u32]) -> Var {
    let logits = widen(g, logits);
    let lv = g.value(logits);
    check_rows("softmax_cross_entropy", lv, labels);
    let (loss, grad) = backend::of(lv).softmax_cross_entropy(lv, labels);
    g.push(loss, Loss { x: logits, grad })
}

/// Distillation: cross-entropy of the student's softened predictions against the teacher's
/// softened probabilities `teacher_probs` [B, K] (already computed with the same τ), mixed
/// with weight `alpha` with the label loss on rows whose label is not `UNLABELLED`. Under W
/// ranks (the graph's `comm`) the label loss is the mean over every rank's labelled rows.
pub fn distillation(
    g: &mut Graph,
    logits: Var,
    teacher_probs: &Tensor,
    temperature: f64,
    labels: &[u32],
    alpha: f64,
) -> Var {
    let logits = widen(g, logits);
    let lv = g.value(logits);
    check_rows("distillation", lv, labels);
    assert_eq!(
        lv.shape, teacher_probs.shape,
        "distillation: teacher's shape"
    );
    let be = backend::of(lv);
    let (alpha, scale) = rank_label_weight(&*g.comm, labels, alpha);
    let (mut loss, mut grad) = be.distillation(lv, teacher_probs, temperature, labels, alpha);
    if scale != 1.0 {
        for t in [&mut loss, &mut grad] {
            *t = be.scale_by(t, &be.full(&[1], t.dtype(), scale));
        }
    }
    g.push(loss, Loss { x: logits, grad })
}

/// The label weight, and the factor of the loss, that make a data-parallel rank's distillation
/// loss the share of the whole batch's that the averaged gradients need. The label term is a
/// mean over the labelled rows, of the batch in one process but of its own L_r on a rank: over
/// W ranks and L labelled rows in all, the rank's label term needs weight β = α·W·L_r/L against
/// the distillation term's 1 − α (whose mean over the rank's rows is already its share); that
/// is weight β/(1 − α + β) on a loss times 1 − α + β. One process: (α, 1).
fn rank_label_weight(comm: &dyn Comm, labels: &[u32], alpha: f64) -> (f64, f64) {
    if comm.size() == 1 || alpha == 0.0 {
        return (alpha, 1.0);
    }
    let mine = labels.iter().filter(|&&y| y != UNLABELLED).count() as f64;
    let mut all = [mine];
    comm.all_reduce_sum(&mut all);
    let beta = match all[0] > 0.0 {
        true => alpha * comm.size() as f64 * mine / all[0],
        false => 0.0,
    };
    let scale = 1.0 - alpha + beta;
    match scale > 0.0 {
        true => (beta / scale, scale),
        // α = 1 and no labelled row on this rank: nothing to learn from its rows.
        false => (alpha, 0.0),
    }
}

/// Softmax of logits / τ (the teacher's soft labels; predictions).
pub fn softmax(logits: &Tensor, temperature: f64) -> Tensor {
    match logits.dtype() {
        DType::BF16 => softmax(&backend::of(logits).cast(logits, DType::F32), temperature),
        _ => backend::of(logits).softmax(logits, temperature),
    }
}
