//! The pooling kernels against cpu::pool, on every device under test, with activations stored
//! as f32 and as bf16.

mod common;

use simclr::device::cpu::pool::{self as cpu, AvgPoolShape, PoolShape};
use simclr::device::cuda::{pool, Buffer, Elem, Gpu};

/// Checks the device for errors, then compares `got` (f32 or bf16) with `want`.
fn expect(gpu: &Gpu, what: &str, got: &Buffer, want: &[f32], tolerance: f64) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = common::rel_l2(&gpu.download_f32(got), want);
    assert!(err < tolerance, "{what}: rel L2 error {err}");
}

/// (n, h, w, c, kernel, stride, pad): the ResNet stem's 3×3/2 pad 1 on a 7×7 map at batch 1, an
/// even-sized map, overlapping stride-1 windows, a 1×1 map, and channels over 64.
const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 5] = [
    (1, 7, 7, 5, 3, 2, 1),
    (2, 8, 6, 3, 2, 2, 0),
    (3, 5, 9, 13, 3, 1, 1),
    (1, 1, 1, 2, 1, 1, 0),
    (2, 9, 9, 67, 3, 2, 1),
];

fn check_maxpool(elem: Elem) {
    for (name, gpu) in common::gpus() {
        for (i, &(n, h, w, c, kernel, stride, pad)) in SHAPES.iter().enumerate() {
            let s = PoolShape {
                n,
                h,
                w,
                c,
                kernel,
                stride,
                pad,
            };
            let case = format!("{name}, {elem:?}, {s:?}");
            // Values on a coarse grid, so that windows hold ties: the first maximum must win
            // on both sides.
            let x: Vec<f32> = common::random(n * h * w * c, 10 * i as u64)
                .iter()
                .map(|v| (v * 4.0).round())
                .collect();
            let y_len = n * s.out_h() * s.out_w() * c;
            let dy = common::as_stored(elem, common::random(y_len, 10 * i as u64 + 1));
            let (mut y_want, mut dx_want) = (vec![0.0; y_len], vec![0.0; x.len()]);
            cpu::maxpool2d_forward(&s, &x, &mut y_want);
            cpu::maxpool2d_backward(&s, &x, &dy, &mut dx_want);

            // The grid's values are exact in bf16 too.
            let x_dev = gpu.upload_as(&x, elem);
            let (mut y, mut dx) = (gpu.alloc(y_len, elem), gpu.alloc(x.len(), elem));
            pool::maxpool_forward(&gpu, &s, &x_dev, &mut y);
            pool::maxpool_backward(&gpu, &s, &x_dev, &gpu.upload_as(&dy, elem), &mut dx);
            // A maximum is exact, and each dx sums the same dy in the same order as the CPU.
            expect(&gpu, &format!("maxpool forward, {case}"), &y, &y_want, 1e-7);
            expect(
                &gpu,
                &format!("maxpool backward, {case}"),
                &dx,
                &dx_want,
                common::tolerance(elem, 1e-7),
            );
        }
    }
}

#[test]
fn maxpool_matches_cpu() {
    check_maxpool(Elem::F32);
}

#[test]
fn maxpool_matches_cpu_in_bf16() {
    check_maxpool(Elem::Bf16);
}

fn check_avg_pool(elem: Elem) {
    // (n, h, w, c, kernel, stride): the ResNet-D shortcut's 2×2/2 on odd and even maps (odd
    // sizes pad one row/column after), 3×3/2 and 3×3/1 (padding on both sides, overlapping
    // windows), 1×1/2 (inputs in no window), a 1×1 map, and channels over 64.
    for (name, gpu) in common::gpus() {
        for (i, &(n, h, w, c, kernel, stride)) in [
            (1, 7, 5, 3, 2, 2),
            (2, 5, 7, 5, 2, 2),
            (2, 8, 6, 13, 2, 2),
            (1, 7, 5, 13, 3, 2),
            (2, 5, 7, 5, 3, 1),
            (1, 7, 7, 3, 1, 2),
            (2, 1, 1, 3, 2, 2),
            (2, 9, 7, 67, 2, 2),
        ]
        .iter()
        .enumerate()
        {
            let s = AvgPoolShape {
                n,
                h,
                w,
                c,
                kernel,
                stride,
            };
            let case = format!("{name}, {elem:?}, {s:?}");
            let y_len = n * s.out_h() * s.out_w() * c;
            let (x, dy) = (
                common::as_stored(elem, common::random(n * h * w * c, 30 + i as u64)),
                common::as_stored(elem, common::random(y_len, 40 + i as u64)),
            );
            let (mut y_want, mut dx_want) = (vec![0.0; y_len], vec![0.0; x.len()]);
            cpu::avg_pool2d_forward(&s, &x, &mut y_want);
            cpu::avg_pool2d_backward(&s, &dy, &mut dx_want);

            let (mut y, mut dx) = (gpu.alloc(y_len, elem), gpu.alloc(x.len(), elem));
            pool::avg_pool_forward(&gpu, &s, &gpu.upload_as(&x, elem), &mut y);
            pool::avg_pool_backward(&gpu, &s, &gpu.upload_as(&dy, elem), &mut dx);
            expect(
                &gpu,
                &format!("avg pool forward, {case}"),
                &y,
                &y_want,
                common::tolerance(elem, 1e-6),
            );
            // Each dx sums the same quotients in the same order as the CPU.
            expect(
                &gpu,
                &format!("avg pool backward, {case}"),
                &dx,
                &dx_want,
                common::tolerance(elem, 1e-7),
            );
        }
    }
}

#[test]
fn avg_pool_matches_cpu() {
    check_avg_pool(Elem::F32);
}

#[test]
fn avg_pool_matches_cpu_in_bf16() {
    check_avg_pool(Elem::Bf16);
}

fn check_global_avg_pool(elem: Elem) {
    for (name, gpu) in common::gpus() {
        for (i, &(n, hw, c)) in [(1, 49, 3), (3, 49, 13), (2, 16, 67)].iter().enumerate() {
            let case = format!("{name}, {elem:?}, n {n}, hw {hw}, c {c}");
            let (x, dy) = (
                common::as_stored(elem, common::random(n * hw * c, 50 + i as u64)),
                common::as_stored(elem, common::random(n * c, 60 + i as u64)),
            );
            let (mut y_want, mut dx_want) = (vec![0.0; n * c], vec![0.0; x.len()]);
            cpu::global_avg_pool_forward(n, hw, c, &x, &mut y_want);
            cpu::global_avg_pool_backward(n, hw, c, &dy, &mut dx_want);

            let (mut y, mut dx) = (gpu.alloc(n * c, elem), gpu.alloc(x.len(), elem));
            pool::global_avg_pool_forward(&gpu, n, hw, c, &gpu.upload_as(&x, elem), &mut y);
            pool::global_avg_pool_backward(&gpu, n, hw, c, &gpu.upload_as(&dy, elem), &mut dx);
            expect(
                &gpu,
                &format!("global avg pool forward, {case}"),
                &y,
                &y_want,
                common::tolerance(elem, 1e-5),
            );
            expect(
                &gpu,
                &format!("global avg pool backward, {case}"),
                &dx,
                &dx_want,
                common::tolerance(elem, 1e-5),
            );
        }
    }
}

#[test]
fn global_avg_pool_matches_cpu() {
    check_global_avg_pool(Elem::F32);
}

#[test]
fn global_avg_pool_matches_cpu_in_bf16() {
    check_global_avg_pool(Elem::Bf16);
}
