// Optimiser updates of every parameter tensor of a step in a few launches (the formulas of
// cpu::optim), rather than a chain of small launches per tensor (~280 a step for ResNet-50).
//
// The tensors of a step are described by a table in device memory, TABLE_WORDS 64-bit words per
// tensor: its value, gradient and velocity pointers, its length, its first chunk, and its weight
// decay (f32 bits) with the LARS adaptation flag. One word after the last tensor holds the
// learning rate (f32 bits): in device memory rather than an argument, so that the launches of
// every step are the same and a step can be replayed as a CUDA graph. Each tensor is cut into chunks of CHUNK values;
// a launch's grid is the chunks of all tensors, and each block finds its tensor by binary search
// over the first chunks.
//
// LARS needs two norms per tensor. They are deterministic two-stage sums: each chunk's block sums
// its slice with warp shuffles and shared memory into a partial, then one block per tensor sums
// that tensor's partials in chunk order. The partition depends on the lengths only, and there are
// no float atomics, so the same tensors give the same bits on every run. The update kernel reads
// the norms in device memory: the trust ratio never makes a host round trip.
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


#define OPT_CHUNK 4096
#define TABLE_WORDS 6

struct OptTensor {
    float* w;
    const float* g;
    float* v;
    int n, first;
    float wd;
    int adapt;
};

DEVICE inline OptTensor opt_tensor(const unsigned long long* table, int t) {
    const unsigned long long* e = table + TABLE_WORDS * t;
    OptTensor r;
    r.w = (float*)e[0];
    r.g = (const float*)e[1];
    r.v = (float*)e[2];
    r.n = (int)e[3];
    r.first = (int)e[4];
    // Word 5: the weight decay's f32 bits in its low half, the adaptation flag in its high half.
    r.wd = ((const float*)(e + 5))[0];
    r.adapt = ((const int*)(e + 5))[1];
    return r;
}

// The learning rate, after the table's last tensor.
DEVICE inline float opt_lr(const unsigned long long* table, int tensors) {
    return ((const float*)(table + TABLE_WORDS * tensors))[0];
}

// The tensor chunk `chunk` belongs to: the last t whose first chunk is at most `chunk`.
DEVICE inline int opt_find(const unsigned long long* table, int tensors, int chunk) {
    int lo = 0, hi = tensors - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((int)table[TABLE_WORDS * mid + 4] <= chunk) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// LARS's two sums over one chunk (one block each): partial[2·chunk] = Σ w², partial[2·chunk + 1]
// = Σ (g + wd·w)² (the trust ratio uses the gradient with weight decay added); zeros for the
// tensors LARS does not adapt.
KERNEL void optim_lars_partials(const unsigned long long* __restrict__ table, int tensors,
                                float* __restrict__ partial) {
    __shared__ float warp_sums[32];
    OptTensor t = opt_tensor(table, opt_find(table, tensors, blockIdx.x));
    int start = (blockIdx.x - t.first) * OPT_CHUNK, end = min(start + OPT_CHUNK, t.n);
    float sw = 0.0f, sg = 0.0f;
    if (t.adapt) {
        for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
            float d = t.g[i] + t.wd * t.w[i];
            sw += t.w[i] * t.w[i];
            sg += d * d;
        }
    }
    sw = optim_block_sum(sw, warp_sums);
    sg = optim_block_sum(sg, warp_sums);
    if (threadIdx.x == 0) {
        partial[2 * blockIdx.x] = sw;
        partial[2 * blockIdx.x + 1] = sg;
    }
}

// One block per tensor: norms[2t], norms[2t + 1] = the sums of its chunks' partials, in order.
KERNEL void optim_lars_norms(const unsigned long long* __restrict__ table, int tensors, int chunks,
                             const float* __restrict__ partial, float* __restrict__ norms) {
    __shared__ float warp_sums[32];
    int t = blockIdx.x;
    int first = (int)table[TABLE_WORDS * t + 4];
    int last = t + 1 < tensors ? (int)table[TABLE_WORDS * (t + 1) + 4] : chunks;
    float sw = 0.0f, sg = 0.0f;
    for (int c = first + threadIdx.x; c < last; c += blockDim.x) {
        sw += partial[2 * c];
        sg += partial[2 * c + 1];
    }
    sw = optim_block_sum(sw, warp_sums);
    sg = optim_block_sum(sg, warp_sums);
    if (threadIdx.x == 0) {
        norms[2 * t] = sw;
        norms[2 * t + 1] = sg;
    }
}

// LARS (TF convention, as cpu::optim::lars_update): g ← g + wd·w; v ← m·v + lr·trust·g; w ← w − v,
// trust = η‖w‖/‖g + wd·w‖ from the tensor's norms when it adapts (1 when either is 0), else 1.
KERNEL void optim_lars_apply(const unsigned long long* __restrict__ table, int tensors,
                             float momentum, float eta, const float* __restrict__ norms) {
    float lr = opt_lr(table, tensors);
    int ti = opt_find(table, tensors, blockIdx.x);
    OptTensor t = opt_tensor(table, ti);
    float trust = 1.0f;
    if (t.adapt) {
        float wn = sqrtf(norms[2 * ti]), gn = sqrtf(norms[2 * ti + 1]);
        if (wn > 0.0f && gn > 0.0f) trust = eta * wn / gn;
    }
    int start = (blockIdx.x - t.first) * OPT_CHUNK, end = min(start + OPT_CHUNK, t.n);
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        float grad = t.g[i] + t.wd * t.w[i];
        float vi = momentum * t.v[i] + (lr * trust) * grad;
        t.v[i] = vi;
        t.w[i] -= vi;
    }
}

// SGD with momentum (PyTorch convention), optionally Nesterov:
// g ← g + wd·w; v ← m·v + g; w ← w − lr·(g + m·v) if nesterov else w − lr·v.
KERNEL void optim_sgd_apply(const unsigned long long* __restrict__ table, int tensors,
                            float momentum, int nesterov) {
    float lr = opt_lr(table, tensors);
    OptTensor t = opt_tensor(table, opt_find(table, tensors, blockIdx.x));
    int start = (blockIdx.x - t.first) * OPT_CHUNK, end = min(start + OPT_CHUNK, t.n);
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
        float grad = t.g[i] + t.wd * t.w[i];
        float vi = momentum * t.v[i] + grad;
        t.v[i] = vi;
        t.w[i] -= lr * (nesterov ? grad + momentum * vi : vi);
    }
}

REGISTER_KERNEL(optim_lars_partials);
REGISTER_KERNEL(optim_lars_norms);
REGISTER_KERNEL(optim_lars_apply);
REGISTER_KERNEL(optim_sgd_apply);
