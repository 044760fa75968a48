//! Host side of `kernels/gemm.cu`: the f32 SGEMM, the bf16 conversion and the bf16
//! tensor-core GEMM. All matrices are row-major f32 buffers (bf16 ones hold two values per
//! f32 slot).

use super::{blocks_for, Buffer, Gpu};

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

/// y = bf16(x) (round to nearest even), all of x's values; y holds them two per f32 slot, so
/// it needs `(n + 1) / 2` f32s of room.
pub fn to_bf16(gpu: &Gpu, x: &Buffer, y: &mut Buffer) {
    let n = x.len_f32();
    assert!(y.len_f32() >= n.div_ceil(2) && n <= super::MAX_ELEMENTS);
    if n == 0 {
        return;
    }
    let blocks = blocks_for(n, 256).min(4096);
    gpu.launch(
        "to_bf16",
        [blocks, 1, 1],
        [256, 1, 1],
        0,
        &[x.into(), y.into(), (n as i32).into()],
    );
}

/// C[m,n] = A·Bᵀ on the tensor cores (mma.sync m16n8k16, f32 accumulation): A is bf16 [m,k],
/// B bf16 [n,k] (both row-major, as `to_bf16` writes them), C f32 [m,n].
pub fn gemm_bf16(gpu: &Gpu, m: usize, n: usize, k: usize, a: &Buffer, b: &Buffer, c: &mut Buffer) {
    assert!(
        a.bytes() >= m * k * 2 && b.bytes() >= n * k * 2 && c.len_f32() >= m * n,
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
