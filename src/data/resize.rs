//! Resampling of u8 HWC images: one separable resampler for the bilinear and the bicubic
//! filter, used by the augmentations (random crops), the evaluation centre crop and the
//! readers that store images at another size (image folders, `--image-size`).
//!
//! Sample positions use pixel centres (TensorFlow's half_pixel_centers, PyTorch's
//! align_corners = false) and edge pixels are replicated, as if the region had been cut out
//! first. The bicubic kernel is Keys' cubic with a = -0.5, as tf.image.resize (TF2) uses.
//! When shrinking, the kernel is stretched by the scale factor (antialiasing, as PIL does),
//! so that a photograph reduced to a few dozen pixels does not alias; when enlarging or
//! keeping the size this is exactly plain bilinear / bicubic interpolation.

/// A rectangle of an image: top, left, height, width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub y: usize,
    pub x: usize,
    pub h: usize,
    pub w: usize,
}

impl Rect {
    pub fn full(h: usize, w: usize) -> Rect {
        Rect { y: 0, x: 0, h, w }
    }

    /// The centred square whose side is `proportion` of the shorter side, rounded half to
    /// even (the official center_crop for a square output, offsets included).
    pub fn center_square(h: usize, w: usize, proportion: f64) -> Rect {
        let side = ((proportion * h.min(w) as f64).round_ties_even() as usize).clamp(1, h.min(w));
        Rect {
            y: (h - side).div_ceil(2),
            x: (w - side).div_ceil(2),
            h: side,
            w: side,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    /// Half-width of the kernel at scale 1.
    fn radius(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, t: f64) -> f64 {
        let t = t.abs();
        match self {
            Filter::Bilinear => (1.0 - t).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if t <= 1.0 {
                    ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
                } else if t < 2.0 {
                    ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// The taps (source index, weight) of each of `size` output pixels resampled from the `len`
/// source pixels that start at `start`. Weights sum to 1.
fn taps(start: usize, len: usize, size: usize, filter: Filter) -> Vec<Vec<(usize, f32)>> {
    let scale = len as f64 / size as f64;
    let stretch = scale.max(1.0);
    let support = filter.radius() * stretch;
    (0..size)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale - 0.5;
            let lo = (centre - support).ceil() as isize;
            let hi = (centre + support).floor() as isize;
            let mut taps: Vec<(usize, f64)> = (lo..=hi)
                .map(|i| {
                    let w = filter.weight((i as f64 - centre) / stretch);
                    (start + i.clamp(0, len as isize - 1) as usize, w)
                })
                .filter(|&(_, w)| w != 0.0)
                .collect();
            let total: f64 = taps.iter().map(|t| t.1).sum();
            taps.iter_mut().for_each(|t| t.1 /= total);
            taps.into_iter().map(|(i, w)| (i, w as f32)).collect()
        })
        .collect()
}

/// One row's horizontal pass for `C` channels (known at compile time, so a pixel's sums stay
/// in registers): `line[ox]` = Σ over output column ox's taps, in order from 0.
fn horizontal<const C: usize>(
    src: &[f32],
    line: &mut [f32],
    cols: &[Vec<(usize, f32)>],
    flip: bool,
) {
    let size = cols.len();
    for (ox, px) in line.chunks_exact_mut(C).enumerate() {
        let col = &cols[if flip { size - 1 - ox } else { ox }];
        let mut acc = [0f32; C];
        for &(x, wt) in col {
            for ch in 0..C {
                acc[ch] += wt * src[x * C + ch];
            }
        }
        px.copy_from_slice(&acc);
    }
}

/// `horizontal` for any number of channels.
fn horizontal_any(src: &[f32], line: &mut [f32], cols: &[Vec<(usize, f32)>], flip: bool, c: usize) {
    let size = cols.len();
    for (ox, px) in line.chunks_exact_mut(c).enumerate() {
        let col = &cols[if flip { size - 1 - ox } else { ox }];
        for &(x, wt) in col {
            for (acc, &v) in px.iter_mut().zip(&src[x * c..x * c + c]) {
                *acc += wt * v;
            }
        }
    }
}

/// Resamples `rect` of a u8 HWC image of width `w` and `c` channels into `out` (size × size
/// × c, values in [0, 1]), optionally mirrored left-right. Rows first, then columns.
#[allow(clippy::too_many_arguments)]
pub fn resize(
    img: &[u8],
    w: usize,
    c: usize,
    rect: Rect,
    flip: bool,
    size: usize,
    filter: Filter,
    out: &mut [f32],
) {
    assert_eq!(out.len(), size * size * c, "output buffer size");
    assert!(
        rect.h > 0 && rect.w > 0 && rect.x + rect.w <= w,
        "empty or outside rect"
    );
    let cols = taps(rect.x, rect.w, size, filter);
    let rows = taps(rect.y, rect.h, size, filter);
    // Horizontal pass over the rect's rows: tmp is rect.h × size × c. Each output value is
    // its taps summed in order from 0 (so the result does not depend on the loop order
    // below, which keeps a pixel's channels together for speed).
    let mut tmp = vec![0f32; rect.h * size * c];
    let mut src = vec![0f32; w * c]; // a source row as f32, converted once
    for (ty, line) in tmp.chunks_exact_mut(size * c).enumerate() {
        let row = &img[(rect.y + ty) * w * c..(rect.y + ty + 1) * w * c];
        src.iter_mut().zip(row).for_each(|(f, &v)| *f = v as f32);
        match c {
            3 => horizontal::<3>(&src, line, &cols, flip),
            1 => horizontal::<1>(&src, line, &cols, flip),
            _ => horizontal_any(&src, line, &cols, flip, c),
        }
    }
    // Vertical pass into out, a whole row at a time (contiguous, so it vectorises), scaled
    // to [0, 1] (bicubic can overshoot, so clamp).
    for (row, line) in rows.iter().zip(out.chunks_exact_mut(size * c)) {
        line.fill(0.0);
        for &(y, wt) in row {
            let src = &tmp[(y - rect.y) * size * c..(y - rect.y + 1) * size * c];
            for (acc, &v) in line.iter_mut().zip(src) {
                *acc += wt * v;
            }
        }
        for v in line.iter_mut() {
            *v = (*v / 255.0).clamp(0.0, 1.0);
        }
    }
}

/// `resize` back to u8 (rounded), for readers that store resized images.
pub fn resize_u8(
    img: &[u8],
    w: usize,
    c: usize,
    rect: Rect,
    size: usize,
    filter: Filter,
) -> Vec<u8> {
    let mut out = vec![0f32; size * size * c];
    resize(img, w, c, rect, false, size, filter, &mut out);
    out.iter().map(|v| (v * 255.0).round() as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `resize` as defined: each value its taps summed in order from 0, rows then columns.
    /// The image is (pixels, width, channels).
    fn resize_by_definition(
        (img, w, c): (&[u8], usize, usize),
        rect: Rect,
        (flip, size, filter): (bool, usize, Filter),
    ) -> Vec<f32> {
        let (cols, rows) = (
            taps(rect.x, rect.w, size, filter),
            taps(rect.y, rect.h, size, filter),
        );
        let mut tmp = vec![0f32; rect.h * size * c];
        for ty in 0..rect.h {
            for ox in 0..size {
                let col = &cols[if flip { size - 1 - ox } else { ox }];
                for ch in 0..c {
                    let mut acc = 0.0;
                    for &(x, wt) in col {
                        acc += wt * img[((rect.y + ty) * w + x) * c + ch] as f32;
                    }
                    tmp[(ty * size + ox) * c + ch] = acc;
                }
            }
        }
        let mut out = vec![0f32; size * size * c];
        for (oy, row) in rows.iter().enumerate() {
            for i in 0..size * c {
                let mut acc = 0.0;
                for &(y, wt) in row {
                    acc += wt * tmp[(y - rect.y) * size * c + i];
                }
                out[oy * size * c + i] = (acc / 255.0).clamp(0.0, 1.0);
            }
        }
        out
    }

    #[test]
    fn resize_equals_its_definition_bit_for_bit() {
        let mut rng = Rng::new(3);
        for case in 0..200 {
            let (h, w, c) = (1 + rng.below(50), 1 + rng.below(50), [1, 2, 3][case % 3]);
            let img: Vec<u8> = (0..h * w * c).map(|_| rng.below(256) as u8).collect();
            let (rh, rw) = (1 + rng.below(h), 1 + rng.below(w));
            let rect = Rect {
                y: rng.below(h - rh + 1),
                x: rng.below(w - rw + 1),
                h: rh,
                w: rw,
            };
            let size = 1 + rng.below(40);
            let filter = [Filter::Bilinear, Filter::Bicubic][case % 2];
            let flip = case % 4 < 2;
            let mut got = vec![0f32; size * size * c];
            resize(&img, w, c, rect, flip, size, filter, &mut got);
            let want = resize_by_definition((&img, w, c), rect, (flip, size, filter));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&want),
                "case {case}: {rect:?} to {size}, c {c}"
            );
        }
    }

    #[test]
    fn kernels_interpolate_and_sum_to_one() {
        for f in [Filter::Bilinear, Filter::Bicubic] {
            assert_eq!(f.weight(0.0), 1.0);
            assert_eq!(f.weight(1.0), 0.0);
            assert_eq!(f.weight(2.0), 0.0);
            for t in [0.1, 0.25, 0.5, 0.9] {
                let total: f64 = (-3..=3).map(|i| f.weight(i as f64 - t)).sum();
                assert!((total - 1.0).abs() < 1e-12, "{f:?} {t}");
            }
        }
        // Keys a = -0.5 at the half-pixel: the classic (-1, 9, 9, -1) / 16.
        let w: Vec<f64> = [-1.5, -0.5, 0.5, 1.5]
            .iter()
            .map(|&t| Filter::Bicubic.weight(t))
            .collect();
        assert_eq!(w, vec![-1.0 / 16.0, 9.0 / 16.0, 9.0 / 16.0, -1.0 / 16.0]);
    }

    #[test]
    fn same_size_is_an_exact_copy_and_flip_mirrors() {
        let (h, w, c) = (5, 7, 3);
        let img: Vec<u8> = (0..h * w * c).map(|i| (i * 37 % 256) as u8).collect();
        // A 5x5 rect of a 5x7 image, resized to 5x5, is that rect.
        let rect = Rect {
            y: 0,
            x: 1,
            h: 5,
            w: 5,
        };
        for f in [Filter::Bilinear, Filter::Bicubic] {
            let mut out = vec![0f32; 5 * 5 * c];
            resize(&img, w, c, rect, false, 5, f, &mut out);
            let mut flipped = vec![0f32; 5 * 5 * c];
            resize(&img, w, c, rect, true, 5, f, &mut flipped);
            for y in 0..5 {
                for x in 0..5 {
                    for ch in 0..c {
                        let v = img[(y * w + x + 1) * c + ch] as f32 / 255.0;
                        assert_eq!(out[(y * 5 + x) * c + ch], v);
                        assert_eq!(flipped[(y * 5 + 4 - x) * c + ch], v);
                    }
                }
            }
        }
    }

    #[test]
    fn upscaling_interpolates_and_downscaling_averages() {
        // 1x2 → 1x4 bilinear: centres at -0.25, 0.25, 0.75, 1.25.
        let img = [0u8, 200];
        let mut out = vec![0f32; 4 * 4];
        resize(
            &img,
            2,
            1,
            Rect::full(1, 2),
            false,
            4,
            Filter::Bilinear,
            &mut out,
        );
        let row: Vec<f32> = out[..4].iter().map(|v| v * 255.0).collect();
        for (a, b) in row.iter().zip([0.0, 50.0, 150.0, 200.0]) {
            assert!((a - b).abs() < 1e-3, "{row:?}");
        }
        // Halving with the stretched triangle: each output is (1, 3, 3, 1) / 8 of 4 sources,
        // which on a 2-periodic stripe pattern is the mean, with no aliasing.
        let stripes: Vec<u8> = (0..8 * 8)
            .map(|i| if i % 2 == 0 { 0 } else { 240 })
            .collect();
        let mut out = vec![0f32; 16];
        resize(
            &stripes,
            8,
            1,
            Rect::full(8, 8),
            false,
            4,
            Filter::Bilinear,
            &mut out,
        );
        // Columns 0 and 3 touch the replicated edge, the inner two see a balanced window.
        assert!((out[1] * 255.0 - 120.0).abs() < 1e-3 && (out[2] * 255.0 - 120.0).abs() < 1e-3);
        // Bicubic spans 8 sources when halving: check an output away from the edges.
        let stripes: Vec<u8> = (0..16 * 16)
            .map(|i| if i % 2 == 0 { 0 } else { 240 })
            .collect();
        let mut out = vec![0f32; 64];
        resize(
            &stripes,
            16,
            1,
            Rect::full(16, 16),
            false,
            8,
            Filter::Bicubic,
            &mut out,
        );
        assert!(
            (out[3 * 8 + 3] * 255.0 - 120.0).abs() < 1e-3,
            "{}",
            out[27] * 255.0
        );
    }

    #[test]
    fn bicubic_overshoot_is_clamped_and_u8_rounds() {
        let img = [0u8, 0, 255, 255];
        let mut out = vec![0f32; 8 * 8];
        resize(
            &img,
            4,
            1,
            Rect::full(1, 4),
            false,
            8,
            Filter::Bicubic,
            &mut out,
        );
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        let v = resize_u8(
            &[10, 20, 30, 40],
            2,
            1,
            Rect::full(2, 2),
            2,
            Filter::Bicubic,
        );
        assert_eq!(v, vec![10, 20, 30, 40]);
    }

    #[test]
    fn center_square_follows_the_official_crop() {
        // 87.5% of 96 is 84, offsets (96 - 84 + 1) / 2 = 6.
        assert_eq!(
            Rect::center_square(96, 96, 0.875),
            Rect {
                y: 6,
                x: 6,
                h: 84,
                w: 84
            }
        );
        // 87.5% of 100 is 87.5, rounded to even 88; offsets 6.
        assert_eq!(
            Rect::center_square(100, 120, 0.875),
            Rect {
                y: 6,
                x: 16,
                h: 88,
                w: 88
            }
        );
        assert_eq!(
            Rect::center_square(30, 20, 1.0),
            Rect {
                y: 5,
                x: 0,
                h: 20,
                w: 20
            }
        );
        assert_eq!(
            Rect::center_square(1, 1, 0.875),
            Rect {
                y: 0,
                x: 0,
                h: 1,
                w: 1
            }
        );
    }
}
