// Batch normalisation over NHWC activations viewed as [rows, c] (rows = N·H·W, channel fastest).
//
// Reductions are per channel over rows. A block owns BN_CH = 32 consecutive channels (one warp
// reads 32 consecutive floats of a row: a 128-byte coalesced load) and BN_RL = 8 row lanes
// (the warps) that stride over the block's rows. Channel sums therefore reduce ACROSS warps,
// through shared memory, never with float atomics: every partial is combined in a fixed order, so
// the results are bitwise the same for every launch and every schedule.
//
// Training forward: bn_stats_partial (per chunk of rows: chunk mean and M2, in one read) →
// bn_stats_finalize (per channel: mean, invstd and the folded affine map) → bn_affine.
// Backward: bn_backward_partial (per chunk: Σdy, Σdy·(x−μ)) → bn_backward_finalize (dγ, dβ and
// the folded per-channel map of dx) → bn_backward_dx. ReLU fuses into bn_affine (y = max(·, 0))
// and into the backward (dy masked where y ≤ 0), so the ReLU that follows a BN costs no pass.
//
// The kernels that touch activations (x, y, dy, dx) are templates over their storage type T (f32
// or bf16, common.cuh's last section) with two kernels each, `name` and `name_bf16`; the
// statistics, partials, coefficients and parameter gradients are f32, as is all arithmetic.
#include "common.cuh"

#define BN_CH 32  // channels per block = one warp's lanes
#define BN_RL 8   // row lanes per block (warps); block = 32×8 = 256 threads
// The reduction passes give each block `chunk` rows (a launch argument the host sizes so that
// there are enough blocks to fill the GPU at every shape, and few enough partials per channel
// for the finalize kernels to sum quickly).

// Σ of v over the block's row lanes, per channel lane; every thread gets its channel's total.
// Row lanes are summed in the fixed order 0..BN_RL−1, whatever order the warps ran in.
DEVICE inline float bn_sum_row_lanes(float v, float (*red)[BN_CH]) {
    red[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    float s = 0.0f;
    for (int j = 0; j < BN_RL; j++) s += red[j][threadIdx.x];
    __syncthreads();  // red is written again by the next call
    return s;
}

// Rows in chunk i (the last chunk may be short).
DEVICE inline int bn_chunk_rows(int i, int rows, int chunk) { return min(chunk, rows - i * chunk); }

// Chan et al.'s combination of two (count, mean, M2) summaries, into the first.
DEVICE inline void bn_chan(float& n, float& mean, float& m2, float nb, float mb, float m2b) {
    if (nb == 0.0f) return;
    float total = n + nb, d = mb - mean;
    mean += d * nb / total;
    m2 += m2b + d * d * n * nb / total;
    n = total;
}

// grid (chunks, ceil(c/32)), block (32, 8). Per chunk and channel: its mean and
// M2 = Σ(x − chunk mean)², in one read of x: each row lane runs Welford's update over its rows,
// and the 8 lanes' summaries are combined in lane order with Chan's formula (deviations from a
// running mean do not cancel the way E[x²] − E[x]² does).
template <typename T>
DEVICE void bn_stats_partial_impl(const T* __restrict__ x, int rows, int c, int chunk,
                                  float* __restrict__ part_mean, float* __restrict__ part_m2) {
    __shared__ float lane_mean[BN_RL][BN_CH], lane_m2[BN_RL][BN_CH];
    int ch = blockIdx.y * BN_CH + threadIdx.x;
    int r0 = blockIdx.x * chunk, r1 = min(r0 + chunk, rows);
    bool active = ch < c;
    float n = 0.0f, mean = 0.0f, m2 = 0.0f;
    if (active)
        for (int r = r0 + threadIdx.y; r < r1; r += BN_RL) {
            float v = to_f32(x[(size_t)r * c + ch]);
            n += 1.0f;
            float d = v - mean;
            mean += d / n;
            m2 += d * (v - mean);
        }
    lane_mean[threadIdx.y][threadIdx.x] = mean;
    lane_m2[threadIdx.y][threadIdx.x] = m2;
    __syncthreads();
    if (active && threadIdx.y == 0) {
        // Lane j holds the rows r0 + j, r0 + j + 8, ...: its count follows from the chunk's.
        float tn = 0.0f, tm = 0.0f, tq = 0.0f;
        for (int j = 0; j < BN_RL; j++) {
            float nj = (float)max(0, (r1 - r0 - j + BN_RL - 1) / BN_RL);
            bn_chan(tn, tm, tq, nj, lane_mean[j][threadIdx.x], lane_m2[j][threadIdx.x]);
        }
        part_mean[(size_t)blockIdx.x * c + ch] = tm;
        part_m2[(size_t)blockIdx.x * c + ch] = tq;
    }
}
KERNEL void bn_stats_partial(const float* __restrict__ x, int rows, int c, int chunk,
                             float* __restrict__ part_mean, float* __restrict__ part_m2) {
    bn_stats_partial_impl(x, rows, c, chunk, part_mean, part_m2);
}
KERNEL void bn_stats_partial_bf16(const bf16* __restrict__ x, int rows, int c, int chunk,
                                  float* __restrict__ part_mean, float* __restrict__ part_m2) {
    bn_stats_partial_impl(x, rows, c, chunk, part_mean, part_m2);
}

// grid ceil(c/32), block (32, 8). Combines the chunks per channel (Chan et al.):
// mean = Σ nᵢ·meanᵢ / rows, var = Σ (M2ᵢ + nᵢ·(meanᵢ − mean)²) / rows (biased, as the CPU) — a sum
// of non-negative terms, so nothing cancels. Writes mean, invstd = 1/√(var + eps) and the folded
// affine map coef = [γ·invstd | β − mean·γ·invstd] that bn_affine applies. beta may be null.
// Data parallelism (global BN): the partials of `ranks` ranks one after the other, each of
// `rows` rows cut into the same chunks; the statistics are those of all ranks * rows rows.
KERNEL void bn_stats_finalize(const float* __restrict__ part_mean, const float* __restrict__ part_m2,
                              int rows, int c, int chunk, int ranks, const float* __restrict__ gamma,
                              const float* __restrict__ beta, float eps, float* __restrict__ mean,
                              float* __restrict__ invstd, float* __restrict__ coef) {
    __shared__ float red[BN_RL][BN_CH];
    int ch = blockIdx.x * BN_CH + threadIdx.x;
    int chunks = (rows + chunk - 1) / chunk;
    float all_rows = (float)rows * (float)ranks;
    bool active = ch < c;
    float s = 0.0f;
    if (active)
        for (int i = threadIdx.y; i < chunks * ranks; i += BN_RL)
            s += (float)bn_chunk_rows(i % chunks, rows, chunk) * part_mean[(size_t)i * c + ch];
    float m = bn_sum_row_lanes(s, red) / all_rows;
    float q = 0.0f;
    if (active)
        for (int i = threadIdx.y; i < chunks * ranks; i += BN_RL) {
            float d = part_mean[(size_t)i * c + ch] - m;
            q += part_m2[(size_t)i * c + ch] + (float)bn_chunk_rows(i % chunks, rows, chunk) * d * d;
        }
    float var = bn_sum_row_lanes(q, red) / all_rows;
    if (active && threadIdx.y == 0) {
        float is = 1.0f / sqrtf(var + eps);
        float scale = gamma[ch] * is;
        mean[ch] = m;
        invstd[ch] = is;
        coef[ch] = scale;
        coef[c + ch] = (beta ? beta[ch] : 0.0f) - m * scale;
    }
}

// Inference: the same folded map from the running statistics. One thread per channel.
KERNEL void bn_eval_coef(const float* __restrict__ gamma, const float* __restrict__ beta,
                         const float* __restrict__ running_mean,
                         const float* __restrict__ running_var, float eps, int c,
                         float* __restrict__ coef) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    float scale = gamma[ch] / sqrtf(running_var[ch] + eps);
    coef[ch] = scale;
    coef[c + ch] = (beta ? beta[ch] : 0.0f) - running_mean[ch] * scale;
}

// y = x·coef[ch] + coef[c + ch], plus skip[i] when skip is not null (a residual block's sum),
// then max(y, 0) when relu: the batch norm, the residual add and the ReLU in one pass. One
// thread per element.
template <typename T>
DEVICE void bn_affine_impl(const T* __restrict__ x, const T* __restrict__ skip,
                           const float* __restrict__ coef, int n, int c, int relu,
                           T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int ch = i % c;
    float v = to_f32(x[i]) * coef[ch] + coef[c + ch];
    if (skip) v += to_f32(skip[i]);
    y[i] = from_f32<T>(relu ? fmaxf(v, 0.0f) : v);
}
KERNEL void bn_affine(const float* __restrict__ x, const float* __restrict__ skip,
                      const float* __restrict__ coef, int n, int c, int relu,
                      float* __restrict__ y) {
    bn_affine_impl(x, skip, coef, n, c, relu, y);
}
KERNEL void bn_affine_bf16(const bf16* __restrict__ x, const bf16* __restrict__ skip,
                           const float* __restrict__ coef, int n, int c, int relu,
                           bf16* __restrict__ y) {
    bn_affine_impl(x, skip, coef, n, c, relu, y);
}

// r ← m·r + (1−m)·batch per channel; the batch variance is recovered from invstd and made
// unbiased by rows/(rows−1), as cpu::batchnorm::update_running does.
KERNEL void bn_update_running(const float* __restrict__ mean, const float* __restrict__ invstd,
                              int rows, int c, float eps, float momentum,
                              float* __restrict__ running_mean, float* __restrict__ running_var) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    float var = 1.0f / (invstd[ch] * invstd[ch]) - eps;
    float unbias = rows > 1 ? (float)rows / (float)(rows - 1) : 1.0f;
    running_mean[ch] = momentum * running_mean[ch] + (1.0f - momentum) * mean[ch];
    running_var[ch] = momentum * running_var[ch] + (1.0f - momentum) * var * unbias;
}

// The gradient reaching BN: dy, or dy masked by y > 0 when a ReLU was fused (y non-null).
template <typename T>
DEVICE inline float bn_grad(const T* dy, const T* y, size_t i) {
    return (y && !(to_f32(y[i]) > 0.0f)) ? 0.0f : to_f32(dy[i]);
}

// grid (chunks, ceil(c/32)), block (32, 8). Per chunk and channel: Σg and Σg·(x − μ).
template <typename T>
DEVICE void bn_backward_partial_impl(const T* __restrict__ x, const T* __restrict__ y,
                                     const T* __restrict__ dy, const float* __restrict__ mean,
                                     int rows, int c, int chunk, float* __restrict__ part_dbeta,
                                     float* __restrict__ part_dgx) {
    __shared__ float red[BN_RL][BN_CH];
    int ch = blockIdx.y * BN_CH + threadIdx.x;
    int r0 = blockIdx.x * chunk, r1 = min(r0 + chunk, rows);
    bool active = ch < c;
    float sg = 0.0f, sgx = 0.0f;
    if (active) {
        float m = mean[ch];
        for (int r = r0 + threadIdx.y; r < r1; r += BN_RL) {
            size_t i = (size_t)r * c + ch;
            float g = bn_grad(dy, y, i);
            sg += g;
            sgx += g * (to_f32(x[i]) - m);
        }
    }
    sg = bn_sum_row_lanes(sg, red);
    sgx = bn_sum_row_lanes(sgx, red);
    if (active && threadIdx.y == 0) {
        part_dbeta[(size_t)blockIdx.x * c + ch] = sg;
        part_dgx[(size_t)blockIdx.x * c + ch] = sgx;
    }
}
KERNEL void bn_backward_partial(const float* __restrict__ x, const float* __restrict__ y,
                                const float* __restrict__ dy, const float* __restrict__ mean,
                                int rows, int c, int chunk, float* __restrict__ part_dbeta,
                                float* __restrict__ part_dgx) {
    bn_backward_partial_impl(x, y, dy, mean, rows, c, chunk, part_dbeta, part_dgx);
}
KERNEL void bn_backward_partial_bf16(const bf16* __restrict__ x, const bf16* __restrict__ y,
                                     const bf16* __restrict__ dy, const float* __restrict__ mean,
                                     int rows, int c, int chunk, float* __restrict__ part_dbeta,
                                     float* __restrict__ part_dgx) {
    bn_backward_partial_impl(x, y, dy, mean, rows, c, chunk, part_dbeta, part_dgx);
}

// grid ceil(c/32), block (32, 8). dβ = Σg, dγ = invstd·Σg·(x − μ), and dx as one affine map per
// channel (as the CPU folds it): with k = γ·invstd/M,
//   dx = a·g + b·x + s,  a = γ·invstd,  b = −k·invstd·dγ,  s = −b·μ − k·dβ;
// coef = [a | b | s]. dbeta may be null (BN without β).
// `ranks` as in bn_stats_finalize: dγ, dβ and the dx coefficients of all ranks' rows.
KERNEL void bn_backward_finalize(const float* __restrict__ part_dbeta,
                                 const float* __restrict__ part_dgx, int rows, int c, int chunk,
                                 int ranks, const float* __restrict__ gamma,
                                 const float* __restrict__ mean,
                                 const float* __restrict__ invstd, float* __restrict__ dgamma,
                                 float* __restrict__ dbeta, float* __restrict__ coef) {
    __shared__ float red[BN_RL][BN_CH];
    int ch = blockIdx.x * BN_CH + threadIdx.x;
    int chunks = (rows + chunk - 1) / chunk;
    bool active = ch < c;
    float sg = 0.0f, sgx = 0.0f;
    if (active)
        for (int i = threadIdx.y; i < chunks * ranks; i += BN_RL) {
            sg += part_dbeta[(size_t)i * c + ch];
            sgx += part_dgx[(size_t)i * c + ch];
        }
    sg = bn_sum_row_lanes(sg, red);
    sgx = bn_sum_row_lanes(sgx, red);
    if (active && threadIdx.y == 0) {
        float is = invstd[ch];
        float dg = sgx * is;
        float k = gamma[ch] * is / ((float)rows * (float)ranks);
        float b = -k * is * dg;
        dgamma[ch] = dg;
        if (dbeta) dbeta[ch] = sg;
        coef[ch] = gamma[ch] * is;
        coef[c + ch] = b;
        coef[2 * c + ch] = -b * mean[ch] - k * sg;
    }
}

// dx = a·g + b·x + s per element, g = dy masked by y > 0 when a ReLU was fused (y non-null);
// and dsum = g when dsum is not null: the gradient of a fused residual sum, which the skip
// receives, written in the same pass.
template <typename T>
DEVICE void bn_backward_dx_impl(const T* __restrict__ x, const T* __restrict__ y,
                                const T* __restrict__ dy, const float* __restrict__ coef, int n,
                                int c, T* __restrict__ dx, T* __restrict__ dsum) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int ch = i % c;
    float g = bn_grad(dy, y, i);
    dx[i] = from_f32<T>(coef[ch] * g + coef[c + ch] * to_f32(x[i]) + coef[2 * c + ch]);
    if (dsum) dsum[i] = from_f32<T>(g);
}
KERNEL void bn_backward_dx(const float* __restrict__ x, const float* __restrict__ y,
                           const float* __restrict__ dy, const float* __restrict__ coef, int n,
                           int c, float* __restrict__ dx, float* __restrict__ dsum) {
    bn_backward_dx_impl(x, y, dy, coef, n, c, dx, dsum);
}
KERNEL void bn_backward_dx_bf16(const bf16* __restrict__ x, const bf16* __restrict__ y,
                                const bf16* __restrict__ dy, const float* __restrict__ coef,
                                int n, int c, bf16* __restrict__ dx, bf16* __restrict__ dsum) {
    bn_backward_dx_impl(x, y, dy, coef, n, c, dx, dsum);
}

REGISTER_KERNEL(bn_stats_partial);
REGISTER_KERNEL(bn_stats_partial_bf16);
REGISTER_KERNEL(bn_stats_finalize);
REGISTER_KERNEL(bn_eval_coef);
REGISTER_KERNEL(bn_affine);
REGISTER_KERNEL(bn_affine_bf16);
REGISTER_KERNEL(bn_update_running);
REGISTER_KERNEL(bn_backward_partial);
REGISTER_KERNEL(bn_backward_partial_bf16);
REGISTER_KERNEL(bn_backward_finalize);
REGISTER_KERNEL(bn_backward_dx);
REGISTER_KERNEL(bn_backward_dx_bf16);
