// Convolution forward, y = conv(x, w) with x NHWC, w KRSC, y NHWC (kernels/conv.cu's top
// comment explains the implicit GEMM: M = N·P·Q output pixels, Ng = K filters, Kg = R·S·C).
// The versions, each checked against a CPU reference and timed (see dev/README.md):
//   v1 naive         one thread per output element, f32
//   v2 simt_f32      kernels/conv.cu's conv_forward: 64×64 tiles in shared memory, f32 FMA
//   v3 mma_1stage    bf16 tensor cores (mma.sync), 128×128 tiles, one synchronous stage
//   v4 tc_pipelined  kernels/conv_tc.cu's conv_forward_bf16: v3 plus a 4-stage cp.async ring
//                    and XOR-swizzled tiles (the kernel the project runs)
//
// Build: dev/cuda/build.sh. Run: target/dev-cuda/conv_forward [version] [--n 32 --h 14 ...]
// (version: a number or a name; all of them by default). Exits 1 when a version fails its check.
#include "common.cuh"  // kernels/common.cuh (-I kernels): bf16, mma, ldmatrix, 16-byte loads

// The project's kernels, included rather than copied so that the numbers are the project's.
// conv.cu and conv_tc.cu both define BM, BN, BK in anonymous namespaces, which clash in one
// translation unit, so each goes into a namespace of its own. common.cuh (#pragma once) is
// included above at global scope, so the includes inside these namespaces are empty.
namespace simt {
#include "../../kernels/conv.cu"
}
namespace tc {
#include "../../kernels/conv_tc.cu"
}

#include "common.h"

// ---- v1: naive ---------------------------------------------------------------------------
// Thread idx computes y[idx] = y[n, p, q, k] (k fastest, so a warp's stores are contiguous).
// Every operand is read from global memory for every multiply-add; the caches do what they can.
__global__ void conv_forward_naive(const float* x, const float* w, float* y, int N, int H, int W,
                                   int C, int K, int R, int S, int stride, int pad, int P, int Q) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= N * P * Q * K) return;
    int k = idx % K, q = idx / K % Q, p = idx / (K * Q) % P, n = idx / (K * Q * P);
    float acc = 0.0f;
    for (int r = 0; r < R; r++) {
        int ih = p * stride - pad + r;
        if (ih < 0 || ih >= H) continue;
        for (int s = 0; s < S; s++) {
            int iw = q * stride - pad + s;
            if (iw < 0 || iw >= W) continue;
            const float* xp = x + ((n * H + ih) * W + iw) * C;
            const float* wp = w + ((k * R + r) * S + s) * C;
            for (int c = 0; c < C; c++) acc = fmaf(xp[c], wp[c], acc);
        }
    }
    y[idx] = acc;
}

// ---- v3: mma_1stage ----------------------------------------------------------------------
// The implicit GEMM on the tensor cores, as simple as it gets: the block (256 threads, 8 warps
// as 2 × 4) computes a 128 × 128 tile of y, each warp 64 × 32 of it as 4 × 4 mma.sync m16n8k16
// tiles. Per 32-deep step of the reduction, all threads copy both operand tiles into shared
// memory with plain 16-byte loads, wait at a barrier, compute, and wait again before the next
// copy: the loads' latency is exposed every step, which v4's cp.async ring hides.
// Needs C % 8 == 0: a 16-byte chunk of 8 reduction indices (r, s, c..c+7) then stays in one
// filter tap, so it is 8 contiguous (and 16-byte aligned) elements of x and of w.
namespace mma1 {
constexpr int BM = 128, BN = 128, BK = 32;
// Row pitch of the shared tiles, in bf16: 8 more than BK, so that the 8 rows an ldmatrix phase
// reads (80 bytes apart) start in 8 different 4-bank groups. With pitch 32 (64 bytes), rows
// 0, 2, 4, 6 would share banks: a 4-way conflict on every fragment load, which v4's swizzle
// avoids without the padding.
constexpr int LD = BK + 8;
}  // namespace mma1

__global__ void __launch_bounds__(256, 2)
conv_forward_mma_1stage(const bf16* __restrict__ x, const bf16* __restrict__ w, bf16* __restrict__ y,
                        int N, int H, int W, int C, int K, int R, int S, int stride, int pad, int P,
                        int Q) {
    using namespace mma1;
    __shared__ __align__(16) bf16 As[BM][LD];  // im2col(x): rows = output pixels, 32 k
    __shared__ __align__(16) bf16 Bs[BN][LD];  // w: rows = filters, 32 k
    const int M = N * P * Q, Kg = R * S * C;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    const int wm = warp / 4 * 64, wn = warp % 4 * 32;  // the warp's 64 × 32 sub-tile

    // Thread t copies the 16-byte chunks at rows t / 4 and t / 4 + 64, k 8·(t % 4), of both
    // tiles. Image and window corner of its two output pixels (image −1: past M):
    const int kc = t % 4 * 8;
    int img[2], h0[2], w0[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int m = m0 + t / 4 + 64 * i;
        img[i] = m < M ? m / (P * Q) : -1;
        h0[i] = m / Q % P * stride - pad;
        w0[i] = m % Q * stride - pad;
    }

    float acc[4][4][4] = {};
    for (int k0 = 0; k0 < Kg; k0 += BK) {
        const int kk = k0 + kc;  // this thread's chunk: tap (r, s), channels c .. c + 7
        const int r = kk / (S * C), s = kk / C % S, c = kk % C;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int row = t / 4 + 64 * i;
            const int ih = h0[i] + r, iw = w0[i] + s;
            uint4 a = {0u, 0u, 0u, 0u};  // zeros: padding, past M, past Kg
            if (kk < Kg && img[i] >= 0 && ih >= 0 && ih < H && iw >= 0 && iw < W)
                a = load_16B(x + (((size_t)img[i] * H + ih) * W + iw) * C + c);
            store_16B(&As[row][kc], a);
            uint4 b = {0u, 0u, 0u, 0u};
            if (kk < Kg && n0 + row < K) b = load_16B(w + (size_t)(n0 + row) * Kg + kk);
            store_16B(&Bs[row][kc], b);
        }
        __syncthreads();  // the tiles are complete

        // Fragments as mma_bf16_m16n8k16 wants them: lane l gives the address of row l % 8 of
        // 8×8 matrix l / 8 to ldmatrix_x4, which hands every lane its pairs of all four.
        const int mi = lane / 8, mr = lane % 8;
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            // B (16 k × 8 filters per n-tile): matrices (filters 0-7, k 0-7), (0-7, 8-15),
            // (8-15, 0-7), (8-15, 8-15) are b[2p][0], b[2p][1], b[2p+1][0], b[2p+1][1].
            uint32_t b[4][2];
#pragma unroll
            for (int p = 0; p < 2; p++) {
                uint32_t f[4];
                ldmatrix_x4(f, &Bs[wn + 16 * p + 8 * (mi / 2) + mr][ks + 8 * (mi % 2)]);
                b[2 * p][0] = f[0];
                b[2 * p][1] = f[1];
                b[2 * p + 1][0] = f[2];
                b[2 * p + 1][1] = f[3];
            }
            // A (16 pixels × 16 k per m-tile): matrices (pixels 0-7, k 0-7), (8-15, 0-7),
            // (0-7, 8-15), (8-15, 8-15) are a[0..3].
#pragma unroll
            for (int mt = 0; mt < 4; mt++) {
                uint32_t a[4];
                ldmatrix_x4(a, &As[wm + 16 * mt + 8 * (mi % 2) + mr][ks + 8 * (mi / 2)]);
#pragma unroll
                for (int nt = 0; nt < 4; nt++) mma_bf16_m16n8k16(acc[mt][nt], a, b[nt], acc[mt][nt]);
            }
        }
        __syncthreads();  // everyone is done reading before the next step overwrites the tiles
    }

    // acc[mt][nt] holds (pixel g, filters 2q, 2q + 1) and (pixel g + 8, the same filters) of
    // the 16 × 8 tile (mt, nt), g = lane / 4, q = lane % 4.
    const int g = lane / 4, q2 = lane % 4 * 2;
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            int m = m0 + wm + 16 * mt + g + 8 * half;
            if (m >= M) continue;
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
#pragma unroll
                for (int v = 0; v < 2; v++) {
                    int n = n0 + wn + 8 * nt + q2 + v;
                    if (n < K) y[(size_t)m * K + n] = float_to_bf16(acc[mt][nt][2 * half + v]);
                }
            }
        }
    }
}

// ---- host ----------------------------------------------------------------------------------

// y[n, p, q, k] = Σ_{r,s,c} x[n, p·stride − pad + r, q·stride − pad + s, c] · w[k, r, s, c],
// summed in double: exact enough to judge f32 and bf16 results alike.
std::vector<double> conv_forward_reference(const std::vector<float>& x, const std::vector<float>& w,
                                           const ConvShape& sh) {
    const int P = sh.p(), Q = sh.q();
    std::vector<double> y(sh.y_len());
    parallel_for(sh.n * P, [&](int np) {  // one row of output pixels per task
        const int n = np / P, p = np % P;
        for (int q = 0; q < Q; q++) {
            for (int k = 0; k < sh.k; k++) {
                double acc = 0.0;
                for (int r = 0; r < sh.r; r++) {
                    int ih = p * sh.stride - sh.pad + r;
                    if (ih < 0 || ih >= sh.h) continue;
                    for (int s = 0; s < sh.s; s++) {
                        int iw = q * sh.stride - sh.pad + s;
                        if (iw < 0 || iw >= sh.w) continue;
                        const float* xp = &x[(((size_t)n * sh.h + ih) * sh.w + iw) * sh.c];
                        const float* wp = &w[(((size_t)k * sh.r + r) * sh.s + s) * sh.c];
                        for (int c = 0; c < sh.c; c++) acc += (double)xp[c] * wp[c];
                    }
                }
                y[(((size_t)n * P + p) * Q + q) * sh.k + k] = acc;
            }
        }
    });
    return y;
}

// The device tensors: f32 for v1 and v2, bf16 for v3 and v4.
struct Buffers {
    float *x32, *w32, *y32;
    bf16 *x16, *w16, *y16;
};

// conv_tc.cu's dynamic shared memory: STAGES stages of one A and one B tile (64 KiB).
constexpr int TC_SHARED_BYTES = tc::STAGES * 2 * tc::TILE * (int)sizeof(bf16);

// Launches version `number` once (asynchronously).
void launch(int number, const Buffers& b, const ConvShape& sh) {
    const int N = sh.n, H = sh.h, W = sh.w, C = sh.c, K = sh.k, R = sh.r, S = sh.s;
    const int P = sh.p(), Q = sh.q(), M = N * P * Q;
    switch (number) {
        case 1:
            conv_forward_naive<<<ceil_div(M * K, 256), 256>>>(b.x32, b.w32, b.y32, N, H, W, C, K, R, S,
                                                             sh.stride, sh.pad, P, Q);
            break;
        case 2: {
            dim3 grid(ceil_div(M, simt::BM), ceil_div(K, simt::BN));
            simt::conv_forward<<<grid, 256>>>(b.x32, b.w32, b.y32, N, H, W, C, K, R, S, sh.stride,
                                              sh.pad, P, Q);
            break;
        }
        case 3: {
            dim3 grid(ceil_div(M, mma1::BM), ceil_div(K, mma1::BN));
            conv_forward_mma_1stage<<<grid, 256>>>(b.x16, b.w16, b.y16, N, H, W, C, K, R, S,
                                                   sh.stride, sh.pad, P, Q);
            break;
        }
        case 4: {
            dim3 grid(ceil_div(M, tc::BM), ceil_div(K, tc::BN));
            int vec = C % 8 == 0 && K % 8 == 0;  // the 16-byte cp.async path
            tc::conv_forward_bf16<<<grid, tc::THREADS, TC_SHARED_BYTES>>>(
                b.x16, b.w16, b.y16, N, H, W, C, K, R, S, sh.stride, sh.pad, P, Q, vec);
            break;
        }
    }
}

int main(int argc, char** argv) {
    // Default: a ResNet-50 layer3 3×3 convolution, at batch 32 so that the CPU reference is quick.
    ConvShape sh{32, 14, 14, 256, 256, 3, 3, 1, 1};
    int warmup = 5, runs = 20;
    const char* selected =
        parse_args(argc, argv, {CONV_OPTIONS(sh), {"--warmup", &warmup}, {"--runs", &runs}}, CONV_USAGE);
    if (!sh.valid() || runs < 1) {
        fprintf(stderr, "invalid shape or --runs\n");
        return 1;
    }
    const std::vector<Version> chosen = select_versions(
        {{1, "naive", false}, {2, "simt_f32", false}, {3, "mma_1stage", true}, {4, "tc_pipelined", true}},
        selected);
    sh.print();

    // Inputs rounded to bf16 once: the f32 versions read the same values as the bf16 ones.
    std::vector<float> x = random_uniform(sh.x_len(), 1), w = random_uniform(sh.w_len(), 2);
    round_to_bf16(x);
    round_to_bf16(w);
    const std::vector<double> ref = conv_forward_reference(x, w, sh);

    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s\n", prop.name);
    CUDA_CHECK(cudaFuncSetAttribute(tc::conv_forward_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    TC_SHARED_BYTES));
    const Buffers b{to_device(x),
                    to_device(w),
                    device_alloc<float>(sh.y_len()),
                    reinterpret_cast<bf16*>(to_device(to_bf16(x))),
                    reinterpret_cast<bf16*>(to_device(to_bf16(w))),
                    device_alloc<bf16>(sh.y_len())};

    bool all_pass = true;
    for (const Version& v : chosen) {
        if (v.number == 3 && sh.c % 8 != 0) {
            printf("v3 %-14s SKIP (needs C %% 8 == 0)\n", v.name);
            continue;
        }
        void* y = v.bf16 ? (void*)b.y16 : (void*)b.y32;
        auto run = [&] { launch(v.number, b, sh); };
        if (!run_version(v, y, sh.y_len(), ref, sh.flops(), warmup, runs, run)) all_pass = false;
    }

    for (void* p : {(void*)b.x32, (void*)b.w32, (void*)b.y32, (void*)b.x16, (void*)b.w16, (void*)b.y16})
        CUDA_CHECK(cudaFree(p));
    printf(all_pass ? "all versions run PASS\n" : "a version FAILED\n");
    return all_pass ? 0 : 1;
}
