//! The optimiser kernels against cpu::optim (and the trust ratio of optim::Optimizer), on every
//! device under test.

mod common;

use simclr::device::cpu::optim as cpu;
use simclr::device::cuda::{optim, Buffer, Gpu};

/// Checks the device for errors, then compares `got` with `want`.
fn expect(gpu: &Gpu, what: &str, got: &Buffer, want: &[f32], tolerance: f64) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = common::rel_l2(&gpu.download(got), want);
    assert!(err < tolerance, "{what}: rel L2 error {err}");
}

/// Tensor lengths: a scalar, a BN vector, a conv kernel under one block of the first stage, and
/// one long enough for the capped first-stage grid (256 blocks, several values per thread).
const LENS: [usize; 4] = [1, 67, 3 * 3 * 13 * 5, 300_001];

#[test]
fn sum_sq_matches_cpu() {
    for (name, gpu) in common::gpus() {
        for (i, &n) in LENS.iter().enumerate() {
            let x = common::random(n, i as u64);
            let mut out = gpu.alloc_f32(1);
            optim::sum_sq(&gpu, &gpu.upload(&x), &mut out);
            expect(
                &gpu,
                &format!("sum_sq, {name}, n {n}"),
                &out,
                &[cpu::sum_sq(&x) as f32],
                1e-5,
            );
            // A fixed tree: the same bits on a second run.
            let mut again = gpu.alloc_f32(1);
            optim::sum_sq(&gpu, &gpu.upload(&x), &mut again);
            assert_eq!(
                gpu.download::<u32>(&out),
                gpu.download::<u32>(&again),
                "sum_sq, {name}, n {n}: not reproducible"
            );
        }
    }
}

#[test]
fn lars_matches_cpu() {
    let (lr, momentum, wd, eta) = (0.7, 0.9, 1e-4, 0.001);
    for (name, gpu) in common::gpus() {
        for (i, &n) in LENS.iter().enumerate() {
            // adapt with weight decay, adapt with zero weights (trust 1), no adaptation (BN, bias).
            for (adapt, zero_w) in [(true, false), (true, true), (false, false)] {
                let case = format!("{name}, n {n}, adapt {adapt}, zero w {zero_w}");
                let seed = 10 * i as u64;
                let mut w = common::random(n, seed);
                if zero_w {
                    w.fill(0.0);
                }
                let (g, mut v) = (common::random(n, seed + 1), common::random(n, seed + 2));
                // Two steps, so that the velocity carries over.
                let (mut w_dev, g_dev, mut v_dev) =
                    (gpu.upload(&w), gpu.upload(&g), gpu.upload(&v));
                let mut norms = gpu.alloc_f32(2);
                for _ in 0..2 {
                    // The trust ratio as optim::Optimizer::step computes it.
                    let trust = if adapt {
                        let w_norm = cpu::sum_sq(&w).sqrt();
                        let g_norm = g
                            .iter()
                            .zip(&w)
                            .map(|(&g, &w)| (g as f64 + wd * w as f64).powi(2))
                            .sum::<f64>()
                            .sqrt();
                        if w_norm > 0.0 && g_norm > 0.0 {
                            eta * w_norm / g_norm
                        } else {
                            1.0
                        }
                    } else {
                        1.0
                    };
                    cpu::lars_update(&mut w, &g, &mut v, lr * trust, momentum, wd);
                    optim::lars_update(
                        &gpu,
                        &mut w_dev,
                        &g_dev,
                        &mut v_dev,
                        lr as f32,
                        momentum as f32,
                        wd as f32,
                        eta as f32,
                        adapt,
                        &mut norms,
                    );
                }
                expect(&gpu, &format!("lars w, {case}"), &w_dev, &w, 1e-5);
                expect(&gpu, &format!("lars v, {case}"), &v_dev, &v, 1e-5);
            }
        }
    }
}

#[test]
fn sgd_matches_cpu() {
    let (lr, momentum, wd) = (0.05, 0.9, 1e-3);
    for (name, gpu) in common::gpus() {
        for (i, &n) in LENS[..3].iter().enumerate() {
            for nesterov in [true, false] {
                let case = format!("{name}, n {n}, nesterov {nesterov}");
                let seed = 10 * i as u64 + 100;
                let (mut w, g, mut v) = (
                    common::random(n, seed),
                    common::random(n, seed + 1),
                    common::random(n, seed + 2),
                );
                let (mut w_dev, g_dev, mut v_dev) =
                    (gpu.upload(&w), gpu.upload(&g), gpu.upload(&v));
                for _ in 0..2 {
                    cpu::sgd_update(&mut w, &g, &mut v, lr, momentum, wd, nesterov);
                    optim::sgd_update(
                        &gpu,
                        &mut w_dev,
                        &g_dev,
                        &mut v_dev,
                        lr as f32,
                        momentum as f32,
                        wd as f32,
                        nesterov,
                    );
                }
                expect(&gpu, &format!("sgd w, {case}"), &w_dev, &w, 1e-5);
                expect(&gpu, &format!("sgd v, {case}"), &v_dev, &v, 1e-5);
            }
        }
    }
}
