// NT-Xent on the tensor cores: kernels/ntxent.cu's algorithm (read its top comment: the same
// loss, gradient and O(N) extra memory) with bf16 rows z and the 2N×2N similarity tiles built by
// mma.sync m16n8k16 in f32; the online softmax, the log-sum-exps and the loss stay f32.
//
// z arrives as bf16 [rows, d]; ntxent_pack_bf16 copies it to a zero-padded [rows, dp] (dp = d
// rounded up to 16) so the mma's 16-deep steps and the 16-byte copies need no edge cases (the
// zero columns add nothing to a dot product). Two passes, each block owning 64 rows i as 4 warps
// of 16 rows, walking the rows j in 64-row tiles double-buffered through cp.async:
//   ntxent_lse_bf16   s = z_i·z_jᵀ (16 × 64 per warp, in mma accumulators), folded at once into
//                     a running max and sum per row; lse_i = log Σ_{j≠i} exp(s_ij/τ).
//   ntxent_grad_bf16  the same s, turned in registers into the weights
//                     w_ij = p_ij + p_ji − 2[j = pos(i)], which ARE the A fragments of the next
//                     mma (the accumulator layout of two 16×8 tiles is the A layout of one
//                     16×16), times z_j read transposed (ldmatrix.trans): grad_i += w·z_j for a
//                     128-column slice of the gradient (grid y: more slices when dp > 128).
// Data parallelism as there: the kernels take (rows, cols, first), z is every rank's rows (the
// candidates, padded together), the anchors are its rows first..first+rows, and
// ntxent_grad_bf16's lse is every rank's candidate's, gathered. The last `queued` candidates are
// the memory's past rows, negatives only, as there.
// Shared memory: z_i and two z_j tiles of 64 × (dp + 8) bf16. The 8-element pad makes the row
// stride an odd number of 16-byte units, so the 8 rows an ldmatrix phase reads fall in 8
// different bank groups (no swizzle needed at this width). dp ≤ 256 (the host checks).
#include "common.cuh"

namespace {

constexpr int TILE = 64;      // rows i per block, rows j per step
constexpr int THREADS = 128;  // 4 warps × 16 rows i
constexpr int COLS = 128;     // gradient columns per block of ntxent_grad_bf16

// Copies rows [r0, r0 + 64) of z [rows, dp] into the tile (row stride dp + 8), zeros past the end.
DEVICE inline void load_rows(bf16* tile, const bf16* z, int rows, int dp, int r0) {
    const int chunks = dp / 8;  // 16-byte chunks per row
    for (int e = threadIdx.x; e < TILE * chunks; e += THREADS) {
        const int r = e / chunks, c = e % chunks * 8;
        const bool in = r0 + r < rows;
        const bf16* src = in ? z + (size_t)(r0 + r) * dp + c : z;
        cp_async_16(tile + r * (dp + 8) + c, src, in ? 16 : 0);
    }
}

// s = this warp's 16 rows of zi times the 64 rows of zj, transposed: s[nt] is the 16×8 tile of
// columns 8nt..8nt+7 in the mma accumulator layout (c0, c1 at row g, c2, c3 at row g + 8).
DEVICE inline void similarity(const bf16* zi, const bf16* zj, int dp, float s[8][4]) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, i = lane / 8, j = lane % 8;
    const int ld = dp + 8;
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int v = 0; v < 4; v++) s[nt][v] = 0.0f;
    for (int k = 0; k < dp; k += 16) {
        // A: rows 16·warp + (0-7 | 8-15), k (0-7 | 8-15), as conv_tc.cu's k-major tiles.
        uint32_t a[4];
        ldmatrix_x4(a, zi + (16 * warp + 8 * (i % 2) + j) * ld + k + 8 * (i / 2));
#pragma unroll
        for (int p = 0; p < 4; p++) {
            // B: rows j of two 8-row tiles, k (0-7 | 8-15): b of tiles 2p and 2p + 1.
            uint32_t b[4];
            ldmatrix_x4(b, zj + (16 * p + 8 * (i / 2) + j) * ld + k + 8 * (i % 2));
            const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
            mma_bf16_m16n8k16(s[2 * p], a, b0, s[2 * p]);
            mma_bf16_m16n8k16(s[2 * p + 1], a, b1, s[2 * p + 1]);
        }
    }
}

// The rows i (h = 0: g, h = 1: g + 8) and columns j (v = 0, 1) of accumulator s[nt][2h + v].
DEVICE inline int row_of(int i0, int h) { return i0 + 16 * (threadIdx.x / 32) + threadIdx.x % 32 / 4 + 8 * h; }
DEVICE inline int col_of(int j0, int nt, int v) { return j0 + 8 * nt + 2 * (threadIdx.x % 4) + v; }

}  // namespace

// zp[r, c] = z[r, c] for c < d, 0 for d ≤ c < dp. One thread per element of zp.
KERNEL void ntxent_pack_bf16(const bf16* __restrict__ z, int rows, int d, int dp,
                             bf16* __restrict__ zp) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= rows * dp) return;
    const int r = e / dp, c = e % dp;
    zp[e] = c < d ? z[(size_t)r * d + c] : float_to_bf16(0.0f);
}

// lse[i] for the block's 64 anchors i < rows, against the candidates j < cols of z [cols, dp].
// Grid ceil(rows / 64), 128 threads, 3 · 64 · (dp + 8) bf16 of dynamic shared memory.
KERNEL void __launch_bounds__(THREADS)
ntxent_lse_bf16(const bf16* __restrict__ z, int rows, int cols, int first, int dp, float inv_t,
                float* __restrict__ lse) {
    DYNAMIC_SHARED(bf16, smem);
    const int ld = dp + 8, i0 = blockIdx.x * TILE;
    bf16* zi = smem;
    // The two z_j buffers follow z_i: buffer b at smem + (1 + b) · 64 · ld.
    auto zj = [&](int b) { return smem + (1 + b) * TILE * ld; };
    load_rows(zi, z + (size_t)first * dp, rows, dp, i0);
    load_rows(zj(0), z, cols, dp, 0);
    cp_async_commit();

    float mx[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
    const int steps = (cols + TILE - 1) / TILE;
    for (int step = 0; step < steps; step++) {
        // The next tile flies while this one is used; its buffer was freed by the barrier that
        // ended the previous step.
        if (step + 1 < steps) load_rows(zj((step + 1) % 2), z, cols, dp, (step + 1) * TILE);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        float s[8][4];
        similarity(zi, zj(step % 2), dp, s);
        // Columns counted from this tile's first: the candidates left, and the column of the
        // block's first anchor itself (masked). So written, sm_80's ptxas fits the kernel in 72
        // registers without a spill.
        const int left = cols - step * TILE, self0 = first + i0 - step * TILE;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int v = 0; v < 2; v++) {
                    const int j = col_of(0, nt, v);
                    if (j >= left || j == row_of(self0, h)) continue;
                    const float x = s[nt][2 * h + v] * inv_t;
                    if (x > mx[h]) {
                        sum[h] = sum[h] * expf(mx[h] - x) + 1.0f;
                        mx[h] = x;
                    } else {
                        sum[h] += expf(x - mx[h]);
                    }
                }
        __syncthreads();  // everyone is done with this zj before it is refilled
    }
    cp_async_wait<0>();
    // A row's 64-column states are spread over the 4 lanes of a quad: merge by xor 1, 2.
#pragma unroll
    for (int h = 0; h < 2; h++) {
#pragma unroll
        for (int off = 1; off < 4; off *= 2) {
            const float om = __shfl_xor_sync(0xffffffff, mx[h], off);
            const float os = __shfl_xor_sync(0xffffffff, sum[h], off);
            const float m = fmaxf(mx[h], om);
            sum[h] = m == -INFINITY ? 0.0f : sum[h] * expf(mx[h] - m) + os * expf(om - m);
            mx[h] = m;
        }
        const int i = row_of(i0, h);
        if (threadIdx.x % 4 == 0 && i < rows) lse[i] = mx[h] + logf(sum[h]);
    }
}

// grad[i, c] (f32 math, stored bf16) for the block's 64 anchors and the 128 columns c0 = 128 ·
// blockIdx.y onwards (c < d), with lse [cols − queued] every rank's candidate's. Grid
// (ceil(rows / 64), ceil(dp / 128)), 128 threads, shared memory as ntxent_lse_bf16.
KERNEL void __launch_bounds__(THREADS)
ntxent_grad_bf16(const bf16* __restrict__ z, int rows, int cols, int first, int queued, int d,
                 int dp, float inv_t, const float* __restrict__ lse, bf16* __restrict__ grad) {
    DYNAMIC_SHARED(bf16, smem);
    const int ld = dp + 8, i0 = blockIdx.x * TILE, c0 = blockIdx.y * COLS;
    const int lane = threadIdx.x % 32, li = lane / 8, lj = lane % 8;
    const int half = rows / 2, ncols = min(COLS, dp - c0);  // a multiple of 16
    const int ranked = cols - queued;
    bf16* zi = smem;
    // The two z_j buffers follow z_i: buffer b at smem + (1 + b) · 64 · ld.
    auto zj = [&](int b) { return smem + (1 + b) * TILE * ld; };
    load_rows(zi, z + (size_t)first * dp, rows, dp, i0);
    load_rows(zj(0), z, cols, dp, 0);
    cp_async_commit();

    float lse_i[2];
#pragma unroll
    for (int h = 0; h < 2; h++) lse_i[h] = row_of(i0, h) < rows ? lse[first + row_of(i0, h)] : 0.0f;
    float acc[COLS / 8][4];
#pragma unroll
    for (int nt = 0; nt < COLS / 8; nt++)
#pragma unroll
        for (int v = 0; v < 4; v++) acc[nt][v] = 0.0f;

    const int steps = (cols + TILE - 1) / TILE;
    for (int step = 0; step < steps; step++) {
        const int j0 = step * TILE;
        if (step + 1 < steps) load_rows(zj((step + 1) % 2), z, cols, dp, j0 + TILE);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16* zt = zj(step % 2);
        float s[8][4];
        similarity(zi, zt, dp, s);
        // The weights, packed two per register in the A layout: 16-deep step kk covers the
        // accumulator tiles 2kk (a0, a1) and 2kk + 1 (a2, a3).
        uint32_t w[4][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            float wv[4];
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int v = 0; v < 2; v++) {
                    const int i = row_of(i0, h), j = col_of(j0, nt, v);
                    float x = 0.0f;
                    if (i < rows && j < cols && j != first + i) {
                        const float t = s[nt][2 * h + v] * inv_t;
                        x = expf(t - lse_i[h]);
                        if (j < ranked) x += expf(t - lse[j]);  // a queued row is no anchor
                        if (j == first + (i + half) % rows) x -= 2.0f;
                    }
                    wv[2 * h + v] = x;
                }
            w[nt / 2][2 * (nt % 2)] = pack_bf16x2(float_to_bf16(wv[0]), float_to_bf16(wv[1]));
            w[nt / 2][2 * (nt % 2) + 1] = pack_bf16x2(float_to_bf16(wv[2]), float_to_bf16(wv[3]));
        }
        // acc += w (16 × 64) · z_j (64 × the block's columns): z_j is [j][c], so B is read
        // transposed, two 8-column tiles per ldmatrix.
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
#pragma unroll
            for (int p = 0; p < COLS / 16; p++) {
                if (16 * p >= ncols) break;
                uint32_t b[4];
                ldmatrix_x4_trans(b, zt + (16 * kk + 8 * (li % 2) + lj) * ld + c0 + 16 * p + 8 * (li / 2));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                mma_bf16_m16n8k16(acc[2 * p], w[kk], b0, acc[2 * p]);
                mma_bf16_m16n8k16(acc[2 * p + 1], w[kk], b1, acc[2 * p + 1]);
            }
        __syncthreads();
    }
    cp_async_wait<0>();

    const float scale = inv_t / rows;
#pragma unroll
    for (int nt = 0; nt < COLS / 8; nt++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int v = 0; v < 2; v++) {
                const int i = row_of(i0, h), c = col_of(c0, nt, v);
                if (i < rows && c < d) grad[(size_t)i * d + c] = float_to_bf16(acc[nt][2 * h + v] * scale);
            }
}

REGISTER_KERNEL(ntxent_pack_bf16);
REGISTER_KERNEL(ntxent_lse_bf16);
REGISTER_KERNEL(ntxent_grad_bf16);
