// Fused NT-Xent forward + backward over 2N L2-normalised rows z [2N, d] (rows 0..N are the first
// view, N..2N the second, so row i's positive is pos(i) = (i + N) mod 2N), temperature τ.
//
//   s_ij = z_i·z_j,  lse_i = log Σ_{j≠i} exp(s_ij/τ),  p_ij = exp(s_ij/τ − lse_i)
//   loss = mean_i (lse_i − s_i,pos(i)/τ)
//   dL/dz_i = 1/(2N·τ) · (Σ_{j≠i} (p_ij + p_ji)·z_j − 2·z_pos(i))
// The gradient is the CPU reference's (G + Gᵀ)·z/τ with G_ij = (p_ij − [j = pos(i)])/2N: s is
// symmetric, and pos(pos(i)) = i puts both positive terms on z_pos(i).
//
// Data parallelism (docs/ARCHITECTURE.md): on W ranks of 2n rows each, z is every rank's rows
// gathered rank-major (`cols` = W·2n candidates) and a rank's `rows` = 2n anchors are its own
// rows first..first + 2n of them (first = rank·2n): anchor i is row first + i, its positive
// first + (i + n) mod 2n. One process is first = 0, rows = cols = 2N. A rank's gradient is that
// of the sum of the ranks' losses (each normalised by its own 2n; the trainer averages over the
// ranks): for its row i, Σ_j (G_ij + G_ji)·z_j/τ over all candidates j. G_ij is its own anchor's;
// G_ji is anchor j's, held by rank(j), but needs only lse_j besides s_ji = s_ij, which is in this
// rank's tile anyway. So the host gathers the W·2n lse between the passes (ntxent_grad's `lse` is
// every rank's) instead of reduce-scattering the W·2n × d candidate gradients as the CPU does:
// d times less traffic, and no column gradients stored. The −2 stays at j = pos(i): the pairing
// is symmetric (pos(j) = first + i exactly when j = pos(i)).
//
// SimCLRv2's memory (MoCo-style queue): the last `queued` candidates are rows of past steps,
// extra negatives in every anchor's lse and nothing else. They are never anchors, so they have
// no lse and no G_ji: for j among them, ntxent_grad's weight is p_ij alone, and no gradient is
// computed for them (they are constants). cols = the ranks' rows + queued; lse has the ranks'.
//
// Memory: the 2N×2N similarity matrix is never stored. Three launches:
//   ntxent_lse   each block owns 64 anchors i and walks all candidates j in 64-wide tiles; a tile
//                of s lives only in registers (4×4 per thread, built from 16-deep slabs of z
//                staged in shared memory) and is folded at once into a running max / running
//                sum per row (the online softmax), so only lse_i (2n floats) reaches global
//                memory.
//   ntxent_loss  one block: mean_i (lse_i − z_i·z_pos(i)/τ) over this rank's rows, into a
//                1-float buffer.
//   ntxent_grad  recomputes the same tiles (bit-identical s), turns each into the weights
//                p_ij + p_ji − 2[j = pos(i)] in a 64×64 shared-memory tile, and multiplies that
//                tile by rows j of z into a register accumulator for the block's 64 rows i
//                (128 gradient columns per block; more blocks along y when d > 128).
// Extra device memory is therefore the lse values and the loss float: O(N), besides the O(N·d)
// gradient that is the output — never O(N²). Recomputing s costs a second 2N×2N×d pass of FLOPs
// instead. Every sum runs in a fixed order (no atomics): results are deterministic.
#include "common.cuh"

constexpr int NT_TILE = 64;     // rows i per block and rows j per step
constexpr int NT_DK = 16;       // depth of one staged slab of z
constexpr int NT_DC = 128;      // gradient columns per block of ntxent_grad
constexpr int NT_THREADS = 256; // 16×16: thread (ty, tx) owns rows ty + 16r, columns tx + 16q

// s[r][q] = z_(i0 + ty + 16r) · z_(j0 + tx + 16q), 0 for rows i ≥ i_end or j ≥ j_end (i0 and
// i_end index z: a rank's anchors are z's rows first..first + rows). zi and zj are the block's
// shared slabs (+1 column so the transposing stores spread over the banks). Every thread of the
// block must call it; it ends on a barrier, so the caller may reuse shared memory after.
DEVICE inline void similarity_tile(const float* __restrict__ z, int i_end, int j_end, int d,
                                   int i0, int j0, float (*zi)[NT_TILE + 1],
                                   float (*zj)[NT_TILE + 1], float s[4][4]) {
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int q = 0; q < 4; q++) s[r][q] = 0.0f;
    for (int p0 = 0; p0 < d; p0 += NT_DK) {
        for (int e = tid; e < NT_TILE * NT_DK; e += NT_THREADS) {
            const int row = e / NT_DK, p = p0 + e % NT_DK;
            const bool in_d = p < d;
            zi[e % NT_DK][row] = (in_d && i0 + row < i_end) ? z[(size_t)(i0 + row) * d + p] : 0.0f;
            zj[e % NT_DK][row] = (in_d && j0 + row < j_end) ? z[(size_t)(j0 + row) * d + p] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int p = 0; p < NT_DK; p++) {
            float a[4], b[4];
#pragma unroll
            for (int r = 0; r < 4; r++) a[r] = zi[p][ty + 16 * r];
#pragma unroll
            for (int q = 0; q < 4; q++) b[q] = zj[p][tx + 16 * q];
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int q = 0; q < 4; q++) s[r][q] = fmaf(a[r], b[q], s[r][q]);
        }
        __syncthreads();  // the next slab overwrites zi, zj
    }
}

// Pass 1: lse[i] = log Σ_{j≠first+i} exp(s_ij·inv_t) for the anchors i < rows against the
// candidates j < cols of z. Grid: ceil(rows/64) blocks of 256 threads.
KERNEL void ntxent_lse(const float* __restrict__ z, int rows, int cols, int first, int d,
                       float inv_t, float* __restrict__ lse) {
    __shared__ float zi[NT_DK][NT_TILE + 1];
    __shared__ float zj[NT_DK][NT_TILE + 1];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int i0 = blockIdx.x * NT_TILE;

    // Online softmax: per owned row the running max of the logits seen and the sum of
    // exp(logit − max), rescaled whenever the max grows.
    float mx[4], sum[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    for (int j0 = 0; j0 < cols; j0 += NT_TILE) {
        float s[4][4];
        similarity_tile(z, first + rows, cols, d, first + i0, j0, zi, zj, s);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = i0 + ty + 16 * r;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int j = j0 + tx + 16 * q;
                if (j >= cols || j == first + i) continue;
                const float x = s[r][q] * inv_t;
                if (x > mx[r]) {
                    sum[r] = sum[r] * expf(mx[r] - x) + 1.0f;
                    mx[r] = x;
                } else {
                    sum[r] += expf(x - mx[r]);
                }
            }
        }
    }
    // Merge the 16 partial states of a row: its threads differ only in tx, i.e. they are lanes
    // of one 16-lane half-warp, so xor-shuffles by 8, 4, 2, 1 combine them (in the same order on
    // every lane).
#pragma unroll
    for (int r = 0; r < 4; r++) {
#pragma unroll
        for (int off = 8; off > 0; off /= 2) {
            const float om = __shfl_xor_sync(0xffffffff, mx[r], off);
            const float os = __shfl_xor_sync(0xffffffff, sum[r], off);
            const float m = fmaxf(mx[r], om);
            // Both empty (m = −inf: only for rows past the end) stays empty instead of NaN.
            sum[r] = m == -INFINITY ? 0.0f : sum[r] * expf(mx[r] - m) + os * expf(om - m);
            mx[r] = m;
        }
        const int i = i0 + ty + 16 * r;
        if (tx == 0 && i < rows) lse[i] = mx[r] + logf(sum[r]);
    }
}

// loss[0] = mean_i (lse_i − z_i·z_pos(i)·inv_t) over this rank's own rows z [rows, d] and their
// lse (positives are among them, so no other rank's rows are needed). One block of 256 threads: warp w takes rows
// w, w + 8, ...; lanes split the dot product; fixed-order sums throughout. z is f32 here, or
// bf16 for the tensor-core path (kernels/ntxent_tc.cu), which shares this kernel.
template <typename T>
DEVICE void ntxent_loss_impl(const T* __restrict__ z, int rows, int d, float inv_t,
                             const float* __restrict__ lse, float* __restrict__ loss) {
    __shared__ float partial[NT_THREADS / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float total = 0.0f;
    for (int i = warp; i < rows; i += NT_THREADS / 32) {
        const int pos = (i + rows / 2) % rows;
        float dot = 0.0f;
        for (int p = lane; p < d; p += 32)
            dot = fmaf(to_f32(z[(size_t)i * d + p]), to_f32(z[(size_t)pos * d + p]), dot);
#pragma unroll
        for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffff, dot, off);
        total += lse[i] - dot * inv_t;
    }
    if (lane == 0) partial[warp] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int w = 0; w < NT_THREADS / 32; w++) sum += partial[w];
        loss[0] = sum / rows;
    }
}
KERNEL void ntxent_loss(const float* __restrict__ z, int rows, int d, float inv_t,
                        const float* __restrict__ lse, float* __restrict__ loss) {
    ntxent_loss_impl(z, rows, d, inv_t, lse, loss);
}
KERNEL void ntxent_loss_bf16(const bf16* __restrict__ z, int rows, int d, float inv_t,
                             const float* __restrict__ lse, float* __restrict__ loss) {
    ntxent_loss_impl(z, rows, d, inv_t, lse, loss);
}

// Pass 2: grad[i, c] for the block's 64 anchors i and 128 columns c (blockIdx.y picks which),
// with lse [cols − queued] every rank's candidate's, gathered. Grid: (ceil(rows/64),
// ceil(d/128)) blocks of 256 threads.
KERNEL void ntxent_grad(const float* __restrict__ z, int rows, int cols, int first, int queued,
                        int d, float inv_t, const float* __restrict__ lse,
                        float* __restrict__ grad) {
    __shared__ float zi[NT_DK][NT_TILE + 1];
    __shared__ float zj[NT_DK][NT_TILE + 1];
    __shared__ float w[NT_TILE][NT_TILE + 1];  // weights of the current 64×64 tile
    __shared__ float zv[NT_DK][NT_DC];         // 16 rows j of z, the block's 128 columns
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int i0 = blockIdx.x * NT_TILE, c0 = blockIdx.y * NT_DC;
    const int half = rows / 2, ranked = cols - queued;

    float lse_i[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = i0 + ty + 16 * r;
        lse_i[r] = i < rows ? lse[first + i] : 0.0f;
    }
    float acc[4][8];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int q = 0; q < 8; q++) acc[r][q] = 0.0f;

    for (int j0 = 0; j0 < cols; j0 += NT_TILE) {
        float s[4][4];
        similarity_tile(z, first + rows, cols, d, first + i0, j0, zi, zj, s);
        // The tile's weights (zero off the matrix and on the diagonal). The previous step's
        // readers of w are past their last barrier, and so is similarity_tile.
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int j = j0 + tx + 16 * q;
            const float lse_j = j < ranked ? lse[j] : 0.0f;
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int i = i0 + ty + 16 * r;
                float v = 0.0f;
                if (i < rows && j < cols && j != first + i) {
                    const float x = s[r][q] * inv_t;
                    v = expf(x - lse_i[r]);
                    if (j < ranked) v += expf(x - lse_j);  // a queued row is no anchor
                    if (j == first + (i + half) % rows) v -= 2.0f;
                }
                w[ty + 16 * r][tx + 16 * q] = v;
            }
        }
        // acc += w · z[j0 .. j0+64, c0 .. c0+128], 16 rows of z at a time.
        for (int jj = 0; jj < NT_TILE; jj += NT_DK) {
            for (int e = tid; e < NT_DK * NT_DC; e += NT_THREADS) {
                const int j = j0 + jj + e / NT_DC, c = c0 + e % NT_DC;
                zv[e / NT_DC][e % NT_DC] = (j < cols && c < d) ? z[(size_t)j * d + c] : 0.0f;
            }
            __syncthreads();  // zv loaded (and, on the first pass, w written)
#pragma unroll
            for (int p = 0; p < NT_DK; p++) {
                float b[8];
#pragma unroll
                for (int q = 0; q < 8; q++) b[q] = zv[p][tx + 16 * q];
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const float a = w[ty + 16 * r][jj + p];
#pragma unroll
                    for (int q = 0; q < 8; q++) acc[r][q] = fmaf(a, b[q], acc[r][q]);
                }
            }
            __syncthreads();  // the next chunk overwrites zv
        }
    }

    const float scale = inv_t / rows;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = i0 + ty + 16 * r;
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int c = c0 + tx + 16 * q;
            if (i < rows && c < d) grad[(size_t)i * d + c] = acc[r][q] * scale;
        }
    }
}

REGISTER_KERNEL(ntxent_lse);
REGISTER_KERNEL(ntxent_loss);
REGISTER_KERNEL(ntxent_loss_bf16);
REGISTER_KERNEL(ntxent_grad);
