//! Softmax, softmax cross-entropy and distillation against the CPU reference
//! (`cpu::loss`, in f64), on every device under test.

mod common;

use simclr::device::cpu::loss::{self, UNLABELLED};
use simclr::device::cuda::{loss as gpu_loss, Buffer, Gpu};

/// (rows, classes): a single row, a single class, odd counts, more classes than a warp's lanes.
const SHAPES: &[(usize, usize)] = &[(1, 7), (5, 10), (33, 7), (5, 1), (1, 1), (33, 70)];

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Logits spread wider than [-1, 1) so the softmaxes are not nearly uniform.
fn logits(len: usize, seed: u64) -> Vec<f32> {
    common::random(len, seed).iter().map(|v| 4.0 * v).collect()
}

/// Labels in 0..classes from the seed; every third row unlabelled when `unlabelled`.
fn labels(rows: usize, classes: usize, seed: u64, unlabelled: bool) -> Vec<u32> {
    common::random(rows, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if unlabelled && i % 3 == 1 {
                UNLABELLED
            } else {
                (((v + 1.0) / 2.0 * classes as f32) as u32).min(classes as u32 - 1)
            }
        })
        .collect()
}

/// Checks a scalar loss (relative error, absolute below 1) and a gradient (relative L2).
fn check(what: &str, gpu: &Gpu, loss: &Buffer, want_loss: f64, grad: &Buffer, want_grad: &[f64]) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = gpu.download::<f32>(loss)[0] as f64;
    assert!(
        (got - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
        "{what}: loss {got}, want {want_loss}"
    );
    let err = common::rel_l2(&gpu.download::<f32>(grad), &to_f32(want_grad));
    assert!(err < 1e-5, "{what}: gradient relative L2 error {err}");
}

#[test]
fn softmax_matches_cpu() {
    for (name, gpu) in common::gpus() {
        for (case, &(rows, classes)) in SHAPES.iter().enumerate() {
            let temperature = [1.0f32, 0.5, 2.0][case % 3];
            let x = logits(rows * classes, 400 + case as u64);
            let want = loss::softmax(&to_f64(&x), classes, temperature as f64);
            let mut probs = gpu.alloc_f32(rows * classes);
            gpu_loss::softmax(
                &gpu,
                rows,
                classes,
                &gpu.upload(&x),
                temperature,
                &mut probs,
            );
            let what = format!("softmax on {name}, rows={rows} classes={classes} τ={temperature}");
            gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
            let err = common::rel_l2(&gpu.download::<f32>(&probs), &to_f32(&want));
            assert!(err < 1e-5, "{what}: relative L2 error {err}");
        }
    }
}

#[test]
fn softmax_cross_entropy_matches_cpu() {
    for (name, gpu) in common::gpus() {
        for (case, &(rows, classes)) in SHAPES.iter().enumerate() {
            let x = logits(rows * classes, 500 + case as u64);
            let y = labels(rows, classes, 550 + case as u64, false);
            let (want_loss, want_grad) = loss::softmax_cross_entropy(&to_f64(&x), classes, &y);
            let (mut l, mut grad) = (gpu.alloc_f32(1), gpu.alloc_f32(rows * classes));
            let (x_dev, y_dev) = (gpu.upload(&x), gpu.upload(&y));
            gpu_loss::softmax_cross_entropy(&gpu, rows, classes, &x_dev, &y_dev, &mut l, &mut grad);
            let what = format!("softmax_cross_entropy on {name}, rows={rows} classes={classes}");
            check(&what, &gpu, &l, want_loss, &grad, &want_grad);
        }
    }
}

#[test]
fn distillation_matches_cpu() {
    for (name, gpu) in common::gpus() {
        for (case, &(rows, classes)) in SHAPES.iter().enumerate() {
            // Pure distillation, mixed with cross-entropy on some rows, and pure cross-entropy.
            for (alpha, unlabelled) in [(0.0f32, true), (0.3, true), (0.7, false), (1.0, true)] {
                let temperature = [2.0f32, 0.5, 1.0][case % 3];
                let seed = 600 + 10 * case as u64 + (alpha * 10.0) as u64;
                let x = logits(rows * classes, seed);
                let teacher = to_f32(&loss::softmax(
                    &to_f64(&logits(rows * classes, seed + 1)),
                    classes,
                    temperature as f64,
                ));
                let y = labels(rows, classes, seed + 2, unlabelled);
                let (want_loss, want_grad) = loss::distillation(
                    &to_f64(&x),
                    &to_f64(&teacher),
                    classes,
                    temperature as f64,
                    &y,
                    alpha as f64,
                );
                let (mut l, mut grad) = (gpu.alloc_f32(1), gpu.alloc_f32(rows * classes));
                let (x_dev, t_dev, y_dev) = (gpu.upload(&x), gpu.upload(&teacher), gpu.upload(&y));
                gpu_loss::distillation(
                    &gpu,
                    rows,
                    classes,
                    &x_dev,
                    &t_dev,
                    temperature,
                    &y_dev,
                    alpha,
                    &mut l,
                    &mut grad,
                );
                let what = format!(
                    "distillation on {name}, rows={rows} classes={classes} τ={temperature} α={alpha}"
                );
                check(&what, &gpu, &l, want_loss, &grad, &want_grad);
            }
        }
    }
}
