// The CUDA execution-model emulator: declarations shared by the runtime (emu.cpp), the kernels
// (through common.cuh) and the Rust side (the C entry point only).
//
// Model (docs/ARCHITECTURE.md, "The emulator"): a launch's blocks are spread over a pool of OS
// threads; a block runs entirely on one OS thread, each of its CUDA threads as a fiber with its
// own small stack. Fibers are switched cooperatively: a thread runs until it reaches a barrier or a warp
// operation, then the block's scheduler picks the next one. Barriers and warp exchanges are
// therefore plain bookkeeping, and `__shared__` variables can be `static thread_local`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

// Launches `kernel` exactly as cuLaunchKernel would: params[i] points at the i-th argument's
// value. Synchronous. Returns 0 on success; otherwise nonzero with a one-line, NUL-terminated
// message in err (unknown kernel, bad launch shape, deadlock, partial warp mask, ...).
// schedule: 0 = rr (round robin by thread id), 1 = warp (a whole warp runs up to its next
// block barrier before the next warp starts), 2 = rr reversed, 3 = warp reversed.
// Launches from several host threads are serialised.
extern "C" int simclr_emu_launch(const char* kernel, const unsigned grid[3], const unsigned block[3],
                                 unsigned dynamic_shared_bytes, void** params, int schedule,
                                 char* err, size_t err_len);

// Kernels may use up to this much dynamic shared memory per block after opting in (the GPU's
// cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)); without it, 48 KiB. 163 KiB is the
// smaller of the limits of the GPUs we build for (sm_80; sm_90 allows 227 KiB).
// Returns 0, or nonzero with a message in err when `bytes` is above the limit or the kernel is
// unknown.
extern "C" int simclr_emu_set_max_dynamic_shared(const char* kernel, unsigned bytes, char* err,
                                                 size_t err_len);

// CUDA's index and vector types (threadIdx and friends; 16-byte accesses).
struct uint3 {
    unsigned x, y, z;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};

namespace simclr_emu {

// What a kernel sees of the CUDA thread it runs as: threadIdx etc. are macros reading this.
struct ThreadView {
    uint3 thread_idx, block_idx, block_dim, grid_dim;
};
// The CUDA thread (fiber) running on this OS thread; constinit so that reading it from another
// translation unit needs no initialisation check.
extern constinit thread_local ThreadView* current_thread;

// Where a barrier or warp operation is in the kernel source (for error messages, and to check
// that all threads of a block / warp wait at the same one).
struct Site {
    const char* what;  // "__syncthreads", "__shfl_xor_sync", ...
    const char* file;
    int line;
};

// Block barrier and warp operations (called through the macros of common.cuh).
void syncthreads(Site site);
void syncwarp(Site site, unsigned mask = 0xffffffffu);
enum class ShflMode { Idx, Up, Down, Xor };
uint32_t shfl_bits(ShflMode mode, Site site, unsigned mask, uint32_t bits, int lane_or_delta, int width);
unsigned ballot(Site site, unsigned mask, int predicate);
void mma_bf16_m16n8k16(Site site, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
// The current block's dynamic shared memory (nullptr when the launch asked for none).
void* dynamic_shared();

// A 16-byte load or store; a misaligned address fails the launch (a GPU faults).
uint4 load_16B(Site site, const void* p);
void store_16B(Site site, void* p, uint4 v);
// ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16 (a warp operation): lanes 8i..8i+7
// give the 16-byte aligned addresses of the eight rows of matrix i; each lane receives in r[i]
// two b16 of matrix i: row lane/4, columns 2·(lane%4) and +1 (with .trans: of the transpose).
void ldmatrix(Site site, int count, bool trans, uint32_t* r, const void* row);
// cp.async of `size` bytes (4, 8, 16; both addresses aligned to it) from global to shared
// memory, the bytes from src_bytes on zero-filled. The destination reads as 0xFF (NaN) until
// a cp_async_wait completes the copy's group: a missing wait shows.
void cp_async(Site site, void* dst, const void* src, int size, int src_bytes);
// Closes the thread's group of copies issued since the last commit.
void cp_async_commit();
// Completes the thread's committed groups but the `pending` most recent ones.
void cp_async_wait(int pending);

// Shuffles move 32 bits; float, int and unsigned all go through the same exchange.
template <typename T>
T shfl(ShflMode mode, Site site, unsigned mask, T var, int lane_or_delta, int width = 32) {
    static_assert(sizeof(T) == 4, "the emulator shuffles 32-bit values only (float, int, unsigned)");
    uint32_t bits;
    __builtin_memcpy(&bits, &var, 4);
    bits = shfl_bits(mode, site, mask, bits, lane_or_delta, width);
    __builtin_memcpy(&var, &bits, 4);
    return var;
}

// ---- kernel registry ----------------------------------------------------------------------
// A launcher calls its kernel with the arguments unpacked from cuLaunchKernel's `void**`.
using Launcher = void (*)(void** params);

// Called before main by the REGISTER_KERNEL objects.
struct Registrar {
    Registrar(const char* name, Launcher launcher);
};

// params[i] points at a value of the kernel's i-th parameter type.
template <typename... Args, std::size_t... I>
void call_with_params(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    (void)params;  // a kernel without parameters does not read it
    kernel(*static_cast<Args*>(params[I])...);
}
template <typename... Args>
void call_kernel(void (*kernel)(Args...), void** params) {
    call_with_params(kernel, params, std::index_sequence_for<Args...>{});
}

// One launcher per kernel; the parameter types are deduced from the kernel's own signature.
template <auto kernel>
void launcher_for(void** params) {
    call_kernel(kernel, params);
}

}  // namespace simclr_emu
