//! Host side of `kernels/gemm.cu`: the f32 SGEMM and the bf16 tensor-core GEMM. All matrices
//! are row-major; the bf16 GEMM's operands are bf16 buffers (`elementwise::cast` makes them).

use super::{Buffer, Elem, Gpu};

/// Tile of C one block of `gemm_f32` computes (GEMM_BM × GEMM_BN in the kernel), 256 threads.
const F32_TILE: usize = 64;
/// Tile of C one block of `gemm_bf16` computes (MMA_BM × MMA_BN), 4 warps.
const BF16_TILE: usize = 64;

/// C[m,n] (+)= op(A)·op(B): op(A) is A stored [m,k], or Aᵀ of A stored [k,m] when `trans_a`;
/// op(B) is B stored [k,n], or Bᵀ of B stored [n,k] when `trans_b`. With `accumulate` the
/// product is added to C, else it overwrites it (k = 0 then writes zeros).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    gpu: &Gpu,
    m: usize,
    n: usize,
    k: usize,
    a: &Buffer,
    trans_a: bool,
    b: &Buffer,
    trans_b: bool,
    c: &mut Buffer,
    accumulate: bool,
) {
    Elem::assert_f32("gemm", [a, b, &*c]);
    assert!(a.len_f32() >= m * k && b.len_f32() >= k * n && c.len_f32() >= m * n);
    assert!([m * k, k * n, m * n]
        .iter()
        .all(|&len| len <= super::MAX_ELEMENTS));
    if m == 0 || n == 0 {
        return;
    }
    let grid = [n.div_ceil(F32_TILE) as u32, m.div_ceil(F32_TILE) as u32, 1];
    gpu.launch(
        "gemm_f32",
        grid,
        [256, 1, 1],
        0,
        &[
            a.into(),
            b.into(),
            c.into(),
            (m as i32).into(),
            (n as i32).into(),
            (k as i32).into(),
            (trans_a as i32).into(),
            (trans_b as i32).into(),
            (accumulate as i32).into(),
        ],
    );
}

/// C[m,n] = A·Bᵀ on the tensor cores (mma.sync m16n8k16, f32 accumulation): A is bf16 [m,k],
/// B bf16 [n,k] (both row-major), C f32 [m,n].
pub fn gemm_bf16(gpu: &Gpu, m: usize, n: usize, k: usize, a: &Buffer, b: &Buffer, c: &mut Buffer) {
    assert!(
        a.elem() == Elem::Bf16 && b.elem() == Elem::Bf16 && c.elem() == Elem::F32,
        "gemm_bf16: A and B must be bf16, C f32"
    );
    assert!(
        a.len() >= m * k && b.len() >= n * k && c.len() >= m * n,
        "gemm_bf16: buffers too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    let grid = [
        n.div_ceil(BF16_TILE) as u32,
        m.div_ceil(BF16_TILE) as u32,
        1,
    ];
    gpu.launch(
        "gemm_bf16",
        grid,
        [128, 1, 1],
        0,
        &[
            a.into(),
            b.into(),
            c.into(),
            (m as i32).into(),
            (n as i32).into(),
            (k as i32).into(),
        ],
    );
}
