// Optimiser updates, one parameter tensor at a time (the formulas of cpu::optim), and the sums of
// squares LARS needs for its trust ratio.
//
// Sums are deterministic two-stage trees: a fixed grid (a function of n only) of 256-thread blocks,
// each summing a grid-stride slice with warp shuffles, then across its warps through shared memory
// into one partial; then one block sums the partials the same way. No float atomics, so the same
// tensor gives the same bits on every run. LARS reads its two norms from device memory inside the
// update kernel: the trust ratio never makes a host round trip.
#include "common.cuh"

// Σ over the warp's lanes; every lane gets the total.
DEVICE inline float optim_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Σ over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
DEVICE inline float optim_block_sum(float v, float* warp_sums /* shared, 32 floats */) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = optim_warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = optim_warp_sum(lane < (int)blockDim.x / 32 ? warp_sums[lane] : 0.0f);
    __syncthreads();  // warp_sums is written again by the next call
    return v;
}

// partial[block] = Σ x² over the block's grid-stride slice.
KERNEL void optim_sum_sq_partial(const float* __restrict__ x, int n, float* __restrict__ partial) {
    __shared__ float warp_sums[32];
    float s = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        s += x[i] * x[i];
    s = optim_block_sum(s, warp_sums);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// LARS's two sums in one read of w and g: partial[block] = Σ w², partial[grid + block] =
// Σ (g + wd·w)² (the trust ratio uses the gradient with weight decay added).
KERNEL void optim_lars_partial(const float* __restrict__ w, const float* __restrict__ g, float wd,
                               int n, float* __restrict__ partial) {
    __shared__ float warp_sums[32];
    float sw = 0.0f, sg = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float d = g[i] + wd * w[i];
        sw += w[i] * w[i];
        sg += d * d;
    }
    sw = optim_block_sum(sw, warp_sums);
    sg = optim_block_sum(sg, warp_sums);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = sw;
        partial[gridDim.x + blockIdx.x] = sg;
    }
}

// out[block] = Σ partial[block·count .. (block+1)·count]: grid = number of sums, one block each.
KERNEL void optim_sum_partials(const float* __restrict__ partial, int count, float* __restrict__ out) {
    __shared__ float warp_sums[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[blockIdx.x * count + i];
    s = optim_block_sum(s, warp_sums);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// LARS (TF convention, as cpu::optim::lars_update): g ← g + wd·w; v ← m·v + lr·trust·g; w ← w − v,
// trust = η‖w‖/‖g + wd·w‖ from norms = [Σw², Σ(g + wd·w)²] when adapt (1 when either is 0), else 1.
KERNEL void optim_lars_update(float* __restrict__ w, const float* __restrict__ g,
                              float* __restrict__ v, int n, float lr, float momentum, float wd,
                              float eta, int adapt, const float* __restrict__ norms) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float trust = 1.0f;
    if (adapt) {
        float wn = sqrtf(norms[0]), gn = sqrtf(norms[1]);
        if (wn > 0.0f && gn > 0.0f) trust = eta * wn / gn;
    }
    float grad = g[i] + wd * w[i];
    float vi = momentum * v[i] + (lr * trust) * grad;
    v[i] = vi;
    w[i] -= vi;
}

// SGD with momentum (PyTorch convention), optionally Nesterov:
// g ← g + wd·w; v ← m·v + g; w ← w − lr·(g + m·v) if nesterov else w − lr·v.
KERNEL void optim_sgd_update(float* __restrict__ w, const float* __restrict__ g,
                             float* __restrict__ v, int n, float lr, float momentum, float wd,
                             int nesterov) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float grad = g[i] + wd * w[i];
    float vi = momentum * v[i] + grad;
    v[i] = vi;
    w[i] -= lr * (nesterov ? grad + momentum * vi : vi);
}

REGISTER_KERNEL(optim_sum_sq_partial);
REGISTER_KERNEL(optim_lars_partial);
REGISTER_KERNEL(optim_sum_partials);
REGISTER_KERNEL(optim_lars_update);
REGISTER_KERNEL(optim_sgd_update);
