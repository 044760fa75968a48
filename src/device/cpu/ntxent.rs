//! NT-Xent on the CPU: the reference for kernels/ntxent.cu. It returns the loss and its
//! gradient in one pass, as the fused kernel does; the tape scales the gradient by the upstream
//! one.

use super::gemm::gemm;
use super::loss::logsumexp;
use super::real::Real;

/// NT-Xent (normalised temperature-scaled cross-entropy) over 2N L2-normalised rows of
/// width d. Rows 0..N are the first view and N..2N the second, so the positive of row i is
/// row (i + N) mod 2N. Similarities s_ij = z_i·z_j / τ; the self-similarity is masked out of
/// each denominator; the loss is the mean over all 2N anchors of −log softmax(s_i)[pos(i)],
/// i.e. both directions of every positive pair.
///
/// Gradient: with G_ij = (p_ij − [j = pos(i)]) / 2N (p the masked softmax of row i),
/// dL/dz = (G + Gᵀ)·z / τ.
///
/// This reference materialises the 2N×2N similarity matrix; the CUDA kernel does not.
pub fn ntxent<T: Real>(z: &[T], d: usize, temperature: f64) -> (f64, Vec<T>) {
    let rows = z.len() / d;
    assert!(rows >= 2 && rows.is_multiple_of(2), "NT-Xent needs 2N rows");
    let n = rows / 2;
    let mut s = vec![T::zero(); rows * rows];
    gemm(rows, rows, d, z, d, 1, z, 1, d, &mut s, rows, false);
    let inv_t = T::from_f64(1.0 / temperature);
    s.iter_mut().for_each(|v| *v = *v * inv_t);

    let mut g = vec![T::zero(); rows * rows];
    let mut loss = 0.0;
    for i in 0..rows {
        let pos = (i + n) % rows;
        let row = &s[i * rows..(i + 1) * rows];
        let lse = logsumexp(row, Some(i));
        loss += lse - row[pos].to_f64();
        for j in 0..rows {
            if j != i {
                let p = (row[j].to_f64() - lse).exp();
                let target = if j == pos { 1.0 } else { 0.0 };
                g[i * rows + j] = T::from_f64((p - target) / rows as f64);
            }
        }
    }
    // Symmetrise: gs = (G + Gᵀ) / τ, then dz = gs · z.
    let mut gs = vec![T::zero(); rows * rows];
    for i in 0..rows {
        for j in 0..rows {
            gs[i * rows + j] = (g[i * rows + j] + g[j * rows + i]) * inv_t;
        }
    }
    let mut dz = vec![T::zero(); rows * d];
    gemm(rows, d, rows, &gs, rows, 1, z, d, 1, &mut dz, d, false);
    (loss / rows as f64, dz)
}
