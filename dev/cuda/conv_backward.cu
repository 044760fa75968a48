// Convolution input gradient (dgrad), dx = ∂L/∂x from dy = ∂L/∂y and w, for strided layers;
// layouts x/dx NHWC, w KRSC, y/dy NHWC (kernels/conv.cu's top comment explains the GEMM:
// M = N·H·W input pixels, Ng = C, Kg = R·S·K). The versions (see dev/README.md):
//   v1 simt_f32   kernels/conv.cu's conv_backward_input: every input pixel runs all R·S taps;
//                 at stride 2 three taps in four meet no output pixel and multiply zeros
//   v2 tc_phases  kernels/conv_tc.cu's conv_backward_input_bf16: bf16 tensor cores, and grid z
//                 runs the stride² phases (h mod stride, w mod stride), each over its valid
//                 taps only (the kernel the project runs)
// TFLOP/s count the useful work, 2·N·P·Q·K·R·S·C, for both: the same yardstick as forward.
//
// Build: dev/cuda/build.sh. Run: target/dev-cuda/conv_backward [version] [--n 32 --h 28 ...]
// (version: a number or a name; both by default). Exits 1 when a version fails its check.
#include "common.cuh"  // kernels/common.cuh (-I kernels): bf16

// The project's kernels, each in a namespace of its own: both files define BM, BN, BK in
// anonymous namespaces (see conv_forward.cu).
namespace simt {
#include "../../kernels/conv.cu"
}
namespace tc {
#include "../../kernels/conv_tc.cu"
}

#include "common.h"

// dx[n, h, w, c] = Σ dy[n, p, q, k] · w[k, r, s, c] over the taps (r, s) and filters k with
// h = p·stride − pad + r and w = q·stride − pad + s, summed in double.
std::vector<double> conv_backward_input_reference(const std::vector<float>& dy,
                                                  const std::vector<float>& w, const ConvShape& sh) {
    const int P = sh.p(), Q = sh.q();
    std::vector<double> dx(sh.x_len());
    parallel_for(sh.n * sh.h, [&](int nh) {  // one row of input pixels per task
        const int n = nh / sh.h, h = nh % sh.h;
        std::vector<double> acc(sh.c);
        for (int iw = 0; iw < sh.w; iw++) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int r = 0; r < sh.r; r++) {
                int ph = h + sh.pad - r;  // = p·stride when output row p taps h through r
                if (ph < 0 || ph % sh.stride != 0 || ph / sh.stride >= P) continue;
                for (int s = 0; s < sh.s; s++) {
                    int qw = iw + sh.pad - s;
                    if (qw < 0 || qw % sh.stride != 0 || qw / sh.stride >= Q) continue;
                    const float* g = &dy[(((size_t)n * P + ph / sh.stride) * Q + qw / sh.stride) * sh.k];
                    for (int k = 0; k < sh.k; k++) {
                        const double gk = g[k];
                        const float* wp = &w[(((size_t)k * sh.r + r) * sh.s + s) * sh.c];
                        for (int c = 0; c < sh.c; c++) acc[c] += gk * wp[c];
                    }
                }
            }
            std::copy(acc.begin(), acc.end(), &dx[(((size_t)n * sh.h + h) * sh.w + iw) * sh.c]);
        }
    });
    return dx;
}

// The device tensors: f32 for v1, bf16 for v2.
struct Buffers {
    float *dy32, *w32, *dx32;
    bf16 *dy16, *w16, *dx16;
};

// conv_tc.cu's dynamic shared memory: STAGES stages of one A and one B tile (64 KiB).
constexpr int TC_SHARED_BYTES = tc::STAGES * 2 * tc::TILE * (int)sizeof(bf16);

// Launches version `number` once (asynchronously).
void launch(int number, const Buffers& b, const ConvShape& sh) {
    const int N = sh.n, H = sh.h, W = sh.w, C = sh.c, K = sh.k, R = sh.r, S = sh.s;
    const int P = sh.p(), Q = sh.q();
    switch (number) {
        case 1: {
            dim3 grid(ceil_div(N * H * W, simt::BM), ceil_div(C, simt::BN));
            simt::conv_backward_input<<<grid, 256>>>(b.dy32, b.w32, b.dx32, N, H, W, C, K, R, S,
                                                     sh.stride, sh.pad, P, Q);
            break;
        }
        case 2: {
            // Phase (0, 0) has the most pixels, ceil(H / stride) × ceil(W / stride) per image;
            // the blocks past a smaller phase's end return at once.
            const int phase0 = N * (int)ceil_div(H, sh.stride) * (int)ceil_div(W, sh.stride);
            dim3 grid(ceil_div(phase0, tc::BM), ceil_div(C, tc::BN), sh.stride * sh.stride);
            int vec = C % 8 == 0 && K % 8 == 0;  // the 16-byte cp.async path
            tc::conv_backward_input_bf16<<<grid, tc::THREADS, TC_SHARED_BYTES>>>(
                b.dy16, b.w16, b.dx16, N, H, W, C, K, R, S, sh.stride, sh.pad, P, Q, vec);
            break;
        }
    }
}

int main(int argc, char** argv) {
    // Default: the stride-2 3×3 convolution that opens ResNet-50's layer3 (28×28 → 14×14), at
    // batch 32 so that the CPU reference is quick.
    ConvShape sh{32, 28, 28, 256, 256, 3, 3, 2, 1};
    int warmup = 5, runs = 20;
    const char* selected =
        parse_args(argc, argv, {CONV_OPTIONS(sh), {"--warmup", &warmup}, {"--runs", &runs}}, CONV_USAGE);
    if (!sh.valid() || runs < 1) {
        fprintf(stderr, "invalid shape or --runs\n");
        return 1;
    }
    const std::vector<Version> chosen =
        select_versions({{1, "simt_f32", false}, {2, "tc_phases", true}}, selected);
    sh.print();

    // Inputs rounded to bf16 once: the f32 version reads the same values as the bf16 one.
    std::vector<float> dy = random_uniform(sh.y_len(), 3), w = random_uniform(sh.w_len(), 2);
    round_to_bf16(dy);
    round_to_bf16(w);
    const std::vector<double> ref = conv_backward_input_reference(dy, w, sh);

    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s\n", prop.name);
    CUDA_CHECK(cudaFuncSetAttribute(tc::conv_backward_input_bf16,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, TC_SHARED_BYTES));
    const Buffers b{to_device(dy),
                    to_device(w),
                    device_alloc<float>(sh.x_len()),
                    reinterpret_cast<bf16*>(to_device(to_bf16(dy))),
                    reinterpret_cast<bf16*>(to_device(to_bf16(w))),
                    device_alloc<bf16>(sh.x_len())};

    bool all_pass = true;
    for (const Version& v : chosen) {
        void* dx = v.bf16 ? (void*)b.dx16 : (void*)b.dx32;
        auto run = [&] { launch(v.number, b, sh); };
        if (!run_version(v, dx, sh.x_len(), ref, sh.flops(), warmup, runs, run)) all_pass = false;
    }

    for (void* p : {(void*)b.dy32, (void*)b.w32, (void*)b.dx32, (void*)b.dy16, (void*)b.w16, (void*)b.dx16})
        CUDA_CHECK(cudaFree(p));
    printf(all_pass ? "all versions run PASS\n" : "a version FAILED\n");
    return all_pass ? 0 : 1;
}
