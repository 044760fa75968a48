// Tiny kernels that test the emulator itself (tests/emu.rs). Also compiled by nvcc, so that
// ptxas checks the portability header's inline PTX, but run on the emulator only.
// The correct ones must give exact results under every schedule; the deliberately broken ones
// (marked BUG) must be caught: a wrong answer under schedule rr or warp, or a launch error.
#include "common.cuh"

// out[blockIdx.x] = the sum of the block's slice of x, by a tree in shared memory.
// blockDim.x: a power of two, at most 256.
KERNEL void selftest_block_sum(const float* x, int n, float* out) {
    __shared__ float partial[256];
    unsigned t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    partial[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
        if (t < s) partial[t] += partial[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// BUG: no barrier between the tree's levels, so a thread may add a partner's partial sum
// before the partner has added its own. Under rr, thread 0 runs its whole loop first.
KERNEL void selftest_block_sum_missing_barrier(const float* x, int n, float* out) {
    __shared__ float partial[256];
    unsigned t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    partial[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s /= 2)
        if (t < s) partial[t] += partial[t + s];
    if (t == 0) out[blockIdx.x] = partial[0];
}

// out[w] = the sum of x over warp w (butterfly: every lane ends with the total).
KERNEL void selftest_warp_sum(const float* x, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    if (i % 32 == 0) out[i / 32] = v;
}

// BUG: width 16 splits the warp in halves; at offset 16 the low half reads its own value
// instead of the high half's, so lane 0 gets twice the low half's sum.
KERNEL void selftest_warp_sum_width16(const float* x, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset, 16);
    if (i % 32 == 0) out[i / 32] = v;
}

// One warp, six results per lane: the shuffle variants with sub-warp widths and out-of-range
// sources, ballot, any and all (the test recomputes them from the CUDA documentation).
KERNEL void selftest_shuffles(const int* x, int* out) {
    unsigned lane = threadIdx.x;
    int v = x[lane];
    int* o = out + 6 * lane;
    o[0] = __shfl_sync(0xffffffff, v, (int)(lane * 5 + 3), 8);
    o[1] = __shfl_up_sync(0xffffffff, v, 3, 16);
    o[2] = (int)__shfl_down_sync(0xffffffff, (unsigned)v, 5, 8);
    o[3] = __shfl_xor_sync(0xffffffff, v, 20, 16);
    o[4] = (int)__ballot_sync(0xffffffff, v % 3 == 0);
    o[5] = __any_sync(0xffffffff, v == x[7]) + 2 * __all_sync(0xffffffff, v > 0);
}

// BUG: threads 32.. return before the barrier the others wait at: a deadlock.
KERNEL void selftest_early_return(float* out) {
    if (threadIdx.x >= 32) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// BUG: the two warps wait at different __syncthreads (undefined behaviour in CUDA).
KERNEL void selftest_divergent_barriers(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// BUG (for the emulator): a partial mask; only 0xffffffff is supported.
KERNEL void selftest_partial_mask(float* out) {
    float v = (float)threadIdx.x;
    v += __shfl_xor_sync(0x0000ffff, v, 1);
    out[threadIdx.x] = v;
}

// y = 2x with each block's slice reversed, through dynamic shared memory (blockDim.x floats).
// fill[i] receives the word found in the thread's slot before anything was written there:
// the emulator's 0xFFFFFFFF fill, in every block.
KERNEL void selftest_dynamic_shared(const float* x, float* y, unsigned* fill) {
    DYNAMIC_SHARED(float, buf);
    DYNAMIC_SHARED(unsigned, words);  // the same memory, as integers
    unsigned t = threadIdx.x, n = blockDim.x;
    unsigned i = blockIdx.x * n + t;
    fill[i] = words[t];
    buf[t] = 2.0f * x[i];
    __syncthreads();
    y[i] = buf[n - 1 - t];
}

// One warp: D = A·B + C with A 16×16 row-major bf16, B 16×8 passed as Bᵀ (8 rows of 16 k, i.e.
// B column-major), C and D 16×8 row-major f32. Fragments are loaded by the PTX ISA layout
// (common.cuh); g = lane/4, t = lane%4.
KERNEL void selftest_mma(const bf16* a, const bf16* bt, const float* c, float* d) {
    unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
    uint32_t af[4], bf[2];
    float cf[4], df[4];
    for (unsigned r = 0; r < 4; r++) {  // a[r]: row g (+8 for odd r), columns 2t, 2t+1 (+8 for r >= 2)
        unsigned row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
        af[r] = pack_bf16x2(a[row * 16 + col], a[row * 16 + col + 1]);
    }
    for (unsigned r = 0; r < 2; r++) {  // b[r]: rows k = 2t, 2t+1 (+8 for r = 1) of column g
        unsigned k = 2 * t + 8 * r;
        bf[r] = pack_bf16x2(bt[g * 16 + k], bt[g * 16 + k + 1]);
    }
    for (unsigned i = 0; i < 4; i++) cf[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
    mma_bf16_m16n8k16(df, af, bf, cf);
    for (unsigned i = 0; i < 4; i++) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = df[i];
}

// Every thread writes its threadIdx, blockIdx, blockDim and gridDim (10 bits per coordinate)
// at its global linear index, x fastest, so the test can check the 3-D numbering.
KERNEL void selftest_indices(unsigned* out) {
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 4 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    o[0] = threadIdx.x | threadIdx.y << 10 | threadIdx.z << 20;
    o[1] = blockIdx.x | blockIdx.y << 10 | blockIdx.z << 20;
    o[2] = blockDim.x | blockDim.y << 10 | blockDim.z << 20;
    o[3] = gridDim.x | gridDim.y << 10 | gridDim.z << 20;
}

// sum += Σ x and count += n through atomics from every block (blocks run on several OS threads).
KERNEL void selftest_atomics(const float* x, int n, float* sum, unsigned* count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        atomicAdd(sum, x[i]);
        atomicAdd(count, 1u);
    }
}

// y = x through 16-byte loads and stores, starting `offset` floats into x: an offset that is
// not a multiple of 4 is a misaligned access (the launch must fail).
KERNEL void selftest_copy_16B(const float* x, int offset, float* y) {
    int i = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
    store_16B(y + i, load_16B(x + offset + i));
}

// One warp loads `count` (1, 2 or 4) 8×8 b16 matrices, stored row-major in global memory, into
// shared memory with rows `stride` b16 apart (8: packed; 9: rows not 16-byte aligned, which
// must fail), then reads them back with ldmatrix (transposed when `trans`):
// out[lane·4 + i] = the lane's register of matrix i.
KERNEL void selftest_ldmatrix(const uint16_t* m, int count, int trans, int stride, uint32_t* out) {
    __shared__ __align__(16) uint16_t tile[4 * 8 * 9];
    unsigned lane = threadIdx.x;
    for (int e = lane; e < count * 64; e += 32) tile[(e / 8) * stride + e % 8] = m[e];
    __syncthreads();
    // Lanes 8i..8i+7 give the rows of matrix i; the others repeat matrix 0's (ignored).
    const uint16_t* row = tile + ((lane / 8) % count * 8 + lane % 8) * stride;
    uint32_t r[4] = {0, 0, 0, 0};
    if (count == 1) {
        if (trans) ldmatrix_x1_trans(r, row);
        else ldmatrix_x1(r, row);
    } else if (count == 2) {
        if (trans) ldmatrix_x2_trans(r, row);
        else ldmatrix_x2(r, row);
    } else {
        if (trans) ldmatrix_x4_trans(r, row);
        else ldmatrix_x4(r, row);
    }
    // The warp read the tile at the instruction: writing it now changes no lane's registers.
    tile[lane] = 0;
    for (int i = 0; i < 4; i++) out[lane * 4 + i] = r[i];
}

// Each thread copies its 4 floats of x into shared memory with one 16-byte cp.async, of which
// only the first `src_bytes` are read (the rest zero-filled); waits for its group when `wait`,
// then, after a barrier, writes out the 4 floats its neighbour copied. Without the wait the
// neighbour's floats are still in flight (NaN on the emulator).
KERNEL void selftest_cp_async(const float* x, int src_bytes, int wait, float* y) {
    __shared__ __align__(16) float tile[4 * 256];
    unsigned t = threadIdx.x, n = blockDim.x;
    cp_async_16(tile + 4 * t, x + 4 * t, src_bytes);
    cp_async_commit();
    if (wait) cp_async_wait<0>();
    __syncthreads();
    unsigned u = (t + 1) % n;
    for (int k = 0; k < 4; k++) y[4 * t + k] = tile[4 * u + k];
}

// Two groups in flight, as a double-buffered pipeline has: after cp_async_wait<1> the first
// group's data (x) is there and the second's (z, 4-byte copies) is not; after
// cp_async_wait<0> both are. y[t] = the first read of x, y[n + t] = the early read of z,
// y[2n + t] = the late read of z.
KERNEL void selftest_cp_async_groups(const float* x, const float* z, float* y) {
    __shared__ __align__(16) float first[256], second[256];
    unsigned t = threadIdx.x, n = blockDim.x;
    cp_async_4(first + t, x + t, 4);
    cp_async_commit();
    cp_async_4(second + t, z + t, 4);
    cp_async_commit();
    cp_async_wait<1>();
    y[t] = first[t];
    y[n + t] = second[t];
    cp_async_wait<0>();
    y[2 * n + t] = second[t];
}

// y = 2·x through `n` floats of dynamic shared memory (above 48 KiB it needs the opt-in).
KERNEL void selftest_big_shared(const float* x, int n, float* y) {
    DYNAMIC_SHARED(float, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = 2.0f * x[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = s[n - 1 - i];
}

REGISTER_KERNEL(selftest_block_sum);
REGISTER_KERNEL(selftest_block_sum_missing_barrier);
REGISTER_KERNEL(selftest_warp_sum);
REGISTER_KERNEL(selftest_warp_sum_width16);
REGISTER_KERNEL(selftest_shuffles);
REGISTER_KERNEL(selftest_early_return);
REGISTER_KERNEL(selftest_divergent_barriers);
REGISTER_KERNEL(selftest_partial_mask);
REGISTER_KERNEL(selftest_dynamic_shared);
REGISTER_KERNEL(selftest_mma);
REGISTER_KERNEL(selftest_indices);
REGISTER_KERNEL(selftest_atomics);
REGISTER_KERNEL(selftest_copy_16B);
REGISTER_KERNEL(selftest_ldmatrix);
REGISTER_KERNEL(selftest_cp_async);
REGISTER_KERNEL(selftest_cp_async_groups);
REGISTER_KERNEL(selftest_big_shared);
