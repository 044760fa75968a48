//! Optimiser updates on the CPU, one parameter tensor at a time.

use super::real::Real;
use rayon::prelude::*;

/// Elements per task of the norms and the updates. Fixed, so that the norms' sums are the same
/// whatever the thread count.
const CHUNK: usize = 1 << 15;

/// LARS's trust ratio η‖w‖/‖g + wd·w‖ (1 when either norm is 0), the norms in f64. Each chunk
/// is summed in 8 lanes (independent adds, which pipeline; one running sum waits on each add),
/// the chunks in parallel, and their sums added in order.
pub fn lars_trust<T: Real>(w: &[T], g: &[T], weight_decay: f64, eta: f64) -> f64 {
    let sums: Vec<(f64, f64)> = w
        .par_chunks(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .map(|(w, g)| {
            let (mut ww, mut gg) = ([0f64; 8], [0f64; 8]);
            for (w, g) in w.chunks(8).zip(g.chunks(8)) {
                for (lane, (&w, &g)) in w.iter().zip(g).enumerate() {
                    let (w, g) = (w.to_f64(), g.to_f64());
                    let d = g + weight_decay * w;
                    ww[lane] += w * w;
                    gg[lane] += d * d;
                }
            }
            (ww.iter().sum(), gg.iter().sum())
        })
        .collect();
    let (ww, gg) = sums
        .iter()
        .fold((0.0, 0.0), |(a, b), &(w, g)| (a + w, b + g));
    let (w_norm, g_norm) = (ww.sqrt(), gg.sqrt());
    if w_norm > 0.0 && g_norm > 0.0 {
        eta * w_norm / g_norm
    } else {
        1.0
    }
}

/// LARS as in the official SimCLR code (TF convention):
///   g ← g + wd·w;  v ← m·v + lr·trust·g;  w ← w − v
/// where trust = η‖w‖/‖g‖ for adapted tensors (1 when either norm is 0), else 1.
/// The caller computes the trust ratio (`lars_trust`) and passes lr·trust.
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
    each_element(w, g, v, |w, g, v| {
        let grad = g + wd * *w;
        *v = m * *v + lr * grad;
        *w = *w - *v;
    });
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
    each_element(w, g, v, |w, g, v| {
        let grad = g + wd * *w;
        *v = m * *v + grad;
        let step = if nesterov { grad + m * *v } else { *v };
        *w = *w - lr * step;
    });
}

/// f(w, g, v) for every element of a parameter, its gradient and its velocity, over chunks in
/// parallel.
fn each_element<T: Real>(w: &mut [T], g: &[T], v: &mut [T], f: impl Fn(&mut T, T, &mut T) + Sync) {
    w.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|(w, (g, v))| {
            for ((w, &g), v) in w.iter_mut().zip(g).zip(v) {
                f(w, g, v);
            }
        });
}
