//! The batch-norm kernels against cpu::batchnorm (then cpu ReLU where one is fused), on every
//! device under test, with activations stored as f32 and as bf16.

mod common;

use simclr::device::cpu::batchnorm as cpu;
use simclr::device::cuda::{batchnorm, Buffer, Elem, Gpu};
use simclr::dist::Solo;

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.9;

/// (rows, c): batch 1 at 7×7, channels not multiples of 8 (below and above one 32-channel
/// tile), rows over one 256-row chunk and not a multiple of it, and enough rows (2·400×400)
/// that the reduction passes take chunks of more than 256 rows.
const SHAPES: [(usize, usize); 5] = [
    (7 * 7, 3),
    (2 * 7 * 7, 67),
    (3 * 13 * 11, 13),
    (600, 5),
    (2 * 400 * 400, 3),
];

/// Fused-ReLU and β variants: (relu, with β).
const VARIANTS: [(bool, bool); 3] = [(false, true), (true, true), (true, false)];
/// The forward passes' variants also add a residual `skip` before the ReLU (the fused block
/// end): (relu, beta, skip).
const FORWARD_VARIANTS: [(bool, bool, bool); 5] = [
    (false, true, false),
    (true, true, false),
    (true, false, false),
    (true, true, true),
    (false, false, true),
];

/// The CPU reference's output after the normalisation: + skip, then ReLU, as the GPU fuses them.
fn add_then_relu(y: Vec<f32>, skip: Option<&[f32]>, relu_fused: bool) -> Vec<f32> {
    let y = match skip {
        Some(s) => y.iter().zip(s).map(|(a, b)| a + b).collect(),
        None => y,
    };
    if relu_fused {
        relu(&y)
    } else {
        y
    }
}

/// Inputs centred at 3, so that a variance taken as E[x²] − E[x]² would show its cancellation.
fn input(len: usize, seed: u64) -> Vec<f32> {
    common::random(len, seed).iter().map(|v| v + 3.0).collect()
}

fn relu(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| x.max(0.0)).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Checks the device for errors, then compares `got` (f32 or bf16) with `want`.
fn expect(gpu: &Gpu, what: &str, got: &Buffer, want: &[f32], tolerance: f64) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = common::rel_l2(&gpu.download_f32(got), want);
    assert!(err < tolerance, "{what}: rel L2 error {err}");
}

fn check_forward_train_and_running_update(elem: Elem) {
    for (name, gpu) in common::gpus() {
        for (i, &(rows, c)) in SHAPES.iter().enumerate() {
            for (relu_fused, with_beta, with_skip) in FORWARD_VARIANTS {
                let case = format!(
                    "{name}, {elem:?}, rows {rows}, c {c}, relu {relu_fused}, beta {with_beta}, \
                     skip {with_skip}"
                );
                let seed = 10 * i as u64;
                let skip = common::as_stored(elem, common::random(rows * c, seed + 5));
                let skip_dev = gpu.upload_as(&skip, elem);
                let (x, gamma, beta) = (
                    common::as_stored(elem, input(rows * c, seed)),
                    common::random(c, seed + 1),
                    common::random(c, seed + 2),
                );
                let running: Vec<f32> = common::random(2 * c, seed + 3)
                    .iter()
                    .map(|v| v.abs() + 0.5)
                    .collect();
                let (mut rmean_want, mut rvar_want) =
                    (running[..c].to_vec(), running[c..].to_vec());
                let reference = |skip, relu, y: &mut [f32]| {
                    let beta = with_beta.then_some(&beta[..]);
                    cpu::forward_train(&x, c, &gamma, beta, EPS, skip, relu, &Solo, y)
                };
                let mut want = vec![0.0; rows * c];
                let stats = reference(None, false, &mut want);
                cpu::update_running(&stats, MOMENTUM, &mut rmean_want, &mut rvar_want);
                let want = add_then_relu(want, with_skip.then_some(&skip[..]), relu_fused);
                // The reference's own fused ending is the same arithmetic, bit for bit.
                let mut fused = vec![0.0; rows * c];
                reference(with_skip.then_some(&skip[..]), relu_fused, &mut fused);
                assert_eq!(fused, want, "cpu fused ending, {case}");

                let beta_dev = gpu.upload(&beta);
                let (mut y, mut mean, mut invstd) = (
                    gpu.alloc(rows * c, elem),
                    gpu.alloc_f32(c),
                    gpu.alloc_f32(c),
                );
                let (mut rmean, mut rvar) = (gpu.upload(&running[..c]), gpu.upload(&running[c..]));
                batchnorm::forward_train(
                    &gpu,
                    rows,
                    c,
                    &gpu.upload_as(&x, elem),
                    &gpu.upload(&gamma),
                    with_beta.then_some(&beta_dev),
                    EPS as f32,
                    with_skip.then_some(&skip_dev),
                    relu_fused,
                    &mut y,
                    &mut mean,
                    &mut invstd,
                    &Solo,
                );
                batchnorm::update_running(
                    &gpu,
                    rows,
                    c,
                    &mean,
                    &invstd,
                    EPS as f32,
                    MOMENTUM as f32,
                    &mut rmean,
                    &mut rvar,
                );
                expect(
                    &gpu,
                    &format!("y, {case}"),
                    &y,
                    &want,
                    common::tolerance(elem, 1e-5),
                );
                expect(
                    &gpu,
                    &format!("mean, {case}"),
                    &mean,
                    &f32s(&stats.mean),
                    1e-5,
                );
                expect(
                    &gpu,
                    &format!("invstd, {case}"),
                    &invstd,
                    &f32s(&stats.invstd),
                    1e-4,
                );
                expect(
                    &gpu,
                    &format!("running mean, {case}"),
                    &rmean,
                    &rmean_want,
                    1e-5,
                );
                expect(
                    &gpu,
                    &format!("running var, {case}"),
                    &rvar,
                    &rvar_want,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn forward_train_and_running_update_match_cpu() {
    check_forward_train_and_running_update(Elem::F32);
}

#[test]
fn forward_train_and_running_update_match_cpu_in_bf16() {
    check_forward_train_and_running_update(Elem::Bf16);
}

fn check_forward_eval(elem: Elem) {
    for (name, gpu) in common::gpus() {
        for (i, &(rows, c)) in SHAPES.iter().enumerate() {
            for (relu_fused, with_beta, with_skip) in FORWARD_VARIANTS {
                let case = format!(
                    "{name}, {elem:?}, rows {rows}, c {c}, relu {relu_fused}, beta {with_beta}, \
                     skip {with_skip}"
                );
                let seed = 10 * i as u64 + 100;
                let skip = common::as_stored(elem, common::random(rows * c, seed + 5));
                let skip_dev = gpu.upload_as(&skip, elem);
                let (x, gamma, beta) = (
                    common::as_stored(elem, input(rows * c, seed)),
                    common::random(c, seed + 1),
                    common::random(c, seed + 2),
                );
                let rmean: Vec<f32> = input(c, seed + 3);
                let rvar: Vec<f32> = common::random(c, seed + 4)
                    .iter()
                    .map(|v| v.abs() + 0.1)
                    .collect();
                let reference = |skip, relu, y: &mut [f32]| {
                    let beta = with_beta.then_some(&beta[..]);
                    cpu::forward_eval(&x, c, &gamma, beta, &rmean, &rvar, EPS, skip, relu, y)
                };
                let mut want = vec![0.0; rows * c];
                reference(None, false, &mut want);
                let want = add_then_relu(want, with_skip.then_some(&skip[..]), relu_fused);
                let mut fused = vec![0.0; rows * c];
                reference(with_skip.then_some(&skip[..]), relu_fused, &mut fused);
                assert_eq!(fused, want, "cpu fused ending, {case}");

                let beta_dev = gpu.upload(&beta);
                let mut y = gpu.alloc(rows * c, elem);
                batchnorm::forward_eval(
                    &gpu,
                    rows,
                    c,
                    &gpu.upload_as(&x, elem),
                    &gpu.upload(&gamma),
                    with_beta.then_some(&beta_dev),
                    &gpu.upload(&rmean),
                    &gpu.upload(&rvar),
                    EPS as f32,
                    with_skip.then_some(&skip_dev),
                    relu_fused,
                    &mut y,
                );
                expect(
                    &gpu,
                    &format!("y, {case}"),
                    &y,
                    &want,
                    common::tolerance(elem, 1e-5),
                );
            }
        }
    }
}

#[test]
fn forward_eval_matches_cpu() {
    check_forward_eval(Elem::F32);
}

#[test]
fn forward_eval_matches_cpu_in_bf16() {
    check_forward_eval(Elem::Bf16);
}

/// The backward pass from the CPU forward's statistics: dy masked by y > 0 where a ReLU is fused,
/// then cpu::batchnorm::backward.
fn check_backward(elem: Elem) {
    for (name, gpu) in common::gpus() {
        for (i, &(rows, c)) in SHAPES.iter().enumerate() {
            for (relu_fused, with_beta) in VARIANTS {
                let case = format!(
                    "{name}, {elem:?}, rows {rows}, c {c}, relu {relu_fused}, dbeta {with_beta}"
                );
                let seed = 10 * i as u64 + 200;
                let (x, gamma, beta) = (
                    common::as_stored(elem, input(rows * c, seed)),
                    common::random(c, seed + 1),
                    common::random(c, seed + 2),
                );
                let dy = common::as_stored(elem, common::random(rows * c, seed + 3));
                let mut y = vec![0.0; rows * c];
                let stats =
                    cpu::forward_train(&x, c, &gamma, Some(&beta), EPS, None, false, &Solo, &mut y);
                let y = common::as_stored(elem, relu(&y));
                let dy_masked: Vec<f32> = if relu_fused {
                    dy.iter()
                        .zip(&y)
                        .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
                        .collect()
                } else {
                    dy.clone()
                };
                let mut dx_want = vec![0.0; rows * c];
                let (dgamma_want, dbeta_want) =
                    cpu::backward(&x, &dy_masked, None, c, &gamma, &stats, &Solo, &mut dx_want);

                let y_dev = gpu.upload_as(&y, elem);
                let (mut dx, mut dgamma, mut dbeta, mut dsum) = (
                    gpu.alloc(rows * c, elem),
                    gpu.alloc_f32(c),
                    gpu.alloc_f32(c),
                    gpu.alloc(rows * c, elem),
                );
                // A fused residual sum's gradient (the masked dy) where there is a ReLU.
                let with_sum = relu_fused;
                batchnorm::backward(
                    &gpu,
                    rows,
                    c,
                    &gpu.upload_as(&x, elem),
                    relu_fused.then_some(&y_dev),
                    &gpu.upload_as(&dy, elem),
                    &gpu.upload(&gamma),
                    &gpu.upload(&f32s(&stats.mean)),
                    &gpu.upload(&f32s(&stats.invstd)),
                    &mut dx,
                    &mut dgamma,
                    with_beta.then_some(&mut dbeta),
                    with_sum.then_some(&mut dsum),
                    &Solo,
                );
                if with_sum {
                    // Exactly the masked dy (a copy of stored values, no arithmetic).
                    expect(&gpu, &format!("dsum, {case}"), &dsum, &dy_masked, 1e-12);
                }
                expect(
                    &gpu,
                    &format!("dx, {case}"),
                    &dx,
                    &dx_want,
                    common::tolerance(elem, 1e-5),
                );
                expect(
                    &gpu,
                    &format!("dgamma, {case}"),
                    &dgamma,
                    &f32s(&dgamma_want),
                    1e-4,
                );
                if with_beta {
                    expect(
                        &gpu,
                        &format!("dbeta, {case}"),
                        &dbeta,
                        &f32s(&dbeta_want),
                        1e-4,
                    );
                }
            }
        }
    }
}

#[test]
fn backward_matches_cpu() {
    check_backward(Elem::F32);
}

#[test]
fn backward_matches_cpu_in_bf16() {
    check_backward(Elem::Bf16);
}

/// Reductions in a fixed order: the same inputs give the same bits on a second run.
#[test]
fn statistics_are_reproducible() {
    for (name, gpu) in common::gpus() {
        let (rows, c) = (3 * 13 * 11, 67);
        let (x, gamma) = (
            gpu.upload(&input(rows * c, 7)),
            gpu.upload(&common::random(c, 8)),
        );
        let run = |gpu: &Gpu| {
            let (mut y, mut mean, mut invstd) =
                (gpu.alloc_f32(rows * c), gpu.alloc_f32(c), gpu.alloc_f32(c));
            batchnorm::forward_train(
                gpu,
                rows,
                c,
                &x,
                &gamma,
                None,
                EPS as f32,
                None,
                false,
                &mut y,
                &mut mean,
                &mut invstd,
                &Solo,
            );
            (gpu.download::<u32>(&mean), gpu.download::<u32>(&invstd))
        };
        assert_eq!(
            run(&gpu),
            run(&gpu),
            "{name}: statistics differ between runs"
        );
    }
}
