//! Max pooling, average pooling and global average pooling on NHWC activations.

use super::real::Real;
use rayon::prelude::*;
use std::ops::Range;

/// Output size of a pooling window sweep (same formula as a convolution).
pub fn pool_out(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

/// The in-image positions along one axis of output window `o` (the window starts at
/// o·stride − pad; padding is cut off).
fn window(o: usize, size: usize, kernel: usize, stride: usize, pad: usize) -> Range<usize> {
    (o * stride).saturating_sub(pad)..(o * stride + kernel - pad).min(size)
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

    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.out_h(), self.out_w(), self.c]
    }

    /// Flat indices into x of the winners of output pixel (b, oy, ox), one per channel, in
    /// `win`. The first maximum in scan order (row, then column) wins ties; a NaN wins like in
    /// PyTorch; padding is skipped (it counts as −inf). Backward recomputes this from x
    /// instead of saving an index tensor, the same rule as the GPU kernel.
    fn winners<T: Real>(&self, x: &[T], b: usize, oy: usize, ox: usize, win: &mut [usize]) {
        let Self {
            h,
            w,
            c,
            kernel,
            stride,
            pad,
            ..
        } = *self;
        win.fill(usize::MAX);
        for iy in window(oy, h, kernel, stride, pad) {
            for ix in window(ox, w, kernel, stride, pad) {
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

/// Average pooling with TensorFlow's 'SAME' padding, as the official ResNet-D shortcut uses it
/// (kernel 2, stride 2): ceil(size / stride) outputs per axis; the padding this needs is split
/// with the smaller half before (top, left), and each window averages only its in-image
/// elements (padding is not counted).
#[derive(Clone, Copy, Debug)]
pub struct AvgPoolShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kernel: usize,
    pub stride: usize,
}

/// TF 'SAME' padding before the first element of an axis of `size`.
fn same_pad(size: usize, kernel: usize, stride: usize) -> usize {
    let out = size.div_ceil(stride);
    ((out - 1) * stride + kernel).saturating_sub(size) / 2
}

impl AvgPoolShape {
    pub fn out_h(&self) -> usize {
        self.h.div_ceil(self.stride)
    }

    pub fn out_w(&self) -> usize {
        self.w.div_ceil(self.stride)
    }

    pub fn in_shape(&self) -> [usize; 4] {
        [self.n, self.h, self.w, self.c]
    }

    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.out_h(), self.out_w(), self.c]
    }

    pub fn pad_top(&self) -> usize {
        same_pad(self.h, self.kernel, self.stride)
    }

    pub fn pad_left(&self) -> usize {
        same_pad(self.w, self.kernel, self.stride)
    }

    /// The input rows and columns of output window (oy, ox). Never empty: 'SAME' pads less
    /// than a kernel on either side.
    fn window(&self, oy: usize, ox: usize) -> (Range<usize>, Range<usize>) {
        let (k, s) = (self.kernel, self.stride);
        (
            window(oy, self.h, k, s, self.pad_top()),
            window(ox, self.w, k, s, self.pad_left()),
        )
    }
}

/// y = mean of each window's in-image elements.
pub fn avg_pool2d_forward<T: Real>(s: &AvgPoolShape, x: &[T], y: &mut [T]) {
    let (h, w, c, oh, ow) = (s.h, s.w, s.c, s.out_h(), s.out_w());
    assert_eq!(x.len(), s.n * h * w * c);
    assert_eq!(y.len(), s.n * oh * ow * c);
    y.par_chunks_mut(oh * ow * c)
        .zip(x.par_chunks(h * w * c))
        .for_each(|(y, x)| {
            for (o, yo) in y.chunks_exact_mut(c).enumerate() {
                let (rows, cols) = s.window(o / ow, o % ow);
                let count = T::from_f64((rows.len() * cols.len()) as f64);
                yo.fill(T::zero());
                for iy in rows {
                    for ix in cols.clone() {
                        let pixel = &x[(iy * w + ix) * c..][..c];
                        yo.iter_mut().zip(pixel).for_each(|(v, &p)| *v += p);
                    }
                }
                yo.iter_mut().for_each(|v| *v = *v / count);
            }
        });
}

/// dx = Σ over the windows holding each element of dy / (that window's element count), the
/// windows added in (oy, ox) order — the order the GPU kernel gathers them in.
pub fn avg_pool2d_backward<T: Real>(s: &AvgPoolShape, dy: &[T], dx: &mut [T]) {
    let (h, w, c, oh, ow) = (s.h, s.w, s.c, s.out_h(), s.out_w());
    assert_eq!(dx.len(), s.n * h * w * c);
    assert_eq!(dy.len(), s.n * oh * ow * c);
    dx.par_chunks_mut(h * w * c)
        .zip(dy.par_chunks(oh * ow * c))
        .for_each(|(dx, dy)| {
            dx.fill(T::zero());
            for (o, g) in dy.chunks_exact(c).enumerate() {
                let (rows, cols) = s.window(o / ow, o % ow);
                let count = T::from_f64((rows.len() * cols.len()) as f64);
                for iy in rows {
                    for ix in cols.clone() {
                        let pixel = &mut dx[(iy * w + ix) * c..][..c];
                        pixel.iter_mut().zip(g).for_each(|(d, &g)| *d += g / count);
                    }
                }
            }
        });
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
    fn avg_pool_same_padding() {
        // 3×3 map, 2×2/2: TF pads one row and column after the image, so the windows hold
        // 4, 2, 2 and 1 elements.
        let s = AvgPoolShape {
            n: 1,
            h: 3,
            w: 3,
            c: 1,
            kernel: 2,
            stride: 2,
        };
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let mut y = [0.0; 4];
        avg_pool2d_forward(&s, &x, &mut y);
        assert_eq!(y, [3.0, 4.5, 7.5, 9.0]);
        // 3×3/2 on 6 columns: 3 outputs, 1 padding column split 0 before, 1 after; 3×3/1 on 5
        // rows: 5 outputs, 1 padding row on each side.
        let s = AvgPoolShape {
            n: 2,
            h: 5,
            w: 6,
            c: 3,
            kernel: 3,
            stride: 2,
        };
        assert_eq!((s.out_w(), s.pad_left()), (3, 0));
        let s1 = AvgPoolShape { stride: 1, ..s };
        assert_eq!((s1.out_h(), s1.pad_top()), (5, 1));

        // Against a naive sum over every window position, and dx against the adjoint
        // identity Σ dy·y(x) = Σ dx·x (the pool is linear).
        for s in [s, s1] {
            let x = random::<f64>(s.n * s.h * s.w * s.c, 5);
            let (oh, ow) = (s.out_h(), s.out_w());
            let mut y = vec![0.0; s.n * oh * ow * s.c];
            avg_pool2d_forward(&s, &x, &mut y);
            for (i, &got) in y.iter().enumerate() {
                let (ch, ox, oy, b) = (i % s.c, i / s.c % ow, i / s.c / ow % oh, i / s.c / ow / oh);
                let (mut sum, mut count) = (0.0, 0);
                for ky in 0..s.kernel {
                    for kx in 0..s.kernel {
                        let iy = (oy * s.stride + ky) as isize - s.pad_top() as isize;
                        let ix = (ox * s.stride + kx) as isize - s.pad_left() as isize;
                        if iy >= 0 && ix >= 0 && iy < s.h as isize && ix < s.w as isize {
                            sum += x[((b * s.h + iy as usize) * s.w + ix as usize) * s.c + ch];
                            count += 1;
                        }
                    }
                }
                assert!((got - sum / count as f64).abs() < 1e-12);
            }
            let dy = random::<f64>(y.len(), 6);
            let mut dx = vec![0.0; x.len()];
            avg_pool2d_backward(&s, &dy, &mut dx);
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
            assert!((dot(&dy, &y) - dot(&dx, &x)).abs() < 1e-12);
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
