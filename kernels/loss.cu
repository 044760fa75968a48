// Classification losses and softmax, one warp per row (8 rows per 256-thread block): a row's
// max and sums are lane-strided partial results combined by xor-shuffles. Losses are written as
// one already-normalised term per row and summed by a single block in a fixed order, so the
// loss is deterministic (no atomics). Same formulas as src/device/cpu/loss.rs.
#include "common.cuh"

constexpr int LOSS_THREADS = 256;
constexpr int ROWS_PER_BLOCK = LOSS_THREADS / 32;
// Label of a row that has none (cpu::loss::UNLABELLED).
constexpr unsigned UNLABELLED = 0xffffffffu;

DEVICE inline float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, off));
    return v;
}

DEVICE inline float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffff, v, off);
    return v;
}

// log Σ_k exp(x_k / t) over one row, computed by the calling warp (the result on every lane).
DEVICE inline float row_logsumexp(const float* __restrict__ x, int classes, float t, int lane) {
    float m = -INFINITY;
    for (int k = lane; k < classes; k += 32) m = fmaxf(m, x[k] / t);
    m = warp_max(m);
    float s = 0.0f;
    for (int k = lane; k < classes; k += 32) s += expf(x[k] / t - m);
    return m + logf(warp_sum(s));
}

// probs = softmax(x / t) row by row.
KERNEL void softmax_rows(const float* __restrict__ x, int rows, int classes, float t,
                         float* __restrict__ probs) {
    const int lane = threadIdx.x % 32, row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (row >= rows) return;  // the whole warp: no barrier or shuffle is skipped by part of it
    const float* xr = x + (size_t)row * classes;
    const float lse = row_logsumexp(xr, classes, t, lane);
    for (int k = lane; k < classes; k += 32) probs[(size_t)row * classes + k] = expf(xr[k] / t - lse);
}

// Softmax cross-entropy against labels (each < classes): terms[row] = (lse − x_y)/rows,
// grad = (softmax(x) − onehot(y))/rows.
KERNEL void cross_entropy_rows(const float* __restrict__ x, const unsigned* __restrict__ labels,
                               int rows, int classes, float* __restrict__ terms,
                               float* __restrict__ grad) {
    const int lane = threadIdx.x % 32, row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * classes;
    const int y = (int)labels[row];
    const float lse = row_logsumexp(xr, classes, 1.0f, lane);
    for (int k = lane; k < classes; k += 32)
        grad[(size_t)row * classes + k] = (expf(xr[k] - lse) - (k == y ? 1.0f : 0.0f)) / rows;
    if (lane == 0) terms[row] = (lse - xr[y]) / rows;
}

// count[0] = number of rows whose label is not UNLABELLED. One block.
KERNEL void count_labelled(const unsigned* __restrict__ labels, int rows, float* __restrict__ count) {
    __shared__ int partial[ROWS_PER_BLOCK];
    int c = 0;
    for (int i = threadIdx.x; i < rows; i += LOSS_THREADS) c += labels[i] != UNLABELLED;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) c += __shfl_xor_sync(0xffffffff, c, off);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        int total = 0;
        for (int w = 0; w < ROWS_PER_BLOCK; w++) total += partial[w];
        count[0] = (float)total;
    }
}

// Distillation with temperature t against teacher probabilities (already softened with t),
// mixed with cross-entropy on the labelled rows:
//   terms[row] = −(1−α)/B · Σ_k p_T,k·log p_S,k  +  [labelled] α/L · (lse(x) − x_y)
//   grad       = (1−α)(p_S − p_T)/(t·B)          +  [labelled] α/L · (softmax(x) − onehot(y))
// with p_S = softmax(x/t), B = rows, L = labelled[0] (from count_labelled); the cross-entropy
// part only when α > 0.
KERNEL void distillation_rows(const float* __restrict__ x, const float* __restrict__ teacher,
                              const unsigned* __restrict__ labels, int rows, int classes,
                              float t, float alpha, const float* __restrict__ labelled,
                              float* __restrict__ terms, float* __restrict__ grad) {
    const int lane = threadIdx.x % 32, row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (row >= rows) return;
    const size_t base = (size_t)row * classes;
    const float* xr = x + base;
    const float lse_t = row_logsumexp(xr, classes, t, lane);
    const bool supervised = alpha > 0.0f && labels[row] != UNLABELLED;
    const int y = supervised ? (int)labels[row] : -1;
    // Only supervised rows use these two (and L > 0 whenever one exists).
    const float lse_1 = supervised ? row_logsumexp(xr, classes, 1.0f, lane) : 0.0f;
    const float ce_weight = supervised ? alpha / labelled[0] : 0.0f;

    float term = 0.0f;
    for (int k = lane; k < classes; k += 32) {
        const float log_ps = xr[k] / t - lse_t, pt = teacher[base + k];
        term -= (1.0f - alpha) * pt * log_ps / rows;
        float g = (1.0f - alpha) * (expf(log_ps) - pt) / (t * rows);
        if (supervised) g += ce_weight * (expf(xr[k] - lse_1) - (k == y ? 1.0f : 0.0f));
        grad[base + k] = g;
    }
    term = warp_sum(term);
    if (lane == 0) terms[row] = supervised ? term + ce_weight * (lse_1 - xr[y]) : term;
}

// out[0] = Σ terms, in a fixed order. One block.
KERNEL void loss_sum(const float* __restrict__ terms, int n, float* __restrict__ out) {
    __shared__ float partial[ROWS_PER_BLOCK];
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += LOSS_THREADS) s += terms[i];
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < ROWS_PER_BLOCK; w++) total += partial[w];
        out[0] = total;
    }
}

REGISTER_KERNEL(softmax_rows);
REGISTER_KERNEL(cross_entropy_rows);
REGISTER_KERNEL(count_labelled);
REGISTER_KERNEL(distillation_rows);
REGISTER_KERNEL(loss_sum);
