//! Convolutions with bf16 products on AMX tiles (`--precision bf16` on a processor with AMX),
//! with no im2col. Each task pads its own images into a bf16 copy (xp) just before its tiles
//! read it, so the copy is written and read in cache. At stride 1, as in
//! `conv::implicit_forward`, output pixel (oy, ox) of image b
//! is row q = oy·Wp + ox of a grid over the padded input (Hp×Wp per image), and its window row
//! r is the S·C values at xp[(q + r·Wp)·C..]. Here xp is kept in bf16, so an A tile, 16 grid
//! rows by 32 of those values, is loaded straight from it with a row stride of C values: the
//! only copy of the input is xp itself. A tile may read past a window row's S·C values (S·C is
//! rarely a multiple of 32); the B rows it meets there are zero, so what it reads adds nothing.
//! Small images, whose grids are mostly wrapped rows, and strided convs, whose output pixels
//! are not a grid's rows, have their windows packed from xp instead. The weight gradient packs
//! each pixel's window rows at any stride.

use super::amx;
use super::conv::{copy_short, pad_image, ConvShape};
use super::gemm::Strided;
use super::gemm_amx::{convert, pack_b, to_bf16_x16};
use super::recycle;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// y = conv(x, W), overwritten, given wt = Wᵀ (RSC×K, row-major).
pub fn implicit_forward(sh: &ConvShape, x: &[f32], wt: &[f32], y: &mut [f32]) {
    assert!(amx::available(), "conv: this processor has no AMX tiles");
    let (oh, ow, k, c, sc) = (sh.out_h(), sh.out_w(), sh.k, sh.c, sh.s * sh.c);
    let (hp, wp) = sh.padded_hw();
    let image = hp * wp * c;
    // Depth tiles per window row.
    let kt = sc.div_ceil(32);
    // Grid rows per image, up to its last output pixel's, and their 32-row blocks.
    let rows = sh.grid_rows();
    let grid_blocks = rows.div_ceil(32);

    // Wᵀ in B tiles: window row r's panel q (16 output channels) at (r·panels + q)·kt tiles.
    let nb = if k <= 16 { 1 } else { 2 };
    let panels = k.div_ceil(16 * nb) * nb;
    let mut b_tiles = vec![0u32; sh.r * panels * kt * amx::TILE];
    b_tiles
        .par_chunks_mut(kt * amx::TILE)
        .enumerate()
        .for_each(|(i, dst)| {
            let (r, q) = (i / panels, i % panels);
            // Bᵀ: output channel j, depth p (window row r's s·C + c) at wt[(r·S·C + p)·K + j].
            let bt = Strided {
                data: &wt[r * sc * k..],
                rs: 1,
                ps: k,
            };
            // SAFETY: AMX processors have AVX-512 (asserted above).
            unsafe { pack_b(dst, &bt, q * 16, k, sc) };
        });

    let width = 16 * nb;
    // A small image's grid is mostly rows that are dropped (a 4×4 output's 22 grid rows take a
    // 32-row block: half of its products are wasted). Where a third or more would be, the
    // tiles come from the output pixels' windows packed row by row instead (`pack_windows`),
    // which each panel of B reuses, rather than from xp in place. Packed rows are R·S·C values
    // each, read from L2, where a small image's xp stays in L1: at a quarter wasted (ResNet-8's
    // 7×7 stage) packing made no measurable difference to the step; at a half (ResNet-18's
    // 4×4 stage) it took 3–8% off it.
    // A strided conv's windows are always packed: its output pixels are not a grid's rows.
    let packed = sh.stride > 1 || 2 * grid_blocks * 32 >= 3 * oh * ow;
    // A packed row: window row r's kt·32 values at r·kt·32.
    let len = sh.r * kt * 32;
    let per_image = if packed { oh * ow * len } else { image };
    // A task's images share each panel of B tiles: it runs one panel over all of them before
    // the next. A deep layer's Wᵀ does not fit in L2 (4.7 MB in ResNet-18's last stage) and its
    // images have one or two blocks of grid rows each, so a task of one image would stream
    // all of Wᵀ from memory per image. The task's A rows stay in L2 meanwhile.
    // The tasks are as many as the threads, or a multiple: 3 tasks on 2 threads took as long
    // as 4 (ResNet-18's 7×7 stage, whose images fill 1 MiB at 25).
    let threads = rayon::current_num_threads();
    let per_task = (GROUP_BYTES / (2 * per_image)).max(1);
    let tasks = sh.n.div_ceil(per_task).next_multiple_of(threads);
    let group = sh.n.div_ceil(tasks);
    y.par_chunks_mut(group * oh * ow * k)
        .enumerate()
        .for_each(|(g, y)| {
            let images = y.len() / (oh * ow * k);
            PADDED.with(|xg| {
                WINDOWS.with(|windows| {
                    let (mut xg, mut windows) = (xg.borrow_mut(), windows.borrow_mut());
                    pad_images(sh, x, g * group..g * group + images, &mut xg);
                    let xg = &xg[..];
                    // Where the task's A rows are: window row r's depth tile t of block b's first
                    // row at src[start(b) + r·r_step + 32t], its rows `stride` values apart.
                    let (src, stride, r_step, blocks) = if packed {
                        pack_windows(sh, xg, &windows_at(sh, 0..images), len, &mut windows);
                        (&windows[..], len, kt * 32, (images * oh * ow).div_ceil(32))
                    } else {
                        (xg, c, wp * c, images * grid_blocks)
                    };
                    let start = |b: usize| {
                        if packed {
                            32 * b * len
                        } else {
                            (b / grid_blocks) * image + (b % grid_blocks) * 32 * c
                        }
                    };
                    let mut block = [0f32; 32 * 32];
                    // SAFETY: available() was asserted. Every A tile lies inside src: in place, its
                    // last value is less than (rows + 31 + (R−1)·Wp)·C + 32·kt ≤ image + 31·C + 32·kt
                    // values past its image's start, which `pad_images`'s tail covers; packed, its 32
                    // rows of `len` values are whole rows of the packed windows. B tiles are whole;
                    // the block holds 32×32 floats.
                    unsafe {
                        amx::configure();
                        for j in (0..k).step_by(width) {
                            let q = j / 16;
                            for b in 0..blocks {
                                let steps = (0..sh.r).flat_map(|r| {
                                    let a = src[start(b) + r * r_step..].as_ptr();
                                    let bt = b_tiles[(r * panels + q) * kt * amx::TILE..].as_ptr();
                                    (0..kt).map(move |t| amx::Step {
                                        a0: a.add(32 * t),
                                        a1: a.add(32 * t + 16 * stride),
                                        b0: bt.add(t * amx::TILE),
                                        b1: bt.add((kt + t) * amx::TILE),
                                    })
                                });
                                let out = block.as_mut_ptr();
                                if nb == 2 {
                                    amx::product::<2>(steps, 2 * stride, out, width, false);
                                } else {
                                    amx::product::<1>(steps, 2 * stride, out, width, false);
                                }
                                let cols = width.min(k - j);
                                let mut put = |p: usize, row: &[f32]| {
                                    copy_short(&mut y[p * k + j..][..cols], &row[..cols]);
                                };
                                let rows_out = block.chunks_exact(width);
                                if packed {
                                    // Row i is the task's pixel 32b + i, up to its last.
                                    let pixels = (images * oh * ow).min(32 * b + 32);
                                    for (p, row) in (32 * b..pixels).zip(rows_out) {
                                        put(p, row);
                                    }
                                } else {
                                    // Row i is grid row q0 + i of an image; those with ox ≥ OW
                                    // wrap across a row's end, and are dropped.
                                    let (i, q0) = (b / grid_blocks, b % grid_blocks * 32);
                                    let (mut oy, mut ox) = (q0 / wp, q0 % wp);
                                    for row in rows_out.take(rows - q0) {
                                        if ox < ow {
                                            put((i * oh + oy) * ow + ox, row);
                                        }
                                        (oy, ox) = if ox + 1 == wp {
                                            (oy + 1, 0)
                                        } else {
                                            (oy, ox + 1)
                                        };
                                    }
                                }
                            }
                        }
                        amx::release();
                    }
                })
            });
        });
}

/// The `images` of x with `pad` zeros around each (Hp×Wp×C per image) in bf16 into xp, then
/// zeros for what the last image's tiles read past its end: 32 grid rows, and 32 values past
/// the widest window row. A task pads its own images just before its tiles read them, so the
/// padded copy is written and read in cache rather than made for the whole batch first.
fn pad_images(sh: &ConvShape, x: &[f32], images: Range<usize>, xp: &mut Vec<u16>) {
    let (hp, wp) = sh.padded_hw();
    let image = hp * wp * sh.c;
    let tail = 32 * sh.c + 32 * (sh.s * sh.c).div_ceil(32) + 32;
    let len = images.len() * image;
    xp.resize(len + tail, 0);
    xp[len..].fill(0);
    let x = &x[images.start * sh.h * sh.w * sh.c..][..images.len() * sh.h * sh.w * sh.c];
    for (dst, src) in xp[..len]
        .chunks_exact_mut(image)
        .zip(x.chunks_exact(sh.h * sh.w * sh.c))
    {
        // SAFETY: only called where AMX, and so AVX-512, is present.
        pad_image(sh, src, dst, |dst, src| unsafe { convert(dst, src) });
    }
}

thread_local! {
    /// This thread's padded images (`pad_images`): a forward task's, or a weight-gradient
    /// task's chunk.
    static PADDED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// This thread's packed windows (pack_windows writes what the tiles read).
    static WINDOWS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Where each output pixel's window starts in the padded input (its window row 0), for the
/// output pixels of `images` in order.
fn windows_at(sh: &ConvShape, images: Range<usize>) -> Vec<usize> {
    let (oh, ow, c, st) = (sh.out_h(), sh.out_w(), sh.c, sh.stride);
    let (hp, wp) = sh.padded_hw();
    images
        .flat_map(|b| (0..oh).map(move |oy| (b * hp + oy * st) * wp * c))
        .flat_map(|row| (0..ow).map(move |ox| row + ox * st * c))
        .collect()
}

/// The windows of the output pixels at offsets `at` in xg (`windows_at`) into `windows`, a row
/// of `len` values per pixel in order: window row r's kt·32 values from xp at r·kt·32 (past S·C
/// they are the next pixels' values, which meet zero rows of B, as in place). Rows up to a
/// multiple of 32 are left as they were: the tiles read them, but their outputs are dropped.
fn pack_windows(sh: &ConvShape, xg: &[u16], at: &[usize], len: usize, windows: &mut Vec<u16>) {
    let (run, down) = (len / sh.r, sh.padded_hw().1 * sh.c);
    let rows = at.len().div_ceil(32) * 32;
    if windows.len() < rows * len {
        windows.resize(rows * len, 0);
    }
    for (&o, row) in at.iter().zip(windows.chunks_exact_mut(len)) {
        for (r, dst) in row.chunks_exact_mut(run).enumerate() {
            dst.copy_from_slice(&xg[o + r * down..][..run]);
        }
    }
}

/// About how many bytes of padded bf16 images a forward task holds (in L2) while a panel of
/// B tiles serves them all.
const GROUP_BYTES: usize = 1 << 20;

/// Weight-gradient tasks, at most: the partial sums are per task, so how the batch is split
/// depends on the shape alone (the result is the same whatever the thread count).
const DW_TASKS: usize = 8;
/// Output pixels per weight-gradient task, at least where the batch allows: each task's partial
/// dW is written and summed once, which a few pixels' products do not pay for (at 8 tasks,
/// ResNet-18's 4×4 stage wrote 9.4 MB of partials per 128 pixels).
const DW_MIN_PIXELS: usize = 512;
/// About how many bytes of packed tiles a weight-gradient task holds at a time (in L2).
const CHUNK_BYTES: usize = 1 << 20;

/// dw = ∂L/∂w given x and dy, overwritten: for each window row r,
/// dW_r[k, s·C + c] = Σ_p dy[p, k] · xp[at(p) + r·Wp·C + s·C + c] over the output pixels p of
/// every image, at(p) being the offset in xp of p's window. The depth of the products runs
/// over a chunk of images' pixels in order (not over the grid, whose wrapped rows would add
/// zeros: half of a 4×4 image's). A = dyᵀ, gathered a channel at a time; B = the window rows,
/// pairs of pixels interleaved from xp.
pub fn implicit_backward_weight(sh: &ConvShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    backward_weight_in_chunks(sh, x, dy, dw, CHUNK_BYTES);
}

/// `implicit_backward_weight` packing about `chunk_bytes` of tiles at a time.
fn backward_weight_in_chunks(
    sh: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    chunk_bytes: usize,
) {
    assert!(amx::available(), "conv: this processor has no AMX tiles");
    let (k, c, sc, pixels) = (sh.k, sh.c, sh.s * sh.c, sh.out_h() * sh.out_w());
    let wp = sh.padded_hw().1;
    // dW_r's rows (k) in pairs of 16-row tiles; its columns (s·C + c) in panels of 16.
    let row_tiles = k.div_ceil(32) * 2;
    let nb = if sc <= 16 { 1 } else { 2 };
    let panels = sc.div_ceil(16 * nb) * nb;
    let (k_pad, sc_pad) = (16 * row_tiles, 16 * panels);
    let tasks = (sh.n * pixels / DW_MIN_PIXELS).clamp(1, DW_TASKS);
    let group = sh.n.div_ceil(tasks);
    // A task packs CHUNK_BYTES' worth of images at a time, so each block of dW_r is loaded
    // into tiles and stored once per chunk rather than once per image.
    let chunk = (chunk_bytes / ((k_pad + sc_pad) * 2 * pixels)).clamp(1, group);
    // Per task: dW_r for each r, k_pad × sc_pad, whole blocks so they are updated in place.
    // A recycled buffer: a deep layer's partials are tens of MB, which a fresh allocation
    // would have the kernel fault in and zero every call; each task's first chunk overwrites
    // every block of its part.
    let mut partial = recycle::take::<f32>(sh.n.div_ceil(group) * sh.r * k_pad * sc_pad);
    partial
        .par_chunks_mut(sh.r * k_pad * sc_pad)
        .enumerate()
        .for_each(|(g, part)| {
            let images = g * group..sh.n.min((g + 1) * group);
            let most = (chunk * pixels).div_ceil(32);
            let mut a_tiles = vec![0u32; row_tiles * most * amx::TILE];
            let mut b_tiles = vec![0u32; panels * most * amx::TILE];
            let mut xp = PADDED.with(|xp| xp.take());
            for (i0, b0) in images.clone().step_by(chunk).enumerate() {
                let batch = b0..images.end.min(b0 + chunk);
                // Depth tiles of the chunk: 32 of its pixels each.
                let n = batch.len() * pixels;
                let dt = n.div_ceil(32);
                let a_tiles = &mut a_tiles[..row_tiles * dt * amx::TILE];
                // Not zeroed: packing writes every channel's row of every tile (depths past
                // the last pixel as zeros), and what rows past K hold reaches only rows of dW
                // past K, which are dropped.
                let dy = &dy[b0 * pixels * k..][..n * k];
                // SAFETY: AMX processors have AVX-512 (asserted above).
                unsafe { pack_dy_transposed(a_tiles, dy, k, dt) };
                // The chunk's images padded, and each pixel's window in them (from window
                // row 0), pixels in order.
                pad_images(sh, x, batch.clone(), &mut xp);
                let at = windows_at(sh, 0..batch.len());
                for r in 0..sh.r {
                    let b_tiles = &mut b_tiles[..panels * dt * amx::TILE];
                    // SAFETY: as above.
                    unsafe { pack_window(b_tiles, &xp[r * wp * c..], &at, sc_pad, dt) };
                    let part = &mut part[r * k_pad * sc_pad..][..k_pad * sc_pad];
                    // SAFETY: available() was asserted; the tiles are whole (row_tiles × dt
                    // and panels × dt of them); each block of `part` is a whole 32×16·nb one.
                    unsafe {
                        amx::configure();
                        for i in (0..k_pad).step_by(32) {
                            for j in (0..sc_pad).step_by(16 * nb) {
                                let (at, bt) = (
                                    &a_tiles[(i / 16) * dt * amx::TILE..],
                                    &b_tiles[(j / 16) * dt * amx::TILE..],
                                );
                                let steps = (0..dt).map(|t| amx::Step {
                                    a0: at[t * amx::TILE..].as_ptr().cast(),
                                    a1: at[(dt + t) * amx::TILE..].as_ptr().cast(),
                                    b0: bt[t * amx::TILE..].as_ptr(),
                                    b1: bt[((nb - 1) * dt + t) * amx::TILE..].as_ptr(),
                                });
                                let cp = part[i * sc_pad + j..].as_mut_ptr();
                                if nb == 2 {
                                    amx::product::<2>(steps, 64, cp, sc_pad, i0 > 0);
                                } else {
                                    amx::product::<1>(steps, 64, cp, sc_pad, i0 > 0);
                                }
                            }
                        }
                        amx::release();
                    }
                }
            }
            PADDED.with(|buffer| buffer.replace(xp));
        });
    // The tasks' sums, added in task order.
    let rsc = sh.r * sc;
    dw.par_chunks_exact_mut(rsc)
        .enumerate()
        .for_each(|(kk, dw_k)| {
            for (r, dw_r) in dw_k.chunks_exact_mut(sc).enumerate() {
                for (d, out) in dw_r.iter_mut().enumerate() {
                    *out = partial
                        .chunks_exact(sh.r * k_pad * sc_pad)
                        .map(|part| part[(r * k_pad + kk) * sc_pad + d])
                        .sum();
                }
            }
        });
    recycle::give_back(partial);
}

/// dyᵀ (dy: n pixels × K) into A tiles of `dt` depth tiles per row tile: row tile i's depth
/// tile t at (i·dt + t)·TILE holds output channels 16i.. by pixels 32t..; depths past the last
/// pixel are written as zeros, rows of channels past K are left as they are. A tile row is 32
/// pixels of one channel: it is gathered from dy (a stride of K between pixels) so that it is
/// stored whole, rather than scattered a value at a time.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_dy_transposed(dst: &mut [u32], dy: &[f32], k: usize, dt: usize) {
    use std::arch::x86_64::*;
    let n = dy.len() / k;
    assert!(n.div_ceil(32) <= dt && 32 * dt * k <= i32::MAX as usize);
    let dst: &mut [u16] = bytemuck::cast_slice_mut(dst);
    assert!(dst.len() >= k.div_ceil(16) * dt * 2 * amx::TILE);
    let zero = _mm512_setzero_ps();
    // Lane j's pixel, as an offset from the tile's first pixel.
    let lanes: [i32; 32] = std::array::from_fn(|j| (j * k) as i32);
    let lo = _mm512_loadu_si512(lanes.as_ptr().cast());
    let hi = _mm512_loadu_si512(lanes[16..].as_ptr().cast());
    for t in 0..dt {
        // Which lanes are pixels at all.
        let live = 32.min(n.saturating_sub(32 * t));
        let pixels = if live == 32 {
            u32::MAX
        } else {
            (1u32 << live) - 1
        };
        for kk in 0..k {
            // SAFETY: every live lane's offset is inside dy (32t + j < n), and the 32 values
            // stored are one tile row of dst (asserted long enough).
            let channel = dy.as_ptr().add(32 * t * k + kk);
            let a = _mm512_mask_i32gather_ps::<4>(zero, pixels as u16, lo, channel);
            let b = _mm512_mask_i32gather_ps::<4>(zero, (pixels >> 16) as u16, hi, channel);
            let out = dst[((kk / 16) * dt + t) * 2 * amx::TILE + (kk % 16) * 32..].as_mut_ptr();
            _mm256_storeu_si256(out.cast(), to_bf16_x16(a));
            _mm256_storeu_si256(out.add(16).cast(), to_bf16_x16(b));
        }
    }
}

/// The windows of one window row (xr = xp from that row on) of pixels at offsets `at` into B
/// tiles of `dt` depth tiles per panel: panel p's depth tile t at (p·dt + t)·TILE; row t' of it
/// interleaves pixels 32t + 2t' and the next, over columns 16p.. of their S·C values (values
/// past S·C are the next pixels': they only reach columns of dW_r that are dropped). Depths
/// past the last pixel are zeros.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_window(dst: &mut [u32], xr: &[u16], at: &[usize], sc_pad: usize, dt: usize) {
    let zeros = vec![0u16; sc_pad];
    let window = |p: usize| at.get(p).map_or(&zeros[..], |&o| &xr[o..][..sc_pad]);
    for t in 0..dt {
        for pair in 0..16 {
            let p = 32 * t + 2 * pair;
            let (lo, hi) = (window(p), window(p + 1));
            for (q, (lo, hi)) in lo.chunks_exact(16).zip(hi.chunks_exact(16)).enumerate() {
                let out = &mut dst[(q * dt + t) * amx::TILE + pair * 16..][..16];
                for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = l as u32 | (h as u32) << 16;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::conv::tests::{naive, rel_err};
    use crate::device::cpu::gemm_bf16::round;
    use crate::device::cpu::random_vec as random;

    /// Against f64 loops over the bf16-rounded input, weights and dy, on odd sizes, batches of
    /// 1, 2, 3 and 9 (one of them two weight-gradient tasks of several images), images whose
    /// forward reads its tiles from the padded input in place (12×16, 11×12) and packed (the
    /// smaller ones, and every strided conv): one input channel (the stem) to more than a
    /// tile's depth, output channels around the 16- and 32-wide blocks, windows of 1 to 5 with
    /// and without padding, strides 1 and 2.
    #[test]
    fn implicit_conv_and_weight_gradient_match_the_rounded_direct_ones() {
        if !amx::available() {
            eprintln!("no AMX here: nothing to test");
            return;
        }
        let mut seed = 100;
        let sizes = [(1, 7, 9), (3, 5, 6), (9, 4, 3), (2, 12, 16), (9, 11, 12)];
        let windows = [(1, 1, 0), (3, 3, 1), (3, 3, 0), (5, 5, 2), (1, 3, 1)];
        for (&(n, h, w), stride) in sizes.iter().flat_map(|s| [(s, 1), (s, 2)]) {
            for &c in &[1, 3, 13, 40] {
                for &(r, s, pad) in &windows {
                    seed += 1;
                    let k = [5, 16, 19, 40][seed as usize % 4];
                    let sh = ConvShape {
                        n,
                        h,
                        w,
                        c,
                        k,
                        r,
                        s,
                        stride,
                        pad,
                    };
                    let x: Vec<f32> = random(n * h * w * c, seed);
                    let wk: Vec<f32> = random(k * r * s * c, seed + 1);
                    let rsc = r * s * c;
                    let mut wt = vec![0.0; wk.len()];
                    for (j, row) in wk.chunks_exact(rsc).enumerate() {
                        for (p, &v) in row.iter().enumerate() {
                            wt[p * k + j] = v;
                        }
                    }
                    let mut y = vec![f32::NAN; sh.pixels() * k];
                    implicit_forward(&sh, &x, &wt, &mut y);
                    let dy: Vec<f32> = random(y.len(), seed + 2);
                    let mut dw = vec![f32::NAN; wk.len()];
                    implicit_backward_weight(&sh, &x, &dy, &mut dw);
                    // One image per chunk: the tiles of dW loaded and added to between chunks.
                    let mut dw1 = vec![f32::NAN; wk.len()];
                    backward_weight_in_chunks(&sh, &x, &dy, &mut dw1, 1);
                    let rounded = |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| round(v)).collect() };
                    let (want_y, _, want_dw) =
                        naive(&sh, &rounded(&x), &rounded(&wk), &rounded(&dy));
                    let err = rel_err(&y, &want_y);
                    assert!(err < 1e-6, "{sh:?}: y rel err {err}");
                    for dw in [&dw, &dw1] {
                        let err = rel_err(dw, &want_dw);
                        assert!(err < 1e-6, "{sh:?}: dw rel err {err}");
                    }
                }
            }
        }
    }
}
