//! The convolution kernels against the CPU reference, on every device under test: the f32
//! kernels (to f32 rounding) and the bf16 tensor-core kernels (to bf16 rounding: relative L2
//! < 1e-2 against the f32 reference computed from the same bf16-rounded inputs).

mod common;

use simclr::device::cpu::conv::{
    conv2d_backward_input, conv2d_backward_weight, conv2d_forward, ConvShape,
};
use simclr::device::cuda::{conv, Buffer, Elem, Gpu};

fn shape(n: usize, h: usize, c: usize, k: usize, r: usize, stride: usize, pad: usize) -> ConvShape {
    ConvShape {
        n,
        h,
        w: h,
        c,
        k,
        r,
        s: r,
        stride,
        pad,
    }
}

/// The ResNets' kernel sizes and strides at odd channel counts (not multiples of 8, below and
/// above one 64-wide tile), batch 1 and 7×7 maps. The bf16 kernels take their element-wise
/// path here.
fn shapes() -> Vec<ConvShape> {
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

/// Channels in multiples of 8, where the bf16 kernels copy 16 bytes at a time: the same kinds
/// of layer, ragged 128-wide tiles, several weight-gradient splits, and 1×1 stride 2 whose
/// odd input rows get no tap at all.
fn vector_shapes() -> Vec<ConvShape> {
    vec![
        shape(2, 7, 8, 16, 1, 1, 0),     // 1×1
        shape(1, 7, 16, 8, 1, 2, 0),     // 1×1 stride 2
        shape(2, 9, 16, 24, 3, 1, 1),    // 3×3
        shape(2, 9, 24, 16, 3, 2, 1),    // 3×3 stride 2
        shape(1, 11, 8, 24, 7, 2, 3),    // 7×7 stride 2
        shape(4, 16, 8, 16, 1, 1, 0),    // 1024 pixels: several weight-gradient splits
        shape(2, 12, 136, 144, 3, 1, 1), // over one 128-wide tile in every dimension
    ]
}

/// Runs `gpu_pass` on every device and case with inputs of type `elem` and compares with
/// `cpu_pass` on the same (rounded) inputs. Inputs are the pass's two operands with their
/// lengths; the output is `out_elem`, and starts poisoned (NaN on the emulator).
#[allow(clippy::too_many_arguments)]
fn check(
    pass: &str,
    elem: Elem,
    out_elem: Elem,
    lens: impl Fn(&ConvShape) -> (usize, usize, usize),
    cpu_pass: impl Fn(&ConvShape, &[f32], &[f32], &mut [f32]),
    gpu_pass: impl Fn(&Gpu, &ConvShape, &Buffer, &Buffer, &mut Buffer),
) {
    let cases: Vec<ConvShape> = match elem {
        Elem::F32 => shapes(),
        Elem::Bf16 => shapes().into_iter().chain(vector_shapes()).collect(),
    };
    let tolerance = common::tolerance(elem, 1e-5);
    for (name, gpu) in common::gpus() {
        for (i, s) in cases.iter().enumerate() {
            let (a_len, b_len, out_len) = lens(s);
            let a = common::as_stored(elem, common::random(a_len, 10 * i as u64 + 1));
            let b = common::as_stored(elem, common::random(b_len, 10 * i as u64 + 2));
            let mut want = vec![0.0; out_len];
            cpu_pass(s, &a, &b, &mut want);
            let (a_dev, b_dev) = (gpu.upload_as(&a, elem), gpu.upload_as(&b, elem));
            let mut out = gpu.alloc(out_len, out_elem);
            gpu_pass(&gpu, s, &a_dev, &b_dev, &mut out);
            gpu.check()
                .unwrap_or_else(|e| panic!("{pass} {elem:?} on {name}, {s:?}: {e}"));
            let got = gpu.download_f32(&out);
            let err = common::rel_l2(&got, &want);
            assert!(
                err < tolerance,
                "{pass} {elem:?} on {name}, {s:?}: rel L2 error {err}"
            );
            // No atomics anywhere: a second run gives the same bits.
            let mut again = gpu.alloc(out_len, out_elem);
            gpu_pass(&gpu, s, &a_dev, &b_dev, &mut again);
            let again = gpu.download_f32(&again);
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
    for elem in [Elem::F32, Elem::Bf16] {
        check("forward", elem, elem, lens, conv2d_forward, conv::forward);
    }
}

#[test]
fn backward_input_matches_cpu() {
    for elem in [Elem::F32, Elem::Bf16] {
        check(
            "backward_input",
            elem,
            elem,
            |s| {
                let (x, w, y) = lens(s);
                (y, w, x)
            },
            conv2d_backward_input,
            conv::backward_input,
        );
    }
}

/// The weight gradient is f32 for both: it updates the f32 master weights.
#[test]
fn backward_weight_matches_cpu() {
    for elem in [Elem::F32, Elem::Bf16] {
        check(
            "backward_weight",
            elem,
            Elem::F32,
            |s| {
                let (x, w, y) = lens(s);
                (x, y, w)
            },
            conv2d_backward_weight,
            conv::backward_weight,
        );
    }
}
