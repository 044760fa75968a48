// 2-D convolution on the tensor cores: the three implicit GEMMs of kernels/conv.cu (read its top
// comment first: the same layouts x NHWC, w KRSC, y NHWC and the same gathers) with bf16
// operands and f32 accumulation. conv.cu's f32 kernels stay the reference path (--precision f32).
//
//   forward  y[m, k]   = Σ_kk A[m, kk] · w[k, kk]      A = im2col(x), kk = (r, s, c)
//   dgrad    dx[m, c]  = Σ_kk A[m, kk] · w[k, r, s, c]  A = dy gathered, kk = (r, s, k)
//   wgrad    dw[k, kk] = Σ_m dy[m, k] · A[m, kk]        split over m, fixed-order sum
//
// Block: 256 threads (8 warps as 2 × 4) compute a 128 × 128 tile of the output; each warp a
// 64 × 32 tile as 4 × 4 mma.sync m16n8k16 tiles (64 f32 accumulators per thread). The reduction
// is walked 32 deep per step through a STAGES-deep ring of shared-memory tiles filled by cp.async
// 16-byte copies (zero-fill for the halo, the padding and the edges), so the copies for step
// t + STAGES − 1 fly while step t computes. Fragments come out of shared memory with ldmatrix.
//
// Each operand tile is stored one of two ways, following its contiguous dimension in global
// memory (so one 16-byte copy moves 8 neighbours):
//   "k-major"  [128 rows][32 k]   the 8 elements of a copy run along the reduction (x and w in
//              forward, dy in dgrad): ldmatrix reads it directly;
//   "mn-major" [32 k][128 cols]   they run along the tile's rows or columns (w in dgrad, dy and x
//              in wgrad): ldmatrix.trans reads it transposed.
// Both are swizzled: the 16-byte chunk j of row r is stored at chunk j ^ f(r), so the 8 rows an
// ldmatrix phase reads (and a warp's copies write) hit 8 different bank groups.
//
// The 16-byte path needs C and K multiples of 8 (every ResNet layer but the stem); otherwise the
// same pipeline loads element by element (VEC = false), slower but exact.
//
// Stride-2 input gradients: an input pixel (h, w) is tapped only by the filter rows r with
// (h + pad − r) divisible by the stride. Grid z enumerates the stride² phases (h mod stride,
// w mod stride); a phase's GEMM runs over its pixels and its valid taps only, instead of all R·S
// taps of which 3/4 are zero for stride 2 (a phase with no tap writes zeros).
#include "common.cuh"

namespace {

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int STAGES = 4;
constexpr int THREADS = 256;
constexpr int TILE = BM * BK;  // elements of one operand's tile in one stage (BN · BK too)
static_assert(BM == BN, "the mn-major tiles of A and B share one row length");

// Element offsets of (row, col) in the swizzled tiles (see the top comment).
DEVICE inline int kmajor_at(int row, int k) { return row * BK + (((k >> 3) ^ ((row >> 1) & 3)) << 3) + (k & 7); }
DEVICE inline int mnmajor_at(int k, int col) { return k * BM + (((col >> 3) ^ (k & 7)) << 3) + (col & 7); }

// A mixed-radix index (a, b, c) with c < nc and b < nb, advanced without a division in the
// common case (step < nc): the loaders walk the reduction this way, 32 at a time.
struct Index3 {
    int a, b, c;
    DEVICE void set(int v, int nb, int nc) {
        c = v % nc;
        v /= nc;
        b = v % nb;
        a = v / nb;
    }
    DEVICE void advance(int step, int nb, int nc) {
        c += step;
        if (c >= nc) {
            int carry = c / nc;
            c -= carry * nc;
            b += carry;
            if (b >= nb) {
                carry = b / nb;
                b -= carry * nb;
                a += carry;
            }
        }
    }
};

struct Shape {
    int N, H, W, C, K, R, S, stride, pad, P, Q;
};

// ---------------------------------------------------------------------------------------------
// The operand loaders. Each thread owns two 16-byte chunks of each operand's tile per step, at a
// fixed place in the tile: k-major chunk e = t + 256i is row e / 4, k-chunk e % 4; mn-major
// chunk e is k-row e / 16, column chunk e % 16. `load<VEC>(shape, tile, first, bound, k0, k_end)`
// fills one stage for the reduction slice starting at k0 (< k_end) and steps its trackers by BK;
// `first` and `bound` are the tile's first row (column, for B) and the M (N) dimension, which
// the loaders that precompute their rows in `init` do not need.

// Copies 8 elements into the swizzled chunk at dst: 16 bytes by cp.async from elem(0) (zeros
// when it is null), or, without VEC, element by element from elem(e) (null = zero). `base` is
// the operand's own (global) address, which a zero-filling copy names but does not read.
template <bool VEC, typename F>
DEVICE inline void fill_chunk(bf16* dst, const bf16* base, F elem) {
    if (VEC) {
        const bf16* src = elem(0);
        cp_async_16(dst, src ? src : base, src ? 16 : 0);
    } else {
        // The slow path: kept small (not unrolled) so it costs the fast one no registers.
        const bf16 zero = float_to_bf16(0.0f);
#pragma unroll 1
        for (int e = 0; e < 8; e++) {
            const bf16* src = elem(e);
            dst[e] = src ? *src : zero;
        }
    }
}

// Forward A: im2col(x), k-major. Rows are output pixels (n, p, q), k = (r, s, c).
struct ForwardA {
    const bf16* x;
    int img[2] = {}, h0[2] = {}, w0[2] = {};  // per owned row: image, window corner (−1 image: past M)
    Index3 k = {};             // (r, s, c) of this thread's k-chunk
    DEVICE void init(const Shape& s, int m0, int M, int k0) {
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int m = m0 + (threadIdx.x + THREADS * i) / 4;
            int pq = m % (s.P * s.Q);
            img[i] = m < M ? m / (s.P * s.Q) : -1;
            h0[i] = pq / s.Q * s.stride - s.pad;
            w0[i] = pq % s.Q * s.stride - s.pad;
        }
        k.set(k0 + threadIdx.x % 4 * 8, s.S, s.C);
    }
    template <bool VEC>
    DEVICE void load(const Shape& s, bf16* tile, int, int, int k0, int k_end) {
        int kc = threadIdx.x % 4 * 8;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int row = (threadIdx.x + THREADS * i) / 4;
            auto elem = [&](int e) -> const bf16* {
                Index3 ke = k;
                ke.advance(e, s.S, s.C);
                int ih = h0[i] + ke.a, iw = w0[i] + ke.b;
                bool in = img[i] >= 0 && k0 + kc + e < k_end && ih >= 0 && ih < s.H && iw >= 0 &&
                          iw < s.W;
                return in ? x + (((size_t)img[i] * s.H + ih) * s.W + iw) * s.C + ke.c : nullptr;
            };
            fill_chunk<VEC>(tile + kmajor_at(row, kc), x, elem);
        }
        k.advance(BK, s.S, s.C);
    }
};

// Forward B: the weights w[k_out, kk], k-major (rows are filters).
struct ForwardB {
    const bf16* w;
    template <bool VEC>
    DEVICE void load(const Shape& s, bf16* tile, int n0, int Ng, int k0, int k_end) {
        int kg = s.R * s.S * s.C, kc = threadIdx.x % 4 * 8;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int row = (threadIdx.x + THREADS * i) / 4, n = n0 + row;
            auto elem = [&](int e) -> const bf16* {
                int kk = k0 + kc + e;
                return n < Ng && kk < k_end ? w + (size_t)n * kg + kk : nullptr;
            };
            fill_chunk<VEC>(tile + kmajor_at(row, kc), w, elem);
        }
    }
};

// The taps of one stride phase of the input gradient: filter rows r0, r0 + stride, ... (nr of
// them), likewise columns, and the phase's pixel grid hp × wp.
struct Phase {
    int ph, pw, r0, s0, nr, ns, hp, wp;
    DEVICE Phase(const Shape& s, int z) {
        ph = z / s.stride;
        pw = z % s.stride;
        r0 = (ph + s.pad) % s.stride;
        s0 = (pw + s.pad) % s.stride;
        nr = r0 < s.R ? (s.R - r0 + s.stride - 1) / s.stride : 0;
        ns = s0 < s.S ? (s.S - s0 + s.stride - 1) / s.stride : 0;
        hp = ph < s.H ? (s.H - ph + s.stride - 1) / s.stride : 0;
        wp = pw < s.W ? (s.W - pw + s.stride - 1) / s.stride : 0;
    }
    // The input pixel (n, h, w) of phase row m, as an offset in pixels.
    DEVICE size_t pixel(const Shape& s, int m) const {
        int n = m / (hp * wp), i = m % (hp * wp);
        int h = ph + i / wp * s.stride, w = pw + i % wp * s.stride;
        return ((size_t)n * s.H + h) * s.W + w;
    }
};

// Input gradient A: dy gathered, k-major. Rows are the phase's input pixels, k = (ri, si, k_out)
// for the tap (r0 + ri·stride, s0 + si·stride), which reads dy at p = (h + pad − r) / stride.
struct BackwardInputA {
    const bf16* dy;
    const Phase& ph;  // one copy for both loaders: registers are the scarce resource
    int img[2] = {}, pb[2] = {}, qb[2] = {};  // per owned row: image, p and q of the tap ri = si = 0
    Index3 k = {};
    DEVICE void init(const Shape& s, int m0, int M, int k0) {
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int m = m0 + (threadIdx.x + THREADS * i) / 4;
            int pix = m % (ph.hp * ph.wp);
            img[i] = m < M ? m / (ph.hp * ph.wp) : -1;
            pb[i] = (ph.ph + pix / ph.wp * s.stride + s.pad - ph.r0) / s.stride;
            qb[i] = (ph.pw + pix % ph.wp * s.stride + s.pad - ph.s0) / s.stride;
        }
        k.set(k0 + threadIdx.x % 4 * 8, ph.ns, s.K);
    }
    template <bool VEC>
    DEVICE void load(const Shape& s, bf16* tile, int, int, int k0, int k_end) {
        int kc = threadIdx.x % 4 * 8;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int row = (threadIdx.x + THREADS * i) / 4;
            auto elem = [&](int e) -> const bf16* {
                Index3 ke = k;
                ke.advance(e, ph.ns, s.K);
                int p = pb[i] - ke.a, q = qb[i] - ke.b;
                bool in = img[i] >= 0 && k0 + kc + e < k_end && p >= 0 && p < s.P && q >= 0 &&
                          q < s.Q;
                return in ? dy + (((size_t)img[i] * s.P + p) * s.Q + q) * s.K + ke.c : nullptr;
            };
            fill_chunk<VEC>(tile + kmajor_at(row, kc), dy, elem);
        }
        k.advance(BK, ph.ns, s.K);
    }
};

// Input gradient B: w[k_out, r, s, c] at k = (ri, si, k_out), column c; mn-major (c is
// contiguous). The tracker follows this thread's first k-row; the second is 16 further.
struct BackwardInputB {
    const bf16* w;
    const Phase& ph;
    Index3 k = {};
    DEVICE void init(const Shape& s, int k0) { k.set(k0 + threadIdx.x / 16, ph.ns, s.K); }
    template <bool VEC>
    DEVICE void load(const Shape& s, bf16* tile, int n0, int Ng, int k0, int k_end) {
        int col = threadIdx.x % 16 * 8;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int krow = (threadIdx.x + THREADS * i) / 16;
            Index3 ki = k;
            if (i == 1) ki.advance(THREADS / 16, ph.ns, s.K);
            int r = ph.r0 + ki.a * s.stride, sc = ph.s0 + ki.b * s.stride;
            const bf16* base = w + (((size_t)ki.c * s.R + r) * s.S + sc) * s.C;
            bool row_in = k0 + krow < k_end;
            auto elem = [&](int e) -> const bf16* {
                return row_in && n0 + col + e < Ng ? base + n0 + col + e : nullptr;
            };
            fill_chunk<VEC>(tile + mnmajor_at(krow, col), w, elem);
        }
        k.advance(BK, ph.ns, s.K);
    }
};

// Weight gradient A: dy[pixel, k_out] read as the [k_out, pixel] operand: mn-major.
struct BackwardWeightA {
    const bf16* dy;
    template <bool VEC>
    DEVICE void load(const Shape& s, bf16* tile, int m0, int M, int k0, int k_end) {
        int col = threadIdx.x % 16 * 8;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int krow = (threadIdx.x + THREADS * i) / 16, pix = k0 + krow;
            auto elem = [&](int e) -> const bf16* {
                return pix < k_end && m0 + col + e < M ? dy + (size_t)pix * s.K + m0 + col + e : nullptr;
            };
            fill_chunk<VEC>(tile + mnmajor_at(krow, col), dy, elem);
        }
    }
};

// Weight gradient B: im2col(x) [pixel, (r, s, c)], mn-major. Columns are fixed per thread; the
// pixel (n, p, q) of the first k-row is tracked, the second is 16 further.
struct BackwardWeightB {
    const bf16* x;
    Index3 pix = {};  // (n, p, q) of this thread's first k-row
    Index3 tap = {};  // (r, s, c) of this thread's column chunk
    DEVICE void init(const Shape& s, int n0, int k0) {
        pix.set(k0 + threadIdx.x / 16, s.P, s.Q);
        tap.set(n0 + threadIdx.x % 16 * 8, s.S, s.C);
    }
    template <bool VEC>
    DEVICE void load(const Shape& s, bf16* tile, int n0, int Ng, int k0, int k_end) {
        int col = threadIdx.x % 16 * 8;
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int krow = (threadIdx.x + THREADS * i) / 16;
            Index3 pi = pix;
            if (i == 1) pi.advance(THREADS / 16, s.P, s.Q);
            int ih0 = pi.b * s.stride - s.pad, iw0 = pi.c * s.stride - s.pad;
            bool row_in = k0 + krow < k_end;
            auto elem = [&](int e) -> const bf16* {
                Index3 te = tap;
                te.advance(e, s.S, s.C);
                int ih = ih0 + te.a, iw = iw0 + te.b;
                bool in = row_in && n0 + col + e < Ng && ih >= 0 && ih < s.H && iw >= 0 && iw < s.W;
                return in ? x + (((size_t)pi.a * s.H + ih) * s.W + iw) * s.C + te.c : nullptr;
            };
            fill_chunk<VEC>(tile + mnmajor_at(krow, col), x, elem);
        }
        pix.advance(BK, s.P, s.Q);
    }
};

// ---------------------------------------------------------------------------------------------
// The warp's fragments of one 16-deep slice (kk = 0 or 16) of a stage, in mma_bf16_m16n8k16's
// layout. Lane l addresses row l % 8 of 8×8 matrix l / 8.

// A (16 rows × 16 k of the m-tile at row0): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
// (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a[0..3].
template <bool KMAJOR>
DEVICE inline void load_a(const bf16* tile, int row0, int kk, uint32_t a[4]) {
    int lane = threadIdx.x % 32, i = lane / 8, j = lane % 8;
    int row = row0 + 8 * (i % 2), k = kk + 8 * (i / 2);
    if (KMAJOR) {
        ldmatrix_x4(a, tile + kmajor_at(row + j, k));
    } else {
        ldmatrix_x4_trans(a, tile + mnmajor_at(k + j, row));
    }
}

// B (16 k × 8 columns per n-tile, 4 n-tiles, two per ldmatrix_x4): matrices (cols 0-7, k 0-7),
// (cols 0-7, k 8-15), (cols 8-15, k 0-7), (cols 8-15, k 8-15) = b[2p][0..1], b[2p+1][0..1].
template <bool KMAJOR>
DEVICE inline void load_b(const bf16* tile, int wn, int kk, uint32_t b[4][2]) {
    int lane = threadIdx.x % 32, i = lane / 8, j = lane % 8;
    #pragma unroll
    for (int p = 0; p < 2; p++) {
        uint32_t r[4];
        int col = wn + 16 * p + 8 * (i / 2), k = kk + 8 * (i % 2);
        if (KMAJOR) {
            ldmatrix_x4(r, tile + kmajor_at(col + j, k));
        } else {
            ldmatrix_x4_trans(r, tile + mnmajor_at(k + j, col));
        }
        b[2 * p][0] = r[0];
        b[2 * p][1] = r[1];
        b[2 * p + 1][0] = r[2];
        b[2 * p + 1][1] = r[3];
    }
}

// The block's GEMM over the reduction slice [k_begin, k_end): the STAGES-deep cp.async ring,
// then acc holds this thread's 64 outputs (m-tile mt, n-tile nt, fragment c0..c3).
template <bool VEC, bool A_KMAJOR, bool B_KMAJOR, class A, class B>
DEVICE void mainloop(const Shape& s, A& a, B& b, int m0, int M, int n0, int Ng, int k_begin,
                     int k_end, float acc[4][4][4]) {
    DYNAMIC_SHARED(bf16, smem);
    bf16* as = smem;                // STAGES tiles of A
    bf16* bs = smem + STAGES * TILE;  // STAGES tiles of B
    const int warp = threadIdx.x / 32, wm = warp / 4 * 64, wn = warp % 4 * 32;
    #pragma unroll
    for (int mt = 0; mt < 4; mt++)
        #pragma unroll
        for (int nt = 0; nt < 4; nt++)
            #pragma unroll
            for (int v = 0; v < 4; v++) acc[mt][nt][v] = 0.0f;

    const int steps = (k_end - k_begin + BK - 1) / BK;
    auto load = [&](int step) {
        int stage = step % STAGES, k0 = k_begin + step * BK;
        a.template load<VEC>(s, as + stage * TILE, m0, M, k0, k_end);
        b.template load<VEC>(s, bs + stage * TILE, n0, Ng, k0, k_end);
    };
    // Prologue: the first STAGES − 1 steps in flight. Every iteration commits one group (empty
    // past the end), so "all but the newest STAGES − 2 groups done" always means "step t done".
    for (int step = 0; step < STAGES - 1; step++) {
        if (step < steps) load(step);
        cp_async_commit();
    }
    for (int step = 0; step < steps; step++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // step's tiles visible to all; everyone is done with step − 1's stage
        if (step + STAGES - 1 < steps) load(step + STAGES - 1);  // refills step − 1's stage
        cp_async_commit();
        const bf16* at = as + step % STAGES * TILE;
        const bf16* bt = bs + step % STAGES * TILE;
        #pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            // All of B's fragments, then A's one m-tile at a time: 12 fragment registers live
            // instead of 24, which keeps the 64 accumulators within 128 registers.
            uint32_t bf[4][2];
            load_b<B_KMAJOR>(bt, wn, kk, bf);
            #pragma unroll
            for (int mt = 0; mt < 4; mt++) {
                uint32_t af[4];
                load_a<A_KMAJOR>(at, wm + 16 * mt, kk, af);
                #pragma unroll
                for (int nt = 0; nt < 4; nt++) mma_bf16_m16n8k16(acc[mt][nt], af, bf[nt], acc[mt][nt]);
            }
        }
    }
    cp_async_wait<0>();
}

// Writes the accumulators: output row m (< M) starts at out + row(m), columns n < Ng.
template <typename T, typename RowAt>
DEVICE void store_tile(T* out, int m0, int M, int n0, int Ng, RowAt row, const float acc[4][4][4]) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 4 * 64, wn = warp % 4 * 32, g = lane / 4, t = lane % 4;
    #pragma unroll
    for (int mt = 0; mt < 4; mt++)
        #pragma unroll
        for (int half = 0; half < 2; half++) {
            int m = m0 + wm + 16 * mt + g + 8 * half;
            if (m >= M) continue;
            T* dst = out + row(m);
            #pragma unroll
            for (int nt = 0; nt < 4; nt++)
                #pragma unroll
                for (int v = 0; v < 2; v++) {
                    int n = n0 + wn + 8 * nt + 2 * t + v;
                    if (n < Ng) dst[n] = from_f32<T>(acc[mt][nt][2 * half + v]);
                }
        }
}

DEVICE inline Shape shape_of(int N, int H, int W, int C, int K, int R, int S, int stride, int pad,
                             int P, int Q) {
    return Shape{N, H, W, C, K, R, S, stride, pad, P, Q};
}

}  // namespace

// The three kernels take conv.cu's arguments; `vec` = C and K are multiples of 8 (16-byte
// copies). 256 threads, STAGES · 2 · 128 · 32 bf16 of dynamic shared memory.

// y = conv(x, w). Grid (ceil(N·P·Q / 128), ceil(K / 128)).
KERNEL void __launch_bounds__(THREADS, 2)
conv_forward_bf16(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ y,
                  int N, int H, int W, int C, int K, int R, int S, int stride, int pad, int P,
                  int Q, int vec) {
    const Shape s = shape_of(N, H, W, C, K, R, S, stride, pad, P, Q);
    const int M = N * P * Q, kg = R * S * C, m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    ForwardA a{x};
    ForwardB b{w};
    if (kg > 0) a.init(s, m0, M, 0);
    float acc[4][4][4];
    if (vec) {
        mainloop<true, true, true>(s, a, b, m0, M, n0, K, 0, kg, acc);
    } else {
        mainloop<false, true, true>(s, a, b, m0, M, n0, K, 0, kg, acc);
    }
    store_tile(y, m0, M, n0, K, [&](int m) { return (size_t)m * K; }, acc);
}

// dx = ∂L/∂x. Grid (ceil(pixels of phase 0 / 128), ceil(C / 128), stride²).
KERNEL void __launch_bounds__(THREADS, 2)
conv_backward_input_bf16(const bf16* __restrict__ dy, const bf16* __restrict__ w,
                         bf16* __restrict__ dx, int N, int H, int W, int C, int K, int R, int S,
                         int stride, int pad, int P, int Q, int vec) {
    const Shape s = shape_of(N, H, W, C, K, R, S, stride, pad, P, Q);
    const Phase ph(s, blockIdx.z);
    const int M = N * ph.hp * ph.wp, kg = ph.nr * ph.ns * K;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    if (m0 >= M) return;  // a smaller phase than phase 0
    BackwardInputA a{dy, ph};
    BackwardInputB b{w, ph};
    if (kg > 0) {  // a phase without taps only writes zeros
        a.init(s, m0, M, 0);
        b.init(s, 0);
    }
    float acc[4][4][4];
    if (vec) {
        mainloop<true, true, false>(s, a, b, m0, M, n0, C, 0, kg, acc);
    } else {
        mainloop<false, true, false>(s, a, b, m0, M, n0, C, 0, kg, acc);
    }
    store_tile(dx, m0, M, n0, C, [&](int m) { return ph.pixel(s, m) * C; }, acc);
}

// Partial dw of split z over output pixels [z·chunk, (z+1)·chunk) into dw_part + z·K·R·S·C, in
// f32 (conv.cu's conv_backward_weight_reduce sums the splits in order). chunk is a multiple of
// 32. Grid (ceil(K / 128), ceil(R·S·C / 128), splits).
KERNEL void __launch_bounds__(THREADS, 2)
conv_backward_weight_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dy,
                          float* __restrict__ dw_part, int N, int H, int W, int C, int K, int R,
                          int S, int stride, int pad, int P, int Q, int chunk, int vec) {
    const Shape s = shape_of(N, H, W, C, K, R, S, stride, pad, P, Q);
    const int ng = R * S * C, pixels = N * P * Q;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int k_begin = blockIdx.z * chunk, k_end = min(pixels, k_begin + chunk);
    BackwardWeightA a{dy};
    BackwardWeightB b{x};
    b.init(s, n0, k_begin);
    float acc[4][4][4];
    if (vec) {
        mainloop<true, false, false>(s, a, b, m0, K, n0, ng, k_begin, k_end, acc);
    } else {
        mainloop<false, false, false>(s, a, b, m0, K, n0, ng, k_begin, k_end, acc);
    }
    float* out = dw_part + (size_t)blockIdx.z * K * ng;
    store_tile(out, m0, K, n0, ng, [&](int m) { return (size_t)m * ng; }, acc);
}

REGISTER_KERNEL(conv_forward_bf16);
REGISTER_KERNEL(conv_backward_input_bf16);
REGISTER_KERNEL(conv_backward_weight_bf16);
