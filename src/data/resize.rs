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

use std::cell::RefCell;

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

/// Source rows resampled together by the horizontal pass: lane r of every sum is row r of a
/// block, so the rows' sums run side by side in vector registers. Each value is still its
/// taps summed in order from 0, so the result equals one row at a time bit for bit.
const LANES: usize = 8;

/// The horizontal pass over one block of up to LANES rows for `C` channels (known at compile
/// time, so a pixel's sums stay in registers). `block[i * C + ch]` holds the rows' values of
/// the rect's column i, channel ch; `lines` gets the block's output rows (size × C each).
fn horizontal<const C: usize>(
    block: &[[f32; LANES]],
    lines: &mut [f32],
    cols: &[Vec<(usize, f32)>],
    x0: usize,
    flip: bool,
) {
    let size = cols.len();
    for ox in 0..size {
        let col = &cols[if flip { size - 1 - ox } else { ox }];
        let mut acc = [[0f32; LANES]; C];
        for &(x, wt) in col {
            for (ch, sums) in acc.iter_mut().enumerate() {
                let v = &block[(x - x0) * C + ch];
                for r in 0..LANES {
                    sums[r] += wt * v[r];
                }
            }
        }
        for (r, line) in lines.chunks_exact_mut(size * C).enumerate() {
            for (ch, sums) in acc.iter().enumerate() {
                line[ox * C + ch] = sums[r];
            }
        }
    }
}

/// One row's horizontal pass for any number of channels: `line[ox]` = Σ over output column
/// ox's taps, in order from 0.
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

/// The horizontal pass of `resize` into tmp (rect.h rows of size × C), LANES rows at a time:
/// each block's pixels are first turned into f32 lanes (row r of the block in lane r).
fn horizontal_blocks<const C: usize>(
    img: &[u8],
    w: usize,
    rect: Rect,
    cols: &[Vec<(usize, f32)>],
    flip: bool,
    tmp: &mut [f32],
    block: &mut [[f32; LANES]],
) {
    let size = cols.len();
    for (b, lines) in tmp.chunks_mut(LANES * size * C).enumerate() {
        for r in 0..lines.len() / (size * C) {
            let y = rect.y + b * LANES + r;
            let row = &img[(y * w + rect.x) * C..(y * w + rect.x + rect.w) * C];
            for (lanes, &v) in block.iter_mut().zip(row) {
                lanes[r] = v as f32;
            }
        }
        horizontal::<C>(block, lines, cols, rect.x, flip);
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
    resample(img, (w, c), rect, (flip, size, filter), |oy, line| {
        for (o, &v) in out[oy * size * c..].iter_mut().zip(line) {
            *o = unit(v);
        }
    });
}

/// `resize` rounded to u8 (no flip), for readers that store resized images.
pub fn resize_u8(
    img: &[u8],
    w: usize,
    c: usize,
    rect: Rect,
    size: usize,
    filter: Filter,
) -> Vec<u8> {
    let mut out = vec![0u8; size * size * c];
    resample(img, (w, c), rect, (false, size, filter), |oy, line| {
        for (o, &v) in out[oy * size * c..].iter_mut().zip(line) {
            *o = round_u8(unit(v) * 255.0);
        }
    });
    out
}

/// A resampled value (a sum of taps on the 0–255 scale) in [0, 1]: bicubic can overshoot.
fn unit(v: f32) -> f32 {
    (v / 255.0).clamp(0.0, 1.0)
}

/// `x.round() as u8` for x in [0, 255], without the libm call `round` is at the baseline
/// x86-64 target (so the loop vectorises): x - trunc(x) is exact there, and halves round up
/// as `round` does.
fn round_u8(x: f32) -> u8 {
    let t = x as i32;
    (t + (x - t as f32 >= 0.5) as i32) as u8
}

thread_local! {
    /// The horizontal pass's output and a block of rows as f32 lanes, kept per thread: at
    /// ImageNet sizes tmp is about 1 MB, too much to allocate and zero per image.
    static SCRATCH: RefCell<(Vec<f32>, Vec<[f32; LANES]>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The resampler behind `resize` and `resize_u8`: hands each output row oy, as sums on the
/// 0–255 scale, to `store(oy, row)`.
fn resample(
    img: &[u8],
    (w, c): (usize, usize),
    rect: Rect,
    (flip, size, filter): (bool, usize, Filter),
    mut store: impl FnMut(usize, &[f32]),
) {
    assert!(
        rect.h > 0 && rect.w > 0 && rect.x + rect.w <= w,
        "empty or outside rect"
    );
    let cols = taps(rect.x, rect.w, size, filter);
    let rows = taps(rect.y, rect.h, size, filter);
    SCRATCH.with_borrow_mut(|(tmp, block)| {
        // Horizontal pass over the rect's rows: tmp is rect.h × size × c. Each value is its
        // taps summed in order from 0 (so the result does not depend on the loop order below,
        // which keeps a pixel's channels together and LANES rows side by side for speed).
        tmp.resize(rect.h * size * c, 0.0);
        block.resize(rect.w * c, [0.0; LANES]);
        match c {
            3 => horizontal_blocks::<3>(img, w, rect, &cols, flip, tmp, block),
            1 => horizontal_blocks::<1>(img, w, rect, &cols, flip, tmp, block),
            _ => {
                let mut src = vec![0f32; w * c]; // a source row as f32, converted once
                for (ty, line) in tmp.chunks_exact_mut(size * c).enumerate() {
                    let row = &img[(rect.y + ty) * w * c..(rect.y + ty + 1) * w * c];
                    src.iter_mut().zip(row).for_each(|(f, &v)| *f = v as f32);
                    line.fill(0.0);
                    horizontal_any(&src, line, &cols, flip, c);
                }
            }
        }
        // Vertical pass, a whole row at a time (contiguous, so it vectorises).
        let mut line = vec![0f32; size * c];
        for (oy, row) in rows.iter().enumerate() {
            line.fill(0.0);
            for &(y, wt) in row {
                let src = &tmp[(y - rect.y) * size * c..(y - rect.y + 1) * size * c];
                for (acc, &v) in line.iter_mut().zip(src) {
                    *acc += wt * v;
                }
            }
            store(oy, &line);
        }
    });
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
    fn round_u8_rounds_as_round_does() {
        let mut rng = Rng::new(5);
        let ties = (0..=255).flat_map(|i| [i as f32, i as f32 + 0.5, i as f32 + 0.49999997]);
        let random = (0..100_000).map(|_| rng.uniform() as f32 * 255.0);
        for x in ties.filter(|&x| x <= 255.0).chain(random) {
            assert_eq!(round_u8(x), x.round() as u8, "{x}");
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
