//! Data parallelism (`dist`) against one process on the whole batch, on 2 and 3 MPI ranks of
//! the cpu device: global batch norm forward and backward (also on the emulated GPU, its
//! partials gathered through the host), NT-Xent over every rank's views,
//! three pretraining steps of a ResNet with its projection head, and `simclr pretrain` itself.
//! The op tests start `mpirun` on this test binary, filtered to the test; every rank computes
//! the one-process result on the whole batch too and compares its shard with it. Needs
//! `--features mpi` and an MPI (CI installs OpenMPI).
#![cfg(feature = "mpi")]

mod common;

use simclr::autograd::Graph;
use simclr::backend;
use simclr::device::cuda::{Gpu, Schedule};
use simclr::device::Device;
use simclr::dist::{self, mpi::Mpi, Comm, Solo};
use simclr::nn::model::{Model, ModelSpec};
use simclr::nn::resnet::Arch;
use simclr::ops;
use simclr::optim::{Optimizer, OptimizerKind};
use simclr::tensor::Tensor;
use simclr::train::checkpoint;
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
        let args = [test, "--exact", "--test-threads", "1", "--nocapture"];
        mpirun(*w, exe.to_str().unwrap(), &args, &[(RANK_VAR, "1")]);
    }
}

/// Runs `program args` on `w` ranks, and fails with their output if it fails.
fn mpirun(w: usize, program: &str, args: &[&str], env: &[(&str, &str)]) {
    let (ok, text) = try_mpirun(w, program, args, env);
    assert!(ok, "{program} {args:?} on {w} ranks:\n{text}");
}

/// Runs `program args` on `w` ranks: whether all succeeded, and their output.
fn try_mpirun(w: usize, program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("mpirun")
        .args(["-n", &w.to_string(), "--oversubscribe", program])
        .args(args)
        .envs(env.iter().copied())
        // CI runs as root in a container: allow it, and copy through shared memory rather
        // than by ptrace, which containers forbid.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .unwrap_or_else(|e| panic!("mpirun: {e} (install OpenMPI)"));
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.into_owned())
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
        // (y, dx, dγ, dβ, running mean, running var) of `x` rows on `device` over the ranks
        // of `comm`.
        let run = |x: Vec<f32>, dy: Vec<f32>, device: &Device, comm: &dyn Comm| {
            let n = x.len() / c;
            let on = |t: Tensor| t.to_device(device);
            let (x, dy) = (
                on(Tensor::from_vec(&[n, c], x)),
                on(Tensor::from_vec(&[n, c], dy)),
            );
            let (gamma, beta) = (on(gamma.clone()), on(beta.clone()));
            let be = backend::of(&x);
            let (mut rm, mut rv) = (
                on(Tensor::zeros(&[c], x.dtype())),
                on(Tensor::full(&[c], x.dtype(), 1.0)),
            );
            let (y, saved) =
                be.batchnorm_train(&x, &gamma, Some(&beta), None, false, &mut rm, &mut rv, comm);
            let g = be.batchnorm_backward(&x, None, &dy, &gamma, &saved, true, false, comm);
            [y, g.dx, g.dgamma, g.dbeta.unwrap(), rm, rv].map(|t| t.to_f32_vec())
        };
        let want = run(x.clone(), dy.clone(), &Device::Cpu, &Solo);
        let mine = |m: &[f32]| rows(m, c, r * shard, shard).to_vec();
        // The cpu's sums, and the emulated GPU's partials gathered through the host.
        let emu = Device::Gpu(Gpu::emu(Schedule::Rr));
        for (device, tol) in [(Device::Cpu, 1e-5), (emu, 1e-4)] {
            let got = run(mine(&x), mine(&dy), &device, &*comm);
            let what = |name: &str| format!("{name} on {}", device.name());
            assert_close(&what("y"), &got[0], &mine(&want[0]), tol);
            assert_close(&what("dx"), &got[1], &mine(&want[1]), tol);
            // The ranks' own dγ and dβ add up to the batch's.
            for (k, name) in [(2, "dgamma"), (3, "dbeta")] {
                let mut sum: Vec<f64> = got[k].iter().map(|&v| v as f64).collect();
                comm.all_reduce_sum(&mut sum);
                let sum: Vec<f32> = sum.iter().map(|&v| v as f32).collect();
                assert_close(&what(name), &sum, &want[k], tol);
            }
            assert_close(&what("running mean"), &got[4], &want[4], tol);
            assert_close(&what("running var"), &got[5], &want[5], tol);
        }
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

/// The step losses of a run's metrics.jsonl.
fn step_losses(out: &std::path::Path) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| r["step"].is_u64().then(|| r["loss"].as_f64().unwrap()))
        .collect()
}

/// `simclr pretrain` on 2 and 3 cpu ranks logs the losses of one process on the same global
/// batches and ends with its parameters; rank 0 alone writes the run's files.
#[test]
fn pretrain_on_ranks_matches_one_process() {
    let dir = std::env::temp_dir().join(format!("simclr-dist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let run = |name: &str| {
        let out = dir.join(name).to_str().unwrap().to_string();
        let args = [
            "pretrain",
            "--data",
            data,
            "--out",
            &out,
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--train-images",
            "48",
            "--test-images",
            "20",
            "--batch-size",
            "12",
            "--epochs",
            "1",
        ];
        let args = args.map(String::from);
        (out, args)
    };
    let bin = env!("CARGO_BIN_EXE_simclr");
    let (one, args) = run("one");
    let done = Command::new(bin).args(&args).output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let want_losses = step_losses(one.as_ref());
    let (want, _) = checkpoint::load(&std::path::Path::new(&one).join(checkpoint::FILE)).unwrap();
    for w in [2, 3] {
        let (out, args) = run(&format!("ranks{w}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mpirun(w, bin, &args, &[]);
        let losses = step_losses(out.as_ref());
        assert_eq!(losses.len(), want_losses.len());
        for (i, (g, w)) in losses.iter().zip(&want_losses).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs(),
                "step {i}: {g} on ranks, {w} in one"
            );
        }
        let (got, meta) =
            checkpoint::load(&std::path::Path::new(&out).join(checkpoint::FILE)).unwrap();
        assert_eq!(meta.ranks, w);
        for (i, (g, p)) in got.store.params.iter().zip(&want.store.params).enumerate() {
            assert_close(
                &format!("{w} ranks: parameter {i}"),
                &g.value.to_f32_vec(),
                &p.value.to_f32_vec(),
                2e-3,
            );
        }
    }
    // What cannot run on ranks says so in one line on each: a resume on another number of
    // ranks, a batch that does not split, a command other than pretrain.
    let refused = |w: usize, args: &[&str], needle: &str| {
        let (ok, text) = try_mpirun(w, bin, args, &[]);
        // The first rank to fail names itself (mpirun then ends the others).
        let named = text.contains("error: rank ");
        assert!(
            !ok && named && text.contains(needle),
            "{args:?} on {w} ranks:\n{text}"
        );
    };
    let (_, args) = run("ranks2");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--resume");
    refused(3, &args, "trained on 2 rank(s), this run has 3");
    let (_, args) = run("odd");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let at = args.iter().position(|&a| a == "12").unwrap();
    args[at] = "10";
    refused(3, &args, "does not split over the 3 ranks");
    args[0] = "finetune";
    refused(2, &args, "runs in one process");
    let _ = std::fs::remove_dir_all(&dir);
}
