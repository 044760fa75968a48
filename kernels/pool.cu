// Max pooling and global average pooling on NHWC activations. Consecutive threads take
// consecutive channels, so every load and store is coalesced.
//
// Max pooling keeps no argmax: the backward pass recomputes each window's winner from x. That
// saves an index tensor the size of y, and lets the backward be a gather — each input element
// sums the dy of the windows it won, in a fixed order — instead of a scatter that would need
// atomics (windows overlap when stride < kernel) and would not be deterministic.
#include "common.cuh"

// Winner of output window (oy, ox) for one image and channel (xc = &x[image][0][0][ch]): the first
// maximum in scan order (rows, then columns), padding never wins; a NaN wins, as in PyTorch.
// Returns its position iy·w + ix and its value in *best.
DEVICE inline int maxpool_window_argmax(const float* __restrict__ xc, int h, int w, int c, int k,
                                int stride, int pad, int oy, int ox, float* best) {
    int y0 = oy * stride - pad, x0 = ox * stride - pad;
    int arg = -1;
    float m = -INFINITY;
    for (int iy = max(y0, 0); iy < min(y0 + k, h); iy++)
        for (int ix = max(x0, 0); ix < min(x0 + k, w); ix++) {
            float v = xc[(size_t)(iy * w + ix) * c];
            if (v > m || v != v || arg < 0) {
                m = v;
                arg = iy * w + ix;
            }
        }
    *best = m;
    return arg;
}

// One thread per output element of y [n, oh, ow, c].
KERNEL void maxpool_forward(const float* __restrict__ x, int n, int h, int w, int c, int k,
                            int stride, int pad, int oh, int ow, float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * oh * ow * c) return;
    int ch = i % c, ox = (i / c) % ow, oy = (i / c / ow) % oh, b = i / c / ow / oh;
    float best;
    maxpool_window_argmax(x + (size_t)b * h * w * c + ch, h, w, c, k, stride, pad, oy, ox, &best);
    y[i] = best;
}

// One thread per input element of dx [n, h, w, c]: Σ dy over the windows that contain this
// element and whose winner it is, windows in (oy, ox) order — the order the CPU adds them in.
KERNEL void maxpool_backward(const float* __restrict__ x, const float* __restrict__ dy, int n,
                             int h, int w, int c, int k, int stride, int pad, int oh, int ow,
                             float* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * h * w * c) return;
    int ch = i % c, ix = (i / c) % w, iy = (i / c / w) % h, b = i / c / w / h;
    const float* xc = x + (size_t)b * h * w * c + ch;
    // Windows covering iy: oy·stride − pad ≤ iy ≤ oy·stride − pad + k − 1.
    int ly = iy + pad - k + 1, lx = ix + pad - k + 1;
    int oy0 = ly > 0 ? (ly + stride - 1) / stride : 0, oy1 = min((iy + pad) / stride, oh - 1);
    int ox0 = lx > 0 ? (lx + stride - 1) / stride : 0, ox1 = min((ix + pad) / stride, ow - 1);
    float g = 0.0f;
    for (int oy = oy0; oy <= oy1; oy++)
        for (int ox = ox0; ox <= ox1; ox++) {
            float best;
            if (maxpool_window_argmax(xc, h, w, c, k, stride, pad, oy, ox, &best) == iy * w + ix)
                g += dy[(((size_t)b * oh + oy) * ow + ox) * c + ch];
        }
    dx[i] = g;
}

// y[b, ch] = mean over the hw positions of x[b, :, ch]; one thread per (b, ch), summing in
// position order as the CPU does.
KERNEL void global_avg_pool_forward(const float* __restrict__ x, int n, int hw, int c,
                                    float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * c) return;
    int ch = i % c, b = i / c;
    const float* xb = x + (size_t)b * hw * c + ch;
    float s = 0.0f;
    for (int p = 0; p < hw; p++) s += xb[(size_t)p * c];
    y[i] = s * (1.0f / (float)hw);
}

// dx[b, p, ch] = dy[b, ch] / hw: every position contributed equally to the mean.
KERNEL void global_avg_pool_backward(const float* __restrict__ dy, int n, int hw, int c,
                                     float* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * c) return;
    int ch = i % c, b = i / c / hw;
    dx[i] = dy[b * c + ch] * (1.0f / (float)hw);
}

REGISTER_KERNEL(maxpool_forward);
REGISTER_KERNEL(maxpool_backward);
REGISTER_KERNEL(global_avg_pool_forward);
REGISTER_KERNEL(global_avg_pool_backward);
