// The two ops of a selective-kernel convolution (cpu::sk) on NHWC activations x [n, hw, 2c]
// that hold two streams side by side: stream 0 in channels [0, c), stream 1 in [c, 2c).
//
// The elementwise kernels run one thread per element, consecutive threads on consecutive
// channels (coalesced). The two reductions over positions (sk_pool_forward and the logits'
// gradient) take a block of SK_CHANNELS × SK_LANES threads per (image, 32 channels): lane l
// sums positions l, l + SK_LANES, …, then the lanes' partial sums are added in lane order —
// SK_LANES times more threads than one per channel (a ResNet stage-1 map has 3136 positions),
// deterministic, and without atomics.
//
// Every kernel is a template over the storage type T (f32 or bf16, common.cuh's last section) of
// the activations and of the logits (which come out of a 1×1 convolution in the activations'
// precision), with two kernels, `name` and `name_bf16`; the arithmetic is f32.
#include "common.cuh"

#define SK_CHANNELS 32
#define SK_LANES 8

// (*a, *b) = softmax(l0, l1), shifted by the larger logit so neither exponential overflows.
DEVICE inline void sk_weights(float l0, float l1, float* a, float* b) {
    float m = fmaxf(l0, l1);
    float e0 = expf(l0 - m), e1 = expf(l1 - m);
    *a = e0 / (e0 + e1);
    *b = e1 / (e0 + e1);
}

// The block's total of `partial` over its SK_LANES lanes (threadIdx.y), added in lane order;
// every thread of the block must call it (it holds a barrier).
DEVICE inline float sum_over_lanes(float partial) {
    __shared__ float sums[SK_LANES][SK_CHANNELS];
    sums[threadIdx.y][threadIdx.x] = partial;
    __syncthreads();
    float total = 0.0f;
    for (int l = 0; l < SK_LANES; l++) total += sums[l][threadIdx.x];
    return total;
}

// y[b, ch] = mean over the hw positions of x[b, :, ch] + x[b, :, c + ch].
// Grid (ceil(c / SK_CHANNELS), n), block (SK_CHANNELS, SK_LANES).
template <typename T>
DEVICE void sk_pool_forward_impl(const T* __restrict__ x, int hw, int c, T* __restrict__ y) {
    int ch = blockIdx.x * SK_CHANNELS + threadIdx.x, b = blockIdx.y;
    float s = 0.0f;
    if (ch < c) {
        const T* xb = x + (size_t)b * hw * 2 * c + ch;
        for (int p = threadIdx.y; p < hw; p += SK_LANES)
            s += to_f32(xb[(size_t)p * 2 * c]) + to_f32(xb[(size_t)p * 2 * c + c]);
    }
    s = sum_over_lanes(s);
    if (ch < c && threadIdx.y == 0) y[b * c + ch] = from_f32<T>(s * (1.0f / (float)hw));
}
KERNEL void sk_pool_forward(const float* __restrict__ x, int hw, int c,
                            float* __restrict__ y) {
    sk_pool_forward_impl(x, hw, c, y);
}
KERNEL void sk_pool_forward_bf16(const bf16* __restrict__ x, int hw, int c,
                                 bf16* __restrict__ y) {
    sk_pool_forward_impl(x, hw, c, y);
}

// dx[b, p, ch] = dx[b, p, c + ch] = dy[b, ch] / hw; one thread per element of dx.
template <typename T>
DEVICE void sk_pool_backward_impl(const T* __restrict__ dy, int n, int hw, int c,
                                  T* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * 2 * c) return;
    int ch = i % c, b = i / (2 * c) / hw;
    dx[i] = from_f32<T>(to_f32(dy[b * c + ch]) * (1.0f / (float)hw));
}
KERNEL void sk_pool_backward(const float* __restrict__ dy, int n, int hw, int c,
                             float* __restrict__ dx) {
    sk_pool_backward_impl(dy, n, hw, c, dx);
}
KERNEL void sk_pool_backward_bf16(const bf16* __restrict__ dy, int n, int hw, int c,
                                  bf16* __restrict__ dx) {
    sk_pool_backward_impl(dy, n, hw, c, dx);
}

// y[b, p, ch] = a·x[b, p, ch] + b·x[b, p, c + ch], (a, b) = softmax(logits[b, ch],
// logits[b, c + ch]); one thread per element of y. Recomputing the weights per element costs two
// exponentials against three memory accesses: cheaper than a separate pass to store them.
template <typename T>
DEVICE void sk_combine_forward_impl(const T* __restrict__ x, const T* __restrict__ logits, int n,
                                    int hw, int c, T* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * c) return;
    int ch = i % c, row = i / c, b = row / hw;
    float wa, wb;
    sk_weights(to_f32(logits[b * 2 * c + ch]), to_f32(logits[b * 2 * c + c + ch]), &wa, &wb);
    const T* pixel = x + (size_t)row * 2 * c;
    y[i] = from_f32<T>(wa * to_f32(pixel[ch]) + wb * to_f32(pixel[c + ch]));
}
KERNEL void sk_combine_forward(const float* __restrict__ x, const float* __restrict__ logits,
                               int n, int hw, int c, float* __restrict__ y) {
    sk_combine_forward_impl(x, logits, n, hw, c, y);
}
KERNEL void sk_combine_forward_bf16(const bf16* __restrict__ x, const bf16* __restrict__ logits,
                                    int n, int hw, int c, bf16* __restrict__ y) {
    sk_combine_forward_impl(x, logits, n, hw, c, y);
}

// dx = a·dy to stream 0, b·dy to stream 1; one thread per element of dx.
template <typename T>
DEVICE void sk_combine_backward_x_impl(const T* __restrict__ logits, const T* __restrict__ dy,
                                       int n, int hw, int c, T* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * 2 * c) return;
    int k = i % (2 * c), ch = k % c, row = i / (2 * c), b = row / hw;
    float wa, wb;
    sk_weights(to_f32(logits[b * 2 * c + ch]), to_f32(logits[b * 2 * c + c + ch]), &wa, &wb);
    dx[i] = from_f32<T>((k < c ? wa : wb) * to_f32(dy[(size_t)row * c + ch]));
}
KERNEL void sk_combine_backward_x(const float* __restrict__ logits, const float* __restrict__ dy,
                                  int n, int hw, int c, float* __restrict__ dx) {
    sk_combine_backward_x_impl(logits, dy, n, hw, c, dx);
}
KERNEL void sk_combine_backward_x_bf16(const bf16* __restrict__ logits,
                                       const bf16* __restrict__ dy, int n, int hw, int c,
                                       bf16* __restrict__ dx) {
    sk_combine_backward_x_impl(logits, dy, n, hw, c, dx);
}

// dlogits[b, ch] = a·b·t, dlogits[b, c + ch] = −a·b·t with t = Σ_p dy·(x₀ − x₁) (the softmax's
// Jacobian). Grid (ceil(c / SK_CHANNELS), n), block (SK_CHANNELS, SK_LANES).
template <typename T>
DEVICE void sk_combine_backward_logits_impl(const T* __restrict__ x, const T* __restrict__ logits,
                                            const T* __restrict__ dy, int hw, int c,
                                            T* __restrict__ dlogits) {
    int ch = blockIdx.x * SK_CHANNELS + threadIdx.x, b = blockIdx.y;
    float t = 0.0f;
    if (ch < c) {
        const T* xb = x + (size_t)b * hw * 2 * c + ch;
        const T* dyb = dy + (size_t)b * hw * c + ch;
        for (int p = threadIdx.y; p < hw; p += SK_LANES)
            t += to_f32(dyb[(size_t)p * c]) *
                 (to_f32(xb[(size_t)p * 2 * c]) - to_f32(xb[(size_t)p * 2 * c + c]));
    }
    t = sum_over_lanes(t);
    if (ch < c && threadIdx.y == 0) {
        float wa, wb;
        sk_weights(to_f32(logits[b * 2 * c + ch]), to_f32(logits[b * 2 * c + c + ch]), &wa, &wb);
        dlogits[b * 2 * c + ch] = from_f32<T>(wa * wb * t);
        dlogits[b * 2 * c + c + ch] = from_f32<T>(-(wa * wb * t));
    }
}
KERNEL void sk_combine_backward_logits(const float* __restrict__ x,
                                       const float* __restrict__ logits,
                                       const float* __restrict__ dy, int hw, int c,
                                       float* __restrict__ dlogits) {
    sk_combine_backward_logits_impl(x, logits, dy, hw, c, dlogits);
}
KERNEL void sk_combine_backward_logits_bf16(const bf16* __restrict__ x,
                                            const bf16* __restrict__ logits,
                                            const bf16* __restrict__ dy, int hw, int c,
                                            bf16* __restrict__ dlogits) {
    sk_combine_backward_logits_impl(x, logits, dy, hw, c, dlogits);
}

REGISTER_KERNEL(sk_pool_forward);
REGISTER_KERNEL(sk_pool_forward_bf16);
REGISTER_KERNEL(sk_pool_backward);
REGISTER_KERNEL(sk_pool_backward_bf16);
REGISTER_KERNEL(sk_combine_forward);
REGISTER_KERNEL(sk_combine_forward_bf16);
REGISTER_KERNEL(sk_combine_backward_x);
REGISTER_KERNEL(sk_combine_backward_x_bf16);
REGISTER_KERNEL(sk_combine_backward_logits);
REGISTER_KERNEL(sk_combine_backward_logits_bf16);
