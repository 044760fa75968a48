//! Evaluation: top-1 accuracy of a classifier, and the kNN monitor (cosine similarity,
//! k neighbours, votes weighted by exp(sim / 0.1)) for encoders without one.
//!
//! Under W ranks (`dist`) each rank runs the model on its contiguous 1/W of the images and the
//! ranks combine what crosses them: the counts of correct answers are summed, and the kNN bank's
//! features are gathered (every rank's queries vote against the whole bank). Inference needs
//! nothing else from the other ranks (their parameters and BN statistics are the same), so this
//! is the simplest design that gives every rank one process's number, in 1/W of the time.

use crate::autograd::Graph;
use crate::backend;
use crate::data::augment::Normalize;
use crate::data::loader::{Loader, Pixels, Views};
use crate::data::Dataset;
use crate::device::cpu::gemm::gemm;
use crate::dist::Comm;
use crate::error::Result;
use crate::nn::model::Model;
use crate::tensor::{DType, Tensor};
use crate::train::Context;
use std::ops::Range;
use std::sync::Arc;

const EVAL_BATCH: usize = 500;
const KNN_TEMPERATURE: f32 = 0.1;

/// Runs the model in inference mode over `indices` with its activations in `precision` (a
/// run's `--precision`); returns (features, outputs) row-major, or why the images could not
/// all be read (a streamed dataset with too many bad files).
pub fn forward_all(
    model: &mut Model,
    ds: &Arc<Dataset>,
    indices: &[usize],
    norm: &Normalize,
    precision: DType,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut loader = Loader::new(
        ds.clone(),
        indices.to_vec(),
        EVAL_BATCH,
        false,
        Views::Center,
        norm.clone(),
        ds.h,
        0,
        0,
        2,
        false,
    );
    let (mut features, mut outputs) = (Vec::new(), Vec::new());
    for batch in &mut loader {
        let mut g = Graph::new(false);
        let Pixels::Ready(x) = batch.pixels else {
            unreachable!("evaluation batches are made on the cpu")
        };
        let x = Tensor::from_vec(&[batch.rows, ds.h, ds.w, ds.c], x);
        let x = x.to_device(&model.device());
        let x = g.input(backend::of(&x).cast(&x, precision));
        let (f, out) = model.forward(&mut g, x, false);
        features.extend(g.value(f).to_f32_vec());
        outputs.extend(g.value(out).to_f32_vec());
    }
    loader.check()?;
    Ok((features, outputs))
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Rank r's contiguous share of `n` items: [r·n/W, (r+1)·n/W).
fn share(n: usize, comm: &dyn Comm) -> Range<usize> {
    let (w, r) = (comm.size(), comm.rank());
    r * n / w..(r + 1) * n / w
}

/// The rows of every rank's share (`mine`, this rank's, `width` values a row), in order: the
/// `n` rows one process computes. Shares differ by a row at most; each is padded to the
/// largest for the gather.
fn gather_rows(comm: &dyn Comm, mut mine: Vec<f32>, n: usize, width: usize) -> Vec<f32> {
    if comm.size() == 1 {
        return mine;
    }
    let most = n.div_ceil(comm.size()) * width;
    mine.resize(most, 0.0);
    let all = comm.all_gather(&mine);
    (0..comm.size())
        .flat_map(|r| {
            let rows = (r + 1) * n / comm.size() - r * n / comm.size();
            all[r * most..r * most + rows * width].iter().copied()
        })
        .collect()
}

/// `count` summed over the ranks.
fn total(comm: &dyn Comm, count: usize) -> f64 {
    let mut sum = [count as f64];
    comm.all_reduce_sum(&mut sum);
    sum[0]
}

/// Fraction of `indices` whose arg-max logit is the label, each rank of `comm` classifying its
/// share of them.
pub fn top1(
    model: &mut Model,
    ds: &Arc<Dataset>,
    indices: &[usize],
    norm: &Normalize,
    precision: DType,
    comm: &dyn Comm,
) -> Result<f64> {
    let classes = model.spec.num_classes.expect("top-1 needs a classifier");
    let mine = &indices[share(indices.len(), comm)];
    let (_, logits) = forward_all(model, ds, mine, norm, precision)?;
    let correct = mine
        .iter()
        .zip(logits.chunks(classes))
        .filter(|(&i, row)| argmax(row) as u32 == ds.labels[i])
        .count();
    Ok(total(comm, correct) / indices.len() as f64)
}

fn l2_normalize_rows(x: &mut [f32], d: usize) {
    for row in x.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// kNN top-1 of the encoder's features: the bank is `bank` of the train set, the queries
/// `queries` of the test set. Each rank of `comm` computes its share of the bank's features
/// (gathered) and classifies its share of the queries.
#[allow(clippy::too_many_arguments)]
pub fn knn_top1(
    model: &mut Model,
    train: &Arc<Dataset>,
    bank: &[usize],
    test: &Arc<Dataset>,
    queries: &[usize],
    norm: &Normalize,
    k: usize,
    precision: DType,
    comm: &dyn Comm,
) -> Result<f64> {
    // Nothing to vote with or nothing to classify (an unlabelled folder, no test split).
    if bank.is_empty() || queries.is_empty() {
        return Ok(f64::NAN);
    }
    let d = model.spec.arch.feature_dim();
    let all_queries = queries.len();
    let queries = &queries[share(all_queries, comm)];
    let (bank_f, _) = forward_all(
        model,
        train,
        &bank[share(bank.len(), comm)],
        norm,
        precision,
    )?;
    let mut bank_f = gather_rows(comm, bank_f, bank.len(), d);
    let (mut query_f, _) = forward_all(model, test, queries, norm, precision)?;
    l2_normalize_rows(&mut bank_f, d);
    l2_normalize_rows(&mut query_f, d);
    let k = k.min(bank.len());
    let classes = train.num_classes;
    let mut correct = 0;
    const CHUNK: usize = 256;
    for (c, qchunk) in query_f.chunks(CHUNK * d).enumerate() {
        let rows = qchunk.len() / d;
        let mut sim = vec![0f32; rows * bank.len()];
        gemm(
            rows,
            bank.len(),
            d,
            qchunk,
            d,
            1,
            &bank_f,
            1,
            d,
            &mut sim,
            bank.len(),
            false,
        );
        for (r, srow) in sim.chunks(bank.len()).enumerate() {
            let mut order: Vec<usize> = (0..bank.len()).collect();
            order.select_nth_unstable_by(k - 1, |&a, &b| srow[b].total_cmp(&srow[a]));
            let mut votes = vec![0f32; classes];
            for &j in &order[..k] {
                votes[train.labels[bank[j]] as usize] += (srow[j] / KNN_TEMPERATURE).exp();
            }
            if argmax(&votes) as u32 == test.labels[queries[c * CHUNK + r]] {
                correct += 1;
            }
        }
    }
    Ok(total(comm, correct) / all_queries as f64)
}

impl Context {
    /// The kNN monitor of `model`'s encoder on images standardised by `norm`: the run's bank,
    /// test images, k and precision, over its ranks.
    pub fn knn_top1(&self, model: &mut Model, norm: &Normalize) -> Result<f64> {
        let (bank, queries) = (&self.knn_bank, &self.test_indices);
        let (k, comm) = (self.cfg.knn_k, &*self.comm);
        knn_top1(
            model,
            &self.train,
            bank,
            &self.test,
            queries,
            norm,
            k,
            self.precision,
            comm,
        )
    }

    /// Top-1 of `model`'s classifier on the validation split standardised by `norm`, over
    /// its ranks.
    pub fn val_top1(&self, model: &mut Model, norm: &Normalize) -> Result<f64> {
        let (train, indices) = (&self.train, &self.val_indices);
        top1(model, train, indices, norm, self.precision, &*self.comm)
    }

    /// Top-1 of `model`'s classifier on the run's test images standardised by `norm`, over its
    /// ranks.
    pub fn test_top1(&self, model: &mut Model, norm: &Normalize) -> Result<f64> {
        let (test, indices) = (&self.test, &self.test_indices);
        top1(model, test, indices, norm, self.precision, &*self.comm)
    }
}
