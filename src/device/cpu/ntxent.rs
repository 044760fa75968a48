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
/// dL/dz = (G + Gᵀ)·z / τ: z_i's gradient as an anchor (its row of G) plus as a candidate
/// (its column), the two parts `ntxent_rows` returns apart.
///
/// This reference materialises the 2N×2N similarity matrix; the CUDA kernel does not.
pub fn ntxent<T: Real>(z: &[T], d: usize, temperature: f64) -> (f64, Vec<T>) {
    let (loss, mut dz, dcol) = ntxent_rows(z, z, 0, d, temperature);
    dz.iter_mut().zip(&dcol).for_each(|(a, &b)| *a += b);
    (loss, dz)
}

/// NT-Xent of 2n anchor rows `z` against the candidate rows `all`, among which the anchors
/// are rows `first..first + 2n` (data parallelism: one rank's views against every rank's, with
/// its own at offset `first`; in one process, `all` is `z`). Anchor i's positive is candidate
/// first + (i + n) mod 2n, its own row is masked out. Returns the mean loss over the anchors,
/// the gradient as anchors (G·all / τ, 2n rows) and as candidates (Gᵀ·z / τ, one row per
/// candidate), with G_ij = (p_ij − [j = pos(i)]) / 2n.
pub fn ntxent_rows<T: Real>(
    z: &[T],
    all: &[T],
    first: usize,
    d: usize,
    temperature: f64,
) -> (f64, Vec<T>, Vec<T>) {
    let (rows, cols) = (z.len() / d, all.len() / d);
    assert!(rows >= 2 && rows.is_multiple_of(2), "NT-Xent needs 2N rows");
    assert!(
        first + rows <= cols,
        "NT-Xent: the anchors lie outside the candidates"
    );
    let n = rows / 2;
    let mut s = vec![T::zero(); rows * cols];
    gemm(rows, cols, d, z, d, 1, all, 1, d, &mut s, cols, false);
    let inv_t = T::from_f64(1.0 / temperature);
    s.iter_mut().for_each(|v| *v = *v * inv_t);

    let mut g = vec![T::zero(); rows * cols];
    let mut loss = 0.0;
    for i in 0..rows {
        let (me, pos) = (first + i, first + (i + n) % rows);
        let row = &s[i * cols..(i + 1) * cols];
        let lse = logsumexp(row, Some(me));
        loss += lse - row[pos].to_f64();
        for j in 0..cols {
            if j != me {
                let p = (row[j].to_f64() - lse).exp();
                let target = if j == pos { 1.0 } else { 0.0 };
                g[i * cols + j] = T::from_f64((p - target) / rows as f64 / temperature);
            }
        }
    }
    let mut drow = vec![T::zero(); rows * d];
    gemm(rows, d, cols, &g, cols, 1, all, d, 1, &mut drow, d, false);
    let mut dcol = vec![T::zero(); cols * d];
    gemm(cols, d, rows, &g, 1, cols, z, d, 1, &mut dcol, d, false);
    (loss / rows as f64, drow, dcol)
}
