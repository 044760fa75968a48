//! SimCLR data augmentation on the CPU, following the official implementation
//! (google-research/simclr, tf2/data_util.py, "simclrv2" variant): random resized crop,
//! horizontal flip, colour jitter in random order, random grayscale, Gaussian blur. Images
//! come in as u8 HWC with 1 or 3 channels and go out as f32 HWC, scaled to [0, 1] and then
//! standardised. The colour jitter acts on RGB as TensorFlow's ops do: multiplicative
//! brightness, contrast around each channel's mean, saturation scaled and hue rotated in HSV.
//!
//! Where this differs from the official code, on purpose:
//! - the crop is sampled the torchvision way (10 attempts, then a centre crop) rather than
//!   with TensorFlow's sample_distorted_bounding_box;
//! - below 64 pixels crops are resized bilinearly (bicubic from 64 up, as official), which
//!   keeps the small bundled Fashion-MNIST runs as they were;
//! - the blur replicates edge pixels instead of zero padding, so it does not darken borders.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::resize::{resize, Filter, Rect};
use super::Dataset;
use crate::rng::Rng;

/// Luma weights of tf.image.rgb_to_grayscale.
const GRAY: [f32; 3] = [0.2989, 0.587, 0.114];
/// The evaluation centre crop keeps this much of the shorter side (official CROP_PROPORTION).
pub const CROP_PROPORTION: f64 = 0.875;
/// From this output size up, evaluation centre-crops and resizing is bicubic.
pub const LARGE: usize = 64;

/// Per-channel standardisation applied last: out = (x - mean[c]) / std[c], x in [0, 1]. Stored
/// in every checkpoint and export: a model sees the pixels it was trained on whatever data it
/// is later given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// Mean and standard deviation per channel of all train pixels, scaled to [0, 1]. Summed
    /// over fixed blocks of images in parallel, then the blocks in order, so the result does
    /// not depend on the number of threads.
    pub fn from_dataset(ds: &Dataset) -> Normalize {
        let c = ds.c;
        let block = (1024 * ds.h * ds.w * c).max(c);
        let partial: Vec<(Vec<f64>, Vec<f64>)> = ds
            .images
            .par_chunks(block)
            .map(|pixels| {
                let (mut sum, mut sum_sq) = (vec![0f64; c], vec![0f64; c]);
                for px in pixels.chunks_exact(c) {
                    for (ch, &v) in px.iter().enumerate() {
                        let v = v as f64 / 255.0;
                        sum[ch] += v;
                        sum_sq[ch] += v * v;
                    }
                }
                (sum, sum_sq)
            })
            .collect();
        let (mut sum, mut sum_sq) = (vec![0f64; c], vec![0f64; c]);
        for (s, q) in &partial {
            for ch in 0..c {
                sum[ch] += s[ch];
                sum_sq[ch] += q[ch];
            }
        }
        let count = (ds.images.len() / c).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            // Floored so that a constant channel does not divide by zero.
            .map(|(s, m)| ((s / count - m * m).max(0.0).sqrt()).max(1e-3) as f32)
            .collect();
        Normalize {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    fn apply(&self, x: &mut [f32]) {
        let c = self.mean.len();
        for px in x.chunks_exact_mut(c) {
            for ((v, m), s) in px.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Augment {
    /// Side of the square output image.
    pub out_size: usize,
    /// Range of the crop's area as a fraction of the image.
    pub crop_area: (f64, f64),
    /// Range of the crop's width / height, sampled log-uniformly.
    pub aspect: (f64, f64),
    pub flip: bool,
    pub jitter_prob: f64,
    /// s in the paper: brightness, contrast and saturation factors in [1-0.8s, 1+0.8s],
    /// hue shift in [-0.2s, 0.2s].
    pub jitter_strength: f64,
    pub grayscale_prob: f64,
    pub blur_prob: f64,
    /// How the crop is resized to out_size.
    pub filter: Filter,
}

impl Augment {
    /// The paper's defaults; blur and bicubic resizing only for images of 64 pixels or more
    /// (the paper does not blur CIFAR-10).
    pub fn simclr(out_size: usize, strength: f64) -> Augment {
        Augment {
            out_size,
            crop_area: (0.08, 1.0),
            aspect: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            jitter_prob: 0.8,
            jitter_strength: strength,
            grayscale_prob: 0.2,
            blur_prob: if out_size < LARGE { 0.0 } else { 0.5 },
            filter: if out_size < LARGE {
                Filter::Bilinear
            } else {
                Filter::Bicubic
            },
        }
    }

    /// Augments one u8 HWC image into `out` (out_size × out_size × c, standardised f32).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        img: &[u8],
        h: usize,
        w: usize,
        c: usize,
        norm: &Normalize,
        rng: &mut Rng,
        out: &mut [f32],
    ) {
        let view = self.sample(h, w, c, rng);
        render(img, h, w, c, &view, &self.frame(), norm, out);
    }

    /// What every view of this augmentation shares.
    pub fn frame(&self) -> Frame {
        Frame {
            size: self.out_size,
            filter: self.filter,
            // 10% of the side, made odd (as official: radius = size / 2); none when no view
            // is blurred, so that the device skips the blur's passes.
            blur_radius: if self.blur_prob > 0.0 {
                self.out_size / 10 / 2
            } else {
                0
            },
        }
    }

    /// One view's random choices for an h × w × c image, drawn from `rng` in a fixed order:
    /// the crop, the flip, the colour jitter (whether, the order, each factor), grayscale, the
    /// blur. Draws that cannot matter (no flip allowed, saturation and hue of one channel)
    /// are not made.
    pub fn sample(&self, h: usize, w: usize, c: usize, rng: &mut Rng) -> ViewParams {
        assert!(
            c == 1 || c == 3,
            "augmentation supports 1 or 3 channels, not {c}"
        );
        let crop = self.crop_box(h, w, rng);
        let mut view = ViewParams {
            crop: [crop.y, crop.x, crop.h, crop.w].map(|v| v as u32),
            flip: (self.flip && rng.bernoulli(0.5)) as u32,
            ops: [NO_OP; 4],
            ..ViewParams::default()
        };
        if rng.bernoulli(self.jitter_prob) {
            let s = self.jitter_strength;
            let mut order = [BRIGHTNESS, CONTRAST, SATURATION, HUE];
            rng.shuffle(&mut order);
            let mut k = 0;
            for op in order {
                view.amounts[k] = match op {
                    BRIGHTNESS | CONTRAST => factor(rng, 0.8 * s),
                    SATURATION if c == 3 => factor(rng, 0.8 * s),
                    HUE if c == 3 => rng.range(-0.2 * s, 0.2 * s) as f32,
                    _ => continue,
                };
                view.ops[k] = op;
                k += 1;
            }
        }
        view.gray = (c == 3 && rng.bernoulli(self.grayscale_prob)) as u32;
        if rng.bernoulli(self.blur_prob) {
            view.sigma = rng.range(0.1, 2.0) as f32;
        }
        view
    }

    /// Random resized crop box (torchvision's RandomResizedCrop.get_params).
    fn crop_box(&self, h: usize, w: usize, rng: &mut Rng) -> Rect {
        let area = (h * w) as f64;
        let (log_lo, log_hi) = (self.aspect.0.ln(), self.aspect.1.ln());
        for _ in 0..10 {
            let target = area * rng.range(self.crop_area.0, self.crop_area.1);
            let ratio = rng.range(log_lo, log_hi).exp();
            let cw = (target * ratio).sqrt().round() as usize;
            let ch = (target / ratio).sqrt().round() as usize;
            if 0 < cw && cw <= w && 0 < ch && ch <= h {
                let y = rng.below(h - ch + 1);
                let x = rng.below(w - cw + 1);
                return Rect { y, x, h: ch, w: cw };
            }
        }
        // Fallback: the largest centred crop whose aspect ratio is within range.
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < self.aspect.0 {
            ((w as f64 / self.aspect.0).round() as usize, w)
        } else if in_ratio > self.aspect.1 {
            (h, (h as f64 * self.aspect.1).round() as usize)
        } else {
            (h, w)
        };
        Rect {
            y: (h - ch) / 2,
            x: (w - cw) / 2,
            h: ch,
            w: cw,
        }
    }
}

/// Deterministic evaluation preprocessing, then standardisation. From 64 pixels up, the
/// official one: the central 87.5% square, resized bicubically to out_size. Below, the whole
/// image resized bilinearly (a plain copy when it already has that size).
pub fn center(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    out_size: usize,
    norm: &Normalize,
    out: &mut [f32],
) {
    let view = ViewParams::center(h, w, out_size);
    render(img, h, w, c, &view, &Frame::center(out_size), norm, out);
}

/// The colour ops of `ViewParams::ops` (the codes kernels/augment.cu uses too).
pub const BRIGHTNESS: i32 = 0;
pub const CONTRAST: i32 = 1;
pub const SATURATION: i32 = 2;
pub const HUE: i32 = 3;
/// An unused slot of `ViewParams::ops`.
pub const NO_OP: i32 = -1;

/// One view's random choices, drawn on the host (`Augment::sample`) and carried out by
/// `render` on the CPU or by kernels/augment.cu on a GPU: the same numbers either way, so the
/// two differ only by float rounding. 64 bytes, laid out as the kernel's struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ViewParams {
    /// The source image: its index among the batch's images.
    pub image: u32,
    /// The crop: top, left, height, width.
    pub crop: [u32; 4],
    /// 1: mirrored left-right.
    pub flip: u32,
    /// The colour ops in the order they run, NO_OP in the unused slots.
    pub ops: [i32; 4],
    /// Each op's factor (for HUE, the shift in turns).
    pub amounts: [f32; 4],
    /// 1: replaced by its luma.
    pub gray: u32,
    /// The Gaussian blur's sigma in pixels; 0: no blur.
    pub sigma: f32,
}

impl ViewParams {
    /// The evaluation view (`center`) of an h × w image.
    pub fn center(h: usize, w: usize, out_size: usize) -> ViewParams {
        let rect = match out_size >= LARGE {
            true => Rect::center_square(h, w, CROP_PROPORTION),
            false => Rect::full(h, w),
        };
        ViewParams {
            crop: [rect.y, rect.x, rect.h, rect.w].map(|v| v as u32),
            ops: [NO_OP; 4],
            ..ViewParams::default()
        }
    }
}

/// What all the views of a batch share: the output side, the resize filter and the blur's
/// radius (its kernel has 2·radius + 1 taps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    pub size: usize,
    pub filter: Filter,
    pub blur_radius: usize,
}

impl Frame {
    /// The evaluation frame: bicubic from 64 pixels up, bilinear below, no blur.
    pub fn center(size: usize) -> Frame {
        Frame {
            size,
            filter: if size >= LARGE {
                Filter::Bicubic
            } else {
                Filter::Bilinear
            },
            blur_radius: 0,
        }
    }
}

/// Carries out `view` on a u8 HWC image into `out` (size × size × c, standardised f32): crop
/// and resize (and flip), the colour ops in order, clamped to [0, 1] after each, grayscale,
/// blur, standardisation. The CPU reference of kernels/augment.cu.
#[allow(clippy::too_many_arguments)]
pub fn render(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    view: &ViewParams,
    frame: &Frame,
    norm: &Normalize,
    out: &mut [f32],
) {
    let [y, x, ch, cw] = view.crop.map(|v| v as usize);
    assert!(y + ch <= h, "crop outside the image");
    let rect = Rect { y, x, h: ch, w: cw };
    resize(
        img,
        w,
        c,
        rect,
        view.flip == 1,
        frame.size,
        frame.filter,
        out,
    );
    for (&op, &amount) in view.ops.iter().zip(&view.amounts) {
        match op {
            BRIGHTNESS => brightness(out, amount),
            CONTRAST => contrast(out, c, amount),
            SATURATION => saturation(out, amount),
            HUE => hue(out, amount),
            _ => continue,
        }
        out.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    }
    if view.gray == 1 {
        grayscale(out);
    }
    if view.sigma > 0.0 {
        blur(out, frame.size, c, view.sigma, frame.blur_radius);
    }
    norm.apply(out);
}

/// A factor uniform in [1 - amount, 1 + amount], never negative.
fn factor(rng: &mut Rng, amount: f64) -> f32 {
    rng.range((1.0 - amount).max(0.0), 1.0 + amount) as f32
}

fn brightness(x: &mut [f32], f: f32) {
    x.iter_mut().for_each(|v| *v *= f);
}

/// Blends each channel with its mean over the image (tf.image.adjust_contrast). The mean is
/// summed in f64: over 224² pixels an f32 running sum drifts by more than the device's tree.
fn contrast(x: &mut [f32], c: usize, f: f32) {
    let n = (x.len() / c) as f64;
    for ch in 0..c {
        let sum: f64 = x.iter().skip(ch).step_by(c).map(|&v| v as f64).sum();
        let mean = (sum / n) as f32;
        x.iter_mut()
            .skip(ch)
            .step_by(c)
            .for_each(|v| *v = mean + f * (*v - mean));
    }
}

fn luma(px: &[f32]) -> f32 {
    GRAY[0] * px[0] + GRAY[1] * px[1] + GRAY[2] * px[2]
}

/// Hue (in turns, [0, 1)), saturation and value of an RGB pixel (tf.image.rgb_to_hsv).
fn rgb_to_hsv(px: &[f32]) -> [f32; 3] {
    let (r, g, b) = (px[0], px[1], px[2]);
    let max = r.max(g).max(b);
    let range = max - r.min(g).min(b);
    if range <= 0.0 {
        return [0.0, 0.0, max]; // gray: no hue
    }
    let h6 = if max == r {
        (g - b) / range
    } else if max == g {
        2.0 + (b - r) / range
    } else {
        4.0 + (r - g) / range
    };
    [(h6 / 6.0).rem_euclid(1.0), range / max, max]
}

/// The inverse of rgb_to_hsv (tf.image.hsv_to_rgb).
fn hsv_to_rgb([h, s, v]: [f32; 3], px: &mut [f32]) {
    let h6 = h * 6.0;
    let weights = [
        ((h6 - 3.0).abs() - 1.0).clamp(0.0, 1.0),
        (2.0 - (h6 - 2.0).abs()).clamp(0.0, 1.0),
        (2.0 - (h6 - 4.0).abs()).clamp(0.0, 1.0),
    ];
    for (p, w) in px.iter_mut().zip(weights) {
        *p = v * (1.0 - s + s * w);
    }
}

/// Scales the saturation of an RGB image by `f`, clamped to [0, 1]: 0 is gray (the value,
/// i.e. the largest channel, in all three), 1 is unchanged (tf.image.adjust_saturation).
fn saturation(x: &mut [f32], f: f32) {
    for px in x.chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv(px);
        hsv_to_rgb([h, (s * f).clamp(0.0, 1.0), v], px);
    }
}

/// Rotates the hue of an RGB image by `delta` turns of the colour wheel (tf.image.adjust_hue).
fn hue(x: &mut [f32], delta: f32) {
    for px in x.chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv(px);
        hsv_to_rgb([(h + delta).rem_euclid(1.0), s, v], px);
    }
}

/// Replaces an RGB image by its luma in all three channels.
fn grayscale(x: &mut [f32]) {
    for px in x.chunks_exact_mut(3) {
        let g = luma(px);
        px.fill(g);
    }
}

/// Separable Gaussian blur of a size × size × c image with a kernel of 2·radius+1 taps,
/// replicating edge pixels. Each output is its taps summed in order from 0, as the plain
/// definition (`tests::blur_by_definition`) sums them; the loops run tap by tap over whole
/// rows instead, so that they vectorise (at 224 px the kernel has 23 taps).
fn blur(x: &mut [f32], size: usize, c: usize, sigma: f32, radius: usize) {
    if radius == 0 {
        return;
    }
    let kernel = gaussian(sigma, radius);
    let clampi = |i: isize| i.clamp(0, size as isize - 1) as usize;
    let (r, row) = (radius as isize, size * c);
    let mut tmp = vec![0f32; x.len()];
    // Horizontal pass x -> tmp: the columns whose taps all fall inside the row read a shifted
    // slice of it; the edge columns clamp.
    let lo = radius.min(size);
    let hi = size.saturating_sub(radius).max(lo);
    for (src, out) in x.chunks_exact(row).zip(tmp.chunks_exact_mut(row)) {
        for (k, &wk) in kernel.iter().enumerate() {
            if hi > lo {
                // Column xx reads column xx + k - radius: from k on, for the columns lo..hi.
                let span = (hi - lo) * c;
                let from = &src[k * c..k * c + span];
                for (o, &v) in out[lo * c..lo * c + span].iter_mut().zip(from) {
                    *o += wk * v;
                }
            }
            for xx in (0..lo).chain(hi..size) {
                let sx = clampi(xx as isize + k as isize - r);
                for ch in 0..c {
                    out[xx * c + ch] += wk * src[sx * c + ch];
                }
            }
        }
    }
    // Vertical pass tmp -> x, a whole row per tap.
    for (y, out) in x.chunks_exact_mut(row).enumerate() {
        out.fill(0.0);
        for (k, &wk) in kernel.iter().enumerate() {
            let sy = clampi(y as isize + k as isize - r);
            for (o, &v) in out.iter_mut().zip(&tmp[sy * row..(sy + 1) * row]) {
                *o += wk * v;
            }
        }
    }
}

/// The blur's 2·radius+1 normalised Gaussian weights.
fn gaussian(sigma: f32, radius: usize) -> Vec<f32> {
    let r = radius as isize;
    let mut kernel: Vec<f32> = (-r..=r)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    kernel
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blur as defined: each output the sum, tap by tap in order, of its clamped
    /// neighbours, rows then columns. `blur` must give exactly these values.
    fn blur_by_definition(x: &mut [f32], size: usize, c: usize, sigma: f32, radius: usize) {
        let kernel = gaussian(sigma, radius);
        let r = radius as isize;
        let clampi =
            |i: usize, k: usize| (i as isize + k as isize - r).clamp(0, size as isize - 1) as usize;
        // One pass, src -> dst, along the rows (horizontal) or the columns.
        let pass = |src: &[f32], dst: &mut [f32], horizontal: bool| {
            for y in 0..size {
                for xx in 0..size {
                    for ch in 0..c {
                        let mut acc = 0.0;
                        for (k, &wk) in kernel.iter().enumerate() {
                            let (sy, sx) = match horizontal {
                                true => (y, clampi(xx, k)),
                                false => (clampi(y, k), xx),
                            };
                            acc += wk * src[(sy * size + sx) * c + ch];
                        }
                        dst[(y * size + xx) * c + ch] = acc;
                    }
                }
            }
        };
        let mut tmp = vec![0f32; x.len()];
        pass(x, &mut tmp, true);
        pass(&tmp, x, false);
    }

    #[test]
    fn blur_equals_its_definition_bit_for_bit() {
        let mut rng = Rng::new(8);
        // Odd sizes, kernels wider than the image, one and three channels.
        for (size, c, radius) in [(1, 1, 1), (5, 3, 3), (7, 1, 11), (23, 3, 11), (33, 3, 2)] {
            let x: Vec<f32> = (0..size * size * c).map(|_| rng.uniform() as f32).collect();
            let sigma = 0.1 + 2.0 * rng.uniform() as f32;
            let (mut got, mut want) = (x.clone(), x);
            blur(&mut got, size, c, sigma, radius);
            blur_by_definition(&mut want, size, c, sigma, radius);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&want),
                "size {size}, c {c}, radius {radius}"
            );
        }
    }

    fn identity(c: usize) -> Normalize {
        Normalize {
            mean: vec![0.0; c],
            std: vec![1.0; c],
        }
    }

    /// Only crop and flip, with no colour or blur.
    fn geometric(out_size: usize) -> Augment {
        Augment {
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            blur_prob: 0.0,
            ..Augment::simclr(out_size, 1.0)
        }
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn constant_image_stays_constant_under_crop_flip_and_blur() {
        let img = vec![200u8; 40 * 30 * 3];
        let aug = Augment {
            blur_prob: 1.0,
            ..geometric(16)
        };
        let mut out = vec![0f32; 16 * 16 * 3];
        for seed in 0..50 {
            aug.apply(&img, 40, 30, 3, &identity(3), &mut Rng::new(seed), &mut out);
            assert!(out.iter().all(|&v| (v - 200.0 / 255.0).abs() < 1e-5));
        }
    }

    #[test]
    fn flip_mirrors_a_gradient_exactly() {
        let (h, w, c) = (8, 8, 3);
        let img: Vec<u8> = (0..h * w * c)
            .map(|i| ((i / c) % w * 30 + i % c) as u8)
            .collect();
        let aug = Augment {
            crop_area: (1.0, 1.0),
            aspect: (1.0, 1.0),
            ..geometric(8)
        };
        let (mut flipped, mut plain) = (0, 0);
        let mut out = vec![0f32; h * w * c];
        for seed in 0..40 {
            aug.apply(&img, h, w, c, &identity(c), &mut Rng::new(seed), &mut out);
            let same = (0..h * w * c).all(|i| out[i] == img[i] as f32 / 255.0);
            let mirrored = (0..h * w * c).all(|i| {
                let (y, x, ch) = (i / (w * c), i / c % w, i % c);
                out[i] == img[(y * w + w - 1 - x) * c + ch] as f32 / 255.0
            });
            assert!(same != mirrored, "seed {seed}: neither identity nor mirror");
            if mirrored {
                flipped += 1;
            } else {
                plain += 1;
            }
        }
        assert!(flipped > 5 && plain > 5, "{flipped} {plain}");
    }

    #[test]
    fn crop_boxes_respect_area_and_aspect() {
        let aug = Augment::simclr(32, 1.0);
        let mut rng = Rng::new(3);
        let (mut small, mut large) = (false, false);
        for _ in 0..2000 {
            let b = aug.crop_box(100, 100, &mut rng);
            assert!(b.y + b.h <= 100 && b.x + b.w <= 100);
            let area = (b.h * b.w) as f64 / 1e4;
            let ratio = b.w as f64 / b.h as f64;
            // Rounding the sides to whole pixels moves area and ratio slightly.
            assert!((0.075..=1.0).contains(&area), "{area}");
            assert!((0.74..=1.36).contains(&ratio), "{ratio}");
            small |= area < 0.15;
            large |= area > 0.9;
        }
        assert!(small && large);
        // A very wide image never fits the sampled boxes: the fallback is a centred crop.
        let b = aug.crop_box(2, 100, &mut rng);
        assert_eq!(
            b,
            Rect {
                y: 0,
                x: 48,
                h: 2,
                w: 3
            }
        );
    }

    #[test]
    fn colour_ops_on_known_images() {
        let mut x = vec![0.2, 0.4, 0.5, 1.0];
        brightness(&mut x, 1.5);
        assert!(close(&x, &[0.3, 0.6, 0.75, 1.5], 1e-6));

        // Contrast keeps each channel's mean and scales deviations from it.
        let mut x = vec![0.1, 0.9, 0.3, 0.5, 0.5, 0.1];
        contrast(&mut x, 2, 0.5);
        assert!(close(&x, &[0.2, 0.7, 0.3, 0.5, 0.4, 0.3], 1e-6), "{x:?}");

        let mut red = vec![1.0, 0.0, 0.0];
        grayscale(&mut red);
        assert!(close(&red, &[0.2989; 3], 1e-6));

        // Saturation scales S in HSV: 0 leaves the value (largest channel) in all three,
        // 0.5 halves each channel's distance to it, 2 doubles it (clamped at S = 1).
        let mut x = vec![1.0, 0.0, 0.0, 0.9, 0.3, 0.6];
        saturation(&mut x, 0.0);
        assert!(close(&x, &[1.0, 1.0, 1.0, 0.9, 0.9, 0.9], 1e-6), "{x:?}");
        let mut x = vec![0.9, 0.3, 0.6];
        saturation(&mut x, 0.5);
        assert!(close(&x, &[0.9, 0.6, 0.75], 1e-6), "{x:?}");
        saturation(&mut x, 1.0);
        assert!(close(&x, &[0.9, 0.6, 0.75], 1e-6), "{x:?}");
        let mut x = vec![0.9, 0.6, 0.75];
        saturation(&mut x, 4.0);
        assert!(close(&x, &[0.9, 0.0, 0.45], 1e-6), "{x:?}");

        // A third of a turn takes red to green, two thirds to blue; a full turn is identity.
        let mut x = vec![1.0, 0.0, 0.0, 0.5, 0.5, 0.5];
        hue(&mut x, 1.0 / 3.0);
        assert!(close(&x, &[0.0, 1.0, 0.0, 0.5, 0.5, 0.5], 1e-5), "{x:?}");
        hue(&mut x, 1.0 / 3.0);
        assert!(close(&x, &[0.0, 0.0, 1.0, 0.5, 0.5, 0.5], 1e-5), "{x:?}");
        let orig = vec![0.9, 0.2, 0.4, 0.1, 0.6, 0.3];
        let mut x = orig.clone();
        hue(&mut x, 0.0);
        assert!(close(&x, &orig, 1e-6));
        hue(&mut x, 0.25);
        hue(&mut x, -0.25);
        assert!(close(&x, &orig, 1e-5));
    }

    #[test]
    fn colour_augmentations_act_on_rgb() {
        // A constant red image: only a hue rotation can make green and blue differ, its
        // saturation S = (r - min) / r moves with the saturation factor (and with clipping
        // after a brightness gain), and grayscale makes all three channels equal.
        let img: Vec<u8> = [200u8, 40, 40].repeat(8 * 8);
        let mut out = vec![0f32; 8 * 8 * 3];
        let gray = Augment {
            grayscale_prob: 1.0,
            ..geometric(8)
        };
        gray.apply(&img, 8, 8, 3, &identity(3), &mut Rng::new(0), &mut out);
        assert!(out.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let jitter = Augment {
            jitter_prob: 1.0,
            ..geometric(8)
        };
        let (mut hue_moved, mut saturation_moved) = (0, 0);
        for seed in 0..50 {
            jitter.apply(&img, 8, 8, 3, &identity(3), &mut Rng::new(seed), &mut out);
            let (r, g, b) = (out[0], out[1], out[2]);
            hue_moved += ((g - b).abs() > 0.05) as usize;
            let spread = (r - g.min(b)) / r.max(1e-6);
            saturation_moved += ((spread - 0.8).abs() > 0.05) as usize;
        }
        assert!(
            hue_moved > 25 && saturation_moved > 25,
            "{hue_moved} {saturation_moved}"
        );
    }

    #[test]
    fn blur_smooths_an_impulse_symmetrically() {
        let (size, c) = (9, 1);
        let mut x = vec![0f32; size * size];
        x[4 * size + 4] = 1.0;
        blur(&mut x, size, c, 1.0, 2);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let at = |y: usize, xx: usize| x[y * size + xx];
        assert!(at(4, 4) < 1.0 && at(4, 4) > at(4, 5) && at(4, 5) > at(4, 6) && at(4, 6) > 0.0);
        assert_eq!(at(4, 7), 0.0); // outside the radius
        for d in 0..3 {
            assert_eq!(at(4, 4 + d), at(4, 4 - d));
            assert_eq!(at(4 + d, 4), at(4 - d, 4));
            assert_eq!(at(4, 4 + d), at(4 + d, 4));
        }
    }

    #[test]
    fn center_copies_or_resizes_then_normalises() {
        let img: Vec<u8> = (0..16).map(|i| i * 10).collect();
        let norm = Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let mut out = vec![0f32; 16];
        center(&img, 4, 4, 1, 4, &norm, &mut out);
        for (o, &v) in out.iter().zip(&img) {
            assert!((o - (v as f32 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
        }
        // Halving a 4x4 image with the stretched triangle weighs each 4x4 neighbourhood
        // (1, 3, 3, 1) / 8 per axis, edges replicated.
        let mut small = vec![0f32; 4];
        center(&img, 4, 4, 1, 2, &identity(1), &mut small);
        let px = |y: usize, x: usize| img[y.min(3) * 4 + x.min(3)] as f32;
        let w = [1.0, 3.0, 3.0, 1.0];
        let expect: Vec<f32> = [(0, 0), (0, 2), (2, 0), (2, 2)]
            .iter()
            .map(|&(y0, x0): &(usize, usize)| {
                let mut acc = 0.0;
                for (i, wy) in w.iter().enumerate() {
                    for (j, wx) in w.iter().enumerate() {
                        acc += wy * wx * px((y0 + i).saturating_sub(1), (x0 + j).saturating_sub(1));
                    }
                }
                acc / 64.0 / 255.0
            })
            .collect();
        assert!(close(&small, &expect, 1e-6), "{small:?} {expect:?}");
    }

    #[test]
    fn center_crops_87_5_percent_from_64_pixels() {
        // A 96x96 image with a 6-pixel frame of 255 around a constant 100: the central 84x84
        // crop sees no frame, so the bicubic output is exactly 100 everywhere.
        let (n, c) = (96, 3);
        let img: Vec<u8> = (0..n * n * c)
            .map(|i| {
                let (y, x) = (i / c / n, i / c % n);
                if (6..90).contains(&y) && (6..90).contains(&x) {
                    100
                } else {
                    255
                }
            })
            .collect();
        let mut out = vec![0f32; 64 * 64 * c];
        center(&img, n, n, c, 64, &identity(c), &mut out);
        assert!(out.iter().all(|&v| (v * 255.0 - 100.0).abs() < 1e-3));
        // Below 64 pixels the whole image is used: the frame shows.
        let mut out = vec![0f32; 32 * 32 * c];
        center(&img, n, n, c, 32, &identity(c), &mut out);
        assert!(out[0] > 0.9);
        assert_eq!(Augment::simclr(64, 1.0).filter, Filter::Bicubic);
        assert_eq!(Augment::simclr(32, 1.0).filter, Filter::Bilinear);
    }

    #[test]
    fn full_pipeline_is_deterministic_and_in_range() {
        let (h, w) = (32, 32);
        let img: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 256) as u8).collect();
        let aug = Augment {
            blur_prob: 0.5,
            ..Augment::simclr(24, 1.0)
        };
        let (mut a, mut b) = (vec![0f32; 24 * 24 * 3], vec![0f32; 24 * 24 * 3]);
        for seed in 0..20 {
            aug.apply(&img, h, w, 3, &identity(3), &mut Rng::new(seed), &mut a);
            aug.apply(&img, h, w, 3, &identity(3), &mut Rng::new(seed), &mut b);
            assert_eq!(a, b);
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        let gray = vec![100u8; 10 * 10];
        let mut out = vec![0f32; 24 * 24];
        aug.apply(&gray, 10, 10, 1, &identity(1), &mut Rng::new(1), &mut out);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn normalize_from_dataset() {
        let ds = Dataset {
            images: vec![0, 255, 0, 255, 255, 255],
            labels: vec![0, 1],
            n: 2,
            h: 1,
            w: 1,
            c: 3,
            num_classes: 2,
            ..Dataset::default()
        };
        let norm = Normalize::from_dataset(&ds);
        assert!(close(&norm.mean, &[0.5, 1.0, 0.5], 1e-6));
        assert!(close(&norm.std, &[0.5, 1e-3, 0.5], 1e-6));
    }
}
