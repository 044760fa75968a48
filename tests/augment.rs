//! The batch augmentation kernels (kernels/augment.cu) against data::augment::render, on every
//! device under test: views drawn by Augment::sample with every part likely (so that each
//! colour op at each place in the order, flips, grayscale and blur all occur) plus the
//! evaluation view, several views of each image, both filters, shrinking and enlarging, out in
//! f32 and in bf16.

mod common;

use simclr::data::augment::{render, Augment, Frame, Normalize, ViewParams, CONTRAST, NO_OP};
use simclr::data::resize::Filter;
use simclr::device::cuda::{augment, Elem};
use simclr::rng::Rng;

/// Max abs error on standardised values, f32 output. render and the kernels do the same f32
/// arithmetic in another order (taps in f32 rather than f64, fused multiply-adds, the contrast
/// mean summed as a tree rather than in sequence), and every step of the pipeline is continuous
/// with slopes of a few units at most (colour factors below 2; an HSV round trip moves a pixel
/// by about what its input moved), so the [0, 1] values differ by a few 1e-6 (tens of f32 ulps
/// at 1.0), which the test deviations (≥ 0.22) scale by under 5: 1.4e-5 measured at most.
const TOLERANCE: f32 = 1e-4;

/// (h, w, c, images, rows, output size, filter, blur radius). Odd sizes; crops of 8% to all of
/// the image, so outputs of 11 shrink and of 40 mostly enlarge; the last case has four views of
/// one image, and a blur radius of 0 (sigma drawn, no blur). Partial last blocks everywhere (a
/// block is 256 pixels).
type Case = (usize, usize, usize, usize, usize, usize, Filter, usize);
const CASES: &[Case] = &[
    (37, 29, 3, 3, 10, 23, Filter::Bilinear, 1),
    (37, 29, 3, 3, 10, 40, Filter::Bicubic, 2),
    (37, 29, 3, 2, 7, 11, Filter::Bicubic, 1),
    (37, 29, 1, 2, 7, 23, Filter::Bicubic, 1),
    (29, 37, 1, 2, 7, 40, Filter::Bilinear, 2),
    (29, 37, 3, 1, 4, 11, Filter::Bilinear, 0),
];

#[test]
fn augment_matches_render() {
    check(Elem::F32);
}

#[test]
fn augment_matches_render_in_bf16() {
    check(Elem::Bf16);
}

fn norm(c: usize) -> Normalize {
    match c {
        1 => Normalize {
            mean: vec![0.3],
            std: vec![0.35],
        },
        _ => Normalize {
            mean: vec![0.48, 0.45, 0.4],
            std: vec![0.23, 0.22, 0.26],
        },
    }
}

/// `rows` views of `images` h × w × c images: row 0 is the evaluation view of image 0, row r > 0
/// is drawn with seed `seed + r` from image r mod images.
fn views(&(h, w, c, images, rows, size, filter, _): &Case, seed: u64) -> Vec<ViewParams> {
    let aug = Augment {
        jitter_prob: 0.8,
        grayscale_prob: 0.5,
        blur_prob: 0.5,
        filter,
        ..Augment::simclr(size, 1.0)
    };
    let mut views = vec![ViewParams::center(h, w, size)];
    for r in 1..rows {
        let mut rng = Rng::new(seed + r as u64);
        let view = ViewParams {
            image: (r % images) as u32,
            ..aug.sample(h, w, c, &mut rng)
        };
        views.push(view);
    }
    views
}

fn check(elem: Elem) {
    // What the views exercised, over all cases: flips, grayscale, blurs, empty op slots, and
    // contrast (the op that needs the image's mean) at each place in the order.
    let (mut flips, mut grays, mut blurs, mut no_ops) = (0, 0, 0, 0);
    let mut contrast_at = [0; 4];
    for (i, case) in CASES.iter().enumerate() {
        let (h, w, c, n, rows, size, filter, radius) = *case;
        let mut rng = Rng::new(100 + i as u64);
        let images: Vec<u8> = (0..n * h * w * c).map(|_| rng.below(256) as u8).collect();
        let views = views(case, 1000 * i as u64);
        let frame = Frame {
            size,
            filter,
            blur_radius: radius,
        };
        let norm = norm(c);
        let pixels = size * size * c;
        let mut want = vec![0f32; rows * pixels];
        for (view, out) in views.iter().zip(want.chunks_exact_mut(pixels)) {
            let image = &images[view.image as usize * h * w * c..][..h * w * c];
            render(image, h, w, c, view, &frame, &norm, out);
            flips += view.flip;
            grays += view.gray;
            blurs += (view.sigma > 0.0 && radius > 0) as usize;
            no_ops += view.ops.iter().filter(|&&op| op == NO_OP).count();
            if let Some(k) = view.ops.iter().position(|&op| op == CONTRAST) {
                contrast_at[k] += 1;
            }
        }
        for (name, gpu) in common::gpus() {
            let what = format!("{name}, {elem:?}, case {i} ({h}×{w}×{c} → {size})");
            let mut out = gpu.alloc(want.len(), elem);
            let images_dev = gpu.upload_pinned(&images);
            let views_dev = gpu.upload_pinned(&views);
            augment::augment(
                &gpu,
                &images_dev,
                (h, w, c),
                &views_dev,
                rows,
                &frame,
                &norm,
                &mut out,
            );
            gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
            let got = gpu.download_f32(&out);
            for (j, (&g, &v)) in got.iter().zip(&want).enumerate() {
                // bf16 rounds to nearest: within half an ulp, at most |v|·2⁻⁸.
                let tol = match elem {
                    Elem::F32 => TOLERANCE,
                    Elem::Bf16 => TOLERANCE + v.abs() / 256.0,
                };
                let (row, px) = (j / pixels, j % pixels / c);
                assert!(
                    (g - v).abs() <= tol,
                    "{what}: row {row} ({:?}), pixel ({}, {}) channel {}: got {g}, want {v}",
                    views[row],
                    px / size,
                    px % size,
                    j % c
                );
            }
        }
    }
    assert!(
        flips > 0 && grays > 0 && blurs > 0 && no_ops > 0,
        "{flips} {grays} {blurs} {no_ops}"
    );
    assert!(
        contrast_at.iter().all(|&n| n > 0),
        "contrast at each place: {contrast_at:?}"
    );
}
