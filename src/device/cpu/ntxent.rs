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
/// `memory` holds past rows (SimCLRv2's buffer, possibly none): extra columns of s, in every
/// anchor's denominator and nothing else (`ntxent_rows`).
///
/// This reference materialises the 2N×(2N + K) similarity matrix; the CUDA kernel does not.
pub fn ntxent<T: Real>(z: &[T], memory: &[T], d: usize, temperature: f64) -> (f64, Vec<T>) {
    let all = [z, memory].concat();
    let (loss, mut dz, dcol) = ntxent_rows(z, &all, 0, memory.len() / d, d, temperature);
    dz.iter_mut().zip(&dcol).for_each(|(a, &b)| *a += b);
    (loss, dz)
}

/// NT-Xent of 2n anchor rows `z` against the candidate rows `all`: every rank's rows (data
/// parallelism; in one process, `z` itself), among which the anchors are rows first..first + 2n,
/// followed by the last `queued` rows, the memory's (SimCLRv2's buffer of past rows: negatives
/// in every anchor's denominator, never anchors, never positives, no gradient). Anchor i's
/// positive is candidate first + (i + n) mod 2n, its own row is masked out. Returns the mean loss
/// over the anchors, the gradient as anchors (G·all / τ, 2n rows) and as candidates (Gᵀ·z / τ,
/// one row per candidate but the queued), with G_ij = (p_ij − [j = pos(i)]) / 2n.
pub fn ntxent_rows<T: Real>(
    z: &[T],
    all: &[T],
    first: usize,
    queued: usize,
    d: usize,
    temperature: f64,
) -> (f64, Vec<T>, Vec<T>) {
    let (rows, cols) = (z.len() / d, all.len() / d);
    assert!(rows >= 2 && rows.is_multiple_of(2), "NT-Xent needs 2N rows");
    assert!(
        first + rows + queued <= cols,
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
    // Column gradients for the ranks' rows alone: the queued rows are constants.
    let ranked = cols - queued;
    let mut dcol = vec![T::zero(); ranked * d];
    gemm(ranked, d, rows, &g, 1, cols, z, d, 1, &mut dcol, d, false);
    (loss / rows as f64, drow, dcol)
}
