//! The convolution kernels against the CPU reference, on every device under test.

mod common;

use simclr::device::cpu::conv::{
    conv2d_backward_input, conv2d_backward_weight, conv2d_forward, ConvShape,
};
use simclr::device::cuda::{conv, Buffer, Gpu};

/// The ResNets' kernel sizes and strides at odd channel counts (not multiples of 8, below and
/// above one 64-wide tile), batch 1 and 7×7 maps.
fn shapes() -> Vec<ConvShape> {
    let shape = |n, h, c, k, r, stride, pad| ConvShape {
        n,
        h,
        w: h,
        c,
        k,
        r,
        s: r,
        stride,
        pad,
    };
    vec![
        shape(2, 7, 5, 13, 1, 1, 0),   // 1×1
        shape(1, 7, 13, 5, 1, 2, 0),   // 1×1 stride 2 (projection shortcut)
        shape(1, 7, 3, 5, 3, 1, 1),    // 3×3
        shape(2, 7, 5, 3, 3, 2, 1),    // 3×3 stride 2, fewer filters than a load step
        shape(1, 9, 3, 13, 7, 2, 3),   // 7×7 stride 2 stem
        shape(4, 16, 5, 13, 1, 1, 0),  // 1024 pixels: the weight gradient in several splits
        shape(2, 10, 67, 70, 3, 1, 1), // over one tile in every dimension of all three GEMMs
        shape(2, 11, 67, 70, 3, 2, 1), // the same at stride 2
    ]
}

/// Runs `gpu_pass` on every device and case and compares with `cpu_pass`. Inputs are the
/// pass's two operands with their lengths; outputs start poisoned (NaN on the emulator).
fn check(
    pass: &str,
    lens: impl Fn(&ConvShape) -> (usize, usize, usize),
    cpu_pass: impl Fn(&ConvShape, &[f32], &[f32], &mut [f32]),
    gpu_pass: impl Fn(&Gpu, &ConvShape, &Buffer, &Buffer, &mut Buffer),
) {
    for (name, gpu) in common::gpus() {
        for (i, s) in shapes().iter().enumerate() {
            let (a_len, b_len, out_len) = lens(s);
            let a = common::random(a_len, 10 * i as u64 + 1);
            let b = common::random(b_len, 10 * i as u64 + 2);
            let mut want = vec![0.0; out_len];
            cpu_pass(s, &a, &b, &mut want);
            let (a_dev, b_dev) = (gpu.upload(&a), gpu.upload(&b));
            let mut out = gpu.alloc_f32(out_len);
            gpu_pass(&gpu, s, &a_dev, &b_dev, &mut out);
            gpu.check()
                .unwrap_or_else(|e| panic!("{pass} on {name}, {s:?}: {e}"));
            let got: Vec<f32> = gpu.download(&out);
            let err = common::rel_l2(&got, &want);
            assert!(err < 1e-5, "{pass} on {name}, {s:?}: rel L2 error {err}");
            // No atomics anywhere: a second run gives the same bits.
            let mut again = gpu.alloc_f32(out_len);
            gpu_pass(&gpu, s, &a_dev, &b_dev, &mut again);
            let again: Vec<f32> = gpu.download(&again);
            assert!(
                got.iter()
                    .zip(&again)
                    .all(|(g, a)| g.to_bits() == a.to_bits()),
                "{pass} on {name}, {s:?}: not reproducible"
            );
        }
    }
}

/// Lengths of x, w and y.
fn lens(s: &ConvShape) -> (usize, usize, usize) {
    let x = s.n * s.h * s.w * s.c;
    let w = s.k * s.r * s.s * s.c;
    let y = s.n * s.out_h() * s.out_w() * s.k;
    (x, w, y)
}

#[test]
fn forward_matches_cpu() {
    check("forward", lens, conv2d_forward, conv::forward);
}

#[test]
fn backward_input_matches_cpu() {
    check(
        "backward_input",
        |s| {
            let (x, w, y) = lens(s);
            (y, w, x)
        },
        conv2d_backward_input,
        conv::backward_input,
    );
}

#[test]
fn backward_weight_matches_cpu() {
    check(
        "backward_weight",
        |s| {
            let (x, w, y) = lens(s);
            (x, y, w)
        },
        conv2d_backward_weight,
        conv::backward_weight,
    );
}
