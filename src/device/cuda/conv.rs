//! Convolution on the GPU: launches of the implicit-GEMM kernels, by the buffers' element type:
//! f32 on the CUDA cores (`kernels/conv.cu`, whose top comment explains the three GEMMs; 64×64
//! output tiles) or bf16 on the tensor cores (`kernels/conv_tc.cu`; 128×128 tiles, f32
//! accumulation, the weight gradient in f32). Shapes and layouts as `cpu::conv`: x NHWC,
//! w KRSC, y NHWC. Every kernel runs 256 threads.

use super::{Arg, Buffer, Elem, Gpu};
use crate::device::cpu::conv::ConvShape;

const THREADS: u32 = 256;

/// The two kernel sets' output tiles and reduction steps (split-K chunks are multiples of the
/// step).
#[derive(Clone, Copy)]
struct Tiling {
    tile: usize,
    step: usize,
}
const F32: Tiling = Tiling { tile: 64, step: 16 };
const TC: Tiling = Tiling {
    tile: 128,
    step: 32,
};
/// conv_tc.cu's dynamic shared memory: STAGES (4) × two operand tiles of 128 × 32 bf16.
const TC_SHARED: u32 = 4 * 2 * 128 * 32 * 2;
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

/// Checks the buffers against the shape (element counts); the kernels index with i32.
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

impl Tiling {
    fn tiles(self, n: usize) -> u32 {
        n.div_ceil(self.tile) as u32
    }
}

/// The tiling of the kernels for `elem`, and their dynamic shared memory.
fn tiling(elem: Elem) -> (Tiling, u32) {
    match elem {
        Elem::F32 => (F32, 0),
        Elem::Bf16 => (TC, TC_SHARED),
    }
}

/// Launches `kernel`; the tensor-core kernels get the flag saying whether C and K allow their
/// 16-byte copies.
#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &Gpu,
    s: &ConvShape,
    elem: Elem,
    kernel: (&'static str, &'static str),
    grid: [u32; 3],
    mut args: Vec<Arg>,
) {
    let (_, shared) = tiling(elem);
    let kernel = elem.pick(kernel.0, kernel.1);
    if elem == Elem::Bf16 {
        args.push(Arg::from(
            (s.c.is_multiple_of(8) && s.k.is_multiple_of(8)) as i32,
        ));
    }
    gpu.launch(kernel, grid, [THREADS, 1, 1], shared, &args);
}

/// y = conv(x, w), overwritten.
pub fn forward(gpu: &Gpu, s: &ConvShape, x: &Buffer, w: &Buffer, y: &mut Buffer) {
    let elem = Elem::common("conv forward", &[x, w, y]);
    check(s, x.len(), w.len(), y.len());
    let (t, _) = tiling(elem);
    let pixels = s.n * s.out_h() * s.out_w();
    let mut args = vec![Arg::from(x), Arg::from(w), Arg::from(y)];
    args.extend(shape_args(s));
    let grid = [t.tiles(pixels), t.tiles(s.k), 1];
    launch(
        gpu,
        s,
        elem,
        ("conv_forward", "conv_forward_bf16"),
        grid,
        args,
    );
}

/// dx = ∂L/∂x given dy = ∂L/∂y, overwritten. The bf16 kernel runs one grid layer per stride
/// phase (grid z), over the phase's pixels and its valid filter taps only.
pub fn backward_input(gpu: &Gpu, s: &ConvShape, dy: &Buffer, w: &Buffer, dx: &mut Buffer) {
    let elem = Elem::common("conv input gradient", &[dy, w, dx]);
    check(s, dx.len(), w.len(), dy.len());
    let (t, _) = tiling(elem);
    let mut args = vec![Arg::from(dy), Arg::from(w), Arg::from(dx)];
    args.extend(shape_args(s));
    let grid = match elem {
        Elem::F32 => [t.tiles(s.n * s.h * s.w), t.tiles(s.c), 1],
        Elem::Bf16 => {
            // Phase (0, 0) has the most pixels: ceil(H / stride) × ceil(W / stride) per image.
            let phase0 = s.n * s.h.div_ceil(s.stride) * s.w.div_ceil(s.stride);
            [t.tiles(phase0), t.tiles(s.c), (s.stride * s.stride) as u32]
        }
    };
    let kernel = ("conv_backward_input", "conv_backward_input_bf16");
    launch(gpu, s, elem, kernel, grid, args);
}

/// How many pieces the weight gradient's reduction over `pixels` output pixels is split into,
/// and the pixels per piece (a multiple of the kernel's step), when the dW tiles alone give
/// `tiles` blocks: enough splits to fill the GPU, none shorter than WGRAD_MIN_CHUNK.
fn wgrad_splits(pixels: usize, tiles: usize, step: usize) -> (usize, usize) {
    let wanted = WGRAD_TARGET_BLOCKS
        .div_ceil(tiles)
        .min(pixels.div_ceil(WGRAD_MIN_CHUNK))
        .max(1);
    let chunk = pixels.div_ceil(wanted).next_multiple_of(step);
    // Rounding the chunk up can leave the last splits empty: drop them.
    (pixels.div_ceil(chunk), chunk)
}

/// dw = ∂L/∂w given x and dy, overwritten; dw is f32 whatever x and dy are (the master
/// weights' gradient). With several splits, each writes a partial dw into a workspace and a
/// second kernel sums them in split order (bit-reproducible).
pub fn backward_weight(gpu: &Gpu, s: &ConvShape, x: &Buffer, dy: &Buffer, dw: &mut Buffer) {
    let elem = Elem::common("conv weight gradient", &[x, dy]);
    assert_eq!(dw.elem(), Elem::F32, "conv weight gradient: dw must be f32");
    check(s, x.len(), dw.len(), dy.len());
    let (t, _) = tiling(elem);
    let (pixels, rsc) = (s.n * s.out_h() * s.out_w(), s.r * s.s * s.c);
    let (m_tiles, n_tiles) = (t.tiles(s.k), t.tiles(rsc));
    let (splits, chunk) = wgrad_splits(pixels, (m_tiles * n_tiles) as usize, t.step);
    let grid = [m_tiles, n_tiles, splits as u32];
    let run = |out: &mut Buffer| {
        let mut args = vec![Arg::from(x), Arg::from(dy), Arg::from(out)];
        args.extend(shape_args(s));
        args.push(Arg::from(chunk as i32));
        let kernel = ("conv_backward_weight", "conv_backward_weight_bf16");
        launch(gpu, s, elem, kernel, grid, args);
    };
    if splits == 1 {
        run(dw);
        return;
    }
    let len = dw.len_f32();
    assert!(
        splits * len < super::MAX_ELEMENTS,
        "conv {s:?}: split-K workspace too large"
    );
    let mut partial = gpu.alloc_f32(splits * len);
    run(&mut partial);
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
                let (splits, chunk) = wgrad_splits(pixels, tiles, F32.step);
                assert!(splits >= 1 && chunk % F32.step == 0);
                assert!((splits - 1) * chunk < pixels && splits * chunk >= pixels);
            }
        }
        // ResNet-50 at batch 32: a first-stage 1×1 (one 64×64 tile) is split about 264 ways,
        // a last-stage 3×3 (576 tiles) not at all.
        assert_eq!(wgrad_splits(100_352, 1, F32.step), (262, 384));
        assert_eq!(wgrad_splits(1568, 576, F32.step), (1, 1568));
    }
}
