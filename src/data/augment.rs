//! SimCLR data augmentation on the CPU, following the official implementation
//! (google-research/simclr, data_util.py, "simclrv2" variant): random resized crop, horizontal
//! flip, colour jitter in random order, random grayscale, Gaussian blur. Images come in as u8
//! HWC with 1 or 3 channels and go out as f32 HWC, scaled to [0, 1] and then standardised.
//!
//! Where this differs from the official code, on purpose:
//! - the crop is sampled the torchvision way (10 attempts, then a centre crop) and resized
//!   bilinearly rather than with TensorFlow's sample_distorted_bounding_box and bicubic resize;
//! - saturation blends with the grayscale image (torchvision) instead of scaling S in HSV;
//! - the blur replicates edge pixels instead of zero padding, so it does not darken borders.

use super::Dataset;
use crate::rng::Rng;

/// Luma weights of tf.image.rgb_to_grayscale.
const GRAY: [f32; 3] = [0.2989, 0.587, 0.114];

/// Per-channel standardisation applied last: out = (x - mean[c]) / std[c], x in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// Mean and standard deviation per channel of all train pixels, scaled to [0, 1].
    pub fn from_dataset(ds: &Dataset) -> Normalize {
        let mut sum = vec![0f64; ds.c];
        let mut sum_sq = vec![0f64; ds.c];
        for px in ds.images.chunks_exact(ds.c) {
            for (ch, &v) in px.iter().enumerate() {
                let v = v as f64 / 255.0;
                sum[ch] += v;
                sum_sq[ch] += v * v;
            }
        }
        let count = (ds.images.len() / ds.c).max(1) as f64;
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
}

/// A crop rectangle: top, left, height, width.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Crop {
    y: usize,
    x: usize,
    h: usize,
    w: usize,
}

impl Augment {
    /// The paper's defaults; blur only for images of 64 pixels or more (the paper does not
    /// blur CIFAR-10).
    pub fn simclr(out_size: usize, strength: f64) -> Augment {
        Augment {
            out_size,
            crop_area: (0.08, 1.0),
            aspect: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            jitter_prob: 0.8,
            jitter_strength: strength,
            grayscale_prob: 0.2,
            blur_prob: if out_size < 64 { 0.0 } else { 0.5 },
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
        assert!(
            c == 1 || c == 3,
            "augmentation supports 1 or 3 channels, not {c}"
        );
        let crop = self.crop_box(h, w, rng);
        let flip = self.flip && rng.bernoulli(0.5);
        resize(img, w, c, crop, flip, self.out_size, out);
        if rng.bernoulli(self.jitter_prob) {
            self.color_jitter(out, c, rng);
        }
        if c == 3 && rng.bernoulli(self.grayscale_prob) {
            grayscale(out);
        }
        if rng.bernoulli(self.blur_prob) {
            // Kernel size is 10% of the side, made odd (as official: radius = size / 2).
            let radius = self.out_size / 10 / 2;
            blur(out, self.out_size, c, rng.range(0.1, 2.0) as f32, radius);
        }
        norm.apply(out);
    }

    /// Random resized crop box (torchvision's RandomResizedCrop.get_params).
    fn crop_box(&self, h: usize, w: usize, rng: &mut Rng) -> Crop {
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
                return Crop { y, x, h: ch, w: cw };
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
        Crop {
            y: (h - ch) / 2,
            x: (w - cw) / 2,
            h: ch,
            w: cw,
        }
    }

    /// Brightness, contrast, saturation and hue in random order, clamping after each
    /// (color_jitter_rand). A 1-channel image has no saturation or hue.
    fn color_jitter(&self, x: &mut [f32], c: usize, rng: &mut Rng) {
        let s = self.jitter_strength;
        let mut order = [0, 1, 2, 3];
        rng.shuffle(&mut order);
        for op in order {
            match op {
                0 => brightness(x, factor(rng, 0.8 * s)),
                1 => contrast(x, c, factor(rng, 0.8 * s)),
                2 if c == 3 => saturation(x, factor(rng, 0.8 * s)),
                3 if c == 3 => hue(x, rng.range(-0.2 * s, 0.2 * s) as f32),
                _ => continue,
            }
            x.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        }
    }
}

/// Deterministic evaluation preprocessing: a plain resize to out_size × out_size if the image
/// has another size, else a copy; then standardisation.
pub fn center(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    out_size: usize,
    norm: &Normalize,
    out: &mut [f32],
) {
    if h == out_size && w == out_size {
        for (o, &v) in out.iter_mut().zip(img) {
            *o = v as f32 / 255.0;
        }
    } else {
        resize(img, w, c, Crop { y: 0, x: 0, h, w }, false, out_size, out);
    }
    norm.apply(out);
}

/// A factor uniform in [1 - amount, 1 + amount], never negative.
fn factor(rng: &mut Rng, amount: f64) -> f32 {
    rng.range((1.0 - amount).max(0.0), 1.0 + amount) as f32
}

/// Bilinear resize of the `crop` of a u8 HWC image of width `w` into `out` (size × size × c,
/// in [0, 1]), optionally mirrored left-right. Sample positions use pixel centres
/// (align_corners = false) and are clamped to the crop, as if it had been cut out first.
fn resize(img: &[u8], w: usize, c: usize, crop: Crop, flip: bool, size: usize, out: &mut [f32]) {
    assert_eq!(out.len(), size * size * c, "output buffer size");
    // For one output coordinate: the two source coordinates and the weight of the second.
    let taps = |o: usize, extent: usize, start: usize| {
        let s =
            ((o as f64 + 0.5) * extent as f64 / size as f64 - 0.5).clamp(0.0, (extent - 1) as f64);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(extent - 1);
        (start + i0, start + i1, (s - i0 as f64) as f32)
    };
    let cols: Vec<(usize, usize, f32)> = (0..size).map(|ox| taps(ox, crop.w, crop.x)).collect();
    for oy in 0..size {
        let (y0, y1, fy) = taps(oy, crop.h, crop.y);
        for ox in 0..size {
            let (x0, x1, fx) = cols[if flip { size - 1 - ox } else { ox }];
            for ch in 0..c {
                let p = |y: usize, x: usize| img[(y * w + x) * c + ch] as f32;
                let top = p(y0, x0) + fx * (p(y0, x1) - p(y0, x0));
                let bottom = p(y1, x0) + fx * (p(y1, x1) - p(y1, x0));
                out[(oy * size + ox) * c + ch] = (top + fy * (bottom - top)) / 255.0;
            }
        }
    }
}

fn brightness(x: &mut [f32], f: f32) {
    x.iter_mut().for_each(|v| *v *= f);
}

/// Blends each channel with its mean over the image (tf.image.adjust_contrast).
fn contrast(x: &mut [f32], c: usize, f: f32) {
    let n = (x.len() / c) as f32;
    for ch in 0..c {
        let mean = x.iter().skip(ch).step_by(c).sum::<f32>() / n;
        x.iter_mut()
            .skip(ch)
            .step_by(c)
            .for_each(|v| *v = mean + f * (*v - mean));
    }
}

fn luma(px: &[f32]) -> f32 {
    GRAY[0] * px[0] + GRAY[1] * px[1] + GRAY[2] * px[2]
}

/// Blends an RGB image with its grayscale version: 0 is gray, 1 is unchanged.
fn saturation(x: &mut [f32], f: f32) {
    for px in x.chunks_exact_mut(3) {
        let g = luma(px);
        px.iter_mut().for_each(|v| *v = g + f * (*v - g));
    }
}

/// Rotates the hue of an RGB image by `delta` turns of the colour wheel (tf.image.adjust_hue).
fn hue(x: &mut [f32], delta: f32) {
    for px in x.chunks_exact_mut(3) {
        let (r, g, b) = (px[0], px[1], px[2]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let range = max - min;
        if range <= 0.0 {
            continue; // gray: no hue to rotate
        }
        let sat = range / max;
        let h6 = if max == r {
            (g - b) / range
        } else if max == g {
            2.0 + (b - r) / range
        } else {
            4.0 + (r - g) / range
        };
        let h6 = (h6 / 6.0 + delta).rem_euclid(1.0) * 6.0;
        let sector = h6.floor();
        let f = h6 - sector;
        let (v, p) = (max, max * (1.0 - sat));
        let q = max * (1.0 - sat * f);
        let t = max * (1.0 - sat * (1.0 - f));
        let rgb = match sector as usize % 6 {
            0 => [v, t, p],
            1 => [q, v, p],
            2 => [p, v, t],
            3 => [p, q, v],
            4 => [t, p, v],
            _ => [v, p, q],
        };
        px.copy_from_slice(&rgb);
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
/// replicating edge pixels.
fn blur(x: &mut [f32], size: usize, c: usize, sigma: f32, radius: usize) {
    if radius == 0 {
        return;
    }
    let r = radius as isize;
    let mut kernel: Vec<f32> = (-r..=r)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let clampi = |i: isize| i.clamp(0, size as isize - 1) as usize;
    let mut tmp = vec![0f32; x.len()];
    // Horizontal pass x -> tmp, then vertical pass tmp -> x.
    for y in 0..size {
        for xx in 0..size {
            for ch in 0..c {
                let mut acc = 0.0;
                for (k, &wk) in kernel.iter().enumerate() {
                    let sx = clampi(xx as isize + k as isize - r);
                    acc += wk * x[(y * size + sx) * c + ch];
                }
                tmp[(y * size + xx) * c + ch] = acc;
            }
        }
    }
    for y in 0..size {
        for xx in 0..size {
            for ch in 0..c {
                let mut acc = 0.0;
                for (k, &wk) in kernel.iter().enumerate() {
                    let sy = clampi(y as isize + k as isize - r);
                    acc += wk * tmp[(sy * size + xx) * c + ch];
                }
                x[(y * size + xx) * c + ch] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Crop {
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

        let mut x = vec![1.0, 0.0, 0.0];
        saturation(&mut x, 0.0);
        assert!(close(&x, &[0.2989; 3], 1e-6));
        let mut x = vec![0.9, 0.2, 0.4];
        saturation(&mut x, 1.0);
        assert!(close(&x, &[0.9, 0.2, 0.4], 1e-6));

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
        // Halving a 4x4 image bilinearly averages each 2x2 block.
        let mut small = vec![0f32; 4];
        center(&img, 4, 4, 1, 2, &identity(1), &mut small);
        let expect: Vec<f32> = [25.0, 45.0, 105.0, 125.0]
            .iter()
            .map(|v| v / 255.0)
            .collect();
        assert!(close(&small, &expect, 1e-6), "{small:?}");
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
        };
        let norm = Normalize::from_dataset(&ds);
        assert!(close(&norm.mean, &[0.5, 1.0, 0.5], 1e-6));
        assert!(close(&norm.std, &[0.5, 1e-3, 0.5], 1e-6));
    }
}
