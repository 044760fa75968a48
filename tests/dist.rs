//! Data parallelism (`dist`) against one process on the whole batch, on 2 and 3 MPI ranks of
//! the cpu device: global batch norm forward and backward, NT-Xent over every rank's views, and
//! three pretraining steps of a ResNet with its projection head. Each test starts `mpirun` on
//! this test binary, filtered to itself; every rank computes the one-process result on the
//! whole batch too and compares its shard with it. Needs `--features mpi` and an MPI (CI
//! installs OpenMPI).
#![cfg(feature = "mpi")]

mod common;

use simclr::autograd::Graph;
use simclr::backend;
use simclr::dist::{self, mpi::Mpi, Comm, Solo};
use simclr::nn::model::{Model, ModelSpec};
use simclr::nn::resnet::Arch;
use simclr::ops;
use simclr::optim::{Optimizer, OptimizerKind};
use simclr::tensor::Tensor;
use std::process::Command;
use std::sync::Arc;

/// Set in the ranks' environment: run the test's body, not mpirun.
const RANK_VAR: &str = "SIMCLR_TEST_RANK";

/// Runs `body` with MPI's world on `worlds` ranks in turn (each an `mpirun` of this binary,
/// filtered to `test`), or, inside such a rank, once.
fn on_ranks(test: &str, worlds: &[usize], body: impl Fn(Arc<dyn Comm>)) {
    if std::env::var(RANK_VAR).is_ok() {
        body(Arc::new(Mpi::new().unwrap()));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for w in worlds {
        let out = Command::new("mpirun")
            .args(["-n", &w.to_string(), "--oversubscribe"])
            .arg(&exe)
            .args([test, "--exact", "--test-threads", "1", "--nocapture"])
            .env(RANK_VAR, "1")
            // CI runs as root in a container: allow it, and copy through shared memory
            // rather than by ptrace, which containers forbid.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .output()
            .unwrap_or_else(|e| panic!("mpirun: {e} (install OpenMPI)"));
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{test} on {w} ranks:\n{text}");
    }
}

/// Rows [first, first + count) of a row-major [_, width] matrix.
fn rows(m: &[f32], width: usize, first: usize, count: usize) -> &[f32] {
    &m[first * width..(first + count) * width]
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance * w.abs().max(1.0),
            "{what}[{i}]: {g} on the ranks, {w} in one process"
        );
    }
}

#[test]
fn global_batch_norm_matches_one_process() {
    on_ranks("global_batch_norm_matches_one_process", &[2, 3], |comm| {
        let (w, r) = (comm.size(), comm.rank());
        let (shard, c) = (7, 5);
        let all = shard * w;
        let x = common::random(all * c, 1);
        let dy = common::random(all * c, 2);
        let gamma = Tensor::from_vec(&[c], common::random(c, 3));
        let beta = Tensor::from_vec(&[c], common::random(c, 4));
        // (y, dx, dγ, dβ, running mean, running var) of `x` rows over the ranks of `comm`.
        let run = |x: Vec<f32>, dy: Vec<f32>, comm: &dyn Comm| {
            let n = x.len() / c;
            let x = Tensor::from_vec(&[n, c], x);
            let be = backend::of(&x);
            let (mut rm, mut rv) = (
                Tensor::zeros(&[c], x.dtype()),
                Tensor::full(&[c], x.dtype(), 1.0),
            );
            let (y, saved) =
                be.batchnorm_train(&x, &gamma, Some(&beta), None, false, &mut rm, &mut rv, comm);
            let dy = Tensor::from_vec(&[n, c], dy);
            let g = be.batchnorm_backward(&x, None, &dy, &gamma, &saved, true, false, comm);
            [y, g.dx, g.dgamma, g.dbeta.unwrap(), rm, rv].map(|t| t.to_f32_vec())
        };
        let want = run(x.clone(), dy.clone(), &Solo);
        let mine = |m: &[f32]| rows(m, c, r * shard, shard).to_vec();
        let got = run(mine(&x), mine(&dy), &*comm);
        assert_close("y", &got[0], &mine(&want[0]), 1e-5);
        assert_close("dx", &got[1], &mine(&want[1]), 1e-5);
        // The ranks' own dγ and dβ add up to the batch's.
        for (k, name) in [(2, "dgamma"), (3, "dbeta")] {
            let mut sum: Vec<f64> = got[k].iter().map(|&v| v as f64).collect();
            comm.all_reduce_sum(&mut sum);
            let sum: Vec<f32> = sum.iter().map(|&v| v as f32).collect();
            assert_close(name, &sum, &want[k], 1e-5);
        }
        assert_close("running mean", &got[4], &want[4], 1e-6);
        assert_close("running var", &got[5], &want[5], 1e-6);
    });
}

/// Rank r's rows of a two-view batch of `images` images in the one-process layout (all first
/// views, then all second views): the first and second views of its `images / W` images.
fn shard_views(z: &[f32], d: usize, images: usize, comm: &dyn Comm) -> Vec<f32> {
    let n = images / comm.size();
    let first = comm.rank() * n;
    [rows(z, d, first, n), rows(z, d, images + first, n)].concat()
}

#[test]
fn gathered_ntxent_matches_one_process() {
    on_ranks("gathered_ntxent_matches_one_process", &[2, 3], |comm| {
        let (w, d, per_rank) = (comm.size(), 8, 3);
        let images = per_rank * w;
        let mut z = common::random(2 * images * d, 5);
        for row in z.chunks_mut(d) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        let full = Tensor::from_vec(&[2 * images, d], z.clone());
        let (loss, dz) = backend::of(&full).ntxent(&full, 0.1, &Solo);
        let mine = shard_views(&z, d, images, &*comm);
        let local = Tensor::from_vec(&[2 * per_rank, d], mine);
        let (my_loss, my_dz) = backend::of(&local).ntxent(&local, 0.1, &*comm);
        // The batch's loss is the mean of the ranks' (each the mean over its rows).
        let mut total = vec![my_loss.item()];
        comm.all_reduce_sum(&mut total);
        let (got, want) = (total[0] / w as f64, loss.item());
        assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} {want}");
        // Each rank's gradient is that of the sum of the ranks' losses: W times the batch's.
        let want: Vec<f32> = shard_views(&dz.to_f32_vec(), d, images, &*comm)
            .iter()
            .map(|g| g * w as f32)
            .collect();
        assert_close("dz", &my_dz.to_f32_vec(), &want, 1e-4);
    });
}

#[test]
fn three_pretraining_steps_match_one_process() {
    on_ranks(
        "three_pretraining_steps_match_one_process",
        &[2, 3],
        |comm| {
            let (w, per_rank, size) = (comm.size(), 2, 8);
            let images = per_rank * w;
            let spec = ModelSpec {
                arch: Arch {
                    name: "resnet8".into(),
                    width: 4,
                    in_channels: 1,
                    image_size: size,
                    sk: false,
                },
                head_layers: 3,
                proj_dim: 8,
                num_classes: None,
            };
            // Three steps of SimCLR pretraining on `x` (two views of some images) over `comm`.
            let train = |batches: &[Vec<f32>], comm: Arc<dyn Comm>| {
                let mut model = Model::new(&spec, 3).unwrap();
                let mut opt = Optimizer::new(OptimizerKind::Lars, 1e-4, &model.store);
                for x in batches {
                    let n = x.len() / (size * size);
                    let mut g = Graph::new(true);
                    g.comm = comm.clone();
                    let input = g.input(Tensor::from_vec(&[n, size, size, 1], x.clone()));
                    let (_, projection) = model.forward(&mut g, input, true);
                    let z = ops::normalize::l2_normalize(&mut g, projection);
                    let loss = ops::ntxent::ntxent(&mut g, z, 0.1);
                    g.backward(loss);
                    let mut grads = g.param_grads();
                    dist::average_gradients(&*comm, &mut grads);
                    opt.step(&mut model.store, &grads, 0.5);
                }
                model
                    .store
                    .params
                    .iter()
                    .map(|p| p.value.to_f32_vec())
                    .collect::<Vec<_>>()
            };
            let pixels = size * size;
            let batches: Vec<Vec<f32>> = (0..3)
                .map(|s| common::random(2 * images * pixels, 10 + s))
                .collect();
            let want = train(&batches, dist::solo());
            let mine: Vec<Vec<f32>> = batches
                .iter()
                .map(|x| shard_views(x, pixels, images, &*comm))
                .collect();
            let got = train(&mine, comm.clone());
            // The conv weights agree to 1e-7 (LARS keeps their steps small); BN's γ and β take
            // plain steps of 0.5 times gradients that are sums with cancellation, where f32
            // summed in another order differs by a few 1e-4 after three steps (measured: at
            // most 3.6e-4). A shard-local BN or NT-Xent is off by far more.
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("parameter {i}"), g, w, 2e-3);
            }
        },
    );
}
