//! Batch normalisation over NHWC activations viewed as [rows, C] (rows = N·H·W), on the CPU.
//! Per-channel sums are taken over fixed chunks of rows and the partials combined in a
//! fixed order in f64, so results are the same whatever the thread schedule.
//!
//! Global batch norm (data parallelism, `dist`): each rank holds a shard of the rows, and every
//! per-channel sum, with the row count, is summed over the ranks (`Comm::all_reduce_sum`)
//! before use, so each rank normalises its rows with the statistics of the whole batch. With
//! `Solo` (one process) that sum is the identity.

use super::real::Real;
use crate::dist::Comm;
use rayon::prelude::*;

/// ε added to the variance, and the running statistics' momentum (TF's convention: the old
/// value's weight).
pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.9;

const CHUNK_ROWS: usize = 256;

/// Per-chunk partial sums (one per chunk of rows, in chunk order) added up in f64.
fn combine<T: Real>(partials: Vec<Vec<T>>, c: usize) -> Vec<f64> {
    let mut total = vec![0.0f64; c];
    for p in &partials {
        for (t, &v) in total.iter_mut().zip(p) {
            *t += v.to_f64();
        }
    }
    total
}

/// What the training forward pass keeps for the backward pass.
pub struct BnStats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub invstd: Vec<f64>,
    /// The rows the statistics are over: all ranks' together.
    pub rows: usize,
}

/// Per-channel sums `sums` and the local row count, summed over the ranks: (sums, rows).
fn over_ranks(comm: &dyn Comm, mut sums: Vec<f64>, rows: usize) -> (Vec<f64>, usize) {
    if comm.size() == 1 {
        return (sums, rows);
    }
    sums.push(rows as f64);
    comm.all_reduce_sum(&mut sums);
    let rows = sums.pop().unwrap() as usize;
    (sums, rows)
}

/// Training mode: normalise with the batch statistics, over all ranks' rows. `beta` is None
/// for BN without centring; `skip` (a residual block's sum) is added and `relu` applied after.
///
/// The variance is not E[x²]−E[x]² (unstable): each chunk of rows gives its sum s and its
/// squared deviations from its own mean m (a second pass over the chunk while it is in cache),
/// and Σ(x − μ)² over the chunk is those deviations + 2(m − μ)(s − n·m) + n·(m − μ)². So x is
/// read from memory once for the statistics, not twice.
#[allow(clippy::too_many_arguments)]
pub fn forward_train<T: Real>(
    x: &[T],
    c: usize,
    gamma: &[T],
    beta: Option<&[T]>,
    eps: f64,
    skip: Option<&[T]>,
    relu: bool,
    comm: &dyn Comm,
    y: &mut [T],
) -> BnStats {
    let local = x.len() / c;
    let chunks = chunk_moments(x, c);
    let mut sums = vec![0.0f64; c];
    for (chunk_sums, ..) in &chunks {
        for (s, &v) in sums.iter_mut().zip(chunk_sums) {
            *s += v;
        }
    }
    let (sums, rows) = over_ranks(comm, sums, local);
    let mean: Vec<f64> = sums.iter().map(|s| s / rows as f64).collect();
    let mut sq = vec![0.0f64; c];
    for (chunk_sums, deviations, chunk_mean, n) in &chunks {
        let n = *n as f64;
        for i in 0..c {
            let d = chunk_mean[i] - mean[i];
            sq[i] += deviations[i] + 2.0 * d * (chunk_sums[i] - n * chunk_mean[i]) + n * d * d;
        }
    }
    let (sq, _) = over_ranks(comm, sq, local);
    let var: Vec<f64> = sq.iter().map(|s| s / rows as f64).collect();
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let stats = BnStats {
        mean,
        var,
        invstd,
        rows,
    };
    affine(x, c, &stats.mean, &stats.invstd, gamma, beta, skip, relu, y);
    stats
}

/// Each chunk of `CHUNK_ROWS` rows of x ([rows, C]): per channel, its sum, its squared
/// deviations from its mean and that mean (as T holds it); and its row count.
type Moments = (Vec<f64>, Vec<f64>, Vec<f64>, usize);

fn chunk_moments<T: Real>(x: &[T], c: usize) -> Vec<Moments> {
    x.par_chunks(c * CHUNK_ROWS)
        .map(|chunk| {
            let n = chunk.len() / c;
            let mut sum = vec![T::zero(); c];
            for row in chunk.chunks_exact(c) {
                for (a, &v) in sum.iter_mut().zip(row) {
                    *a += v;
                }
            }
            let mean: Vec<T> = sum
                .iter()
                .map(|&s| T::from_f64(s.to_f64() / n as f64))
                .collect();
            let mut deviations = vec![T::zero(); c];
            for row in chunk.chunks_exact(c) {
                for ((a, &v), &m) in deviations.iter_mut().zip(row).zip(&mean) {
                    *a += (v - m) * (v - m);
                }
            }
            let f64s = |v: Vec<T>| v.iter().map(|&v| v.to_f64()).collect();
            (f64s(sum), f64s(deviations), f64s(mean), n)
        })
        .collect()
}

/// Inference mode: normalise with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval<T: Real>(
    x: &[T],
    c: usize,
    gamma: &[T],
    beta: Option<&[T]>,
    running_mean: &[T],
    running_var: &[T],
    eps: f64,
    skip: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    let mean: Vec<f64> = running_mean.iter().map(|&m| m.to_f64()).collect();
    let invstd: Vec<f64> = running_var
        .iter()
        .map(|&v| 1.0 / (v.to_f64() + eps).sqrt())
        .collect();
    affine(x, c, &mean, &invstd, gamma, beta, skip, relu, y);
}

/// y = (x − mean)·invstd·γ + β, folded into one scale and shift per channel, then + skip and
/// ReLU, each block of rows finished while it is in cache.
#[allow(clippy::too_many_arguments)]
fn affine<T: Real>(
    x: &[T],
    c: usize,
    mean: &[f64],
    invstd: &[f64],
    gamma: &[T],
    beta: Option<&[T]>,
    skip: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    let scale: Vec<T> = (0..c)
        .map(|i| T::from_f64(gamma[i].to_f64() * invstd[i]))
        .collect();
    let shift: Vec<T> = (0..c)
        .map(|i| {
            let b = beta.map_or(0.0, |b| b[i].to_f64());
            T::from_f64(b - mean[i] * gamma[i].to_f64() * invstd[i])
        })
        .collect();
    let block = c * CHUNK_ROWS;
    y.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .enumerate()
        .for_each(|(i, (yc, xc))| {
            for (yr, xr) in yc.chunks_mut(c).zip(xc.chunks(c)) {
                for ((y, &x), (&a, &b)) in yr.iter_mut().zip(xr).zip(scale.iter().zip(&shift)) {
                    *y = x * a + b;
                }
            }
            if let Some(skip) = skip {
                for (y, &s) in yc.iter_mut().zip(&skip[i * block..]) {
                    *y += s;
                }
            }
            if relu {
                for y in yc.iter_mut() {
                    *y = y.max(T::zero());
                }
            }
        });
}

/// Moves running statistics toward the batch's: r ← m·r + (1−m)·batch (TF convention,
/// m = 0.9), with the unbiased variance as TF and PyTorch do.
pub fn update_running<T: Real>(
    stats: &BnStats,
    momentum: f64,
    running_mean: &mut [T],
    running_var: &mut [T],
) {
    let rows = stats.rows as f64;
    let unbias = if rows > 1.0 { rows / (rows - 1.0) } else { 1.0 };
    for i in 0..running_mean.len() {
        running_mean[i] =
            T::from_f64(momentum * running_mean[i].to_f64() + (1.0 - momentum) * stats.mean[i]);
        running_var[i] = T::from_f64(
            momentum * running_var[i].to_f64() + (1.0 - momentum) * stats.var[i] * unbias,
        );
    }
}

/// Backward of training-mode BN. With x̂ = (x − μ)·invstd:
/// dγ = Σ dy·x̂, dβ = Σ dy, dx = γ·invstd/M · (M·dy − dβ − x̂·dγ),
/// computed per element as dx = a·dy + b·(x − μ) with per-channel a and b. Over ranks, dx
/// uses dγ and dβ summed over all of them (M the rows of all); the returned dγ and dβ are this
/// rank's own sums, which the gradient average over the ranks completes.
///
/// With a fused ReLU, `relu` holds its output y and a buffer: the gradient reaching BN is dy
/// where y > 0, which the pass taking the sums writes there (a residual block's sum needs it
/// too) and the pass computing dx reads, so no separate ReLU pass reads and writes it again.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    relu: Option<(&[T], &mut [T])>,
    c: usize,
    gamma: &[T],
    stats: &BnStats,
    comm: &dyn Comm,
    dx: &mut [T],
) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let mean: Vec<T> = stats.mean.iter().map(|&m| T::from_f64(m)).collect();
    // Σ dy and Σ dy·(x − μ) over a chunk of rows: [dβ | dγ/invstd].
    let chunk_sums = |xc: &[T], gc: &[T]| {
        let mut acc = vec![T::zero(); 2 * c];
        let (sum_g, sum_gx) = acc.split_at_mut(c);
        for (xr, gr) in xc.chunks(c).zip(gc.chunks(c)) {
            for (((a, b), &g), (&v, &m)) in sum_g
                .iter_mut()
                .zip(sum_gx.iter_mut())
                .zip(gr)
                .zip(xr.iter().zip(&mean))
            {
                *a += g;
                *b += g * (v - m);
            }
        }
        acc
    };
    let block = c * CHUNK_ROWS;
    let (partials, dy): (Vec<Vec<T>>, &[T]) = match relu {
        None => (
            x.par_chunks(block)
                .zip(dy.par_chunks(block))
                .map(|(xc, gc)| chunk_sums(xc, gc))
                .collect(),
            dy,
        ),
        Some((y, gated)) => {
            let partials = gated
                .par_chunks_mut(block)
                .zip(y.par_chunks(block).zip(dy.par_chunks(block)))
                .zip(x.par_chunks(block))
                .map(|((gc, (yc, dyc)), xc)| {
                    for ((g, &y), &d) in gc.iter_mut().zip(yc).zip(dyc) {
                        *g = if y > T::zero() { d } else { T::zero() };
                    }
                    chunk_sums(xc, gc)
                })
                .collect();
            (partials, &*gated)
        }
    };
    let sums = combine(partials, 2 * c);
    let (dbeta, sum_gx) = sums.split_at(c);
    let dbeta = dbeta.to_vec();
    let dgamma: Vec<f64> = sum_gx
        .iter()
        .zip(&stats.invstd)
        .map(|(s, is)| s * is)
        .collect();
    let (all, _) = over_ranks(comm, [dgamma.clone(), dbeta.clone()].concat(), rows);
    let (dgamma_all, dbeta_all) = all.split_at(c);
    let m = stats.rows as f64;
    let (mut a, mut b, mut shift) = (vec![T::zero(); c], vec![T::zero(); c], vec![T::zero(); c]);
    for i in 0..c {
        let k = gamma[i].to_f64() * stats.invstd[i] / m;
        a[i] = T::from_f64(k * m);
        b[i] = T::from_f64(-k * stats.invstd[i] * dgamma_all[i]);
        // a·dy + b·(x − μ) − k·dβ, with the constant folded: b·x + (−b·μ − k·dβ).
        shift[i] = T::from_f64(-b[i].to_f64() * stats.mean[i] - k * dbeta_all[i]);
    }
    dx.par_chunks_mut(c * CHUNK_ROWS)
        .zip(
            x.par_chunks(c * CHUNK_ROWS)
                .zip(dy.par_chunks(c * CHUNK_ROWS)),
        )
        .for_each(|(dxc, (xc, dyc))| {
            for ((dxr, xr), gr) in dxc.chunks_mut(c).zip(xc.chunks(c)).zip(dyc.chunks(c)) {
                for ((d, (&x, &g)), ((&a, &b), &s)) in dxr
                    .iter_mut()
                    .zip(xr.iter().zip(gr))
                    .zip(a.iter().zip(&b).zip(&shift))
                {
                    *d = a * g + b * x + s;
                }
            }
        });
    (dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Solo;
    use crate::rng::Rng;

    /// The one-read statistics against a direct two-pass computation in f64, on rows that are
    /// not a whole number of chunks and values far from zero (where E[x²]−E[x]² would lose
    /// every digit in f32).
    #[test]
    fn statistics_match_a_direct_two_pass_computation() {
        let (rows, c) = (3 * CHUNK_ROWS + 37, 5);
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..rows * c)
            .map(|i| 1000.0 * (i % c) as f32 + rng.normal() as f32)
            .collect();
        let (gamma, mut y) = (vec![1.0f32; c], vec![0.0f32; rows * c]);
        let stats = forward_train(&x, c, &gamma, None, EPS, None, false, &Solo, &mut y);
        for i in 0..c {
            let column = x.iter().skip(i).step_by(c).map(|&v| v as f64);
            let mean = column.clone().sum::<f64>() / rows as f64;
            let var = column.map(|v| (v - mean) * (v - mean)).sum::<f64>() / rows as f64;
            assert!(
                (stats.mean[i] - mean).abs() < 1e-6 * mean.abs().max(1.0),
                "mean {i}"
            );
            assert!(
                (stats.var[i] - var).abs() < 1e-4 * var,
                "var {i}: {} vs {var}",
                stats.var[i]
            );
        }
    }

    /// The backward with a fused ReLU gives, bit for bit, the backward of dy masked where the
    /// ReLU's output is positive, and writes that masked dy.
    #[test]
    fn fused_relu_backward_is_the_masked_backward() {
        let (rows, c) = (2 * CHUNK_ROWS + 19, 7);
        let mut rng = Rng::new(5);
        let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        let (x, dy, gamma, beta) = (normal(rows * c), normal(rows * c), normal(c), normal(c));
        let mut y = vec![0.0f32; rows * c];
        let stats = forward_train(&x, c, &gamma, Some(&beta), EPS, None, true, &Solo, &mut y);
        assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0));
        let masked: Vec<f32> = dy
            .iter()
            .zip(&y)
            .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
            .collect();
        let mut want = vec![0.0f32; rows * c];
        let sums_want = backward(&x, &masked, None, c, &gamma, &stats, &Solo, &mut want);
        let (mut got, mut gated) = (vec![0.0f32; rows * c], vec![f32::NAN; rows * c]);
        let relu = Some((y.as_slice(), gated.as_mut_slice()));
        let sums_got = backward(&x, &dy, relu, c, &gamma, &stats, &Solo, &mut got);
        assert_eq!(gated, masked);
        assert_eq!(got, want);
        assert_eq!(sums_got, sums_want);
    }
}
