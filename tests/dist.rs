//! Data parallelism (`dist`) against one process on the whole batch, on 2 and 3 MPI ranks of
//! the cpu device: global batch norm forward and backward (also on the emulated GPU, its
//! partials gathered through the host), NT-Xent over every rank's views (also in the emulated
//! GPU's fused kernels), without and with a memory buffer of past rows,
//! three pretraining steps of a ResNet with its projection head (also with a memory buffer,
//! which every rank must hold alike), and the commands themselves:
//! `simclr pretrain`, `finetune`, `distill`, `eval` and `pipeline`.
//! The op tests start `mpirun` on this test binary, filtered to the test; every rank computes
//! the one-process result on the whole batch too and compares its shard with it. Needs
//! `--features mpi` and an MPI (CI installs OpenMPI).
#![cfg(feature = "mpi")]

mod common;

use simclr::autograd::Graph;
use simclr::backend;
use simclr::device::cuda::{Elem, Gpu, Schedule};
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
        simclr::dist::finished();
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
        let mine = shard_views(&z, d, images, &*comm);
        let (all_rows, my_rows) = (2 * images, 2 * per_rank);
        // A memory of 11 past rows, the same on every rank.
        let k = 11;
        let mut past = common::random(k * d, 6);
        for row in past.chunks_mut(d) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        // The cpu (rows gathered, column gradients reduce-scattered) and the emulated GPU's
        // fused kernels (rows and log-sum-exps gathered, through the host) in f32 and bf16, each
        // against itself in one process; bf16 gradients differ by their rounding.
        let emu = Gpu::emu(Schedule::Rr);
        let on_emu =
            |v: &[f32], n: usize, elem: Elem| Tensor::from_gpu(&[n, d], emu.upload_as(v, elem));
        let cases = [
            (
                "cpu",
                Tensor::from_vec(&[all_rows, d], z.clone()),
                Tensor::from_vec(&[my_rows, d], mine.clone()),
                Tensor::from_vec(&[k, d], past.clone()),
                1e-4,
            ),
            (
                "emu",
                on_emu(&z, all_rows, Elem::F32),
                on_emu(&mine, my_rows, Elem::F32),
                on_emu(&past, k, Elem::F32),
                1e-4,
            ),
            (
                "emu bf16",
                on_emu(&z, all_rows, Elem::Bf16),
                on_emu(&mine, my_rows, Elem::Bf16),
                on_emu(&past, k, Elem::Bf16),
                1e-2,
            ),
        ];
        for ((device, full, local, past, tolerance), with_memory) in
            (cases.iter()).flat_map(|c| [(c, false), (c, true)])
        {
            let memory = with_memory.then_some(past);
            let device = format!("{device}{}", memory.map_or("", |_| " with a memory"));
            let (loss, dz, _) = backend::of(full).ntxent(full, memory, 0.1, &Solo);
            let (my_loss, my_dz, candidates) =
                backend::of(local).ntxent(local, memory, 0.1, &*comm);
            // Every rank's candidates, the next memory's source, are the same: every rank's
            // rows, then the memory's.
            let candidates = candidates.to_f32_vec();
            let everyone = comm.all_gather(&candidates);
            for theirs in everyone.chunks(candidates.len()) {
                assert_eq!(theirs, candidates, "{device}: the ranks' candidates differ");
            }
            let past = memory.map_or(vec![], |m| m.to_f32_vec());
            assert_eq!(candidates[all_rows * d..], past[..], "{device}");
            // The batch's loss is the mean of the ranks' (each the mean over its rows).
            let mut total = vec![my_loss.item()];
            comm.all_reduce_sum(&mut total);
            let (got, want) = (total[0] / w as f64, loss.item());
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "loss on {device}: {got} on the ranks, {want} in one process"
            );
            // Each rank's gradient is that of the sum of the ranks' losses: W times the batch's.
            let want: Vec<f32> = shard_views(&dz.to_f32_vec(), d, images, &*comm)
                .iter()
                .map(|g| g * w as f32)
                .collect();
            let what = format!("dz on {device}");
            assert_close(&what, &my_dz.to_f32_vec(), &want, *tolerance);
        }
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
            // Three steps of SimCLR pretraining on `x` (two views of some images) over `comm`,
            // with a memory buffer of `memory_size` rows (0: none), filled through
            // `ntxent_with_keys` when `keys` (with the rows scored: the same memory, gathered
            // apart from them).
            let train = |batches: &[Vec<f32>], comm: Arc<dyn Comm>, (memory_size, keys)| {
                let mut model = Model::new(&spec, 3).unwrap();
                let mut opt = Optimizer::new(OptimizerKind::Lars, 1e-4, &model.store);
                let mut memory = ops::ntxent::Memory {
                    size: memory_size,
                    rows: None,
                };
                for x in batches {
                    let n = x.len() / (size * size);
                    let mut g = Graph::new(true);
                    g.comm = comm.clone();
                    let input = g.input(Tensor::from_vec(&[n, size, size, 1], x.clone()));
                    let (_, projection) = model.forward(&mut g, input, true);
                    let z = ops::normalize::l2_normalize(&mut g, projection);
                    let zk = g.value(z).clone();
                    let loss = match (memory_size, keys) {
                        (0, _) => ops::ntxent::ntxent(&mut g, z, 0.1),
                        (_, false) => ops::ntxent::ntxent_with_memory(&mut g, z, &mut memory, 0.1),
                        (_, true) => {
                            ops::ntxent::ntxent_with_keys(&mut g, z, &mut memory, &zk, 0.1)
                        }
                    };
                    // 4 KB buckets: a dozen collectives, each started as the backward
                    // finishes its gradients (the trainer's are 25 MB).
                    let grads = dist::backward(&mut g, loss, &*comm, 4096);
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
            let mine: Vec<Vec<f32>> = batches
                .iter()
                .map(|x| shard_views(x, pixels, images, &*comm))
                .collect();
            // Without a memory, and with one of two batches' views: the ranks hold its rows in
            // another order than one process (rank-major), the same rows all the same.
            for setting in [(0, false), (4 * images, false), (4 * images, true)] {
                let want = train(&batches, dist::solo(), setting);
                let got = train(&mine, comm.clone(), setting);
                // The conv weights agree to 1e-7 (LARS keeps their steps small); BN's γ and β
                // take plain steps of 0.5 times gradients that are sums with cancellation, where
                // f32 summed in another order differs by a few 1e-4 after three steps
                // (measured: at most 3.6e-4). A shard-local BN or NT-Xent is off by far more.
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let what = format!("parameter {i}, memory (rows, keys) {setting:?}");
                    assert_close(&what, g, w, 2e-3);
                }
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
    let run = |name: &str| {
        let out = dir.join(name);
        let args = tiny("pretrain", &out, &["--epochs", "1"]);
        (out.to_str().unwrap().to_string(), args)
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
        assert_same_losses(
            &format!("{w} ranks"),
            &step_losses(out.as_ref()),
            &want_losses,
        );
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
    // ranks, a batch that does not split, a command that runs in one process.
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
    refused(2, &["info"], "runs in one process");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `simclr args` in one process (`w` = 1) or on `w` ranks: its output, or a failure with it.
fn simclr_on(w: usize, args: &[&str]) -> String {
    let bin = env!("CARGO_BIN_EXE_simclr");
    if w > 1 {
        let (ok, text) = try_mpirun(w, bin, args, &[]);
        assert!(ok, "{args:?} on {w} ranks:\n{text}");
        return text;
    }
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}:\n{text}");
    text.into_owned()
}

/// The tiny settings of the stage tests: 48 training and 20 test images, batches of 12
/// (which split over 2 and 3 ranks), on the cpu.
fn tiny(command: &str, out: &std::path::Path, more: &[&str]) -> Vec<String> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let out = out.to_str().unwrap();
    let args = [command, "--data", data, "--out", out, "--device", "cpu"];
    let sizes = [
        "--preset",
        "tiny",
        "--train-images",
        "48",
        "--test-images",
        "20",
    ];
    let batch = ["--batch-size", "12"];
    [&args[..], &sizes, &batch, more]
        .concat()
        .into_iter()
        .map(String::from)
        .collect()
}

/// The last value of `key` in a run's metrics.jsonl.
fn last_logged(out: &std::path::Path, key: &str) -> f64 {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[key].as_f64())
        .unwrap_or_else(|| panic!("{}: no {key}", out.display()))
}

/// `simclr finetune` (from a pretrained checkpoint) and `simclr distill` (with the label loss
/// mixed in, whose mean is over every rank's labelled rows) on 2 and 3 cpu ranks log the step
/// losses of one process and its test top-1; `simclr eval` of a checkpoint on ranks prints, once,
/// one process's kNN and top-1 exactly (each rank evaluates its share, the counts are summed).
#[test]
fn finetune_distill_and_eval_on_ranks_match_one_process() {
    let dir = std::env::temp_dir().join(format!("simclr-dist-stages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pre = dir.join("pretrain");
    simclr_on(1, &strs(&tiny("pretrain", &pre, &[])));
    let pre = pre.to_str().unwrap().to_string();
    let teacher = dir.join("finetune-1");
    let teacher_arg = teacher.to_str().unwrap().to_string();
    // Learning rates that move the networks within the few steps, yet below where these small
    // batches turn rounding into other steps (fine-tuning at 0.5 does by its eighth).
    let stages: [(&str, Vec<&str>); 2] = [
        (
            "finetune",
            vec![
                "--from", &pre, "--labels", "all", "--lr", "0.2", "--epochs", "2",
            ],
        ),
        (
            "distill",
            vec![
                "--teacher",
                &teacher_arg,
                "--labels",
                "2",
                "--distill-label-weight",
                "0.5",
                "--lr",
                "0.5",
                "--epochs",
                "2",
            ],
        ),
    ];
    for (command, more) in &stages {
        let out = |w: usize| dir.join(format!("{command}-{w}"));
        for w in [1, 2, 3] {
            simclr_on(w, &strs(&tiny(command, &out(w), more)));
        }
        let want = step_losses(&out(1));
        for w in [2, 3] {
            let what = format!("{command} on {w} ranks");
            assert_same_losses(&what, &step_losses(&out(w)), &want);
            let top1 = |w| last_logged(&out(w), "top1");
            assert_eq!(top1(w), top1(1), "{what}: test top-1");
            let (_, meta) = checkpoint::load(&out(w)).unwrap();
            assert_eq!(meta.ranks, w, "{what}");
        }
    }
    let eval = |w: usize| {
        let args = ["--ckpt", teacher.to_str().unwrap()];
        let text = simclr_on(w, &strs(&tiny("eval", &dir.join("eval"), &args)));
        let records: Vec<&str> = text.lines().filter(|l| l.contains("knn_top1")).collect();
        assert_eq!(records.len(), 1, "eval on {w} ranks prints once:\n{text}");
        serde_json::from_str::<serde_json::Value>(records[0]).unwrap()
    };
    let want = eval(1);
    for w in [2, 3] {
        assert_eq!(eval(w), want, "eval on {w} ranks");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `simclr pipeline` on 2 cpu ranks reports the accuracies of one process, and rank 0 alone
/// writes the run: the same files, report.json among them, and one table printed. (Fine-tuning
/// at its tiny learning rate: a larger one turns pretraining's rounding, f32 sums in another
/// order, into different predictions.)
#[test]
fn pipeline_on_two_ranks_matches_one_process() {
    let dir = std::env::temp_dir().join(format!("simclr-dist-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let more = ["--labels", "all", "--finetune-batch-size", "12"];
    let run = |w: usize| {
        let out = dir.join(format!("ranks{w}"));
        let text = simclr_on(w, &strs(&tiny("pipeline", &out, &more)));
        assert_eq!(text.matches("| model |").count(), 1, "{text}");
        let report = std::fs::read_to_string(out.join("report.json")).unwrap();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        let mut files: Vec<String> = walk(&out)
            .iter()
            .map(|f| f.strip_prefix(&out).unwrap().display().to_string())
            .collect();
        files.sort();
        (report, files)
    };
    let (want, want_files) = run(1);
    let (got, files) = run(2);
    assert_eq!(files, want_files);
    for (stage, key) in [
        ("baseline", "top1"),
        ("pretrain", "knn_top1"),
        ("finetune", "top1"),
        ("distill", "top1"),
    ] {
        assert_eq!(got[stage][key], want[stage][key], "{stage} {key}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A budgeted pipeline on 2 ranks runs rank 0's plan on both, re-planned between stages: each
/// stage logs exactly the steps the plan in budget.json gives it (ranks that planned apart
/// would stop at a collective of different steps).
#[test]
fn budgeted_pipeline_on_two_ranks_runs_one_plan() {
    let dir = std::env::temp_dir().join(format!("simclr-dist-budget-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let more = [
        "--labels",
        "2",
        "--finetune-batch-size",
        "12",
        "--budget",
        "40s",
    ];
    let out = dir.join("run");
    simclr_on(2, &strs(&tiny("pipeline", &out, &more)));
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap()
    };
    let (plan, report) = (read("budget.json"), read("report.json"));
    assert_eq!(report["config"]["plan"], plan);
    // Re-planned after each of the first three stages, on rank 0's clock.
    let after: Vec<_> = (plan["revisions"].as_array().unwrap().iter())
        .map(|r| r["after"].as_str().unwrap())
        .collect();
    assert_eq!(after, ["baseline", "pretrain", "finetune"], "{plan}");
    for stage in ["baseline", "pretrain", "finetune", "distill"] {
        let steps = plan[stage]["steps"].as_f64().unwrap();
        let run = out.join(report[stage]["checkpoint"].as_str().unwrap());
        assert_eq!(last_logged(&run, "step"), steps - 1.0, "{stage}: {plan}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let path = e.unwrap().path();
            match path.is_dir() {
                true => walk(&path),
                false => vec![path],
            }
        })
        .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A run's step losses on ranks against one process's: equal to f32 rounding (the same
/// batches, their sums taken in another order).
fn assert_same_losses(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs(),
            "{what}: step {i}: {g} on ranks, {w} in one"
        );
    }
}
