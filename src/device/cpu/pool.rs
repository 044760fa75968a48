//! Max pooling and global average pooling on NHWC activations.

use super::real::Real;
use rayon::prelude::*;

/// Output size of a pooling window sweep (same formula as a convolution).
pub fn pool_out(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

/// The pooling window geometry of one layer.
#[derive(Clone, Copy, Debug)]
pub struct PoolShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl PoolShape {
    pub fn out_h(&self) -> usize {
        pool_out(self.h, self.kernel, self.stride, self.pad)
    }

    pub fn out_w(&self) -> usize {
        pool_out(self.w, self.kernel, self.stride, self.pad)
    }

    /// Flat indices into x of the winners of output pixel (b, oy, ox), one per channel, in
    /// `win`. The first maximum in scan order (row, then column) wins ties; a NaN wins like in
    /// PyTorch; padding is skipped (it counts as −inf). Backward recomputes this from x
    /// instead of saving an index tensor, the same rule as the GPU kernel.
    fn winners<T: Real>(&self, x: &[T], b: usize, oy: usize, ox: usize, win: &mut [usize]) {
        let Self { h, w, c, .. } = *self;
        let iy0 = (oy * self.stride).saturating_sub(self.pad);
        let iy1 = (oy * self.stride + self.kernel - self.pad).min(h);
        let ix0 = (ox * self.stride).saturating_sub(self.pad);
        let ix1 = (ox * self.stride + self.kernel - self.pad).min(w);
        win.fill(usize::MAX);
        for iy in iy0..iy1 {
            for ix in ix0..ix1 {
                let base = ((b * h + iy) * w + ix) * c;
                for (ch, best) in win.iter_mut().enumerate() {
                    let v = x[base + ch];
                    if *best == usize::MAX || v > x[*best] || v.is_nan() {
                        *best = base + ch;
                    }
                }
            }
        }
    }
}

/// y = max over each kernel×kernel window.
pub fn maxpool2d_forward<T: Real>(s: &PoolShape, x: &[T], y: &mut [T]) {
    let (oh, ow, c) = (s.out_h(), s.out_w(), s.c);
    assert_eq!(x.len(), s.n * s.h * s.w * c);
    assert_eq!(y.len(), s.n * oh * ow * c);
    y.par_chunks_mut(oh * ow * c)
        .enumerate()
        .for_each(|(b, y)| {
            let mut win = vec![0; c];
            for (o, yo) in y.chunks_exact_mut(c).enumerate() {
                s.winners(x, b, o / ow, o % ow, &mut win);
                for (v, &i) in yo.iter_mut().zip(&win) {
                    *v = x[i];
                }
            }
        });
}

/// dx = 0, then each dy is added to the input element that won its window. Serial: windows
/// overlap, and the scatter is cheap next to the convolutions around it.
pub fn maxpool2d_backward<T: Real>(s: &PoolShape, x: &[T], dy: &[T], dx: &mut [T]) {
    let (oh, ow, c) = (s.out_h(), s.out_w(), s.c);
    assert_eq!(dy.len(), s.n * oh * ow * c);
    dx.fill(T::zero());
    let mut win = vec![0; c];
    for (o, g) in dy.chunks_exact(c).enumerate() {
        let (b, oy, ox) = (o / (oh * ow), o / ow % oh, o % ow);
        s.winners(x, b, oy, ox, &mut win);
        for (&i, &g) in win.iter().zip(g) {
            dx[i] += g;
        }
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
            let s = PoolShape {
                n,
                h,
                w,
                c,
                kernel,
                stride,
                pad,
            };
            let (oh, ow) = (s.out_h(), s.out_w());
            let mut y = vec![0.0; n * oh * ow * c];
            maxpool2d_forward(&s, &x, &mut y);
            let dy = random::<f64>(y.len(), 8);
            let mut dx = vec![0.0; x.len()];
            maxpool2d_backward(&s, &x, &dy, &mut dx);
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
