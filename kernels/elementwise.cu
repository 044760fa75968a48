// Elementwise ops (one thread per element; memory bound, so nothing to tile), the f32 <-> bf16
// conversions, and the column sum that gives a dense layer's bias gradient.
//
// The activation ops are templates over the storage type T (f32 or bf16, common.cuh's last
// section), each with two kernels: `name` (f32) and `name_bf16`. The arithmetic is f32.
#include "common.cuh"

template <typename T>
DEVICE void ew_relu_forward_impl(const T* __restrict__ x, int n, T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(fmaxf(to_f32(x[i]), 0.0f));
}
KERNEL void ew_relu_forward(const float* __restrict__ x, int n, float* __restrict__ y) {
    ew_relu_forward_impl(x, n, y);
}
KERNEL void ew_relu_forward_bf16(const bf16* __restrict__ x, int n, bf16* __restrict__ y) {
    ew_relu_forward_impl(x, n, y);
}

// dx = dy where the output was positive (the output, not the input, is kept for this).
template <typename T>
DEVICE void ew_relu_backward_impl(const T* __restrict__ y, const T* __restrict__ dy, int n,
                                  T* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = from_f32<T>(to_f32(y[i]) > 0.0f ? to_f32(dy[i]) : 0.0f);
}
KERNEL void ew_relu_backward(const float* __restrict__ y, const float* __restrict__ dy, int n,
                             float* __restrict__ dx) {
    ew_relu_backward_impl(y, dy, n, dx);
}
KERNEL void ew_relu_backward_bf16(const bf16* __restrict__ y, const bf16* __restrict__ dy, int n,
                                  bf16* __restrict__ dx) {
    ew_relu_backward_impl(y, dy, n, dx);
}

template <typename T>
DEVICE void ew_add_impl(const T* __restrict__ a, const T* __restrict__ b, int n,
                        T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}
KERNEL void ew_add(const float* __restrict__ a, const float* __restrict__ b, int n,
                   float* __restrict__ y) {
    ew_add_impl(a, b, n, y);
}
KERNEL void ew_add_bf16(const bf16* __restrict__ a, const bf16* __restrict__ b, int n,
                        bf16* __restrict__ y) {
    ew_add_impl(a, b, n, y);
}

// acc += x (gradient accumulation without a temporary).
template <typename T>
DEVICE void ew_add_assign_impl(T* __restrict__ acc, const T* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] = from_f32<T>(to_f32(acc[i]) + to_f32(x[i]));
}
KERNEL void ew_add_assign(float* __restrict__ acc, const float* __restrict__ x, int n) {
    ew_add_assign_impl(acc, x, n);
}
KERNEL void ew_add_assign_bf16(bf16* __restrict__ acc, const bf16* __restrict__ x, int n) {
    ew_add_assign_impl(acc, x, n);
}

// y = x converted from S to D storage: f32 -> bf16 rounds to nearest even, bf16 -> f32 is exact.
template <typename S, typename D>
DEVICE void ew_convert_impl(const S* __restrict__ x, int n, D* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<D>(to_f32(x[i]));
}
KERNEL void ew_to_bf16(const float* __restrict__ x, int n, bf16* __restrict__ y) {
    ew_convert_impl(x, n, y);
}
KERNEL void ew_to_f32(const bf16* __restrict__ x, int n, float* __restrict__ y) {
    ew_convert_impl(x, n, y);
}

// y = s[0]·x, the factor read from device memory (a loss's gradient times the upstream
// gradient, which lives on the device: no host round trip). x and y are T (NT-Xent's
// gradient is bf16 on bf16 rows), s is f32.
template <typename T>
DEVICE void ew_scale_by_impl(const T* __restrict__ x, const float* __restrict__ s, int n,
                             T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(to_f32(x[i]) * s[0]);
}
KERNEL void ew_scale_by(const float* __restrict__ x, const float* __restrict__ s, int n,
                        float* __restrict__ y) {
    ew_scale_by_impl(x, s, n, y);
}
KERNEL void ew_scale_by_bf16(const bf16* __restrict__ x, const float* __restrict__ s, int n,
                             bf16* __restrict__ y) {
    ew_scale_by_impl(x, s, n, y);
}

// y[i] = value: a constant made on the device (the backward pass's seed), not uploaded.
KERNEL void ew_fill(float* __restrict__ y, int n, float value) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = value;
}

// y[r, :] += b for a row-major [rows, cols] y (activations, T); b is an f32 parameter.
template <typename T>
DEVICE void ew_bias_add_impl(T* __restrict__ y, const float* __restrict__ b, int n, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f32<T>(to_f32(y[i]) + b[i % cols]);
}
KERNEL void ew_bias_add(float* __restrict__ y, const float* __restrict__ b, int n, int cols) {
    ew_bias_add_impl(y, b, n, cols);
}
KERNEL void ew_bias_add_bf16(bf16* __restrict__ y, const float* __restrict__ b, int n, int cols) {
    ew_bias_add_impl(y, b, n, cols);
}

// out[col] = Σ_r x[r, col]. grid ceil(cols/32), block (32, 8): the 32 lanes of a warp read 32
// consecutive columns of a row (coalesced), the 8 warps stride over the rows, and the warps'
// sums meet in shared memory in a fixed order — deterministic, no atomics. One block per 32 columns
// covers all rows: the rows here are a batch (hundreds), not N·H·W. x may be bf16 (a bias's
// gradient from bf16 activation gradients); the sums and out are f32.
template <typename T>
DEVICE void ew_sum_rows_impl(const T* __restrict__ x, int rows, int cols, float* __restrict__ out) {
    __shared__ float red[8][32];
    int col = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (col < cols)
        for (int r = threadIdx.y; r < rows; r += 8) s += to_f32(x[(size_t)r * cols + col]);
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float t = 0.0f;
        for (int j = 0; j < 8; j++) t += red[j][threadIdx.x];
        out[col] = t;
    }
}
KERNEL void ew_sum_rows(const float* __restrict__ x, int rows, int cols, float* __restrict__ out) {
    ew_sum_rows_impl(x, rows, cols, out);
}
KERNEL void ew_sum_rows_bf16(const bf16* __restrict__ x, int rows, int cols, float* __restrict__ out) {
    ew_sum_rows_impl(x, rows, cols, out);
}

REGISTER_KERNEL(ew_relu_forward);
REGISTER_KERNEL(ew_relu_forward_bf16);
REGISTER_KERNEL(ew_relu_backward);
REGISTER_KERNEL(ew_relu_backward_bf16);
REGISTER_KERNEL(ew_add);
REGISTER_KERNEL(ew_add_bf16);
REGISTER_KERNEL(ew_add_assign);
REGISTER_KERNEL(ew_add_assign_bf16);
REGISTER_KERNEL(ew_to_bf16);
REGISTER_KERNEL(ew_to_f32);
REGISTER_KERNEL(ew_scale_by);
REGISTER_KERNEL(ew_scale_by_bf16);
REGISTER_KERNEL(ew_fill);
REGISTER_KERNEL(ew_bias_add);
REGISTER_KERNEL(ew_bias_add_bf16);
REGISTER_KERNEL(ew_sum_rows);
REGISTER_KERNEL(ew_sum_rows_bf16);
