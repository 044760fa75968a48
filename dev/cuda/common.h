// The harness shared by the dev/cuda programs (llm.c's dev/cuda style): CUDA error checks,
// seeded random inputs, bf16 rounding on the host, the relative-L2 check, cudaEvent timing and
// command-line parsing. Host code only; each program brings its own kernels.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <vector>

#define CUDA_CHECK(call)                                                                    \
    do {                                                                                    \
        cudaError_t err_ = (call);                                                          \
        if (err_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                   \
                    cudaGetErrorString(err_));                                              \
            exit(2);                                                                        \
        }                                                                                   \
    } while (0)

// ---- inputs ------------------------------------------------------------------------------

// n values uniform in [-1, 1) from xorshift64*: the same inputs on every machine and run.
inline std::vector<float> random_uniform(size_t n, uint64_t seed) {
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;  // nonzero for small seeds (0 is stuck)
    std::vector<float> v(n);
    for (float& x : v) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        uint64_t bits24 = (state * 0x2545F4914F6CDD1Dull) >> 40;
        x = (float)bits24 / 16777216.0f * 2.0f - 1.0f;
    }
    return v;
}

// bf16 on the host: the top 16 bits of an f32, rounded to nearest even (as the GPU's
// __float2bfloat16_rn). These inputs are finite, so NaN needs no special case.
inline uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);  // half an ulp, plus one when the kept lsb is odd
    return (uint16_t)(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Rounds every value to the nearest bf16 (kept as f32): f32 and bf16 versions then read the
// same numbers and one reference serves both.
inline void round_to_bf16(std::vector<float>& v) {
    for (float& x : v) x = bf16_bits_to_float(bf16_bits(x));
}
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = bf16_bits(v[i]);
    return out;
}

// Runs body(i) for every i in [0, count) on all CPU cores: the CPU reference is the slow part
// of a run.
template <typename Body>
void parallel_for(int count, Body body) {
    unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    std::atomic<int> next{0};
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; t++) {
        pool.emplace_back([&] {
            for (int i = next++; i < count; i = next++) body(i);
        });
    }
    for (std::thread& th : pool) th.join();
}

// ---- launches and device buffers ----------------------------------------------------------------------

// Blocks of `per_block` that cover n items.
inline unsigned ceil_div(int n, int per_block) { return (unsigned)(n / per_block + (n % per_block != 0)); }

template <typename T>
T* to_device(const std::vector<T>& v) {
    T* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, v.size() * sizeof(T)));
    CUDA_CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T>
T* device_alloc(size_t n) {
    T* d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, n * sizeof(T)));
    return d;
}
template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> v(n);
    CUDA_CHECK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
}

// ---- checking and timing -----------------------------------------------------------------

// ‖out − ref‖₂ / ‖ref‖₂. A NaN in out (an element never written: outputs are filled with NaN
// bytes before each check) makes it NaN, which fails every tolerance.
inline double rel_l2(const std::vector<float>& out, const std::vector<double>& ref) {
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < ref.size(); i++) {
        double d = (double)out[i] - ref[i];
        diff += d * d;
        norm += ref[i] * ref[i];
    }
    return std::sqrt(diff / norm);
}

// Prints one version's verdict, without ending the line (the timing follows); returns whether
// it passed.
inline bool check(const char* name, const std::vector<float>& out, const std::vector<double>& ref,
                  double tolerance) {
    double err = rel_l2(out, ref);
    bool pass = err <= tolerance;  // false for NaN
    printf("%-14s rel L2 error %.2e (tolerance %.0e) %s", name, err, tolerance, pass ? "PASS" : "FAIL");
    fflush(stdout);
    return pass;
}

// The median of `runs` timings (ms) of launch(), each between its own pair of events, after
// `warmup` untimed calls (clocks, caches, the first launch's module load).
template <typename Launch>
float median_ms(Launch launch, int warmup, int runs) {
    for (int i = 0; i < warmup; i++) launch();
    CUDA_CHECK(cudaGetLastError());
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<float> ms(runs);
    for (float& m : ms) {
        CUDA_CHECK(cudaEventRecord(start));
        launch();
        CUDA_CHECK(cudaEventRecord(stop));
        CUDA_CHECK(cudaEventSynchronize(stop));
        CUDA_CHECK(cudaEventElapsedTime(&m, start, stop));
    }
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    std::sort(ms.begin(), ms.end());
    return ms[runs / 2];
}

// ---- versions ----------------------------------------------------------------------------

// One version of the kernel a program studies.
struct Version {
    int number;        // selects it on the command line, as does its name
    const char* name;
    bool bf16;         // takes bf16 inputs and writes a bf16 output (else f32 throughout)
};

// The versions the command-line word names (a number or a name), all of them when it is null.
// Exits with status 1 when it names none.
inline std::vector<Version> select_versions(std::initializer_list<Version> all, const char* selected) {
    std::vector<Version> chosen;
    for (const Version& v : all) {
        bool named = selected && (strcmp(selected, v.name) == 0 || atoi(selected) == v.number);
        if (!selected || named) chosen.push_back(v);
    }
    if (chosen.empty()) {
        fprintf(stderr, "unknown version '%s'; the versions are", selected);
        for (const Version& v : all) fprintf(stderr, " %d %s", v.number, v.name);
        fprintf(stderr, "\n");
        exit(1);
    }
    return chosen;
}

// Checks and times one version, on one line: fills its output (`len` elements at `out`, f32 or
// bf16 as the version writes) with NaN bytes (0xFFFF is NaN in both), so that an element left
// unwritten fails; launches it once and compares with ref (tolerance 1e-2 for bf16, 1e-5 for
// f32); then times launch() and reports TFLOP/s for `flops` per launch. Returns whether it passed.
template <typename Launch>
bool run_version(const Version& v, void* out, size_t len, const std::vector<double>& ref, double flops,
                 int warmup, int runs, Launch launch) {
    printf("v%d ", v.number);
    size_t bytes = len * (v.bf16 ? 2 : 4);
    CUDA_CHECK(cudaMemset(out, 0xFF, bytes));
    launch();
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> host(len);
    if (v.bf16) {
        std::vector<uint16_t> bits = to_host(static_cast<const uint16_t*>(out), len);
        for (size_t i = 0; i < len; i++) host[i] = bf16_bits_to_float(bits[i]);
    } else {
        host = to_host(static_cast<const float*>(out), len);
    }
    bool pass = check(v.name, host, ref, v.bf16 ? 1e-2 : 1e-5);
    float ms = median_ms(launch, warmup, runs);
    printf("  %9.4f ms %7.2f TFLOP/s\n", ms, flops / (ms * 1e-3) / 1e12);
    return pass;
}

// ---- command line ------------------------------------------------------------------------

struct IntOption {
    const char* flag;  // "--n"
    int* value;        // holds the default; overwritten when the flag is given
};

// Parses `--flag value` pairs (integers in [0, 10^6], small enough that a shape's int
// arithmetic cannot overflow) and at most one bare word, the version to run, which is returned
// (nullptr: none given). Anything else prints the usage and exits with status 1.
inline const char* parse_args(int argc, char** argv, std::initializer_list<IntOption> options,
                              const char* usage) {
    auto fail = [&] {
        fprintf(stderr, "usage: %s %s\n", argv[0], usage);
        exit(1);
    };
    const char* version = nullptr;
    for (int i = 1; i < argc; i++) {
        const char* arg = argv[i];
        if (strncmp(arg, "--", 2) != 0) {
            if (version) fail();
            version = arg;
            continue;
        }
        const IntOption* option = nullptr;
        for (const IntOption& o : options) {
            if (strcmp(arg, o.flag) == 0) option = &o;
        }
        if (!option || i + 1 == argc) fail();
        const char* text = argv[++i];
        char* end;
        long v = strtol(text, &end, 10);
        if (end == text || *end != '\0' || v < 0 || v > 1000000) fail();
        *option->value = (int)v;
    }
    return version;
}

// ---- convolution shapes (every program here is a convolution) ------------------------------

// x [N,H,W,C], w [K,R,S,C], y [N,P,Q,K], as in kernels/conv.cu.
struct ConvShape {
    int n, h, w, c, k, r, s, stride, pad;
    int p() const { return (h + 2 * pad - r) / stride + 1; }
    int q() const { return (w + 2 * pad - s) / stride + 1; }
    size_t x_len() const { return (size_t)n * h * w * c; }
    size_t w_len() const { return (size_t)k * r * s * c; }
    size_t y_len() const { return (size_t)n * p() * q() * k; }
    // The multiply-adds of the convolution proper (taps over the padding included), ×2.
    double flops() const { return 2.0 * n * p() * q() * k * r * s * c; }
    // Positive sizes, a window that fits, and fewer than 2^31 elements per tensor (the
    // kernels index with int; counted in double, which cannot overflow here).
    bool valid() const {
        bool positive = n > 0 && h > 0 && w > 0 && c > 0 && k > 0 && r > 0 && s > 0 && stride > 0;
        if (!positive || h + 2 * pad < r || w + 2 * pad < s) return false;
        auto len = [](double d0, double d1, double d2, double d3) { return d0 * d1 * d2 * d3; };
        double largest = std::max({len(n, h, w, c), len(k, r, s, c), len(n, p(), q(), k)});
        return largest < 2147483648.0;
    }
    void print() const {
        printf("conv N=%d H=%d W=%d C=%d K=%d R=%d S=%d stride=%d pad=%d -> P=%d Q=%d, %.3f GFLOP\n",
               n, h, w, c, k, r, s, stride, pad, p(), q(), flops() * 1e-9);
    }
};

// The flags for a shape, in the order of the usage line CONV_USAGE.
#define CONV_OPTIONS(sh)                                                                    \
    {"--n", &(sh).n}, {"--h", &(sh).h}, {"--w", &(sh).w}, {"--c", &(sh).c}, {"--k", &(sh).k}, \
        {"--r", &(sh).r}, {"--s", &(sh).s}, {"--stride", &(sh).stride}, {"--pad", &(sh).pad}
#define CONV_USAGE                                                                          \
    "[version] [--n N] [--h H] [--w W] [--c C] [--k K] [--r R] [--s S] [--stride S] "       \
    "[--pad P] [--warmup W] [--runs R]"
