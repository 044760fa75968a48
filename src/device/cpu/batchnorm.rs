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

/// Σ over rows of f(row, out) where `f` adds one row's contribution into `out` (C values).
fn channel_sums<T: Real>(rows: usize, c: usize, f: impl Fn(usize, &mut [T]) + Sync) -> Vec<f64> {
    let partials: Vec<Vec<T>> = (0..rows.div_ceil(CHUNK_ROWS))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![T::zero(); c];
            for row in chunk * CHUNK_ROWS..((chunk + 1) * CHUNK_ROWS).min(rows) {
                f(row, &mut acc);
            }
            acc
        })
        .collect();
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

/// Training mode: normalise with the batch statistics (two passes: mean, then variance,
/// which is stable where E[x²]−E[x]² is not), over all ranks' rows. `beta` is None for BN
/// without centring; `skip` (a residual block's sum) is added and `relu` applied after.
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
    let sums = channel_sums::<T>(local, c, |r, acc| {
        for (a, &v) in acc.iter_mut().zip(&x[r * c..(r + 1) * c]) {
            *a += v;
        }
    });
    let (sums, rows) = over_ranks(comm, sums, local);
    let mean: Vec<f64> = sums.iter().map(|s| s / rows as f64).collect();
    let mean_t: Vec<T> = mean.iter().map(|&m| T::from_f64(m)).collect();
    let sq = channel_sums::<T>(local, c, |r, acc| {
        for ((a, &v), &m) in acc.iter_mut().zip(&x[r * c..(r + 1) * c]).zip(&mean_t) {
            *a += (v - m) * (v - m);
        }
    });
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
pub fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    c: usize,
    gamma: &[T],
    stats: &BnStats,
    comm: &dyn Comm,
    dx: &mut [T],
) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let mean: Vec<T> = stats.mean.iter().map(|&m| T::from_f64(m)).collect();
    // Σ dy and Σ dy·(x − μ) in one pass: [dβ | dγ/invstd].
    let sums = channel_sums::<T>(rows, 2 * c, |r, acc| {
        let (sum_g, sum_gx) = acc.split_at_mut(c);
        let (xr, gr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
        for (((a, b), &g), (&v, &m)) in sum_g
            .iter_mut()
            .zip(sum_gx)
            .zip(gr)
            .zip(xr.iter().zip(&mean))
        {
            *a += g;
            *b += g * (v - m);
        }
    });
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

    /// The statistics against a direct two-pass computation in f64, on rows that are
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
}
