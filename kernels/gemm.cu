// GEMMs for the dense layers: a tiled f32 SGEMM with transposes, and a bf16 tensor-core GEMM on
// mma.sync m16n8k16 (the fragment-layout machinery the performance work builds on; its bf16
// operands come from elementwise.cu's ew_to_bf16). All matrices are row-major.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// f32 SGEMM: C[m,n] (+)= op(A)·op(B).
// op(A)(i,p) is a[i*k + p], or a[p*m + i] when trans_a (A stored [k,m]);
// op(B)(p,j) is b[p*n + j], or b[j*k + p] when trans_b (B stored [n,k]).
// A block of 256 threads (16×16) computes a 64×64 tile of C; each thread owns a 4×4 micro-tile
// held in registers, rows ty + 16r and columns tx + 16c (strided, so a warp's shared-memory
// reads are broadcasts or consecutive words and its global stores are coalesced). k is walked in
// slabs of 16: both operands are staged in shared memory, k-major, zero-padded past the edges so
// the inner loop needs no guards.
constexpr int GEMM_BM = 64;
constexpr int GEMM_BN = 64;
constexpr int GEMM_BK = 16;
constexpr int GEMM_THREADS = 256;

KERNEL void gemm_f32(const float* __restrict__ a, const float* __restrict__ b,
                     float* __restrict__ c, int m, int n, int k, int trans_a, int trans_b,
                     int accumulate) {
    // +1 column: the loaders write down a column of these tiles, this spreads it over the banks.
    __shared__ float as[GEMM_BK][GEMM_BM + 1];
    __shared__ float bs[GEMM_BK][GEMM_BN + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;

    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int q = 0; q < 4; q++) acc[r][q] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += GEMM_BK) {
        // Consecutive threads take consecutive addresses of whichever dimension is contiguous.
        for (int e = tid; e < GEMM_BM * GEMM_BK; e += GEMM_THREADS) {
            const int i = trans_a ? e % GEMM_BM : e / GEMM_BK;
            const int p = trans_a ? e / GEMM_BM : e % GEMM_BK;
            const int gi = m0 + i, gp = k0 + p;
            float v = 0.0f;
            if (gi < m && gp < k) v = trans_a ? a[(size_t)gp * m + gi] : a[(size_t)gi * k + gp];
            as[p][i] = v;
        }
        for (int e = tid; e < GEMM_BN * GEMM_BK; e += GEMM_THREADS) {
            const int j = trans_b ? e / GEMM_BK : e % GEMM_BN;
            const int p = trans_b ? e % GEMM_BK : e / GEMM_BN;
            const int gj = n0 + j, gp = k0 + p;
            float v = 0.0f;
            if (gj < n && gp < k) v = trans_b ? b[(size_t)gj * k + gp] : b[(size_t)gp * n + gj];
            bs[p][j] = v;
        }
        __syncthreads();
#pragma unroll
        for (int p = 0; p < GEMM_BK; p++) {
            float av[4], bv[4];
#pragma unroll
            for (int r = 0; r < 4; r++) av[r] = as[p][ty + 16 * r];
#pragma unroll
            for (int q = 0; q < 4; q++) bv[q] = bs[p][tx + 16 * q];
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[r][q] = fmaf(av[r], bv[q], acc[r][q]);
        }
        __syncthreads();  // the next slab overwrites the tiles
    }

#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = m0 + ty + 16 * r;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int j = n0 + tx + 16 * q;
            if (i < m && j < n) {
                float* dst = &c[(size_t)i * n + j];
                *dst = accumulate ? *dst + acc[r][q] : acc[r][q];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 tensor-core GEMM: C[m,n] = A·Bᵀ with A [m,k] and B [n,k] bf16 row-major (B is thus the
// column-major k×n operand mma.sync's ".col" wants), C f32, accumulated in f32.
// A block of 4 warps (2×2) computes a 64×64 tile of C; each warp a 32×32 tile as 2×4 mma tiles of
// 16×8, stepping k by 16. Operands are staged in shared memory 32 deep, zero-padded past the
// edges (so any m, n, k works); rows are padded by 8 bf16 (16 bytes) so the fragment loads below
// (8 rows × 4 words per warp) land on 32 different banks.
constexpr int MMA_BM = 64;
constexpr int MMA_BN = 64;
constexpr int MMA_BK = 32;
constexpr int MMA_PAD = MMA_BK + 8;
constexpr int MMA_THREADS = 128;

KERNEL void gemm_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b,
                      float* __restrict__ c, int m, int n, int k) {
    __shared__ bf16 as[MMA_BM][MMA_PAD];
    __shared__ bf16 bs[MMA_BN][MMA_PAD];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    // PTX ISA fragment coordinates: groupID picks a row (A, C) or column (B), tig a pair of k.
    const int g = lane >> 2, tig = lane & 3;
    const int m0 = blockIdx.y * MMA_BM, n0 = blockIdx.x * MMA_BN;
    const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // this warp's tile inside the block
    const bf16 zero = float_to_bf16(0.0f);

    float acc[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int v = 0; v < 4; v++) acc[mt][nt][v] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += MMA_BK) {
        for (int e = tid; e < MMA_BM * MMA_BK; e += MMA_THREADS) {
            const int r = e / MMA_BK, p = e % MMA_BK, gp = k0 + p;
            as[r][p] = (m0 + r < m && gp < k) ? a[(size_t)(m0 + r) * k + gp] : zero;
            bs[r][p] = (n0 + r < n && gp < k) ? b[(size_t)(n0 + r) * k + gp] : zero;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MMA_BK; kk += 16) {
            const int p = kk + 2 * tig;
            // A 16×16 (row): a0 = (g, p..p+1), a1 = (g+8, p..), a2 = (g, p+8..), a3 = (g+8, p+8..).
            uint32_t af[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int r = wm + 16 * mt + g;
                af[mt][0] = pack_bf16x2(as[r][p], as[r][p + 1]);
                af[mt][1] = pack_bf16x2(as[r + 8][p], as[r + 8][p + 1]);
                af[mt][2] = pack_bf16x2(as[r][p + 8], as[r][p + 9]);
                af[mt][3] = pack_bf16x2(as[r + 8][p + 8], as[r + 8][p + 9]);
            }
            // B 16×8 (col): b0 = (k p..p+1, column g), b1 = (k p+8..p+9, column g).
            uint32_t bfr[4][2];
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const int col = wn + 8 * nt + g;
                bfr[nt][0] = pack_bf16x2(bs[col][p], bs[col][p + 1]);
                bfr[nt][1] = pack_bf16x2(bs[col][p + 8], bs[col][p + 9]);
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
                    mma_bf16_m16n8k16(acc[mt][nt], af[mt], bfr[nt], acc[mt][nt]);
        }
        __syncthreads();  // the next slab overwrites the tiles
    }

    // C 16×8: c0,c1 = (g, 2·tig + 0/1), c2,c3 = (g+8, 2·tig + 0/1).
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int v = 0; v < 4; v++) {
                const int i = m0 + wm + 16 * mt + g + 8 * (v / 2);
                const int j = n0 + wn + 8 * nt + 2 * tig + v % 2;
                if (i < m && j < n) c[(size_t)i * n + j] = acc[mt][nt][v];
            }
}

REGISTER_KERNEL(gemm_f32);
REGISTER_KERNEL(gemm_bf16);
