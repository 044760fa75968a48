//! Evaluation: top-1 accuracy of a classifier, and the kNN monitor (cosine similarity,
//! k neighbours, votes weighted by exp(sim / 0.1)) for encoders without one.

use crate::autograd::Graph;
use crate::backend;
use crate::data::augment::Normalize;
use crate::data::loader::{Loader, Pixels, Views};
use crate::data::Dataset;
use crate::device::cpu::gemm::gemm;
use crate::nn::model::Model;
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

const EVAL_BATCH: usize = 500;
const KNN_TEMPERATURE: f32 = 0.1;

/// Runs the model in inference mode over `indices` with its activations in `precision` (a
/// run's `--precision`); returns (features, outputs) row-major.
pub fn forward_all(
    model: &mut Model,
    ds: &Arc<Dataset>,
    indices: &[usize],
    norm: &Normalize,
    precision: DType,
) -> (Vec<f32>, Vec<f32>) {
    let loader = Loader::new(
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
    for batch in loader {
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
    (features, outputs)
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

/// Fraction of `indices` whose arg-max logit is the label.
pub fn top1(
    model: &mut Model,
    ds: &Arc<Dataset>,
    indices: &[usize],
    norm: &Normalize,
    precision: DType,
) -> f64 {
    let classes = model.spec.num_classes.expect("top-1 needs a classifier");
    let (_, logits) = forward_all(model, ds, indices, norm, precision);
    let correct = indices
        .iter()
        .zip(logits.chunks(classes))
        .filter(|(&i, row)| argmax(row) as u32 == ds.labels[i])
        .count();
    correct as f64 / indices.len() as f64
}

fn l2_normalize_rows(x: &mut [f32], d: usize) {
    for row in x.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// kNN top-1 of the encoder's features: the bank is `bank` of the train set, the queries
/// `queries` of the test set.
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
) -> f64 {
    // Nothing to vote with or nothing to classify (an unlabelled folder, no test split).
    if bank.is_empty() || queries.is_empty() {
        return f64::NAN;
    }
    let d = model.spec.arch.feature_dim();
    let (mut bank_f, _) = forward_all(model, train, bank, norm, precision);
    let (mut query_f, _) = forward_all(model, test, queries, norm, precision);
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
    correct as f64 / queries.len() as f64
}
