//! GEMM with bf16 products: C = A·B (+ C) for f32 operands rounded to bf16 (to nearest, ties to
//! even), multiplied exactly and summed in f32, what PyTorch's CPU autocast does in its
//! convolutions and linear layers. The tensors stay f32; only the products lose precision
//! (8 significant bits per operand instead of 24). `--precision bf16` on the cpu turns it on
//! for every f32 gemm of the process (`set_products`).
//!
//! Two ways to compute it, both with the strided operands of `gemm::gemm`:
//! - `gemm_amx::gemm_amx`, on AMX tiles where the processor has them (and conv_amx.rs, the
//!   stride-1 convolutions without im2col);
//! - `gemm_reference`: the operands rounded into f32 copies, then the f32 gemm. The meaning of
//!   the other, and what runs where AMX is absent.

use super::gemm::gemm_with;
use super::real::Real;
use std::sync::atomic::{AtomicBool, Ordering};

/// f32 → bf16 bits, rounded to nearest with ties to even; NaN stays NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// x rounded to the nearest bf16 value, as f32.
pub fn round(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

/// Whether every f32 gemm of this process takes bf16 products (`set_products`).
static PRODUCTS: AtomicBool = AtomicBool::new(false);

/// Makes every f32 gemm of this process (`gemm::gemm`, so every convolution, linear layer and
/// NT-Xent similarity) take bf16 products: `--precision bf16` on the cpu. A process-wide
/// switch like the instruction set, set by the trainer before its first step.
pub fn set_products(on: bool) {
    PRODUCTS.store(on, Ordering::Relaxed);
}

/// Whether f32 gemms take bf16 products (`set_products`).
pub fn products() -> bool {
    PRODUCTS.load(Ordering::Relaxed)
}

/// How this process's f32 gemms multiply, for run headers and reports.
pub fn describe() -> &'static str {
    match (products(), uses_amx()) {
        (false, _) => "f32 products",
        (true, true) => "bf16 products on AMX tiles",
        (true, false) => "bf16 products by rounding (no AMX here: slower than f32)",
    }
}

/// Whether f32 gemms take bf16 products, on AMX tiles.
pub fn amx_products() -> bool {
    products() && uses_amx()
}

/// Whether `gemm_bf16` runs on AMX tiles here (else on `gemm_reference`).
pub fn uses_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// C[m×n] = A[m×k]·B[k×n] (+ C if accumulate) with bf16 products; strides as in `gemm::gemm`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if uses_amx() {
        return super::gemm_amx::gemm_amx(
            m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, accumulate,
        );
    }
    gemm_reference(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, accumulate);
}

/// `gemm_bf16` as the f32 gemm of rounded copies of A (row-major m×k) and B (row-major k×n).
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let ar: Vec<f32> = (0..m * k)
        .map(|e| round(a[(e / k) * a_rs + (e % k) * a_cs]))
        .collect();
    let br: Vec<f32> = (0..k * n)
        .map(|e| round(b[(e / n) * b_rs + (e % n) * b_cs]))
        .collect();
    let kernel = f32::microkernel(n);
    gemm_with(kernel, m, n, k, &ar, k, 1, &br, n, 1, c, ldc, accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gemm::tests::{cases, Case};

    /// Every way of computing it against f64 sums of the rounded operands' products, on odd
    /// sizes, both operand layouts, with and without accumulation.
    #[test]
    fn bf16_gemms_match_the_rounded_f64_product() {
        type Gemm = fn(
            usize,
            usize,
            usize,
            &[f32],
            usize,
            usize,
            &[f32],
            usize,
            usize,
            &mut [f32],
            usize,
            bool,
        );
        let mut ways: Vec<(&str, Gemm)> = vec![("reference", gemm_reference)];
        #[cfg(target_arch = "x86_64")]
        if uses_amx() {
            ways.push(("amx", crate::device::cpu::gemm_amx::gemm_amx));
        }
        for Case {
            m,
            n,
            k,
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            b_cs,
            c0,
            ldc,
            accumulate,
            name: case,
        } in cases::<f32>()
        {
            for (name, f) in &ways {
                let mut c = c0.clone();
                f(
                    m, n, k, &a, a_rs, a_cs, &b, b_rs, b_cs, &mut c, ldc, accumulate,
                );
                for i in 0..m {
                    for j in 0..n {
                        let mut want = if accumulate {
                            c0[i * ldc + j] as f64
                        } else {
                            0.0
                        };
                        let mut size = want.abs();
                        for p in 0..k {
                            let x = round(a[i * a_rs + p * a_cs]) as f64
                                * round(b[p * b_rs + j * b_cs]) as f64;
                            want += x;
                            size += x.abs();
                        }
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * size.max(1.0),
                            "{name} {case} ({i},{j}): {got} vs {want}"
                        );
                    }
                    assert_eq!(
                        &c[i * ldc + n..(i + 1) * ldc],
                        &c0[i * ldc + n..(i + 1) * ldc]
                    );
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even one, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round(1.0 + 1.5 / 256.0), 1.0 + 2.0 / 256.0);
        assert_eq!(round(-3.0), -3.0);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
    }
}
