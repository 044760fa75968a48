// Row-wise L2 normalisation as tf.math.l2_normalize: z = x·rsqrt(max(Σx², 1e-12)).
// One warp per row (rows are embeddings, d ≈ 128): lanes stride over the row, so loads are
// coalesced, and the row's sum is a warp-shuffle tree — no shared memory, no barrier, and a fixed
// summation order. Blocks of 256 threads = 8 rows. x, z, dz and dx are activations (T = f32 or
// bf16, `name` and `name_bf16`); inv_norm and every sum are f32.
#include "common.cuh"

#define ROWS_PER_BLOCK 8

// Σ over the warp's lanes; every lane gets the total (butterfly: the same tree on every lane).
DEVICE inline float l2_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// z = x·inv_norm per row; inv_norm [rows] is kept for the backward pass.
template <typename T>
DEVICE void l2norm_forward_impl(const T* __restrict__ x, int rows, int d, T* __restrict__ z,
                                float* __restrict__ inv_norm) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps leave together: no shuffle misses a lane
    const T* xr = x + (size_t)row * d;
    float ss = 0.0f;
    for (int j = lane; j < d; j += 32) ss += to_f32(xr[j]) * to_f32(xr[j]);
    float r = 1.0f / sqrtf(fmaxf(l2_warp_sum(ss), 1e-12f));
    for (int j = lane; j < d; j += 32) z[(size_t)row * d + j] = from_f32<T>(to_f32(xr[j]) * r);
    if (lane == 0) inv_norm[row] = r;
}
KERNEL void l2norm_forward(const float* __restrict__ x, int rows, int d, float* __restrict__ z,
                           float* __restrict__ inv_norm) {
    l2norm_forward_impl(x, rows, d, z, inv_norm);
}
KERNEL void l2norm_forward_bf16(const bf16* __restrict__ x, int rows, int d, bf16* __restrict__ z,
                                float* __restrict__ inv_norm) {
    l2norm_forward_impl(x, rows, d, z, inv_norm);
}

// dx = (dz − z·(z·dz))·inv_norm per row (the clamped branch is treated the same, as on the CPU).
template <typename T>
DEVICE void l2norm_backward_impl(const T* __restrict__ z, const T* __restrict__ dz,
                                 const float* __restrict__ inv_norm, int rows, int d,
                                 T* __restrict__ dx) {
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T* zr = z + (size_t)row * d;
    const T* gr = dz + (size_t)row * d;
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32) dot += to_f32(zr[j]) * to_f32(gr[j]);
    dot = l2_warp_sum(dot);
    float r = inv_norm[row];
    for (int j = lane; j < d; j += 32)
        dx[(size_t)row * d + j] = from_f32<T>((to_f32(gr[j]) - to_f32(zr[j]) * dot) * r);
}
KERNEL void l2norm_backward(const float* __restrict__ z, const float* __restrict__ dz,
                            const float* __restrict__ inv_norm, int rows, int d,
                            float* __restrict__ dx) {
    l2norm_backward_impl(z, dz, inv_norm, rows, d, dx);
}
KERNEL void l2norm_backward_bf16(const bf16* __restrict__ z, const bf16* __restrict__ dz,
                                 const float* __restrict__ inv_norm, int rows, int d,
                                 bf16* __restrict__ dx) {
    l2norm_backward_impl(z, dz, inv_norm, rows, d, dx);
}

REGISTER_KERNEL(l2norm_forward);
REGISTER_KERNEL(l2norm_forward_bf16);
REGISTER_KERNEL(l2norm_backward);
REGISTER_KERNEL(l2norm_backward_bf16);
