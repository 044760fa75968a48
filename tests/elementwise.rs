//! The elementwise kernels and the column sum against the CPU (cpu::elementwise where it has
//! the op, a plain loop otherwise), and the f32 ↔ bf16 conversion against `half`, on every
//! device under test.

mod common;

use simclr::device::cpu::elementwise as cpu;
use simclr::device::cuda::{elementwise, Buffer, Elem, Gpu};

/// Lengths: one element, under one block, and not a multiple of the 256-thread block.
const LENS: [usize; 3] = [1, 67, 1000];

/// Checks the device for errors, then compares `got` (f32 or bf16) with `want`.
fn expect(gpu: &Gpu, what: &str, got: &Buffer, want: &[f32], tolerance: f64) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = common::rel_l2(&gpu.download_f32(got), want);
    assert!(err < tolerance, "{what}: rel L2 error {err}");
}

/// relu forward and backward, add, add_assign and scale_by (by an f32 factor) with
/// activations stored as `elem`.
fn check_unary_and_binary_ops(elem: Elem) {
    let tol = common::tolerance(elem, 1e-5);
    for (name, gpu) in common::gpus() {
        for (i, &n) in LENS.iter().enumerate() {
            let case = format!("{name}, {elem:?}, n {n}");
            let (a, b) = (
                common::as_stored(elem, common::random(n, 3 * i as u64)),
                common::as_stored(elem, common::random(n, 3 * i as u64 + 1)),
            );
            let (a_dev, b_dev) = (gpu.upload_as(&a, elem), gpu.upload_as(&b, elem));
            let mut want = vec![0.0; n];
            let mut got = gpu.alloc(n, elem);

            cpu::relu_forward(&a, &mut want);
            elementwise::relu_forward(&gpu, &a_dev, &mut got);
            expect(&gpu, &format!("relu_forward, {case}"), &got, &want, tol);

            // y = relu(a) as the saved output, so that some of dy is masked.
            let y = want.clone();
            let mut got = gpu.alloc(n, elem);
            cpu::relu_backward(&y, &b, &mut want);
            elementwise::relu_backward(&gpu, &gpu.upload_as(&y, elem), &b_dev, &mut got);
            expect(&gpu, &format!("relu_backward, {case}"), &got, &want, tol);

            cpu::add(&a, &b, &mut want);
            let mut got = gpu.alloc(n, elem);
            elementwise::add(&gpu, &a_dev, &b_dev, &mut got);
            expect(&gpu, &format!("add, {case}"), &got, &want, tol);

            let mut acc = gpu.upload_as(&a, elem);
            elementwise::add_assign(&gpu, &mut acc, &b_dev);
            expect(&gpu, &format!("add_assign, {case}"), &acc, &want, tol);

            let mut want = vec![0.0; n];
            cpu::scale(&a, -0.37, &mut want);
            let mut got = gpu.alloc(n, elem);
            elementwise::scale_by(&gpu, &a_dev, &gpu.upload(&[-0.37f32]), &mut got);
            expect(&gpu, &format!("scale_by, {case}"), &got, &want, tol);
        }
    }
}

#[test]
fn unary_and_binary_ops_match_cpu() {
    check_unary_and_binary_ops(Elem::F32);
}

#[test]
fn unary_and_binary_ops_match_cpu_in_bf16() {
    check_unary_and_binary_ops(Elem::Bf16);
}

#[test]
fn cast_rounds_to_nearest_even_and_widens_exactly() {
    for (name, gpu) in common::gpus() {
        for (i, n) in [1usize, 7, 1000, 4099].into_iter().enumerate() {
            // Spread the exponents too, and include exact ties (…8000 in the low half).
            let mut x: Vec<f32> = common::random(n, 50 + i as u64)
                .iter()
                .enumerate()
                .map(|(j, v)| v * (1 << (j % 20)) as f32)
                .collect();
            x[0] = f32::from_bits(0x3f80_8000); // halfway between two bf16s: to the even one
            let case = format!("{name}, n {n}");

            let mut narrow = gpu.alloc(n, Elem::Bf16);
            elementwise::cast(&gpu, &gpu.upload(&x), &mut narrow);
            gpu.check()
                .unwrap_or_else(|e| panic!("cast to bf16, {case}: {e}"));
            let got: Vec<u16> = gpu.download(&narrow);
            let want: Vec<u16> = x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            assert_eq!(got, want, "cast to bf16, {case}");

            let mut wide = gpu.alloc_f32(n);
            elementwise::cast(&gpu, &narrow, &mut wide);
            gpu.check()
                .unwrap_or_else(|e| panic!("cast to f32, {case}: {e}"));
            let got: Vec<u32> = gpu.download(&wide);
            let want: Vec<u32> = want.iter().map(|&b| (b as u32) << 16).collect();
            assert_eq!(got, want, "cast to f32, {case}");
        }
    }
}

/// (rows, cols): a single row, columns below and above one 32-column block, rows not a multiple
/// of the 8 row lanes.
const MATRICES: [(usize, usize); 4] = [(1, 5), (7, 67), (300, 13), (129, 40)];

/// The dense layer's bias add (activations f32 or bf16, the bias f32) and bias gradient (the
/// column sum of f32 or bf16 rows, summed in f32).
#[test]
fn bias_add_and_sum_rows_match_cpu() {
    for elem in [Elem::F32, Elem::Bf16] {
        for (name, gpu) in common::gpus() {
            for (i, &(rows, cols)) in MATRICES.iter().enumerate() {
                let case = format!("{name}, {elem:?}, {rows}×{cols}");
                let (x, b) = (
                    common::as_stored(elem, common::random(rows * cols, 50 + i as u64)),
                    common::random(cols, 60 + i as u64),
                );

                let want: Vec<f32> = x
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| v + b[j % cols])
                    .collect();
                let mut y = gpu.upload_as(&x, elem);
                elementwise::bias_add(&gpu, rows, cols, &mut y, &gpu.upload(&b));
                let tol = common::tolerance(elem, 1e-5);
                expect(&gpu, &format!("bias_add, {case}"), &y, &want, tol);

                let want: Vec<f32> = (0..cols)
                    .map(|col| (0..rows).map(|r| x[r * cols + col] as f64).sum::<f64>() as f32)
                    .collect();
                let mut out = gpu.alloc_f32(cols);
                elementwise::sum_rows(&gpu, rows, cols, &gpu.upload_as(&x, elem), &mut out);
                expect(&gpu, &format!("sum_rows, {case}"), &out, &want, 1e-4);
            }
        }
    }
}

/// The constant made on the device (the backward pass's seed).
#[test]
fn fill_writes_the_value_everywhere() {
    for (name, gpu) in common::gpus() {
        for &n in &LENS {
            let mut y = gpu.alloc_f32(n);
            elementwise::fill(&gpu, &mut y, -2.5);
            expect(
                &gpu,
                &format!("fill, {name}, n {n}"),
                &y,
                &vec![-2.5; n],
                1e-12,
            );
        }
    }
}
