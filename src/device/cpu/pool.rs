//! Max pooling and global average pooling on NHWC activations.

use super::real::Real;
use rayon::prelude::*;

/// Output size of a pooling window sweep (same formula as a convolution).
pub fn pool_out(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

/// y = max over each kernel×kernel window; argmax gets the flat index into x of each winner,
/// for the backward pass. Padding never wins (it counts as −inf, as in PyTorch).
#[allow(clippy::too_many_arguments)]
pub fn maxpool2d_forward<T: Real>(
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    x: &[T],
    y: &mut [T],
    argmax: &mut [u32],
) {
    let (oh, ow) = (
        pool_out(h, kernel, stride, pad),
        pool_out(w, kernel, stride, pad),
    );
    assert_eq!(x.len(), n * h * w * c);
    assert_eq!(y.len(), n * oh * ow * c);
    assert_eq!(argmax.len(), y.len());
    assert!(
        x.len() <= u32::MAX as usize,
        "maxpool: argmax indices are u32"
    );
    let img = oh * ow * c;
    y.par_chunks_mut(img)
        .zip(argmax.par_chunks_mut(img))
        .enumerate()
        .for_each(|(b, (y, am))| {
            for (o, (yo, ao)) in y
                .chunks_exact_mut(c)
                .zip(am.chunks_exact_mut(c))
                .enumerate()
            {
                let (oy, ox) = (o / ow, o % ow);
                yo.fill(T::neg_infinity());
                ao.fill(u32::MAX);
                // Window rows/cols clipped to the image, so padding is simply skipped.
                let iy0 = (oy * stride).saturating_sub(pad);
                let iy1 = (oy * stride + kernel - pad).min(h);
                let ix0 = (ox * stride).saturating_sub(pad);
                let ix1 = (ox * stride + kernel - pad).min(w);
                for iy in iy0..iy1 {
                    for ix in ix0..ix1 {
                        let base = ((b * h + iy) * w + ix) * c;
                        for ch in 0..c {
                            let v = x[base + ch];
                            // First maximum wins ties; a NaN propagates like in PyTorch.
                            if v > yo[ch] || v.is_nan() || ao[ch] == u32::MAX {
                                yo[ch] = v;
                                ao[ch] = (base + ch) as u32;
                            }
                        }
                    }
                }
            }
        });
}

/// dx = 0, then each dy is added to the input element that won its window. Serial: windows
/// overlap, and the scatter is cheap next to the convolutions around it.
pub fn maxpool2d_backward<T: Real>(dy: &[T], argmax: &[u32], dx: &mut [T]) {
    assert_eq!(dy.len(), argmax.len());
    dx.fill(T::zero());
    for (&g, &i) in dy.iter().zip(argmax) {
        dx[i as usize] += g;
    }
}

/// y[n, c] = mean of x[n, :, c] over the hw spatial positions.
pub fn global_avg_pool_forward<T: Real>(n: usize, hw: usize, c: usize, x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), n * hw * c);
    assert_eq!(y.len(), n * c);
    let scale = T::one() / T::from_f64(hw as f64);
    y.par_chunks_mut(c)
        .zip(x.par_chunks(hw * c))
        .for_each(|(y, x)| {
            y.fill(T::zero());
            for pixel in x.chunks_exact(c) {
                for (s, &v) in y.iter_mut().zip(pixel) {
                    *s += v;
                }
            }
            y.iter_mut().for_each(|s| *s = *s * scale);
        });
}

/// dx[n, i, c] = dy[n, c] / hw: every position contributed equally to the mean.
pub fn global_avg_pool_backward<T: Real>(n: usize, hw: usize, c: usize, dy: &[T], dx: &mut [T]) {
    assert_eq!(dx.len(), n * hw * c);
    assert_eq!(dy.len(), n * c);
    let scale = T::one() / T::from_f64(hw as f64);
    dx.par_chunks_mut(hw * c)
        .zip(dy.par_chunks(c))
        .for_each(|(dx, dy)| {
            for pixel in dx.chunks_exact_mut(c) {
                for (d, &g) in pixel.iter_mut().zip(dy) {
                    *d = g * scale;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::random_vec as random;

    #[test]
    fn maxpool_matches_naive() {
        for &(n, h, w, c, kernel, stride, pad) in &[
            (2, 7, 7, 5, 3, 2, 1),
            (1, 8, 6, 3, 2, 2, 0),
            (3, 5, 9, 13, 3, 1, 1),
            (1, 1, 1, 2, 1, 1, 0),
        ] {
            let x = random::<f64>(n * h * w * c, 7);
            let (oh, ow) = (
                pool_out(h, kernel, stride, pad),
                pool_out(w, kernel, stride, pad),
            );
            let mut y = vec![0.0; n * oh * ow * c];
            let mut am = vec![0u32; y.len()];
            maxpool2d_forward(n, h, w, c, kernel, stride, pad, &x, &mut y, &mut am);
            let dy = random::<f64>(y.len(), 8);
            let mut dx = vec![0.0; x.len()];
            maxpool2d_backward(&dy, &am, &mut dx);
            let mut dx_want = vec![0.0; x.len()];
            for b in 0..n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ch in 0..c {
                            let (mut best, mut arg) = (f64::NEG_INFINITY, 0);
                            for ky in 0..kernel {
                                for kx in 0..kernel {
                                    let (iy, ix) = (
                                        (oy * stride + ky) as isize - pad as isize,
                                        (ox * stride + kx) as isize - pad as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let i = ((b * h + iy as usize) * w + ix as usize) * c + ch;
                                    if x[i] > best {
                                        (best, arg) = (x[i], i);
                                    }
                                }
                            }
                            let o = ((b * oh + oy) * ow + ox) * c + ch;
                            assert_eq!(y[o], best);
                            assert_eq!(am[o] as usize, arg);
                            dx_want[arg] += dy[o];
                        }
                    }
                }
            }
            assert_eq!(dx, dx_want);
        }
    }

    #[test]
    fn global_avg_pool_matches_naive() {
        let (n, hw, c) = (3, 49, 13);
        let x = random::<f64>(n * hw * c, 3);
        let mut y = vec![0.0; n * c];
        global_avg_pool_forward(n, hw, c, &x, &mut y);
        let dy = random::<f64>(n * c, 4);
        let mut dx = vec![0.0; x.len()];
        global_avg_pool_backward(n, hw, c, &dy, &mut dx);
        for b in 0..n {
            for ch in 0..c {
                let mean = (0..hw).map(|i| x[(b * hw + i) * c + ch]).sum::<f64>() / hw as f64;
                assert!((y[b * c + ch] - mean).abs() < 1e-12);
                for i in 0..hw {
                    assert!((dx[(b * hw + i) * c + ch] - dy[b * c + ch] / hw as f64).abs() < 1e-15);
                }
            }
        }
    }
}
