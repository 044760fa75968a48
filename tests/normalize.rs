//! The L2-normalisation kernels against cpu::normalize, on every device under test, with rows
//! stored in f32 and in bf16 (the reference then computed from the same bf16-rounded values).

mod common;

use simclr::device::cpu::normalize as cpu;
use simclr::device::cuda::{normalize, Buffer, Elem, Gpu};

/// Checks the device for errors, then compares `got` with `want`.
fn expect(gpu: &Gpu, what: &str, got: &Buffer, want: &[f32], tolerance: f64) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = common::rel_l2(&gpu.download_f32(got), want);
    assert!(err < tolerance, "{what}: rel L2 error {err}");
}

#[test]
fn l2_normalize_matches_cpu() {
    check(Elem::F32);
}

#[test]
fn l2_normalize_matches_cpu_in_bf16() {
    check(Elem::Bf16);
}

fn check(elem: Elem) {
    let tol = common::tolerance(elem, 1e-5);
    // (rows, d): one row, rows not a multiple of the 8 rows per block, d under one warp, d not a
    // multiple of 32, and the projection width.
    for (name, gpu) in common::gpus() {
        for (i, &(rows, d)) in [(1, 128), (5, 3), (13, 67), (20, 128)].iter().enumerate() {
            let case = format!("{name}, {elem:?}, rows {rows}, d {d}");
            let (x, dz) = (
                common::as_stored(elem, common::random(rows * d, 10 * i as u64)),
                common::as_stored(elem, common::random(rows * d, 10 * i as u64 + 1)),
            );
            let mut z_want = vec![0.0; rows * d];
            let inv_want = cpu::l2_normalize_forward(&x, d, &mut z_want);
            // The backward reads z as stored.
            let z_in = common::as_stored(elem, z_want.clone());
            let mut dx_want = vec![0.0; rows * d];
            cpu::l2_normalize_backward(&z_in, &dz, &inv_want, d, &mut dx_want);

            let (mut z, mut inv) = (gpu.alloc(rows * d, elem), gpu.alloc_f32(rows));
            let x_dev = gpu.upload_as(&x, elem);
            normalize::l2_normalize_forward(&gpu, rows, d, &x_dev, &mut z, &mut inv);
            expect(&gpu, &format!("z, {case}"), &z, &z_want, tol);
            expect(&gpu, &format!("inv_norm, {case}"), &inv, &inv_want, 1e-5);
            // Backward from the CPU's z and norms, so that only the backward kernel is measured.
            let mut dx = gpu.alloc(rows * d, elem);
            normalize::l2_normalize_backward(
                &gpu,
                rows,
                d,
                &gpu.upload_as(&z_in, elem),
                &gpu.upload_as(&dz, elem),
                &gpu.upload(&inv_want),
                &mut dx,
            );
            expect(&gpu, &format!("dx, {case}"), &dx, &dx_want, tol);
        }
    }
}
