// Elementwise ops (one thread per element; memory bound, so nothing to tile) and the column sum
// that gives a dense layer's bias gradient.
#include "common.cuh"

KERNEL void ew_relu_forward(const float* __restrict__ x, int n, float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaxf(x[i], 0.0f);
}

// dx = dy where the output was positive (the output, not the input, is kept for this).
KERNEL void ew_relu_backward(const float* __restrict__ y, const float* __restrict__ dy, int n,
                          float* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

KERNEL void ew_add(const float* __restrict__ a, const float* __restrict__ b, int n,
                float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

// acc += x (gradient accumulation without a temporary).
KERNEL void ew_add_assign(float* __restrict__ acc, const float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += x[i];
}

// y = s[0]·x, the factor read from device memory (a loss's gradient times the upstream
// gradient, which lives on the device: no host round trip).
KERNEL void ew_scale_by(const float* __restrict__ x, const float* __restrict__ s, int n,
                        float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * s[0];
}

// y[r, :] += b for a row-major [rows, cols] y.
KERNEL void ew_bias_add(float* __restrict__ y, const float* __restrict__ b, int n, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += b[i % cols];
}

// out[col] = Σ_r x[r, col]. grid ceil(cols/32), block (32, 8): the 32 lanes of a warp read 32
// consecutive columns of a row (coalesced), the 8 warps stride over the rows, and the warps'
// sums meet in shared memory in a fixed order — deterministic, no atomics. One block per 32 columns
// covers all rows: the rows here are a batch (hundreds), not N·H·W.
KERNEL void ew_sum_rows(const float* __restrict__ x, int rows, int cols, float* __restrict__ out) {
    __shared__ float red[8][32];
    int col = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (col < cols)
        for (int r = threadIdx.y; r < rows; r += 8) s += x[(size_t)r * cols + col];
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float t = 0.0f;
        for (int j = 0; j < 8; j++) t += red[j][threadIdx.x];
        out[col] = t;
    }
}

REGISTER_KERNEL(ew_relu_forward);
REGISTER_KERNEL(ew_relu_backward);
REGISTER_KERNEL(ew_add);
REGISTER_KERNEL(ew_add_assign);
REGISTER_KERNEL(ew_scale_by);
REGISTER_KERNEL(ew_bias_add);
REGISTER_KERNEL(ew_sum_rows);
