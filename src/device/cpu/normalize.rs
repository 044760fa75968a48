//! L2 normalisation of rows as tf.math.l2_normalize does it: z = x · rsqrt(max(Σx², 1e-12)).

use super::real::Real;

const EPS_SQ: f64 = 1e-12;

/// Returns the per-row inverse norms, kept for the backward pass.
pub fn l2_normalize_forward<T: Real>(x: &[T], d: usize, z: &mut [T]) -> Vec<T> {
    let mut inv = Vec::with_capacity(x.len() / d);
    for (xr, zr) in x.chunks(d).zip(z.chunks_mut(d)) {
        let ss: f64 = xr.iter().map(|&v| v.to_f64() * v.to_f64()).sum();
        let r = T::from_f64(1.0 / ss.max(EPS_SQ).sqrt());
        for (z, &x) in zr.iter_mut().zip(xr) {
            *z = x * r;
        }
        inv.push(r);
    }
    inv
}

/// dx = (dz − z·(z·dz)) / ‖x‖ (the clamped branch, never hit in practice, is treated the same).
pub fn l2_normalize_backward<T: Real>(z: &[T], dz: &[T], inv_norm: &[T], d: usize, dx: &mut [T]) {
    for (((zr, gr), dxr), &r) in z
        .chunks(d)
        .zip(dz.chunks(d))
        .zip(dx.chunks_mut(d))
        .zip(inv_norm)
    {
        let dot: T = zr.iter().zip(gr).map(|(&a, &b)| a * b).sum();
        for i in 0..d {
            dxr[i] = (gr[i] - zr[i] * dot) * r;
        }
    }
}
