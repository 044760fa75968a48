// The kernels' portability header: every kernels/*.cu includes this file and nothing else.
//
// The same kernel source is compiled twice (docs/ARCHITECTURE.md, "Kernels and build.rs"):
//   - by nvcc for the GPU (__CUDACC__ defined): the names below map onto CUDA's own;
//   - by the host C++ compiler for the emulator (SIMCLR_EMU defined by build.rs): the names map
//     onto kernels/emu/, which runs each CUDA thread as a fiber (see emu.h).
//
// What a kernel may use on both targets:
//   KERNEL, DEVICE, REGISTER_KERNEL(name), DYNAMIC_SHARED(T, name), __shared__, __restrict__,
//   __launch_bounds__, __forceinline__, __align__, threadIdx/blockIdx/blockDim/gridDim
//   (.x .y .z), warpSize, __syncthreads(), __syncwarp(), __shfl_sync, __shfl_xor_sync,
//   __shfl_up_sync, __shfl_down_sync (float, int, unsigned; width defaults to 32),
//   __ballot_sync, __any_sync, __all_sync (full mask 0xffffffff only; no warp operation in a
//   partial last warp), atomicAdd (float, int, unsigned), expf logf sqrtf rsqrtf fmaxf fminf
//   fabsf fmaf __expf __logf (and the rest of <math.h>), min/max (int, unsigned, float),
//   INFINITY, FLT_MAX, uint32_t, uint16_t, size_t, bf16 with float_to_bf16 / bf16_to_float /
//   pack_bf16x2, mma_bf16_m16n8k16 (tensor cores), load_16B / store_16B (uint4; the address
//   16-byte aligned), ldmatrix_x1/x2/x4 and their _trans forms (from shared memory),
//   cp_async_4/8/16 with cp_async_commit and cp_async_wait<N> (global to shared, zero-fill).
// Dynamic shared memory above 48 KiB needs the kernel's opt-in (Gpu::allow_dynamic_shared).
// Kernels must not use thread_local, recursion, exceptions or large local arrays (emulated
// threads run on 64 KiB stacks).
#pragma once

#if defined(__CUDACC__) && !defined(SIMCLR_EMU)
// ============================================================================================
// nvcc: CUDA provides almost everything; only the project's own names are defined here.
// ============================================================================================
#include <stdint.h>
#include <cuda_bf16.h>

#define KERNEL extern "C" __global__
#define DEVICE __device__
// The driver finds kernels by their extern "C" name; nothing to register.
#define REGISTER_KERNEL(name)
// `extern __shared__` arrays of different element types in one file would clash, so every
// kernel declares the same byte array (16-byte aligned for float4-sized accesses) and casts it.
#define DYNAMIC_SHARED(T, name)                                                      \
    extern __shared__ __align__(16) unsigned char simclr_dynamic_shared[];           \
    T* name = reinterpret_cast<T*>(simclr_dynamic_shared)

#ifndef INFINITY
#define INFINITY __builtin_huge_valf()
#endif
#ifndef FLT_MAX
#define FLT_MAX 3.402823466e+38f
#endif

typedef __nv_bfloat16 bf16;

DEVICE inline bf16 float_to_bf16(float x) { return __float2bfloat16_rn(x); }
DEVICE inline float bf16_to_float(bf16 x) { return __bfloat162float(x); }
// Two bf16 in one 32-bit register, `lo` in bits 0..15: the element order of mma fragments.
DEVICE inline uint32_t pack_bf16x2(bf16 lo, bf16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

// D = A·B + C for one warp: A 16×16 (row-major), B 16×8 (column-major), C and D 16×8, f32
// accumulation. Each lane holds the fragments of the PTX ISA's layout for .bf16 m16n8k16
// (groupID = lane >> 2, tig = lane & 3):
//   a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]    b[1] = B[2t+8..2t+9][g]
//   c[0], c[1] = C[g][2t], C[g][2t+1]     c[2], c[3] = C[g+8][2t], C[g+8][2t+1]   (same for d)
// (lower-indexed element in the low half of each register). d and c may be the same array.
DEVICE inline void mma_bf16_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                     const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

// 16-byte vector load and store: the address must be a multiple of 16 (a GPU faults).
DEVICE inline uint4 load_16B(const void* p) { return *reinterpret_cast<const uint4*>(p); }
DEVICE inline void store_16B(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

DEVICE inline uint32_t shared_address(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16, a warp operation: lanes 8i..8i+7
// pass the (16-byte aligned) shared-memory addresses of the eight rows of 8×8 b16 matrix i;
// lane l receives in r[i] the b16 pair at row l/4, columns 2·(l%4) and 2·(l%4)+1 of matrix i
// (of its transpose with _trans): the A/B fragment order of mma_bf16_m16n8k16.
DEVICE inline void ldmatrix_x1(uint32_t r[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(shared_address(row)));
}
DEVICE inline void ldmatrix_x2(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(row)));
}
DEVICE inline void ldmatrix_x4(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(row)));
}
DEVICE inline void ldmatrix_x1_trans(uint32_t r[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0]) : "r"(shared_address(row)));
}
DEVICE inline void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(row)));
}
DEVICE inline void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(row)));
}

// cp.async from global to shared memory, `src_bytes` of the copy's bytes read and the rest
// zero-filled (0: all zeros, for the halo and rows out of bounds); both addresses aligned to
// the copy's size. The data is there only after cp_async_wait completes its group.
// 4 and 8 bytes go through L1 (.ca); 16 bytes bypass it (.cg), as tiles streamed once should.
template <int BYTES>
DEVICE inline void cp_async_ca(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n"
                 :: "r"(shared_address(dst)), "l"(src), "n"(BYTES), "r"(src_bytes) : "memory");
}
DEVICE inline void cp_async_4(void* dst, const void* src, int n) { cp_async_ca<4>(dst, src, n); }
DEVICE inline void cp_async_8(void* dst, const void* src, int n) { cp_async_ca<8>(dst, src, n); }
DEVICE inline void cp_async_16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(shared_address(dst)), "l"(src), "r"(src_bytes) : "memory");
}
// Closes this thread's group of the copies issued since the last commit.
DEVICE inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's most recent groups are in flight.
template <int N>
DEVICE inline void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}

#elif defined(SIMCLR_EMU)
// ============================================================================================
// Emulator: plain C++20. System headers first, then the CUDA keywords are (re)defined.
// ============================================================================================
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>

#include "emu/emu.h"

// nvcc's host headers define these as EMPTY for the host compiler; were any of them in scope,
// `__shared__ float tile[..]` would silently become a per-thread local. So: undef, then define.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __restrict__
#undef __launch_bounds__
#undef __forceinline__
#undef __align__

#define __global__
#define __device__
#define __host__
// One copy per OS thread = one per block in flight (a block runs entirely on one OS thread).
// It persists across blocks and launches, so a missing barrier may read the previous block's
// values: tests check the first launch.
#define __shared__ static thread_local
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))

#define KERNEL extern "C"
#define DEVICE

// A static object per kernel whose constructor enters the kernel's launcher into the
// emulator's registry (found by name in simclr_emu_launch). The library must be linked
// whole-archive, or the linker drops these unreferenced objects.
#define REGISTER_KERNEL(name)                                                        \
    static const ::simclr_emu::Registrar simclr_emu_registrar_##name(               \
        #name, &::simclr_emu::launcher_for<&name>)

// The block's dynamic shared memory, filled with 0xFF bytes before each block (stale reads
// show as NaN).
#define DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::simclr_emu::dynamic_shared())

// The CUDA thread running now (a fiber of this OS thread).
#define threadIdx (::simclr_emu::current_thread->thread_idx)
#define blockIdx (::simclr_emu::current_thread->block_idx)
#define blockDim (::simclr_emu::current_thread->block_dim)
#define gridDim (::simclr_emu::current_thread->grid_dim)
static constexpr int warpSize = 32;

// Barriers and warp operations carry their source location, so that the emulator can name the
// barrier in a deadlock report and check that all threads wait at the same one.
#define SIMCLR_EMU_SITE(what) (::simclr_emu::Site{what, __FILE__, __LINE__})
#define __syncthreads() ::simclr_emu::syncthreads(SIMCLR_EMU_SITE("__syncthreads"))
#define __syncwarp(...) ::simclr_emu::syncwarp(SIMCLR_EMU_SITE("__syncwarp") __VA_OPT__(,) __VA_ARGS__)
#define __shfl_sync(...) \
    ::simclr_emu::shfl(::simclr_emu::ShflMode::Idx, SIMCLR_EMU_SITE("__shfl_sync"), __VA_ARGS__)
#define __shfl_xor_sync(...) \
    ::simclr_emu::shfl(::simclr_emu::ShflMode::Xor, SIMCLR_EMU_SITE("__shfl_xor_sync"), __VA_ARGS__)
#define __shfl_up_sync(...) \
    ::simclr_emu::shfl(::simclr_emu::ShflMode::Up, SIMCLR_EMU_SITE("__shfl_up_sync"), __VA_ARGS__)
#define __shfl_down_sync(...) \
    ::simclr_emu::shfl(::simclr_emu::ShflMode::Down, SIMCLR_EMU_SITE("__shfl_down_sync"), __VA_ARGS__)
#define __ballot_sync(mask, pred) \
    ::simclr_emu::ballot(SIMCLR_EMU_SITE("__ballot_sync"), (mask), (pred))
#define __any_sync(mask, pred) \
    ((int)(::simclr_emu::ballot(SIMCLR_EMU_SITE("__any_sync"), (mask), (pred)) != 0u))
#define __all_sync(mask, pred) \
    ((int)(::simclr_emu::ballot(SIMCLR_EMU_SITE("__all_sync"), (mask), (pred)) == 0xffffffffu))

// Atomics return the old value, as CUDA's do. Blocks run on several OS threads, so these must
// be real atomics; float has no hardware add, hence the compare-and-swap loop.
inline float atomicAdd(float* address, float value) {
    std::atomic_ref<float> ref(*address);
    float old = ref.load(std::memory_order_relaxed);
    while (!ref.compare_exchange_weak(old, old + value, std::memory_order_relaxed)) {
    }
    return old;
}
inline int atomicAdd(int* address, int value) {
    return std::atomic_ref<int>(*address).fetch_add(value, std::memory_order_relaxed);
}
inline unsigned atomicAdd(unsigned* address, unsigned value) {
    return std::atomic_ref<unsigned>(*address).fetch_add(value, std::memory_order_relaxed);
}

// CUDA's extra math functions; everything else comes from <math.h>. The fast intrinsics are
// the accurate functions here (results differ from the GPU in the last bits).
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }

// CUDA's min/max overloads (mixed signedness compares as unsigned, as CUDA's do).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// bf16: the top 16 bits of an IEEE f32. A struct (not a float alias) so that bf16 arrays have
// the same 2-byte layout as on the GPU and nothing converts implicitly.
struct bf16 {
    uint16_t bits;
};

// Round to nearest even, as __float2bfloat16_rn; NaN becomes the canonical NaN 0x7fff.
inline bf16 float_to_bf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fff};
    u += 0x7fffu + ((u >> 16) & 1u);  // adds half an ulp, plus one when the kept lsb is odd
    return bf16{(uint16_t)(u >> 16)};
}
inline float bf16_to_float(bf16 x) {
    uint32_t u = (uint32_t)x.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t pack_bf16x2(bf16 lo, bf16 hi) { return (uint32_t)lo.bits | ((uint32_t)hi.bits << 16); }

// The emulated twin of the nvcc version above (same fragment layouts): the warp's fragments
// meet in the warp's exchange buffer and each lane computes its own four outputs.
inline void mma_bf16_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    ::simclr_emu::mma_bf16_m16n8k16(SIMCLR_EMU_SITE("mma_bf16_m16n8k16"), d, a, b, c);
}

// The emulated twins of the nvcc versions above: misaligned addresses fail the launch, and a
// cp.async destination reads as NaN until the wait that completes it.
#define load_16B(p) ::simclr_emu::load_16B(SIMCLR_EMU_SITE("load_16B"), (p))
#define store_16B(p, v) ::simclr_emu::store_16B(SIMCLR_EMU_SITE("store_16B"), (p), (v))
#define ldmatrix_x1(r, row) ::simclr_emu::ldmatrix(SIMCLR_EMU_SITE("ldmatrix_x1"), 1, false, (r), (row))
#define ldmatrix_x2(r, row) ::simclr_emu::ldmatrix(SIMCLR_EMU_SITE("ldmatrix_x2"), 2, false, (r), (row))
#define ldmatrix_x4(r, row) ::simclr_emu::ldmatrix(SIMCLR_EMU_SITE("ldmatrix_x4"), 4, false, (r), (row))
#define ldmatrix_x1_trans(r, row) \
    ::simclr_emu::ldmatrix(SIMCLR_EMU_SITE("ldmatrix_x1_trans"), 1, true, (r), (row))
#define ldmatrix_x2_trans(r, row) \
    ::simclr_emu::ldmatrix(SIMCLR_EMU_SITE("ldmatrix_x2_trans"), 2, true, (r), (row))
#define ldmatrix_x4_trans(r, row) \
    ::simclr_emu::ldmatrix(SIMCLR_EMU_SITE("ldmatrix_x4_trans"), 4, true, (r), (row))
#define cp_async_4(dst, src, n) ::simclr_emu::cp_async(SIMCLR_EMU_SITE("cp_async_4"), (dst), (src), 4, (n))
#define cp_async_8(dst, src, n) ::simclr_emu::cp_async(SIMCLR_EMU_SITE("cp_async_8"), (dst), (src), 8, (n))
#define cp_async_16(dst, src, n) ::simclr_emu::cp_async(SIMCLR_EMU_SITE("cp_async_16"), (dst), (src), 16, (n))
inline void cp_async_commit() { ::simclr_emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
    ::simclr_emu::cp_async_wait(N);
}

#else
#error "common.cuh: compile with nvcc, or with SIMCLR_EMU defined for the emulator"
#endif

// ============================================================================================
// Both targets: element access for kernels instantiated for f32 and bf16 storage. Storage may
// be bf16 (activations and their gradients under --precision bf16); the arithmetic is f32.
// A kernel that handles activations is a DEVICE template over T plus two KERNEL wrappers,
// `name` (T = float) and `name_bf16` (T = bf16), which the host picks by the buffer's type.
// ============================================================================================
DEVICE inline float to_f32(float v) { return v; }
DEVICE inline float to_f32(bf16 v) { return bf16_to_float(v); }
template <typename T>
DEVICE inline T from_f32(float v);
template <>
DEVICE inline float from_f32<float>(float v) { return v; }
template <>
DEVICE inline bf16 from_f32<bf16>(float v) { return float_to_bf16(v); }
