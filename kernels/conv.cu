// 2-D convolution (no bias) as implicit GEMM: forward, input gradient (dgrad) and weight
// gradient (wgrad). Layouts: x [N,H,W,C] (NHWC), w [K,R,S,C] (KRSC), y [N,P,Q,K] where
// P = (H + 2 pad - R) / stride + 1 and Q likewise.
//
// Each pass is a matrix product C[M,Ng] = A[M,Kg] · B[Kg,Ng] whose A or B is never stored: the
// loaders compute, for every (row, column) of a tile, which element of x or dy it stands for
// (zero where the filter window hangs over the padding), the "gather".
//
//   forward  y[m, k]  = Σ_kk A[m, kk] · w[k, kk]
//            M = N·P·Q output pixels m = (n, p, q), Ng = K filters, Kg = R·S·C, kk = (r, s, c)
//            A[m, kk] = x[n, p·stride − pad + r, q·stride − pad + s, c]       (im2col, gathered)
//   dgrad    dx[m, c] = Σ_kk A[m, kk] · w[k, r, s, c]
//            M = N·H·W input pixels m = (n, h, w), Ng = C, Kg = R·S·K, kk = (r, s, k)
//            A[m, kk] = dy[n, (h + pad − r) / stride, (w + pad − s) / stride, k] when both
//            divisions are exact and land inside dy, else 0: the input pixels that tap (h, w)
//            with filter offset (r, s). Every dx element is written once, so no scatter/atomics.
//   wgrad    dw[k, kk] = Σ_m dy[m, k] · A[m, kk]
//            M = K filters, Ng = R·S·C, Kg = N·P·Q output pixels, kk = (r, s, c)
//            (the same im2col matrix as forward, now the B operand, read transposed)
//            The reduction over N·P·Q is long and M·Ng is small in the late layers, so it is
//            split (split-K, grid z): split z sums its own range of pixels into a partial
//            dw in a workspace, and conv_backward_weight_reduce adds the partials in split
//            order. No float atomics: the result is the same bits on every run.
//
// Tiling (all three): a block of 256 threads computes a 64×64 tile of C. Per step it stages a
// 64×16 slice of A and a 16×64 slice of B in shared memory, both stored k-major (tile[kk][row])
// so the inner product reads a row of each. Thread (ty, tx) = (t / 16, t % 16) accumulates the
// 4×4 outputs at rows ty + 16i and columns tx + 16j in registers: a warp then reads 16
// consecutive B values (no bank conflicts) and writes 16 consecutive outputs (coalesced).
// Loads follow the contiguous dimension in global memory: x and w are contiguous along c, dy
// along k, so a loader runs its threads along kk when the contiguous index is part of kk
// ("k-contiguous") and along the tile's rows otherwise ("row-contiguous").
// Indices are int: every tensor must have fewer than 2^31 elements (checked on the host).
#include "common.cuh"

namespace {

constexpr int BM = 64;  // tile rows (M)
constexpr int BN = 64;  // tile columns (Ng)
constexpr int BK = 16;  // reduction depth per shared-memory step

// One step of the block's product: acc += As[0..BK) ᵀ · Bs[0..BK) for this thread's 4×4 outputs.
// The tiles carry one pad column so that k-contiguous stores (threads along kk) spread over the banks.
DEVICE inline void conv_tile_fma(const float (*As)[BM + 1], const float (*Bs)[BN + 1], int ty, int tx,
                                 float acc[4][4]) {
#pragma unroll
    for (int kk = 0; kk < BK; kk++) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            a[i] = As[kk][ty + 16 * i];
            b[i] = Bs[kk][tx + 16 * i];
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                // fmaf, not a*b+c: the emulator's C++ compiler must round exactly like the GPU.
                acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
    }
}

// Writes this thread's outputs of the tile at (m0, n0) into the row-major [M, Ng] matrix out.
DEVICE inline void conv_store_tile(float* out, int M, int Ng, int m0, int n0, int ty, int tx,
                                   const float acc[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int m = m0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int n = n0 + tx + 16 * j;
            if (m < M && n < Ng) out[m * Ng + n] = acc[i][j];
        }
    }
}

// Adds step to the last digit of the mixed-radix index (a, b, c), c < nc, b < nb, carrying
// into b and a: cheaper than dividing again for each of a thread's four loads.
DEVICE inline void conv_advance(int& a, int& b, int& c, int nb, int nc, int step) {
    c += step;
    while (c >= nc) {
        c -= nc;
        if (++b == nb) {
            b = 0;
            a++;
        }
    }
}

}  // namespace

// y = conv(x, w). Grid (ceil(N·P·Q / 64), ceil(K / 64)), 256 threads.
KERNEL void conv_forward(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                         int N, int H, int W, int C, int K, int R, int S, int stride, int pad, int P,
                         int Q) {
    __shared__ float As[BK][BM + 1];
    __shared__ float Bs[BK][BN + 1];
    const int M = N * P * Q, Kg = R * S * C;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int t = threadIdx.x, ty = t / 16, tx = t % 16;
    // Both operands are k-contiguous (x and w run along c): thread t loads column lk of tile
    // rows lr + 16i.
    const int lk = t % BK, lr = t / BK;
    // Image and window corner of the four output pixels whose A rows this thread loads.
    int img[4], ih0[4], iw0[4];
    for (int i = 0; i < 4; i++) {
        int m = m0 + lr + 16 * i;
        img[i] = m < M ? m / (P * Q) : -1;
        ih0[i] = (m / Q % P) * stride - pad;
        iw0[i] = (m % Q) * stride - pad;
    }
    float acc[4][4] = {};
    for (int k0 = 0; k0 < Kg; k0 += BK) {
        const int kk = k0 + lk;
        const int r = kk / (S * C), s = kk / C % S, c = kk % C;
        for (int i = 0; i < 4; i++) {
            int ih = ih0[i] + r, iw = iw0[i] + s;
            bool inside = kk < Kg && img[i] >= 0 && ih >= 0 && ih < H && iw >= 0 && iw < W;
            As[lk][lr + 16 * i] = inside ? x[((img[i] * H + ih) * W + iw) * C + c] : 0.0f;
            int k = n0 + lr + 16 * i;
            Bs[lk][lr + 16 * i] = kk < Kg && k < K ? w[k * Kg + kk] : 0.0f;
        }
        __syncthreads();
        conv_tile_fma(As, Bs, ty, tx, acc);
        __syncthreads();  // before the next step overwrites the tiles
    }
    conv_store_tile(y, M, K, m0, n0, ty, tx, acc);
}

// dx = ∂L/∂x from dy. Grid (ceil(N·H·W / 64), ceil(C / 64)), 256 threads.
KERNEL void conv_backward_input(const float* __restrict__ dy, const float* __restrict__ w,
                                float* __restrict__ dx, int N, int H, int W, int C, int K, int R, int S,
                                int stride, int pad, int P, int Q) {
    __shared__ float As[BK][BM + 1];
    __shared__ float Bs[BK][BN + 1];
    const int M = N * H * W, Kg = R * S * K;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int t = threadIdx.x, ty = t / 16, tx = t % 16;
    // A (dy, contiguous along k) is k-contiguous: column lk of rows lr + 16i.
    const int lk = t % BK, lr = t / BK;
    // B (w, contiguous along c = the tile's column) is row-contiguous: column bn, rows bk + 4j.
    const int bn = t % BN, bk = t / BN;
    const int c = n0 + bn;
    // Image and padded coordinates (h + pad, w + pad) of the four input pixels this thread loads.
    int img[4], hp[4], wp[4];
    for (int i = 0; i < 4; i++) {
        int m = m0 + lr + 16 * i;
        img[i] = m < M ? m / (H * W) : -1;
        hp[i] = m / W % H + pad;
        wp[i] = m % W + pad;
    }
    float acc[4][4] = {};
    for (int k0 = 0; k0 < Kg; k0 += BK) {
        int kk = k0 + lk;
        int r = kk / (S * K), s = kk / K % S, k = kk % K;
        for (int i = 0; i < 4; i++) {
            // Output pixel (p, q) that reads input (h, w) through filter tap (r, s), if any.
            int ih = hp[i] - r, iw = wp[i] - s;
            int p = ih / stride, q = iw / stride;
            bool tap = kk < Kg && img[i] >= 0 && ih >= 0 && iw >= 0 && p * stride == ih &&
                       q * stride == iw && p < P && q < Q;
            As[lk][lr + 16 * i] = tap ? dy[((img[i] * P + p) * Q + q) * K + k] : 0.0f;
        }
        kk = k0 + bk;
        r = kk / (S * K), s = kk / K % S, k = kk % K;
        for (int j = 0; j < 4; j++) {
            Bs[bk + 4 * j][bn] = kk < Kg && c < C ? w[((k * R + r) * S + s) * C + c] : 0.0f;
            kk += 4;
            conv_advance(r, s, k, S, K, 4);
        }
        __syncthreads();
        conv_tile_fma(As, Bs, ty, tx, acc);
        __syncthreads();
    }
    conv_store_tile(dx, M, C, m0, n0, ty, tx, acc);
}

// Partial dw of split z = blockIdx.z over output pixels [z·chunk, (z+1)·chunk) into
// dw_part + z·K·R·S·C (dw itself when there is one split). chunk is a multiple of 16.
// Grid (ceil(K / 64), ceil(R·S·C / 64), splits), 256 threads.
KERNEL void conv_backward_weight(const float* __restrict__ x, const float* __restrict__ dy,
                                 float* __restrict__ dw_part, int N, int H, int W, int C, int K, int R,
                                 int S, int stride, int pad, int P, int Q, int chunk) {
    __shared__ float As[BK][BM + 1];
    __shared__ float Bs[BK][BN + 1];
    const int M = K, Ng = R * S * C, Kg = N * P * Q;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int k_begin = blockIdx.z * chunk, k_end = min(Kg, k_begin + chunk);
    const int t = threadIdx.x, ty = t / 16, tx = t % 16;
    // Both operands are row-contiguous (dy along k = the tile's row, x along c = the tile's
    // column): thread t loads row/column lm at depths lk + 4j.
    const int lm = t % BM, lk = t / BM;
    const int k = m0 + lm;
    // The filter tap (r, s, c) of this thread's B column.
    const int n = n0 + lm;
    const int r = n / (S * C), s = n / C % S, c = n % C;
    float acc[4][4] = {};
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        int pix = k0 + lk;
        int b = pix / (P * Q), p = pix / Q % P, q = pix % Q;
        for (int j = 0; j < 4; j++) {
            As[lk + 4 * j][lm] = pix < k_end && k < K ? dy[pix * K + k] : 0.0f;
            int ih = p * stride - pad + r, iw = q * stride - pad + s;
            bool inside = pix < k_end && n < Ng && ih >= 0 && ih < H && iw >= 0 && iw < W;
            Bs[lk + 4 * j][lm] = inside ? x[((b * H + ih) * W + iw) * C + c] : 0.0f;
            pix += 4;
            conv_advance(b, p, q, P, Q, 4);
        }
        __syncthreads();
        conv_tile_fma(As, Bs, ty, tx, acc);
        __syncthreads();
    }
    conv_store_tile(dw_part + blockIdx.z * M * Ng, M, Ng, m0, n0, ty, tx, acc);
}

// dw[i] = Σ_z dw_part[z·len + i], summed in split order. Grid ceil(len / 256), 256 threads.
KERNEL void conv_backward_weight_reduce(const float* __restrict__ dw_part, float* __restrict__ dw,
                                        int len, int splits) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float sum = 0.0f;
    for (int z = 0; z < splits; z++) sum += dw_part[z * len + i];
    dw[i] = sum;
}

REGISTER_KERNEL(conv_forward);
REGISTER_KERNEL(conv_backward_input);
REGISTER_KERNEL(conv_backward_weight);
REGISTER_KERNEL(conv_backward_weight_reduce);
