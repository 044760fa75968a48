// The two ops of a selective-kernel convolution (cpu::sk) on NHWC activations x [n, hw, 2c]
// that hold two streams side by side: stream 0 in channels [0, c), stream 1 in [c, 2c).
//
// The elementwise kernels run one thread per element, consecutive threads on consecutive
// channels (coalesced). The two reductions over positions (sk_pool_forward and the logits'
// gradient) take a block of SK_CHANNELS × SK_LANES threads per (image, 32 channels): lane l
// sums positions l, l + SK_LANES, …, then the lanes' partial sums are added in lane order —
// SK_LANES times more threads than one per channel (a ResNet stage-1 map has 3136 positions),
// deterministic, and without atomics.
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
KERNEL void sk_pool_forward(const float* __restrict__ x, int hw, int c,
                            float* __restrict__ y) {
    int ch = blockIdx.x * SK_CHANNELS + threadIdx.x, b = blockIdx.y;
    float s = 0.0f;
    if (ch < c) {
        const float* xb = x + (size_t)b * hw * 2 * c + ch;
        for (int p = threadIdx.y; p < hw; p += SK_LANES)
            s += xb[(size_t)p * 2 * c] + xb[(size_t)p * 2 * c + c];
    }
    s = sum_over_lanes(s);
    if (ch < c && threadIdx.y == 0) y[b * c + ch] = s * (1.0f / (float)hw);
}

// dx[b, p, ch] = dx[b, p, c + ch] = dy[b, ch] / hw; one thread per element of dx.
KERNEL void sk_pool_backward(const float* __restrict__ dy, int n, int hw, int c,
                             float* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * 2 * c) return;
    int ch = i % c, b = i / (2 * c) / hw;
    dx[i] = dy[b * c + ch] * (1.0f / (float)hw);
}

// y[b, p, ch] = a·x[b, p, ch] + b·x[b, p, c + ch], (a, b) = softmax(logits[b, ch],
// logits[b, c + ch]); one thread per element of y. Recomputing the weights per element costs two
// exponentials against three memory accesses: cheaper than a separate pass to store them.
KERNEL void sk_combine_forward(const float* __restrict__ x, const float* __restrict__ logits,
                               int n, int hw, int c, float* __restrict__ y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * c) return;
    int ch = i % c, row = i / c, b = row / hw;
    float wa, wb;
    sk_weights(logits[b * 2 * c + ch], logits[b * 2 * c + c + ch], &wa, &wb);
    const float* pixel = x + (size_t)row * 2 * c;
    y[i] = wa * pixel[ch] + wb * pixel[c + ch];
}

// dx = a·dy to stream 0, b·dy to stream 1; one thread per element of dx.
KERNEL void sk_combine_backward_x(const float* __restrict__ logits, const float* __restrict__ dy,
                                  int n, int hw, int c, float* __restrict__ dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * hw * 2 * c) return;
    int k = i % (2 * c), ch = k % c, row = i / (2 * c), b = row / hw;
    float wa, wb;
    sk_weights(logits[b * 2 * c + ch], logits[b * 2 * c + c + ch], &wa, &wb);
    dx[i] = (k < c ? wa : wb) * dy[(size_t)row * c + ch];
}

// dlogits[b, ch] = a·b·t, dlogits[b, c + ch] = −a·b·t with t = Σ_p dy·(x₀ − x₁) (the softmax's
// Jacobian). Grid (ceil(c / SK_CHANNELS), n), block (SK_CHANNELS, SK_LANES).
KERNEL void sk_combine_backward_logits(const float* __restrict__ x,
                                       const float* __restrict__ logits,
                                       const float* __restrict__ dy, int hw, int c,
                                       float* __restrict__ dlogits) {
    int ch = blockIdx.x * SK_CHANNELS + threadIdx.x, b = blockIdx.y;
    float t = 0.0f;
    if (ch < c) {
        const float* xb = x + (size_t)b * hw * 2 * c + ch;
        const float* dyb = dy + (size_t)b * hw * c + ch;
        for (int p = threadIdx.y; p < hw; p += SK_LANES)
            t += dyb[(size_t)p * c] * (xb[(size_t)p * 2 * c] - xb[(size_t)p * 2 * c + c]);
    }
    t = sum_over_lanes(t);
    if (ch < c && threadIdx.y == 0) {
        float wa, wb;
        sk_weights(logits[b * 2 * c + ch], logits[b * 2 * c + c + ch], &wa, &wb);
        dlogits[b * 2 * c + ch] = wa * wb * t;
        dlogits[b * 2 * c + c + ch] = -(wa * wb * t);
    }
}

REGISTER_KERNEL(sk_pool_forward);
REGISTER_KERNEL(sk_pool_backward);
REGISTER_KERNEL(sk_combine_forward);
REGISTER_KERNEL(sk_combine_backward_x);
REGISTER_KERNEL(sk_combine_backward_logits);
