//! The supervised losses on the CPU: softmax, softmax cross-entropy and distillation (NT-Xent
//! is in ntxent.rs). Each returns the loss and the gradient of the loss with respect to its
//! input in one pass (the fused forward+backward the CUDA kernels also use); the tape scales
//! that gradient by the upstream one.

use super::real::Real;

/// Numerically stable log Σ exp over `xs`, skipping index `skip`.
pub(super) fn logsumexp<T: Real>(xs: &[T], skip: Option<usize>) -> f64 {
    let keep = |j: &usize| Some(*j) != skip;
    let max = (0..xs.len())
        .filter(keep)
        .map(|j| xs[j].to_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = (0..xs.len())
        .filter(keep)
        .map(|j| (xs[j].to_f64() - max).exp())
        .sum();
    max + sum.ln()
}

/// Row-wise softmax of x / τ.
pub fn softmax<T: Real>(x: &[T], classes: usize, temperature: f64) -> Vec<T> {
    let mut p = vec![T::zero(); x.len()];
    for (xr, pr) in x.chunks(classes).zip(p.chunks_mut(classes)) {
        let scaled: Vec<f64> = xr.iter().map(|&v| v.to_f64() / temperature).collect();
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = scaled.iter().map(|v| (v - max).exp()).sum();
        for (p, v) in pr.iter_mut().zip(&scaled) {
            *p = T::from_f64((v - max).exp() / sum);
        }
    }
    p
}

/// Mean softmax cross-entropy against integer labels; gradient (p − onehot)/B.
pub fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    classes: usize,
    labels: &[u32],
) -> (f64, Vec<T>) {
    let b = labels.len();
    let mut grad = softmax(logits, classes, 1.0);
    let mut loss = 0.0;
    for (i, &y) in labels.iter().enumerate() {
        let row = &logits[i * classes..(i + 1) * classes];
        loss += logsumexp(row, None) - row[y as usize].to_f64();
        grad[i * classes + y as usize] = grad[i * classes + y as usize] - T::one();
    }
    let inv_b = T::from_f64(1.0 / b as f64);
    grad.iter_mut().for_each(|g| *g = *g * inv_b);
    (loss / b as f64, grad)
}

/// Label of a row that has none (distillation on unlabelled images).
pub const UNLABELLED: u32 = u32::MAX;

/// Distillation loss −Σ_y P_T(y|x;τ) log P_S(y|x;τ), averaged over the batch, where
/// `teacher_probs` are already softened with τ; gradient (P_S − P_T) / (τ·B), as in the
/// official implementation (no τ² factor). With `alpha` > 0 it is mixed with the softmax
/// cross-entropy on the rows whose label is not `UNLABELLED`:
/// loss = (1 − α)·distillation + α·cross-entropy (mean over the labelled rows).
#[allow(clippy::needless_range_loop)] // k indexes four arrays in step
pub fn distillation<T: Real>(
    student_logits: &[T],
    teacher_probs: &[T],
    classes: usize,
    temperature: f64,
    labels: &[u32],
    alpha: f64,
) -> (f64, Vec<T>) {
    let b = student_logits.len() / classes;
    let p_s = softmax(student_logits, classes, temperature);
    let labelled = labels.iter().filter(|&&y| y != UNLABELLED).count();
    let mut loss = 0.0;
    let mut grad = vec![T::zero(); student_logits.len()];
    for i in 0..b {
        let logits = &student_logits[i * classes..(i + 1) * classes];
        let soft: Vec<T> = logits
            .iter()
            .map(|&v| T::from_f64(v.to_f64() / temperature))
            .collect();
        let lse = logsumexp(&soft, None);
        for k in 0..classes {
            let idx = i * classes + k;
            let p_t = teacher_probs[idx].to_f64();
            loss -= (1.0 - alpha) * p_t * (soft[k].to_f64() - lse) / b as f64;
            grad[idx] =
                T::from_f64((1.0 - alpha) * (p_s[idx].to_f64() - p_t) / (temperature * b as f64));
        }
        if alpha > 0.0 && labels[i] != UNLABELLED {
            let y = labels[i] as usize;
            let lse1 = logsumexp(logits, None);
            loss += alpha * (lse1 - logits[y].to_f64()) / labelled as f64;
            for k in 0..classes {
                let p = (logits[k].to_f64() - lse1).exp() - if k == y { 1.0 } else { 0.0 };
                let idx = i * classes + k;
                grad[idx] += T::from_f64(alpha * p / labelled as f64);
            }
        }
    }
    (loss, grad)
}
