//! The fused NT-Xent kernels against the CPU reference (`cpu::ntxent::ntxent`, in f64), on every
//! device under test, and their extra memory through the caching allocator's high-water mark:
//! the f32 kernels, and the tensor-core kernels on bf16 rows (the reference computed from the
//! same bf16-rounded rows; loss to 1e-5, gradient, stored in bf16, to relative L2 1e-2). Also
//! one rank's part of NT-Xent over W ranks (`ntxent::Shard`), the ranks simulated in one
//! process, against `cpu::ntxent::ntxent_rows`, without and with rows of SimCLRv2's memory
//! buffer among the candidates.

mod common;

use simclr::device::cpu::ntxent as cpu;
use simclr::device::cuda::{alloc, ntxent, Elem, Schedule};

/// `rows` random rows of width d, each scaled to unit L2 norm (NT-Xent's input).
fn normalised(rows: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut z = common::random(rows * d, seed);
    for row in z.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    z
}

#[test]
fn ntxent_matches_cpu() {
    check(Elem::F32);
}

#[test]
fn ntxent_in_bf16_matches_cpu() {
    check(Elem::Bf16);
}

fn check(elem: Elem) {
    for (name, gpu) in common::gpus() {
        // 2N = 2 up to over two 64-row tiles, odd N; widths below, at and not a multiple of
        // the 16-deep slab.
        for (case, (rows, d)) in [2, 6, 34, 130]
            .into_iter()
            .flat_map(|rows| [3, 17, 128].map(|d| (rows, d)))
            .enumerate()
        {
            let temperature = [0.1f32, 0.5, 1.0][case % 3];
            let z = common::as_stored(elem, normalised(rows, d, 300 + case as u64));
            let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
            let (want_loss, want_grad) = cpu::ntxent(&z64, &[], d, temperature as f64);
            let want_grad: Vec<f32> = want_grad.iter().map(|&v| v as f32).collect();

            let z_dev = gpu.upload_as(&z, elem);
            let mut loss_dev = gpu.alloc_f32(1);
            let mut grad = gpu.alloc(rows * d, elem);
            gpu.reset_peak_memory();
            let before = gpu.memory().in_use;
            ntxent::ntxent(&gpu, rows, d, &z_dev, temperature, &mut loss_dev, &mut grad);
            let what = format!("ntxent {elem:?} on {name}, 2N={rows} d={d} τ={temperature}");
            gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
            // The only workspace is the 2N log-sum-exps: O(N), never the 2N×2N matrix; in
            // bf16 also the rows padded to a multiple of 16 when d is not one: O(N·d).
            let padded = match elem {
                Elem::Bf16 if d % 16 != 0 => alloc::rounded(2 * rows * d.next_multiple_of(16)),
                _ => 0,
            };
            let extra = gpu.memory().peak - before;
            assert!(
                extra <= alloc::rounded(4 * rows) + padded,
                "{what}: {extra} bytes of workspace"
            );

            let got_loss = gpu.download::<f32>(&loss_dev)[0] as f64;
            let err = (got_loss - want_loss).abs() / want_loss.abs().max(1.0);
            assert!(err < 1e-5, "{what}: loss {got_loss}, want {want_loss}");
            let err = common::rel_l2(&gpu.download_f32(&grad), &want_grad);
            let tolerance = common::tolerance(elem, 1e-5);
            assert!(err < tolerance, "{what}: gradient relative L2 error {err}");
        }
    }
}

#[test]
fn ntxent_is_deterministic() {
    let (rows, d) = (130, 17);
    for (name, gpu) in common::gpus() {
        let z = gpu.upload(&normalised(rows, d, 7));
        let run = || {
            let (mut loss, mut grad) = (gpu.alloc_f32(1), gpu.alloc_f32(rows * d));
            ntxent::ntxent(&gpu, rows, d, &z, 0.2, &mut loss, &mut grad);
            gpu.check().unwrap();
            (gpu.download::<f32>(&loss), gpu.download::<f32>(&grad))
        };
        assert_eq!(run(), run(), "ntxent on {name} differs between runs");
    }
}

#[test]
fn gathered_ntxent_in_f32_and_bf16_matches_cpu() {
    check_ranks(Elem::F32, &[2, 3], 0);
    check_ranks(Elem::Bf16, &[2, 3], 0);
}

/// The memory's rows (an odd number, a 64-row tile of candidates straddling the ranks' rows and
/// the memory's) in one process and on ranks.
#[test]
fn ntxent_with_memory_in_f32_and_bf16_matches_cpu() {
    check_ranks(Elem::F32, &[1, 2], 45);
    check_ranks(Elem::Bf16, &[1, 2], 45);
}

/// W ranks of 2n rows each, simulated in one process as the backend runs them on W: every
/// rank's rows gathered into `all`, followed by `queued` rows of a memory, each rank's
/// log-sum-exps computed by the kernel, gathered (the ranks' alone: the memory's rows are no
/// anchors), then each rank's loss and gradient. The expected gradient of a rank's rows is what
/// the cpu backend computes with its reduce-scatter: their gradient as its anchors plus, summed
/// over every rank, as candidates of that rank's anchors.
fn check_ranks(elem: Elem, ranks: &[usize], queued: usize) {
    // Two schedules of the emulator (the cases are W times larger than one process's), and the
    // real GPU when present.
    let two = [Schedule::Rr, Schedule::WarpReverse].map(|s| format!("emu:{}", s.name()));
    let gpus = common::gpus().into_iter();
    for (name, gpu) in gpus.filter(|(name, g)| !g.is_emulated() || two.contains(name)) {
        // Small shards, and 2n = 70 (first = 70, 140: a 64-row tile of candidates straddles two
        // ranks); widths odd (padded in bf16) and a multiple of 16 (not padded).
        for (case, (w, n, d)) in (ranks.iter())
            .flat_map(|&w| [(3, 33), (35, 17), (33, 16)].map(|(n, d)| (w, n, d)))
            .enumerate()
        {
            let rows = 2 * n;
            let temperature = [0.1f32, 0.5][case % 2];
            let seed = 500 + case as u64 + 100 * queued as u64;
            let all = common::as_stored(elem, normalised(w * rows + queued, d, seed));
            let what = format!(
                "rank of {w}, {elem:?} on {name}, 2n={rows} d={d} K={queued} τ={temperature}"
            );

            let all64: Vec<f64> = all.iter().map(|&v| v as f64).collect();
            let shard = |r: usize| &all64[r * rows * d..(r + 1) * rows * d];
            let t = temperature as f64;
            let parts: Vec<_> = (0..w)
                .map(|r| cpu::ntxent_rows(shard(r), &all64, r * rows, queued, d, t))
                .collect();
            let mut dcol = vec![0.0; w * rows * d];
            for (_, _, part) in &parts {
                dcol.iter_mut().zip(part).for_each(|(a, b)| *a += b);
            }

            let all_dev = gpu.upload_as(&all, elem);
            let z_dev: Vec<_> = (0..w)
                .map(|r| gpu.upload_as(&all[r * rows * d..(r + 1) * rows * d], elem))
                .collect();
            let shards: Vec<_> = (0..w)
                .map(|r| {
                    let first = r * rows;
                    ntxent::Shard::new(&gpu, &z_dev[r], &all_dev, first, queued, d, temperature)
                })
                .collect();
            let lse: Vec<_> = shards
                .iter()
                .map(|s| {
                    let mut lse = gpu.alloc_f32(rows);
                    s.lse(&mut lse);
                    lse
                })
                .collect();
            let lse_all: Vec<f32> = lse.iter().flat_map(|l| gpu.download::<f32>(l)).collect();
            let lse_all = gpu.upload(&lse_all);
            for (r, s) in shards.iter().enumerate() {
                let mut loss = gpu.alloc_f32(1);
                let mut grad = gpu.alloc(rows * d, elem);
                s.loss(&lse[r], &mut loss);
                s.grad(&lse_all, &mut grad);
                gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));

                let (want_loss, want_drow, _) = &parts[r];
                let got_loss = gpu.download::<f32>(&loss)[0] as f64;
                let err = (got_loss - want_loss).abs() / want_loss.abs().max(1.0);
                assert!(
                    err < 1e-5,
                    "{what}, rank {r}: loss {got_loss}, want {want_loss}"
                );
                let want_grad: Vec<f32> = want_drow
                    .iter()
                    .zip(&dcol[r * rows * d..(r + 1) * rows * d])
                    .map(|(a, b)| (a + b) as f32)
                    .collect();
                let err = common::rel_l2(&gpu.download_f32(&grad), &want_grad);
                let tolerance = common::tolerance(elem, 1e-5);
                assert!(
                    err < tolerance,
                    "{what}, rank {r}: gradient relative L2 error {err}"
                );
            }
        }
    }
}
