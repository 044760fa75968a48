//! The GEMM kernels against the CPU reference, on every device under test: the f32 SGEMM with
//! all four transpose combinations and accumulate on/off, and the bf16 tensor-core GEMM.

mod common;

use simclr::device::cpu::gemm::gemm as cpu_gemm;
use simclr::device::cuda::{gemm, Elem};

/// Sizes of m, n and k: a single element, below, at and over one 64-wide tile, none a
/// multiple of the 16-deep slab.
const SIZES: [usize; 5] = [1, 7, 33, 65, 130];

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// C (+)= op(A)·op(B) in f64 through the CPU gemm's strides; `c0` is C before.
fn reference(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c0: &[f32],
    accumulate: bool,
) -> Vec<f32> {
    let (a_rs, a_cs) = if trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
    let mut c = to_f64(c0);
    let (a, b) = (to_f64(a), to_f64(b));
    cpu_gemm(
        m, n, k, &a, a_rs, a_cs, &b, b_rs, b_cs, &mut c, n, accumulate,
    );
    c.iter().map(|&v| v as f32).collect()
}

#[test]
fn gemm_f32_matches_cpu() {
    for (name, gpu) in common::gpus() {
        let shapes = SIZES
            .iter()
            .flat_map(|&m| SIZES.iter().flat_map(move |&n| SIZES.map(|k| (m, n, k))));
        for (case, (m, n, k)) in shapes.enumerate() {
            for variant in 0..8 {
                let (trans_a, trans_b, accumulate) =
                    (variant & 1 == 1, variant & 2 == 2, variant >= 4);
                let seed = 100 * case as u64 + 10 * variant as u64;
                let a = common::random(m * k, seed + 1);
                let b = common::random(k * n, seed + 2);
                let c0 = common::random(m * n, seed + 3);
                let want = reference((m, n, k), &a, trans_a, &b, trans_b, &c0, accumulate);
                // Without accumulate C starts poisoned (NaN on the emulator).
                let mut c = if accumulate {
                    gpu.upload(&c0)
                } else {
                    gpu.alloc_f32(m * n)
                };
                let (a_dev, b_dev) = (gpu.upload(&a), gpu.upload(&b));
                gemm::gemm(
                    &gpu, m, n, k, &a_dev, trans_a, &b_dev, trans_b, &mut c, accumulate,
                );
                let what = format!(
                    "gemm on {name}, m={m} n={n} k={k} trans_a={trans_a} trans_b={trans_b} \
                     accumulate={accumulate}"
                );
                gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
                let err = common::rel_l2(&gpu.download::<f32>(&c), &want);
                assert!(err < 1e-5, "{what}: relative L2 error {err}");
            }
        }
    }
}

#[test]
fn gemm_bf16_matches_cpu() {
    let shapes = [
        (1, 1, 1),
        (7, 33, 65),
        (130, 65, 33),
        (33, 7, 130),
        (64, 64, 64),
        (65, 130, 17),
    ];
    for (name, gpu) in common::gpus() {
        for (case, &(m, n, k)) in shapes.iter().enumerate() {
            let a = common::random(m * k, 200 + 2 * case as u64);
            let b = common::random(n * k, 201 + 2 * case as u64);
            // C = A·Bᵀ with B stored [n,k]: the trans_b product.
            let zeros = vec![0.0; m * n];
            let exact = reference((m, n, k), &a, false, &b, true, &zeros, false);
            let rounded = reference(
                (m, n, k),
                &common::round_bf16(&a),
                false,
                &common::round_bf16(&b),
                true,
                &zeros,
                false,
            );

            let (a16, b16) = (gpu.upload_as(&a, Elem::Bf16), gpu.upload_as(&b, Elem::Bf16));
            let mut c = gpu.alloc_f32(m * n);
            gemm::gemm_bf16(&gpu, m, n, k, &a16, &b16, &mut c);
            let what = format!("gemm_bf16 on {name}, m={m} n={n} k={k}");
            gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
            let got: Vec<f32> = gpu.download(&c);
            let err = common::rel_l2(&got, &rounded);
            assert!(
                err < 1e-5,
                "{what}: relative L2 error {err} against the rounded inputs' product"
            );
            let err = common::rel_l2(&got, &exact);
            assert!(
                err < 1e-2,
                "{what}: relative L2 error {err} against the f32 product"
            );
        }
    }
}

/// The dense layer through the GPU backend in bf16 (x, dy and the outputs bf16; the layer runs
/// as a 1×1 convolution on the tensor-core kernels) against the cpu backend on the same
/// bf16-rounded x, W and dy: y, dx, dW and db within relative L2 1e-2. Sizes odd (the
/// element-wise path) and multiples of 8 (16-byte copies).
#[test]
fn dense_layer_in_bf16_matches_cpu() {
    use simclr::backend;
    use simclr::device::Device;
    use simclr::tensor::{DType, Tensor};
    for (name, gpu) in common::gpus() {
        for (i, &(rows, inp, outs)) in [(7, 13, 5), (9, 24, 16), (130, 136, 144)]
            .iter()
            .enumerate()
        {
            let seed = 4 * i as u64;
            let bf16 = |len, seed| common::round_bf16(&common::random(len, seed));
            let x = Tensor::from_vec(&[rows, inp], bf16(rows * inp, seed));
            let w = Tensor::from_vec(&[outs, inp], bf16(outs * inp, seed + 1));
            let b = Tensor::from_vec(&[outs], common::random(outs, seed + 2));
            let dy = Tensor::from_vec(&[rows, outs], bf16(rows * outs, seed + 3));
            let cpu = backend::of(&x);
            let want_y = cpu.linear_forward(&x, &w, Some(&b));
            let (want_dx, want_dw, want_db) = cpu.linear_backward(&x, &w, &dy, true);

            let device = Device::Gpu(gpu.clone());
            let on_gpu = |t: &Tensor, dtype| {
                let t = t.to_device(&device);
                backend::of(&t).cast(&t, dtype)
            };
            let (gx, gdy) = (on_gpu(&x, DType::BF16), on_gpu(&dy, DType::BF16));
            let (gw, gb) = (on_gpu(&w, DType::F32), on_gpu(&b, DType::F32));
            let g = backend::of(&gx);
            let y = g.linear_forward(&gx, &gw, Some(&gb));
            let (dx, dw, db) = g.linear_backward(&gx, &gw, &gdy, true);
            gpu.check().unwrap();
            assert_eq!((y.dtype(), dx.dtype()), (DType::BF16, DType::BF16));
            assert_eq!(
                (dw.dtype(), db.as_ref().unwrap().dtype()),
                (DType::F32, DType::F32)
            );
            for (what, got, want) in [
                ("y", &y, &want_y),
                ("dx", &dx, &want_dx),
                ("dW", &dw, &want_dw),
                ("db", db.as_ref().unwrap(), want_db.as_ref().unwrap()),
            ] {
                let err = common::rel_l2(&got.to_f32_vec(), &want.to_f32_vec());
                assert!(
                    err < 1e-2,
                    "{name}, {rows}x{inp}->{outs}: {what} off by {err:.2e}"
                );
            }
        }
    }
}
