//! Convolution on the GPU: launches of the implicit-GEMM kernels in `kernels/conv.cu` (its
//! top comment explains the three GEMMs). Shapes and layouts as `cpu::conv`: x NHWC, w KRSC,
//! y NHWC. Every kernel computes 64×64 output tiles with 256 threads.

use super::{Arg, Buffer, Gpu};
use crate::device::cpu::conv::ConvShape;

const TILE: usize = 64;
const THREADS: u32 = 256;
/// Reduction depth of one kernel step: split-K chunks are multiples of it.
const STEP: usize = 16;
/// Blocks the weight gradient aims for: about two waves of 132 SMs (H100), enough for smaller
/// GPUs too. More splits only cost workspace and reduce traffic.
const WGRAD_TARGET_BLOCKS: usize = 264;
/// Output pixels each split sums at least, so a split's result is worth its write and reduce.
const WGRAD_MIN_CHUNK: usize = 128;

/// The kernels' shape arguments, in their order: N, H, W, C, K, R, S, stride, pad, P, Q.
fn shape_args(s: &ConvShape) -> [Arg; 11] {
    let (p, q) = (s.out_h(), s.out_w());
    [s.n, s.h, s.w, s.c, s.k, s.r, s.s, s.stride, s.pad, p, q].map(|v| Arg::from(v as i32))
}

/// Checks the buffers against the shape; the kernels index with i32.
fn check(s: &ConvShape, x: usize, w: usize, y: usize) {
    assert!(s.h + 2 * s.pad >= s.r && s.w + 2 * s.pad >= s.s && s.stride > 0);
    let (xn, wn, yn) = (
        s.n * s.h * s.w * s.c,
        s.k * s.r * s.s * s.c,
        s.n * s.out_h() * s.out_w() * s.k,
    );
    assert_eq!(
        (x, w, y),
        (xn, wn, yn),
        "conv {s:?}: buffer sizes (x, w, y)"
    );
    assert!(
        xn.max(wn).max(yn) < super::MAX_ELEMENTS,
        "conv {s:?}: tensors must have fewer than 2^31 elements"
    );
}

fn tiles(n: usize) -> u32 {
    n.div_ceil(TILE) as u32
}

/// y = conv(x, w), overwritten.
pub fn forward(gpu: &Gpu, s: &ConvShape, x: &Buffer, w: &Buffer, y: &mut Buffer) {
    check(s, x.len_f32(), w.len_f32(), y.len_f32());
    let pixels = s.n * s.out_h() * s.out_w();
    let mut args = vec![Arg::from(x), Arg::from(w), Arg::from(y)];
    args.extend(shape_args(s));
    gpu.launch(
        "conv_forward",
        [tiles(pixels), tiles(s.k), 1],
        [THREADS, 1, 1],
        0,
        &args,
    );
}

/// dx = ∂L/∂x given dy = ∂L/∂y, overwritten.
pub fn backward_input(gpu: &Gpu, s: &ConvShape, dy: &Buffer, w: &Buffer, dx: &mut Buffer) {
    check(s, dx.len_f32(), w.len_f32(), dy.len_f32());
    let pixels = s.n * s.h * s.w;
    let mut args = vec![Arg::from(dy), Arg::from(w), Arg::from(dx)];
    args.extend(shape_args(s));
    let grid = [tiles(pixels), tiles(s.c), 1];
    gpu.launch("conv_backward_input", grid, [THREADS, 1, 1], 0, &args);
}

/// How many pieces the weight gradient's reduction over `pixels` output pixels is split into,
/// and the pixels per piece (a multiple of the kernel's step), when the dW tiles alone give
/// `tiles` blocks: enough splits to fill the GPU, none shorter than WGRAD_MIN_CHUNK.
fn wgrad_splits(pixels: usize, tiles: usize) -> (usize, usize) {
    let wanted = WGRAD_TARGET_BLOCKS
        .div_ceil(tiles)
        .min(pixels.div_ceil(WGRAD_MIN_CHUNK))
        .max(1);
    let chunk = pixels.div_ceil(wanted).next_multiple_of(STEP);
    // Rounding the chunk up can leave the last splits empty: drop them.
    (pixels.div_ceil(chunk), chunk)
}

/// dw = ∂L/∂w given x and dy, overwritten. With several splits, each writes a partial dw into
/// a workspace and a second kernel sums them in split order (bit-reproducible).
pub fn backward_weight(gpu: &Gpu, s: &ConvShape, x: &Buffer, dy: &Buffer, dw: &mut Buffer) {
    check(s, x.len_f32(), dw.len_f32(), dy.len_f32());
    let (pixels, rsc) = (s.n * s.out_h() * s.out_w(), s.r * s.s * s.c);
    let (m_tiles, n_tiles) = (tiles(s.k), tiles(rsc));
    let (splits, chunk) = wgrad_splits(pixels, (m_tiles * n_tiles) as usize);
    let grid = [m_tiles, n_tiles, splits as u32];
    let launch = |out: &mut Buffer| {
        let mut args = vec![Arg::from(x), Arg::from(dy), Arg::from(out)];
        args.extend(shape_args(s));
        args.push(Arg::from(chunk as i32));
        gpu.launch("conv_backward_weight", grid, [THREADS, 1, 1], 0, &args);
    };
    if splits == 1 {
        launch(dw);
        return;
    }
    let len = dw.len_f32();
    assert!(
        splits * len < super::MAX_ELEMENTS,
        "conv {s:?}: split-K workspace too large"
    );
    let mut partial = gpu.alloc_f32(splits * len);
    launch(&mut partial);
    let args = [
        Arg::from(&partial),
        Arg::from(dw),
        Arg::from(len as i32),
        Arg::from(splits as i32),
    ];
    let grid = [super::blocks_for(len, THREADS), 1, 1];
    gpu.launch(
        "conv_backward_weight_reduce",
        grid,
        [THREADS, 1, 1],
        0,
        &args,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_the_pixels_in_whole_steps() {
        for pixels in [1, 15, 16, 17, 127, 128, 129, 1000, 100_352] {
            for tiles in [1, 7, 300, 1000] {
                let (splits, chunk) = wgrad_splits(pixels, tiles);
                assert!(splits >= 1 && chunk % STEP == 0);
                assert!((splits - 1) * chunk < pixels && splits * chunk >= pixels);
            }
        }
        // ResNet-50 at batch 32: a first-stage 1×1 (one 64×64 tile) is split about 264 ways,
        // a last-stage 3×3 (576 tiles) not at all.
        assert_eq!(wgrad_splits(100_352, 1), (262, 384));
        assert_eq!(wgrad_splits(1568, 576), (1, 1568));
    }
}
