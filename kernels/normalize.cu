// Row-wise L2 normalisation as tf.math.l2_normalize: z = x·rsqrt(max(Σx², 1e-12)).
// One warp per row (rows are embeddings, d ≈ 128): lanes stride over the row, so loads are
// coalesced, and the row's sum is a warp-shuffle tree — no shared memory, no barrier, and a fixed
// summation order. Blocks of 256 threads = 8 rows.
#include "common.cuh"

#define ROWS_PER_BLOCK 8

// Σ over the warp's lanes; every lane gets the total (butterfly: the same tree on every lane).
DEVICE inline float l2_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// z = x·inv_norm per row; inv_norm [rows] is kept for the backward pass.
KERNEL void l2norm_forward(const float* __restrict__ x, int rows, int d, float* __restrict__ z,
                           float* __restrict__ inv_norm) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps leave together: no shuffle misses a lane
    const float* xr = x + (size_t)row * d;
    float ss = 0.0f;
    for (int j = lane; j < d; j += 32) ss += xr[j] * xr[j];
    float r = 1.0f / sqrtf(fmaxf(l2_warp_sum(ss), 1e-12f));
    for (int j = lane; j < d; j += 32) z[(size_t)row * d + j] = xr[j] * r;
    if (lane == 0) inv_norm[row] = r;
}

// dx = (dz − z·(z·dz))·inv_norm per row (the clamped branch is treated the same, as on the CPU).
KERNEL void l2norm_backward(const float* __restrict__ z, const float* __restrict__ dz,
                            const float* __restrict__ inv_norm, int rows, int d,
                            float* __restrict__ dx) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float* zr = z + (size_t)row * d;
    const float* gr = dz + (size_t)row * d;
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32) dot += zr[j] * gr[j];
    dot = l2_warp_sum(dot);
    float r = inv_norm[row];
    for (int j = lane; j < d; j += 32) dx[(size_t)row * d + j] = (gr[j] - zr[j] * dot) * r;
}

REGISTER_KERNEL(l2norm_forward);
REGISTER_KERNEL(l2norm_backward);
