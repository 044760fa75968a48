//! The selective-kernel kernels against cpu::sk, on every device under test, with activations
//! (and logits) stored as f32 and as bf16.

mod common;

use simclr::device::cpu::sk as cpu;
use simclr::device::cuda::{sk, Buffer, Elem, Gpu};

/// Checks the device for errors, then compares `got` (f32 or bf16) with `want`.
fn expect(gpu: &Gpu, what: &str, got: &Buffer, want: &[f32], tolerance: f64) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = common::rel_l2(&gpu.download_f32(got), want);
    assert!(err < tolerance, "{what}: rel L2 error {err}");
}

/// (n, h, w, c), c channels per stream: odd channel counts at batch 1 and 2 on 7×5 and 5×7
/// maps, channels over one 32-channel block, and a map with fewer positions than lanes.
const SHAPES: [(usize, usize, usize, usize); 7] = [
    (1, 7, 5, 3),
    (2, 5, 7, 3),
    (1, 5, 7, 5),
    (2, 7, 5, 5),
    (1, 7, 5, 13),
    (2, 5, 7, 13),
    (2, 7, 7, 67),
];

fn check_sk_pool(elem: Elem) {
    for (name, gpu) in common::gpus() {
        for (i, &(n, h, w, c)) in SHAPES.iter().enumerate() {
            let (hw, case) = (h * w, format!("{name}, {elem:?}, n {n}, {h}×{w}, c {c}"));
            let (x, dy) = (
                common::as_stored(elem, common::random(n * hw * 2 * c, 10 * i as u64)),
                common::as_stored(elem, common::random(n * c, 10 * i as u64 + 1)),
            );
            let (mut y_want, mut dx_want) = (vec![0.0; n * c], vec![0.0; x.len()]);
            cpu::sk_pool_forward(n, hw, c, &x, &mut y_want);
            cpu::sk_pool_backward(n, hw, c, &dy, &mut dx_want);

            let (mut y, mut dx) = (gpu.alloc(n * c, elem), gpu.alloc(x.len(), elem));
            sk::sk_pool_forward(&gpu, n, hw, c, &gpu.upload_as(&x, elem), &mut y);
            sk::sk_pool_backward(&gpu, n, hw, c, &gpu.upload_as(&dy, elem), &mut dx);
            expect(
                &gpu,
                &format!("sk_pool forward, {case}"),
                &y,
                &y_want,
                common::tolerance(elem, 1e-5),
            );
            expect(
                &gpu,
                &format!("sk_pool backward, {case}"),
                &dx,
                &dx_want,
                common::tolerance(elem, 1e-7),
            );
        }
    }
}

#[test]
fn sk_pool_matches_cpu() {
    check_sk_pool(Elem::F32);
}

#[test]
fn sk_pool_matches_cpu_in_bf16() {
    check_sk_pool(Elem::Bf16);
}

fn check_sk_combine(elem: Elem) {
    let tol = common::tolerance(elem, 1e-5);
    for (name, gpu) in common::gpus() {
        for (i, &(n, h, w, c)) in SHAPES.iter().enumerate() {
            let (hw, case) = (h * w, format!("{name}, {elem:?}, n {n}, {h}×{w}, c {c}"));
            let x = common::as_stored(elem, common::random(n * hw * 2 * c, 100 + i as u64));
            // Logits up to ±20 in the last shapes: the softmax must not overflow.
            let spread = if i >= 5 { 20.0 } else { 2.0 };
            let logits: Vec<f32> = common::random(n * 2 * c, 200 + i as u64)
                .iter()
                .map(|v| v * spread)
                .collect();
            let logits = common::as_stored(elem, logits);
            let dy = common::as_stored(elem, common::random(n * hw * c, 300 + i as u64));
            let mut y_want = vec![0.0; n * hw * c];
            let (mut dx_want, mut dlogits_want) = (vec![0.0; x.len()], vec![0.0; logits.len()]);
            cpu::sk_combine_forward(n, hw, c, &x, &logits, &mut y_want);
            cpu::sk_combine_backward(n, hw, c, &x, &logits, &dy, &mut dx_want, &mut dlogits_want);

            let (x_dev, logits_dev) = (gpu.upload_as(&x, elem), gpu.upload_as(&logits, elem));
            let mut y = gpu.alloc(y_want.len(), elem);
            let (mut dx, mut dlogits) = (gpu.alloc(x.len(), elem), gpu.alloc(logits.len(), elem));
            sk::sk_combine_forward(&gpu, n, hw, c, &x_dev, &logits_dev, &mut y);
            sk::sk_combine_backward(
                &gpu,
                n,
                hw,
                c,
                &x_dev,
                &logits_dev,
                &gpu.upload_as(&dy, elem),
                &mut dx,
                &mut dlogits,
            );
            expect(
                &gpu,
                &format!("sk_combine forward, {case}"),
                &y,
                &y_want,
                tol,
            );
            expect(
                &gpu,
                &format!("sk_combine backward dx, {case}"),
                &dx,
                &dx_want,
                tol,
            );
            expect(
                &gpu,
                &format!("sk_combine backward dlogits, {case}"),
                &dlogits,
                &dlogits_want,
                tol,
            );
        }
    }
}

#[test]
fn sk_combine_matches_cpu() {
    check_sk_combine(Elem::F32);
}

#[test]
fn sk_combine_matches_cpu_in_bf16() {
    check_sk_combine(Elem::Bf16);
}
