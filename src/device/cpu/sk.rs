//! The two ops of a selective-kernel convolution (SimCLRv2's `sk_conv2d`) on NHWC activations
//! [n, hw, 2c] that hold two streams side by side: stream 0 in channels [0, c), stream 1 in
//! [c, 2c). `c` below is always the channel count of ONE stream.

use super::real::Real;
use rayon::prelude::*;

/// y[n, ch] = mean over the hw positions of x[n, :, ch] + x[n, :, c + ch]: the global
/// descriptor of both streams together that the mixing weights are computed from.
pub fn sk_pool_forward<T: Real>(n: usize, hw: usize, c: usize, x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), n * hw * 2 * c);
    assert_eq!(y.len(), n * c);
    let scale = T::one() / T::from_f64(hw as f64);
    y.par_chunks_mut(c)
        .zip(x.par_chunks(hw * 2 * c))
        .for_each(|(y, x)| {
            y.fill(T::zero());
            for pixel in x.chunks_exact(2 * c) {
                let (s0, s1) = pixel.split_at(c);
                for ((s, &a), &b) in y.iter_mut().zip(s0).zip(s1) {
                    *s += a + b;
                }
            }
            y.iter_mut().for_each(|s| *s = *s * scale);
        });
}

/// dx[n, p, ch] = dx[n, p, c + ch] = dy[n, ch] / hw.
pub fn sk_pool_backward<T: Real>(n: usize, hw: usize, c: usize, dy: &[T], dx: &mut [T]) {
    assert_eq!(dx.len(), n * hw * 2 * c);
    assert_eq!(dy.len(), n * c);
    let scale = T::one() / T::from_f64(hw as f64);
    dx.par_chunks_mut(hw * 2 * c)
        .zip(dy.par_chunks(c))
        .for_each(|(dx, dy)| {
            for stream in dx.chunks_exact_mut(c) {
                for (d, &g) in stream.iter_mut().zip(dy) {
                    *d = g * scale;
                }
            }
        });
}

/// (a, b) = softmax(l0, l1): the weights of the two streams. Shifted by the larger logit, so
/// neither exponential overflows.
pub fn sk_weights<T: Real>(l0: T, l1: T) -> (T, T) {
    let m = l0.max(l1);
    let (e0, e1) = ((l0 - m).exp(), (l1 - m).exp());
    (e0 / (e0 + e1), e1 / (e0 + e1))
}

/// y[n, p, ch] = a·x[n, p, ch] + b·x[n, p, c + ch] with (a, b) = softmax of the logits
/// [n, 2c] pair (logits[n, ch], logits[n, c + ch]).
pub fn sk_combine_forward<T: Real>(
    n: usize,
    hw: usize,
    c: usize,
    x: &[T],
    logits: &[T],
    y: &mut [T],
) {
    assert_eq!(x.len(), n * hw * 2 * c);
    assert_eq!(logits.len(), n * 2 * c);
    assert_eq!(y.len(), n * hw * c);
    y.par_chunks_mut(hw * c)
        .zip(x.par_chunks(hw * 2 * c))
        .zip(logits.par_chunks(2 * c))
        .for_each(|((y, x), logits)| {
            let weights: Vec<(T, T)> = (0..c)
                .map(|ch| sk_weights(logits[ch], logits[c + ch]))
                .collect();
            for (y, pixel) in y.chunks_exact_mut(c).zip(x.chunks_exact(2 * c)) {
                for (ch, (v, &(a, b))) in y.iter_mut().zip(&weights).enumerate() {
                    *v = a * pixel[ch] + b * pixel[c + ch];
                }
            }
        });
}

/// The gradients of sk_combine. dx: a·dy to stream 0, b·dy to stream 1. dlogits: with
/// t = Σ_p dy·(x₀ − x₁), the softmax's Jacobian [[ab, −ab], [−ab, ab]] gives
/// dl₀ = ab·t and dl₁ = −ab·t (positions summed in order, as the GPU kernel does).
#[allow(clippy::too_many_arguments)]
pub fn sk_combine_backward<T: Real>(
    n: usize,
    hw: usize,
    c: usize,
    x: &[T],
    logits: &[T],
    dy: &[T],
    dx: &mut [T],
    dlogits: &mut [T],
) {
    assert_eq!(x.len(), n * hw * 2 * c);
    assert_eq!(dx.len(), x.len());
    assert_eq!(logits.len(), n * 2 * c);
    assert_eq!(dlogits.len(), logits.len());
    assert_eq!(dy.len(), n * hw * c);
    dx.par_chunks_mut(hw * 2 * c)
        .zip(dlogits.par_chunks_mut(2 * c))
        .zip(x.par_chunks(hw * 2 * c))
        .zip(logits.par_chunks(2 * c))
        .zip(dy.par_chunks(hw * c))
        .for_each(|((((dx, dlogits), x), logits), dy)| {
            let weights: Vec<(T, T)> = (0..c)
                .map(|ch| sk_weights(logits[ch], logits[c + ch]))
                .collect();
            let mut t = vec![T::zero(); c];
            for ((dx, pixel), dy) in dx
                .chunks_exact_mut(2 * c)
                .zip(x.chunks_exact(2 * c))
                .zip(dy.chunks_exact(c))
            {
                for ch in 0..c {
                    let (a, b) = weights[ch];
                    dx[ch] = a * dy[ch];
                    dx[c + ch] = b * dy[ch];
                    t[ch] += dy[ch] * (pixel[ch] - pixel[c + ch]);
                }
            }
            for ch in 0..c {
                let (a, b) = weights[ch];
                dlogits[ch] = a * b * t[ch];
                dlogits[c + ch] = -(a * b * t[ch]);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::random_vec as random;

    #[test]
    fn weights_are_a_stable_softmax() {
        let (a, b) = sk_weights(0.3f64, -1.2);
        let z = 0.3f64.exp() + (-1.2f64).exp();
        assert!((a - 0.3f64.exp() / z).abs() < 1e-15 && (b - (-1.2f64).exp() / z).abs() < 1e-15);
        assert_eq!(sk_weights(1000.0f32, -1000.0), (1.0, 0.0));
    }

    #[test]
    fn ops_match_naive() {
        let (n, hw, c) = (2, 35, 5);
        let x = random::<f64>(n * hw * 2 * c, 1);
        let logits = random::<f64>(n * 2 * c, 2);
        let at = |b: usize, p: usize, ch: usize| x[(b * hw + p) * 2 * c + ch];

        let mut pooled = vec![0.0; n * c];
        sk_pool_forward(n, hw, c, &x, &mut pooled);
        let mut y = vec![0.0; n * hw * c];
        sk_combine_forward(n, hw, c, &x, &logits, &mut y);
        for b in 0..n {
            for ch in 0..c {
                let mean = (0..hw)
                    .map(|p| at(b, p, ch) + at(b, p, c + ch))
                    .sum::<f64>()
                    / hw as f64;
                assert!((pooled[b * c + ch] - mean).abs() < 1e-12);
                let (l0, l1) = (logits[b * 2 * c + ch], logits[b * 2 * c + c + ch]);
                let a = l0.exp() / (l0.exp() + l1.exp());
                for p in 0..hw {
                    let want = a * at(b, p, ch) + (1.0 - a) * at(b, p, c + ch);
                    assert!((y[(b * hw + p) * c + ch] - want).abs() < 1e-12);
                }
            }
        }
    }
}
