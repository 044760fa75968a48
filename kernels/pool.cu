// Max pooling, average pooling and global average pooling on NHWC activations. Consecutive
// threads take consecutive channels, so every load and store is coalesced.
//
// Both backward passes are gathers — each input element sums the dy of the windows that hold
// it, in a fixed order — instead of scatters that would need atomics (windows overlap when
// stride < kernel) and would not be deterministic. Max pooling keeps no argmax: the backward
// pass recomputes each window's winner from x, which saves an index tensor the size of y.
//
// Every kernel is a template over the activations' storage type T (f32 or bf16, common.cuh's
// last section) with two kernels, `name` and `name_bf16`; sums are taken in f32.
#include "common.cuh"

// The in-image extent [*i0, *i1) along one axis of the window starting at `start`.
DEVICE inline void window_extent(int start, int k, int size, int* i0, int* i1) {
    *i0 = max(start, 0);
    *i1 = min(start + k, size);
}

// The output windows along one axis that hold input position i, windows starting at
// o·stride − pad: o·stride − pad ≤ i ≤ o·stride − pad + k − 1, so o0 ≤ o ≤ o1.
DEVICE inline void windows_holding(int i, int k, int stride, int pad, int out, int* o0, int* o1) {
    int lo = i + pad - k + 1;
    *o0 = lo > 0 ? (lo + stride - 1) / stride : 0;
    *o1 = min((i + pad) / stride, out - 1);
}

// Winner of output window (oy, ox) for one image and channel (xc = &x[image][0][0][ch]): the first
// maximum in scan order (rows, then columns), padding never wins; a NaN wins, as in PyTorch.
// Returns its position iy·w + ix and its value in *best.
template <typename T>
DEVICE inline int maxpool_window_argmax(const T* __restrict__ xc, int h, int w, int c, int k,
                                        int stride, int pad, int oy, int ox, float* best) {
    int y0, y1, x0, x1;
    window_extent(oy * stride - pad, k, h, &y0, &y1);
    window_extent(ox * stride - pad, k, w, &x0, &x1);
    int arg = -1;
    float m = -INFINITY;
    for (int iy = y0; iy < y1; iy++)
        for (int ix = x0; ix < x1; ix++) {
            float v = to_f32(xc[(size_t)(iy * w + ix) * c]);
            if (v > m || v != v || arg < 0) {
                m = v;
                arg = iy * w + ix;
            }
        }
    *best = m;
    return arg;
}

// One thread per output element of y [n, oh, ow, c].
template <typename T>
DEVICE void maxpool_forward_impl(const T* __restrict__ x, int n, int h, int w, int c, int k,
                                 int stride, int pad, int oh, int ow, T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * oh * ow * c) return;
    int ch = i % c, ox = (i / c) % ow, oy = (i / c / ow) % oh, b = i / c / ow / oh;
    float best;
    maxpool_window_argmax(x + (size_t)b * h * w * c + ch, h, w, c, k, stride, pad, oy, ox, &best);
    y[i] = from_f32<T>(best);
}
KERNEL void maxpool_forward(const float* __restrict__ x, int n, int h, int w, int c, int k,
                            int stride, int pad, int oh, int ow, float* __restrict__ y) {
    maxpool_forward_impl(x, n, h, w, c, k, stride, pad, oh, ow, y);
}
KERNEL void maxpool_forward_bf16(const bf16* __restrict__ x, int n, int h, int w, int c, int k,
                                 int stride, int pad, int oh, int ow, bf16* __restrict__ y) {
    maxpool_forward_impl(x, n, h, w, c, k, stride, pad, oh, ow, y);
}

// One thread per input element of dx [n, h, w, c]: Σ dy over the windows that contain this
// element and whose winner it is, windows in (oy, ox) order — the order the CPU adds them in.
template <typename T>
DEVICE void maxpool_backward_impl(const T* __restrict__ x, const T* __restrict__ dy, int n, int h,
                                  int w, int c, int k, int stride, int pad, int oh, int ow,
                                  T* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * h * w * c) return;
    int ch = i % c, ix = (i / c) % w, iy = (i / c / w) % h, b = i / c / w / h;
    const T* xc = x + (size_t)b * h * w * c + ch;
    int oy0, oy1, ox0, ox1;
    windows_holding(iy, k, stride, pad, oh, &oy0, &oy1);
    windows_holding(ix, k, stride, pad, ow, &ox0, &ox1);
    float g = 0.0f;
    for (int oy = oy0; oy <= oy1; oy++)
        for (int ox = ox0; ox <= ox1; ox++) {
            float best;
            if (maxpool_window_argmax(xc, h, w, c, k, stride, pad, oy, ox, &best) == iy * w + ix)
                g += to_f32(dy[(((size_t)b * oh + oy) * ow + ox) * c + ch]);
        }
    dx[i] = from_f32<T>(g);
}
KERNEL void maxpool_backward(const float* __restrict__ x, const float* __restrict__ dy, int n,
                             int h, int w, int c, int k, int stride, int pad, int oh, int ow,
                             float* __restrict__ dx) {
    maxpool_backward_impl(x, dy, n, h, w, c, k, stride, pad, oh, ow, dx);
}
KERNEL void maxpool_backward_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dy, int n,
                                  int h, int w, int c, int k, int stride, int pad, int oh, int ow,
                                  bf16* __restrict__ dx) {
    maxpool_backward_impl(x, dy, n, h, w, c, k, stride, pad, oh, ow, dx);
}

// Average pooling with TF 'SAME' padding (cpu::pool::AvgPoolShape): windows start at
// oy·stride − pad_top, ox·stride − pad_left, and average only their in-image elements.

// One thread per output element of y [n, oh, ow, c].
template <typename T>
DEVICE void avg_pool_forward_impl(const T* __restrict__ x, int n, int h, int w, int c, int k,
                                  int stride, int pad_top, int pad_left, int oh, int ow,
                                  T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * oh * ow * c) return;
    int ch = i % c, ox = (i / c) % ow, oy = (i / c / ow) % oh, b = i / c / ow / oh;
    const T* xc = x + (size_t)b * h * w * c + ch;
    int y0, y1, x0, x1;
    window_extent(oy * stride - pad_top, k, h, &y0, &y1);
    window_extent(ox * stride - pad_left, k, w, &x0, &x1);
    float s = 0.0f;
    for (int iy = y0; iy < y1; iy++)
        for (int ix = x0; ix < x1; ix++) s += to_f32(xc[(size_t)(iy * w + ix) * c]);
    y[i] = from_f32<T>(s / (float)((y1 - y0) * (x1 - x0)));
}
KERNEL void avg_pool_forward(const float* __restrict__ x, int n, int h, int w, int c, int k,
                             int stride, int pad_top, int pad_left, int oh, int ow,
                             float* __restrict__ y) {
    avg_pool_forward_impl(x, n, h, w, c, k, stride, pad_top, pad_left, oh, ow, y);
}
KERNEL void avg_pool_forward_bf16(const bf16* __restrict__ x, int n, int h, int w, int c, int k,
                                  int stride, int pad_top, int pad_left, int oh, int ow,
                                  bf16* __restrict__ y) {
    avg_pool_forward_impl(x, n, h, w, c, k, stride, pad_top, pad_left, oh, ow, y);
}

// One thread per input element of dx [n, h, w, c]: Σ dy / (window's element count) over the
// windows that hold this element, in (oy, ox) order — the order the CPU adds them in.
template <typename T>
DEVICE void avg_pool_backward_impl(const T* __restrict__ dy, int n, int h, int w, int c, int k,
                                   int stride, int pad_top, int pad_left, int oh, int ow,
                                   T* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * h * w * c) return;
    int ch = i % c, ix = (i / c) % w, iy = (i / c / w) % h, b = i / c / w / h;
    int oy0, oy1, ox0, ox1;
    windows_holding(iy, k, stride, pad_top, oh, &oy0, &oy1);
    windows_holding(ix, k, stride, pad_left, ow, &ox0, &ox1);
    float g = 0.0f;
    for (int oy = oy0; oy <= oy1; oy++) {
        int y0, y1;
        window_extent(oy * stride - pad_top, k, h, &y0, &y1);
        for (int ox = ox0; ox <= ox1; ox++) {
            int x0, x1;
            window_extent(ox * stride - pad_left, k, w, &x0, &x1);
            g += to_f32(dy[(((size_t)b * oh + oy) * ow + ox) * c + ch]) /
                 (float)((y1 - y0) * (x1 - x0));
        }
    }
    dx[i] = from_f32<T>(g);
}
KERNEL void avg_pool_backward(const float* __restrict__ dy, int n, int h, int w, int c, int k,
                              int stride, int pad_top, int pad_left, int oh, int ow,
                              float* __restrict__ dx) {
    avg_pool_backward_impl(dy, n, h, w, c, k, stride, pad_top, pad_left, oh, ow, dx);
}
KERNEL void avg_pool_backward_bf16(const bf16* __restrict__ dy, int n, int h, int w, int c, int k,
                                   int stride, int pad_top, int pad_left, int oh, int ow,
                                   bf16* __restrict__ dx) {
    avg_pool_backward_impl(dy, n, h, w, c, k, stride, pad_top, pad_left, oh, ow, dx);
}

// y[b, ch] = mean over the hw positions of x[b, :, ch]; one thread per (b, ch), summing in
// position order as the CPU does.
template <typename T>
DEVICE void global_avg_pool_forward_impl(const T* __restrict__ x, int n, int hw, int c,
                                         T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * c) return;
    int ch = i % c, b = i / c;
    const T* xb = x + (size_t)b * hw * c + ch;
    float s = 0.0f;
    for (int p = 0; p < hw; p++) s += to_f32(xb[(size_t)p * c]);
    y[i] = from_f32<T>(s * (1.0f / (float)hw));
}
KERNEL void global_avg_pool_forward(const float* __restrict__ x, int n, int hw, int c,
                                    float* __restrict__ y) {
    global_avg_pool_forward_impl(x, n, hw, c, y);
}
KERNEL void global_avg_pool_forward_bf16(const bf16* __restrict__ x, int n, int hw, int c,
                                         bf16* __restrict__ y) {
    global_avg_pool_forward_impl(x, n, hw, c, y);
}

// dx[b, p, ch] = dy[b, ch] / hw: every position contributed equally to the mean.
template <typename T>
DEVICE void global_avg_pool_backward_impl(const T* __restrict__ dy, int n, int hw, int c,
                                          T* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * c) return;
    int ch = i % c, b = i / c / hw;
    dx[i] = from_f32<T>(to_f32(dy[b * c + ch]) * (1.0f / (float)hw));
}
KERNEL void global_avg_pool_backward(const float* __restrict__ dy, int n, int hw, int c,
                                     float* __restrict__ dx) {
    global_avg_pool_backward_impl(dy, n, hw, c, dx);
}
KERNEL void global_avg_pool_backward_bf16(const bf16* __restrict__ dy, int n, int hw, int c,
                                          bf16* __restrict__ dx) {
    global_avg_pool_backward_impl(dy, n, hw, c, dx);
}

REGISTER_KERNEL(maxpool_forward);
REGISTER_KERNEL(maxpool_forward_bf16);
REGISTER_KERNEL(maxpool_backward);
REGISTER_KERNEL(maxpool_backward_bf16);
REGISTER_KERNEL(avg_pool_forward);
REGISTER_KERNEL(avg_pool_forward_bf16);
REGISTER_KERNEL(avg_pool_backward);
REGISTER_KERNEL(avg_pool_backward_bf16);
REGISTER_KERNEL(global_avg_pool_forward);
REGISTER_KERNEL(global_avg_pool_forward_bf16);
REGISTER_KERNEL(global_avg_pool_backward);
REGISTER_KERNEL(global_avg_pool_backward_bf16);
