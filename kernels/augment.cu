// Batch augmentation: data::augment::render (the CPU reference) for many views at once. Row r of
// the output [rows, size, size, c] is views[r] — a crop, a flip, colour ops, grayscale and a
// blur, all drawn on the host by Augment::sample — carried out on image views[r].image of a
// batch of u8 HWC images, then standardised per channel. Up to five launches, through a scratch
// buffer x [rows, size, size, c] of f32 values in [0, 1]:
//   augment_resize   one thread per output pixel: the crop resampled (bilinear or bicubic,
//                    antialiased when shrinking, half-pixel centres, edges replicated) and
//                    mirrored, its taps computed on the fly as resize.rs's `taps` does.
//   augment_mean     one block per row that has a contrast op: each channel's mean over the
//                    image as contrast sees it, i.e. after the ops that precede it in that row's
//                    order (recomputed here rather than stored).
//   augment_color    one thread per pixel: the colour ops in order, each clamped to [0, 1], and
//                    grayscale; then standardised into the output, or, for a row to be
//                    blurred, written back into x.
//   augment_blur_h   the horizontal Gaussian pass of the rows with sigma > 0: x → tmp.
//   augment_blur_v   the vertical pass, standardised into the output.
// A block covers 256 pixels of one row (blockIdx.y; blockIdx.x for augment_mean), so its
// threads share one view and a pass skips whole blocks of the rows it does not concern. Each
// thread handles all C channels of its pixel (C = 1 or 3, a template parameter so that a pixel
// stays in registers); consecutive threads touch consecutive pixels, so accesses coalesce.
// Output T is f32 or bf16 (`name`, `name_bf16`); all arithmetic is f32, and every sum runs in
// a fixed order (no atomics).
#include "common.cuh"

constexpr int AUG_THREADS = 256;

// data::augment::ViewParams, field for field (64 bytes).
struct AugView {
    unsigned image;    // the source image's index in the batch
    unsigned crop[4];  // top, left, height, width
    unsigned flip;     // 1: mirrored left-right
    int ops[4];        // the colour ops in the order they run, −1 (NO_OP) in unused slots
    float amounts[4];  // each op's factor (for AUG_HUE, the shift in turns)
    unsigned gray;     // 1: replaced by its luma
    float sigma;       // the Gaussian blur's sigma in pixels; 0: no blur
};
static_assert(sizeof(AugView) == 64, "AugView must match data::augment::ViewParams");

// The codes of AugView::ops (data::augment's BRIGHTNESS, ...).
constexpr int AUG_BRIGHTNESS = 0;
constexpr int AUG_CONTRAST = 1;
constexpr int AUG_SATURATION = 2;
constexpr int AUG_HUE = 3;

// The standardisation applied last: out = (x − mean[ch]) / stddev[ch].
struct AugNorm {
    float mean[3], stddev[3];
};

// ---- resampling (resize.rs) ----------------------------------------------------------------

// Filter::weight: the triangle, or Keys' cubic with a = −0.5 (as tf.image.resize).
DEVICE inline float aug_filter(int bicubic, float t) {
    t = fabsf(t);
    if (!bicubic) return fmaxf(1.0f - t, 0.0f);
    const float a = -0.5f;
    if (t <= 1.0f) return ((a + 2.0f) * t - (a + 3.0f)) * t * t + 1.0f;
    if (t < 2.0f) return ((a * t - 5.0f * a) * t + 8.0f * a) * t - 4.0f * a;
    return 0.0f;
}

// The taps of output pixel o of `size` resampled from `len` source pixels (resize.rs's `taps`):
// source pixels lo..hi (the caller clamps them into 0..len-1), tap i weighing
// aug_filter((i − centre) · inv_stretch) · norm, so that the weights sum to 1.
struct AugTaps {
    float centre, inv_stretch, norm;
    int lo, hi;
};
DEVICE inline AugTaps aug_taps(int o, int len, int size, int bicubic) {
    AugTaps t;
    // (o + ½)·len/size − ½ as an exact integer ratio, rounded once.
    t.centre = (float)((2 * o + 1) * len - size) / (float)(2 * size);
    // Shrinking stretches the kernel by the scale (antialiasing); enlarging does not.
    const float stretch = fmaxf((float)len / (float)size, 1.0f);
    t.inv_stretch = 1.0f / stretch;
    const float support = (bicubic ? 2.0f : 1.0f) * stretch;
    t.lo = (int)ceilf(t.centre - support);
    t.hi = (int)floorf(t.centre + support);
    float total = 0.0f;
    for (int i = t.lo; i <= t.hi; i++) total += aug_filter(bicubic, (i - t.centre) * t.inv_stretch);
    t.norm = 1.0f / total;
    return t;
}

// One output pixel: for each row tap, the weighted sum along the row (resize.rs's horizontal
// pass), then those sums weighted by the row taps (its vertical pass), scaled to [0, 1].
template <int C>
DEVICE void augment_resize_impl(const uint8_t* __restrict__ images, int h, int w,
                                const AugView* __restrict__ views, int size, int bicubic,
                                float* __restrict__ x) {
    const int r = blockIdx.y, p = blockIdx.x * AUG_THREADS + threadIdx.x;
    if (p >= size * size) return;
    const AugView v = views[r];
    const int oy = p / size, ox = p % size;
    const int top = v.crop[0], left = v.crop[1], crop_h = v.crop[2], crop_w = v.crop[3];
    const AugTaps ty = aug_taps(oy, crop_h, size, bicubic);
    const AugTaps tx = aug_taps(v.flip ? size - 1 - ox : ox, crop_w, size, bicubic);
    const uint8_t* img = images + (size_t)v.image * h * w * C;
    float acc[C] = {};
    for (int i = ty.lo; i <= ty.hi; i++) {
        const float wy = aug_filter(bicubic, (i - ty.centre) * ty.inv_stretch) * ty.norm;
        const uint8_t* row = img + (top + min(max(i, 0), crop_h - 1)) * w * C;
        float line[C] = {};
        for (int j = tx.lo; j <= tx.hi; j++) {
            const float wx = aug_filter(bicubic, (j - tx.centre) * tx.inv_stretch) * tx.norm;
            const uint8_t* src = row + (left + min(max(j, 0), crop_w - 1)) * C;
#pragma unroll
            for (int ch = 0; ch < C; ch++) line[ch] += wx * (float)src[ch];
        }
#pragma unroll
        for (int ch = 0; ch < C; ch++) acc[ch] += wy * line[ch];
    }
    // Bicubic overshoots: clamp.
#pragma unroll
    for (int ch = 0; ch < C; ch++)
        x[(r * size * size + p) * C + ch] = fminf(fmaxf(acc[ch] / 255.0f, 0.0f), 1.0f);
}
KERNEL void augment_resize(const uint8_t* __restrict__ images, int h, int w, int c,
                           const AugView* __restrict__ views, int size, int bicubic,
                           float* __restrict__ x) {
    if (c == 3) augment_resize_impl<3>(images, h, w, views, size, bicubic, x);
    else augment_resize_impl<1>(images, h, w, views, size, bicubic, x);
}

// ---- colour (augment.rs) -------------------------------------------------------------------

DEVICE inline float aug_clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

// f32::rem_euclid(1.0): the fraction in [0, 1].
DEVICE inline float aug_wrap(float v) {
    const float r = fmodf(v, 1.0f);
    return r < 0.0f ? r + 1.0f : r;
}

// Hue (in turns), saturation and value of an RGB pixel (tf.image.rgb_to_hsv).
DEVICE inline void aug_rgb_to_hsv(const float px[3], float& h, float& s, float& v) {
    const float r = px[0], g = px[1], b = px[2];
    const float mx = fmaxf(fmaxf(r, g), b);
    const float range = mx - fminf(fminf(r, g), b);
    v = mx;
    if (range <= 0.0f) {  // gray: no hue
        h = 0.0f;
        s = 0.0f;
        return;
    }
    const float h6 = mx == r   ? (g - b) / range
                     : mx == g ? 2.0f + (b - r) / range
                               : 4.0f + (r - g) / range;
    h = aug_wrap(h6 / 6.0f);
    s = range / mx;
}

// The inverse (tf.image.hsv_to_rgb).
DEVICE inline void aug_hsv_to_rgb(float h, float s, float v, float px[3]) {
    const float h6 = h * 6.0f;
    const float weights[3] = {aug_clamp01(fabsf(h6 - 3.0f) - 1.0f),
                              aug_clamp01(2.0f - fabsf(h6 - 2.0f)),
                              aug_clamp01(2.0f - fabsf(h6 - 4.0f))};
#pragma unroll
    for (int ch = 0; ch < 3; ch++) px[ch] = v * (1.0f - s + s * weights[ch]);
}

// Colour op `op` with factor f on one pixel, then the clamp to [0, 1] that follows every op.
// `mean` (the row's channel means) is read by contrast only. Saturation and hue are drawn for
// three channels only.
template <int C>
DEVICE inline void aug_color_op(int op, float f, const float* __restrict__ mean, float px[3]) {
    if (op == AUG_BRIGHTNESS) {
#pragma unroll
        for (int ch = 0; ch < C; ch++) px[ch] *= f;
    } else if (op == AUG_CONTRAST) {
#pragma unroll
        for (int ch = 0; ch < C; ch++) px[ch] = mean[ch] + f * (px[ch] - mean[ch]);
    } else if (C == 3 && (op == AUG_SATURATION || op == AUG_HUE)) {
        float h, s, v;
        aug_rgb_to_hsv(px, h, s, v);
        if (op == AUG_SATURATION) s = aug_clamp01(s * f);
        else h = aug_wrap(h + f);
        aug_hsv_to_rgb(h, s, v, px);
    } else {
        return;  // an unused slot: no clamp either
    }
#pragma unroll
    for (int ch = 0; ch < C; ch++) px[ch] = aug_clamp01(px[ch]);
}

// Each channel's mean over row blockIdx.x as its contrast op sees it: after the ops before it.
// means [rows, 3]; rows without contrast are skipped (the whole block returns).
template <int C>
DEVICE void augment_mean_impl(const AugView* __restrict__ views, const float* __restrict__ x,
                              int size, float* __restrict__ means) {
    __shared__ float partial[AUG_THREADS / 32][3];
    const int r = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const AugView v = views[r];
    int k = 0;
    while (k < 4 && v.ops[k] != AUG_CONTRAST) k++;
    if (k == 4) return;
    const int pixels = size * size;
    const float* xr = x + r * pixels * C;
    float sum[C] = {};
    for (int p = threadIdx.x; p < pixels; p += AUG_THREADS) {
        float px[3] = {};
#pragma unroll
        for (int ch = 0; ch < C; ch++) px[ch] = xr[p * C + ch];
        for (int j = 0; j < k; j++) aug_color_op<C>(v.ops[j], v.amounts[j], nullptr, px);
#pragma unroll
        for (int ch = 0; ch < C; ch++) sum[ch] += px[ch];
    }
#pragma unroll
    for (int ch = 0; ch < C; ch++) {
        for (int o = 16; o > 0; o >>= 1) sum[ch] += __shfl_xor_sync(0xffffffffu, sum[ch], o);
        if (lane == 0) partial[warp][ch] = sum[ch];
    }
    __syncthreads();
    if (threadIdx.x < C) {
        float total = 0.0f;
        for (int w = 0; w < AUG_THREADS / 32; w++) total += partial[w][threadIdx.x];
        means[r * 3 + threadIdx.x] = total / (float)pixels;
    }
}
KERNEL void augment_mean(const AugView* __restrict__ views, const float* __restrict__ x,
                         int size, int c, float* __restrict__ means) {
    if (c == 3) augment_mean_impl<3>(views, x, size, means);
    else augment_mean_impl<1>(views, x, size, means);
}

template <typename T, int C>
DEVICE inline void aug_store(T* __restrict__ out, int i, const float px[3], const AugNorm& norm) {
#pragma unroll
    for (int ch = 0; ch < C; ch++)
        out[i * C + ch] = from_f32<T>((px[ch] - norm.mean[ch]) / norm.stddev[ch]);
}

// The colour ops in order and grayscale; rows with a blur (sigma > 0 and radius > 0) go back
// into x for augment_blur_h, the others are standardised into out.
template <typename T, int C>
DEVICE void augment_color_impl(const AugView* __restrict__ views, float* __restrict__ x,
                               const float* __restrict__ means, int size, int radius, AugNorm norm,
                               T* __restrict__ out) {
    const int r = blockIdx.y, p = blockIdx.x * AUG_THREADS + threadIdx.x;
    if (p >= size * size) return;
    const AugView v = views[r];
    const int i = r * size * size + p;
    float px[3] = {};
#pragma unroll
    for (int ch = 0; ch < C; ch++) px[ch] = x[i * C + ch];
    for (int k = 0; k < 4; k++) aug_color_op<C>(v.ops[k], v.amounts[k], means + r * 3, px);
    if (C == 3 && v.gray) {
        // tf.image.rgb_to_grayscale's luma in all three channels.
        const float g = 0.2989f * px[0] + 0.587f * px[1] + 0.114f * px[2];
        px[0] = px[1] = px[2] = g;
    }
    if (v.sigma > 0.0f && radius > 0) {
#pragma unroll
        for (int ch = 0; ch < C; ch++) x[i * C + ch] = px[ch];
    } else {
        aug_store<T, C>(out, i, px, norm);
    }
}

// ---- blur ----------------------------------------------------------------------------------

// The blur's 2·radius + 1 weights exp(−i²/2σ²), i = −radius..radius, into shared memory wk;
// returns their sum (every thread adds them in the same order). Every thread of the block must
// call it: it has a barrier.
DEVICE inline float aug_blur_weights(float sigma, int radius, float* wk) {
    if ((int)threadIdx.x <= 2 * radius) {
        const int i = threadIdx.x - radius;
        wk[threadIdx.x] = expf(-(float)(i * i) / (2.0f * sigma * sigma));
    }
    __syncthreads();
    float total = 0.0f;
    for (int k = 0; k <= 2 * radius; k++) total += wk[k];
    return total;
}

// One pass of the separable blur at pixel (y, x0) of a size × size × C image `in`, along its
// column or its row, edges replicated; normalised by the weights' sum.
template <int C>
DEVICE inline void aug_blur_pass(const float* __restrict__ in, int size, int y, int x0,
                                 bool vertical, int radius, const float* wk, float total,
                                 float px[3]) {
    float acc[C] = {};
    for (int k = 0; k <= 2 * radius; k++) {
        const int d = k - radius;
        const int sy = vertical ? min(max(y + d, 0), size - 1) : y;
        const int sx = vertical ? x0 : min(max(x0 + d, 0), size - 1);
#pragma unroll
        for (int ch = 0; ch < C; ch++) acc[ch] += wk[k] * in[(sy * size + sx) * C + ch];
    }
#pragma unroll
    for (int ch = 0; ch < C; ch++) px[ch] = acc[ch] / total;
}

// Horizontal pass x → tmp of the rows with sigma > 0. Dynamic shared memory: 2·radius + 1
// floats (the weights).
template <int C>
DEVICE void augment_blur_h_impl(const AugView* __restrict__ views, const float* __restrict__ x,
                                int size, int radius, float* __restrict__ tmp) {
    DYNAMIC_SHARED(float, wk);
    const int r = blockIdx.y, p = blockIdx.x * AUG_THREADS + threadIdx.x;
    const float sigma = views[r].sigma;
    if (sigma <= 0.0f) return;  // the whole block: no blur in this row
    const float total = aug_blur_weights(sigma, radius, wk);
    if (p >= size * size) return;
    const int base = r * size * size * C;
    float px[3];
    aug_blur_pass<C>(x + base, size, p / size, p % size, false, radius, wk, total, px);
#pragma unroll
    for (int ch = 0; ch < C; ch++) tmp[base + p * C + ch] = px[ch];
}
KERNEL void augment_blur_h(const AugView* __restrict__ views, const float* __restrict__ x,
                           int size, int c, int radius, float* __restrict__ tmp) {
    if (c == 3) augment_blur_h_impl<3>(views, x, size, radius, tmp);
    else augment_blur_h_impl<1>(views, x, size, radius, tmp);
}

// Vertical pass tmp → out of the rows with sigma > 0, standardised.
template <typename T, int C>
DEVICE void augment_blur_v_impl(const AugView* __restrict__ views, const float* __restrict__ tmp,
                                int size, int radius, AugNorm norm, T* __restrict__ out) {
    DYNAMIC_SHARED(float, wk);
    const int r = blockIdx.y, p = blockIdx.x * AUG_THREADS + threadIdx.x;
    const float sigma = views[r].sigma;
    if (sigma <= 0.0f) return;
    const float total = aug_blur_weights(sigma, radius, wk);
    if (p >= size * size) return;
    float px[3];
    aug_blur_pass<C>(tmp + r * size * size * C, size, p / size, p % size, true, radius, wk, total,
                     px);
    aug_store<T, C>(out, r * size * size + p, px, norm);
}

// ---- the kernels of both output types ------------------------------------------------------

template <typename T>
DEVICE void augment_color_c(const AugView* views, float* x, const float* means, int size, int c,
                            int radius, AugNorm norm, T* out) {
    if (c == 3) augment_color_impl<T, 3>(views, x, means, size, radius, norm, out);
    else augment_color_impl<T, 1>(views, x, means, size, radius, norm, out);
}
KERNEL void augment_color(const AugView* __restrict__ views, float* __restrict__ x,
                          const float* __restrict__ means, int size, int c, int radius, float m0,
                          float m1, float m2, float s0, float s1, float s2,
                          float* __restrict__ out) {
    augment_color_c(views, x, means, size, c, radius, AugNorm{{m0, m1, m2}, {s0, s1, s2}}, out);
}
KERNEL void augment_color_bf16(const AugView* __restrict__ views, float* __restrict__ x,
                               const float* __restrict__ means, int size, int c, int radius,
                               float m0, float m1, float m2, float s0, float s1, float s2,
                               bf16* __restrict__ out) {
    augment_color_c(views, x, means, size, c, radius, AugNorm{{m0, m1, m2}, {s0, s1, s2}}, out);
}

template <typename T>
DEVICE void augment_blur_v_c(const AugView* views, const float* tmp, int size, int c, int radius,
                             AugNorm norm, T* out) {
    if (c == 3) augment_blur_v_impl<T, 3>(views, tmp, size, radius, norm, out);
    else augment_blur_v_impl<T, 1>(views, tmp, size, radius, norm, out);
}
KERNEL void augment_blur_v(const AugView* __restrict__ views, const float* __restrict__ tmp,
                           int size, int c, int radius, float m0, float m1, float m2, float s0,
                           float s1, float s2, float* __restrict__ out) {
    augment_blur_v_c(views, tmp, size, c, radius, AugNorm{{m0, m1, m2}, {s0, s1, s2}}, out);
}
KERNEL void augment_blur_v_bf16(const AugView* __restrict__ views, const float* __restrict__ tmp,
                                int size, int c, int radius, float m0, float m1, float m2,
                                float s0, float s1, float s2, bf16* __restrict__ out) {
    augment_blur_v_c(views, tmp, size, c, radius, AugNorm{{m0, m1, m2}, {s0, s1, s2}}, out);
}

REGISTER_KERNEL(augment_resize);
REGISTER_KERNEL(augment_mean);
REGISTER_KERNEL(augment_color);
REGISTER_KERNEL(augment_color_bf16);
REGISTER_KERNEL(augment_blur_h);
REGISTER_KERNEL(augment_blur_v);
REGISTER_KERNEL(augment_blur_v_bf16);
