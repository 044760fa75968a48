//! Batch augmentation on the device (kernels/augment.cu): `data::augment::render` for every view
//! of a batch at once, from the views' parameters drawn on the host.

use super::{blocks_for, Arg, Buffer, Gpu, MAX_ELEMENTS};
use crate::data::augment::{Frame, Normalize, ViewParams};
use crate::data::resize::Filter;

/// AUG_THREADS in the kernel file: the pixels of one row a block covers.
const THREADS: u32 = 256;

/// Row r of `out` [rows, size, size, c] is views[r] carried out on image views[r].image of
/// `images` (u8, n × h × w × c), standardised by `norm`: data::augment::render on the device.
/// `images` and `views` hold raw bytes (their element tag means nothing); `out` is f32 or
/// bf16. The views must be valid for these images (image < n, crop inside the image), as
/// `Augment::sample` and `ViewParams::center` make them: the device cannot check.
#[allow(clippy::too_many_arguments)]
pub fn augment(
    gpu: &Gpu,
    images: &Buffer,
    (h, w, c): (usize, usize, usize),
    views: &Buffer,
    rows: usize,
    frame: &Frame,
    norm: &Normalize,
    out: &mut Buffer,
) {
    assert!(c == 1 || c == 3, "augment: 1 or 3 channels, not {c}");
    let image = h * w * c;
    assert!(
        image > 0 && images.bytes() >= image && images.bytes().is_multiple_of(image),
        "augment: {} bytes of images are not a whole number of {h}×{w}×{c} images",
        images.bytes()
    );
    assert_eq!(
        views.bytes(),
        rows * std::mem::size_of::<ViewParams>(),
        "augment: the views buffer does not hold {rows} ViewParams"
    );
    let (size, radius) = (frame.size, frame.blur_radius);
    let len = rows * size * size * c;
    assert_eq!(
        out.len(),
        len,
        "augment: out holds {} values, not {rows}×{size}×{size}×{c}",
        out.len()
    );
    assert!(
        len <= MAX_ELEMENTS && image <= MAX_ELEMENTS,
        "augment: {rows} views of {size}×{size}×{c} from {h}×{w}×{c} images exceed int indexing"
    );
    assert!(
        rows <= 65535,
        "augment: {rows} views exceed the grid's 65535 rows"
    );
    assert!(
        2 * radius < THREADS as usize,
        "augment: a blur radius of {radius} needs more weights than a block has threads"
    );
    assert!(
        norm.mean.len() == c && norm.std.len() == c,
        "augment: the standardisation has {} means and {} deviations for {c} channels",
        norm.mean.len(),
        norm.std.len()
    );
    if rows == 0 {
        return;
    }
    let elem = out.elem();
    // Mean and deviation per channel as six kernel arguments (unused channels: 0 and 1).
    let mut norm_args = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    norm_args[..c].copy_from_slice(&norm.mean);
    norm_args[3..3 + c].copy_from_slice(&norm.std);
    let norm_args = norm_args.map(Arg::F32);

    let grid = [blocks_for(size * size, THREADS), rows as u32, 1];
    let block = [THREADS, 1, 1];
    let (size, c, radius) = (size as i32, c as i32, radius as i32);
    let mut x = gpu.alloc_f32(len);
    let bicubic = (frame.filter == Filter::Bicubic) as i32;
    gpu.launch(
        "augment_resize",
        grid,
        block,
        0,
        &[
            images.into(),
            (h as i32).into(),
            (w as i32).into(),
            c.into(),
            views.into(),
            size.into(),
            bicubic.into(),
            (&mut x).into(),
        ],
    );
    let mut means = gpu.alloc_f32(rows * 3);
    gpu.launch(
        "augment_mean",
        [rows as u32, 1, 1],
        block,
        0,
        &[
            views.into(),
            (&x).into(),
            size.into(),
            c.into(),
            (&mut means).into(),
        ],
    );
    let mut args: Vec<Arg> = vec![
        views.into(),
        (&mut x).into(),
        (&means).into(),
        size.into(),
        c.into(),
        radius.into(),
    ];
    args.extend(norm_args);
    args.push((&mut *out).into());
    gpu.launch(
        elem.pick("augment_color", "augment_color_bf16"),
        grid,
        block,
        0,
        &args,
    );
    if radius == 0 {
        return;
    }
    // The blur of the rows with sigma > 0, through a second scratch image.
    let weights = 4 * (2 * radius as u32 + 1);
    let mut tmp = gpu.alloc_f32(len);
    gpu.launch(
        "augment_blur_h",
        grid,
        block,
        weights,
        &[
            views.into(),
            (&x).into(),
            size.into(),
            c.into(),
            radius.into(),
            (&mut tmp).into(),
        ],
    );
    let mut args: Vec<Arg> = vec![
        views.into(),
        (&tmp).into(),
        size.into(),
        c.into(),
        radius.into(),
    ];
    args.extend(norm_args);
    args.push(out.into());
    gpu.launch(
        elem.pick("augment_blur_v", "augment_blur_v_bf16"),
        grid,
        block,
        weights,
        &args,
    );
}
