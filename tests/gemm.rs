//! The GEMM kernels against the CPU reference, on every device under test: the f32 SGEMM with
//! all four transpose combinations and accumulate on/off, the bf16 conversion, and the bf16
//! tensor-core GEMM.

mod common;

use simclr::device::cpu::gemm::gemm as cpu_gemm;
use simclr::device::cuda::gemm;

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

/// Round to nearest even, as the kernel's float_to_bf16 (no NaNs here).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[test]
fn to_bf16_rounds_to_nearest_even() {
    for (name, gpu) in common::gpus() {
        for (i, n) in [1usize, 7, 1000, 4099].into_iter().enumerate() {
            // Spread the exponents too, and include exact ties (…8000 in the low half).
            let mut x: Vec<f32> = common::random(n, 50 + i as u64)
                .iter()
                .enumerate()
                .map(|(j, v)| v * (1 << (j % 20)) as f32)
                .collect();
            x[0] = f32::from_bits(0x3f80_8000); // halfway between two bf16s: to the even one
            let mut y = gpu.alloc_f32(n.div_ceil(2));
            gemm::to_bf16(&gpu, &gpu.upload(&x), &mut y);
            gpu.check()
                .unwrap_or_else(|e| panic!("to_bf16 on {name}, n={n}: {e}"));
            let got: Vec<u16> = gpu.download(&y);
            let want: Vec<u16> = x.iter().map(|&v| bf16_bits(v)).collect();
            assert_eq!(&got[..n], &want[..], "to_bf16 on {name}, n={n}");
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
            let round =
                |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| bf16_value(bf16_bits(v))).collect() };
            // C = A·Bᵀ with B stored [n,k]: the trans_b product.
            let zeros = vec![0.0; m * n];
            let exact = reference((m, n, k), &a, false, &b, true, &zeros, false);
            let rounded = reference(
                (m, n, k),
                &round(&a),
                false,
                &round(&b),
                true,
                &zeros,
                false,
            );

            let (mut a16, mut b16) = (
                gpu.alloc_f32((m * k).div_ceil(2)),
                gpu.alloc_f32((n * k).div_ceil(2)),
            );
            gemm::to_bf16(&gpu, &gpu.upload(&a), &mut a16);
            gemm::to_bf16(&gpu, &gpu.upload(&b), &mut b16);
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
