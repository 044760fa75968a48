//! Optimiser updates on the CPU, one parameter tensor at a time.

use super::real::Real;

/// Σ v², accumulated in f64 (for LARS's per-tensor norms).
pub fn sum_sq<T: Real>(v: &[T]) -> f64 {
    v.iter().map(|&x| x.to_f64() * x.to_f64()).sum()
}

/// LARS as in the official SimCLR code (TF convention):
///   g ← g + wd·w;  v ← m·v + lr·trust·g;  w ← w − v
/// where trust = η‖w‖/‖g‖ for adapted tensors (1 when either norm is 0), else 1.
/// The caller computes the trust ratio from the norms (`sum_sq`) and passes lr·trust.
pub fn lars_update<T: Real>(
    w: &mut [T],
    g: &[T],
    v: &mut [T],
    scaled_lr: f64,
    momentum: f64,
    weight_decay: f64,
) {
    let (lr, m, wd) = (
        T::from_f64(scaled_lr),
        T::from_f64(momentum),
        T::from_f64(weight_decay),
    );
    for i in 0..w.len() {
        let grad = g[i] + wd * w[i];
        v[i] = m * v[i] + lr * grad;
        w[i] = w[i] - v[i];
    }
}

/// SGD with momentum (PyTorch convention), optionally Nesterov:
///   g ← g + wd·w;  v ← m·v + g;  w ← w − lr·(g + m·v) if Nesterov else w − lr·v.
pub fn sgd_update<T: Real>(
    w: &mut [T],
    g: &[T],
    v: &mut [T],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
) {
    let (lr, m, wd) = (
        T::from_f64(lr),
        T::from_f64(momentum),
        T::from_f64(weight_decay),
    );
    for i in 0..w.len() {
        let grad = g[i] + wd * w[i];
        v[i] = m * v[i] + grad;
        let step = if nesterov { grad + m * v[i] } else { v[i] };
        w[i] = w[i] - lr * step;
    }
}
