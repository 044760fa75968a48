//! Elementwise ops on the CPU: ReLU, addition and scaling.

use super::real::Real;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

pub fn relu_forward<T: Real>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x.max(T::zero());
            }
        });
}

/// dx = dy where the output was positive (the output, not the input, is kept for this).
pub fn relu_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, dy))| {
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = if y > T::zero() { dy } else { T::zero() };
            }
        });
}

pub fn add<T: Real>(a: &[T], b: &[T], y: &mut [T]) {
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = a + b;
            }
        });
}

/// acc += x (gradient accumulation: a residual block's input gradient is an activation's size,
/// and on one thread the other would wait for it).
pub fn add_assign<T: Real>(acc: &mut [T], x: &[T]) {
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(acc, x)| {
            for (a, &b) in acc.iter_mut().zip(x) {
                *a += b;
            }
        });
}

/// y = s·x.
pub fn scale<T: Real>(x: &[T], s: T, y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * s;
    }
}
