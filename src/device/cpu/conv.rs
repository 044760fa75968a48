//! 2-D convolution (no bias) on NHWC activations with KRSC weights, lowered to gemm.
//!
//! Viewing the output as a matrix with one row per output pixel (n, oy, ox) and one column
//! per filter k, and im2col as the matrix col[pixel, (r, s, c)] of the input values each
//! pixel's window sees, the three passes are plain matrix products:
//!   forward      y  = col · Wᵀ        (W is K × RSC)
//!   input grad   dcol = dy · W, then col2im scatters dcol back onto dx
//!   weight grad  dW = dyᵀ · col, computed as its transpose colᵀ · dy
//! im2col is built block by block in small buffers, never for the whole batch. A 1×1,
//! stride-1, unpadded conv needs none: x already is col. Nor does the input gradient of a
//! stride-1 conv with a square window (3×3 pad 1, the ResNets' commonest), which is such a conv
//! of dy with the window flipped: on a zero-padded copy of its input, each window row of every
//! output pixel lies at a fixed stride, so gemm reads it in place (`implicit_forward`), and no
//! col2im scatters the result. Small images (under 2·FWD_BLOCK grid rows each) are the
//! exception: their grids would give each gemm a few rows per image, so their flipped conv
//! goes through im2col. The same implicit form for the forward pass and the weight gradient
//! measured slower (at small spatial sizes many of its grid rows are dropped padding, and it
//! splits the depth into R shallow gemms). Narrow windows are the exception (`fused_forward`,
//! for the forward pass and the flipped conv alike): where Wᵀ's panel stays in L1 (ResNet-8's
//! 16 channels, its one-channel stem), each register tile of the grid takes all R window rows
//! from a padded copy of one image, and neither im2col nor a padded batch is written.

use super::gemm::{gemm, Kernel, Microkernel, Scratch};
use super::gemm_bf16;
use super::real::Real;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.r) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.s) / self.stride + 1
    }
    pub fn in_shape(&self) -> [usize; 4] {
        [self.n, self.h, self.w, self.c]
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.k, self.r, self.s, self.c]
    }
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.out_h(), self.out_w(), self.k]
    }
    /// Output pixels over the whole batch: the row count of every gemm here.
    pub(super) fn pixels(&self) -> usize {
        self.n * self.out_h() * self.out_w()
    }
    /// Length of one im2col row: a filter's R×S×C window.
    fn rsc(&self) -> usize {
        self.r * self.s * self.c
    }
    fn is_pointwise(&self) -> bool {
        self.r == 1 && self.s == 1 && self.stride == 1 && self.pad == 0
    }
    /// Its input gradient is computed on the padded dy without col2im: stride 1, a square window
    /// wider than 1 and padding under its size (so that the flipped conv has padding ≥ 0).
    fn is_implicit(&self) -> bool {
        self.stride == 1 && self.r == self.s && self.r > 1 && self.pad < self.r
    }
    /// Rows of one image's grid over its padded input (`implicit_forward`), up to its last
    /// output pixel's: OW of every Wp kept.
    pub(super) fn grid_rows(&self) -> usize {
        (self.out_h() - 1) * self.padded_hw().1 + self.out_w()
    }
    /// The padded input's height and width.
    pub(super) fn padded_hw(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }
    fn check(&self, x: usize, w: usize, y: usize) {
        assert!(
            self.h + 2 * self.pad >= self.r && self.w + 2 * self.pad >= self.s && self.stride > 0
        );
        assert_eq!(x, self.n * self.h * self.w * self.c, "conv: input size");
        assert_eq!(w, self.k * self.rsc(), "conv: weight size");
        assert_eq!(y, self.pixels() * self.k, "conv: output size");
    }
}

/// Output pixels per im2col block in the forward pass. Like DX_ROWS, a multiple of both gemm
/// tiles' row counts (6 and 14), so that no block ends in a partial row panel.
const FWD_BLOCK: usize = 168;
/// Window depth (R·S·C) up to which the forward's blocks are FWD_BLOCK pixels: a 3×3 window
/// of 64 channels. Deeper windows take a multiple (`im2col_forward`).
const FWD_DEPTH: usize = 576;
/// Output pixels per input-gradient gemm: its dcol block stays in L2 until col2im reads it.
const DX_ROWS: usize = 252;
/// Output pixels per weight-gradient chunk; each chunk gets its own partial dW.
const DW_CHUNK: usize = 2048;
/// Output pixels per weight-gradient gemm within a chunk: its im2col block stays in L2.
const DW_BLOCK: usize = 256;

/// y = conv(x, w), overwritten; y is N×OH×OW×K.
pub fn conv2d_forward<T: Real>(sh: &ConvShape, x: &[T], w: &[T], y: &mut [T]) {
    sh.check(x.len(), w.len(), y.len());
    let (k, rsc) = (sh.k, sh.rsc());
    // B = Wᵀ, transposed once into a row-major RSC×K copy: gemm packs a row-major B with
    // plain copies, whereas gathering a strided Wᵀ for every block is slow when W is large.
    let mut wt = Scratch::new(w.len());
    transpose(w, k, rsc, &mut wt);
    if sh.is_pointwise() {
        gemm(sh.pixels(), k, rsc, x, rsc, 1, &wt, k, 1, y, k, false);
        return;
    }
    // With AMX tiles, which read xp in place or pack each pixel's window from it, the
    // implicit form beats im2col at every stride.
    if on_amx(sh, x, &wt, y) {
        return;
    }
    if fused(sh, x, &wt, y) {
        return;
    }
    // With bf16 products (no AMX): a window row of fewer values than a vector (the stem's, of
    // one channel) costs im2col more per value than the product does, so the implicit form reads
    // the padded input in place (in f32, ResNet-8's stem: 9.4–11.4 → 4.9–6.4 ms).
    if sh.stride == 1 && sh.s * sh.c < 8 {
        return implicit_forward(sh, x, &wt, y);
    }
    im2col_forward(sh, x, &wt, y);
}

/// `fused_forward` with this process's f32/f64 microkernel; false under bf16 products.
fn fused<T: Real>(sh: &ConvShape, x: &[T], wt: &[T], y: &mut [T]) -> bool {
    !gemm_bf16::products() && fused_forward(T::microkernel(sh.k), sh, x, wt, y)
}

/// y = conv(x, w) given wt = Wᵀ (RSC×K), with `kernel` (`fused_tiles`). False, having done
/// nothing, for a strided conv, or where Wᵀ's panel of NR columns would not stay in L1 (16 KiB):
/// measured on Zen 3 (AVX2), the 3×3 window of 16 channels (9 KiB) ran 20% faster than
/// im2col, of 32 channels level, of 64 slower.
fn fused_forward<T: Real>(
    kernel: Kernel<T>,
    sh: &ConvShape,
    x: &[T],
    wt: &[T],
    y: &mut [T],
) -> bool {
    match kernel {
        Kernel::Tile6x16(f) => fused_tiles::<T, 6, 16>(f, sh, x, wt, y),
        Kernel::Tile14x32(f) => fused_tiles::<T, 14, 32>(f, sh, x, wt, y),
        Kernel::Tile14x16(f) => fused_tiles::<T, 14, 16>(f, sh, x, wt, y),
    }
}

/// `implicit_forward`'s grid over each padded image, tile by tile: each MR×NR tile takes its R
/// window rows (S·C values each, read in place) in R calls of the microkernel into one small
/// buffer, so neither im2col nor a whole padded batch is written, only the tile's kept rows.
fn fused_tiles<T: Real, const MR: usize, const NR: usize>(
    kernel: Microkernel<T>,
    sh: &ConvShape,
    x: &[T],
    wt: &[T],
    y: &mut [T],
) -> bool {
    let (oh, ow, k, c, sc) = (sh.out_h(), sh.out_w(), sh.k, sh.c, sh.s * sh.c);
    if sh.stride != 1 || sh.rsc() * NR * std::mem::size_of::<T>() > 16 << 10 {
        return false;
    }
    // Wᵀ with its columns padded to a multiple of NR, so that every tile is a whole panel.
    let kp = k.next_multiple_of(NR);
    let mut padded_wt = Scratch::new(if kp == k { 0 } else { sh.rsc() * kp });
    let (wt, ldb) = if kp == k {
        (wt, k)
    } else {
        for (dst, src) in padded_wt.chunks_exact_mut(kp).zip(wt.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
            dst[k..].fill(T::zero());
        }
        (&padded_wt[..], kp)
    };
    assert_eq!(wt.len(), sh.rsc() * ldb);
    let (hp, wp) = sh.padded_hw();
    let image = hp * wp * c;
    let rows = sh.grid_rows();
    y.par_chunks_mut(oh * ow * k)
        .zip(x.par_chunks(sh.h * sh.w * c))
        .for_each(|(y, x)| {
            // This image padded, in a buffer that stays in L2; its last tile reads up to
            // MR - 1 grid rows past it, into a tail of zeros, and drops their results.
            let mut xb = Scratch::new(image + (MR - 1) * c);
            let (body, tail) = xb.split_at_mut(image);
            pad_image(sh, x, body, |dst, src| dst.copy_from_slice(src));
            tail.fill(T::zero());
            let mut tile = [T::zero(); 14 * 32];
            for q0 in (0..rows).step_by(MR) {
                for j0 in (0..k).step_by(NR) {
                    for r in 0..sh.r {
                        // SAFETY: A's last read (grid row q0 + MR - 1 ≤ rows + MR - 2, window
                        // row R - 1, depth sc - 1) is at (hp·wp + MR - 1)·c - 1 at most, inside
                        // xb; B's, (r·sc + sc - 1)·ldb + j0 + NR - 1, is inside wt as NR divides
                        // ldb (asserted); the tile holds MR×NR.
                        unsafe {
                            kernel(
                                sc,
                                xb.as_ptr().add((q0 + r * wp) * c),
                                c,
                                1,
                                wt.as_ptr().add(r * sc * ldb + j0),
                                ldb,
                                tile.as_mut_ptr(),
                                NR,
                                r > 0,
                            )
                        };
                    }
                    let cols = NR.min(k - j0);
                    for (i, row) in tile.chunks_exact(NR).take(MR.min(rows - q0)).enumerate() {
                        let (oy, ox) = ((q0 + i) / wp, (q0 + i) % wp);
                        if ox < ow {
                            copy_short(&mut y[(oy * ow + ox) * k + j0..][..cols], &row[..cols]);
                        }
                    }
                }
            }
        });
    true
}

/// y = conv(x, w) given wt = Wᵀ (RSC×K), through im2col blocks of FWD_BLOCK output pixels.
fn im2col_forward<T: Real>(sh: &ConvShape, x: &[T], wt: &[T], y: &mut [T]) {
    let (k, rsc) = (sh.k, sh.rsc());
    // Deeper windows take larger blocks: each block's gemm streams all of Wᵀ, which a deep
    // layer's (ResNet-18's last stage: 9.4 MB) costs more than holding a larger col does
    // (measured, that stage's forward: 75–80 ms in blocks of 168 rows, 55–66 in one of 1,024).
    let block = FWD_BLOCK * rsc.div_ceil(FWD_DEPTH);
    y.par_chunks_mut(block * k)
        .enumerate()
        .for_each(|(blk, y)| {
            let rows = y.len() / k;
            let mut col = Scratch::new(rows * rsc);
            col.par_chunks_mut(FWD_BLOCK * rsc)
                .enumerate()
                .for_each(|(i, col)| im2col(sh, x, blk * block + i * FWD_BLOCK, col));
            gemm(rows, k, rsc, &col, rsc, 1, wt, k, 1, y, k, false);
        });
}

/// y = conv(x, w) for a stride-1 shape, given wt = Wᵀ (RSC×K). Output pixel (oy, ox) of
/// image b is row q = (b·Hp + oy)·Wp + ox of a grid over the padded input xp (Hp×Wp per image),
/// and its window row r is the S·C values at xp[(q + r·Wp)·C..]: for each r, all grid rows at
/// once are a gemm with A read in place at row stride C. Grid rows with ox ≥ OW wrap across a
/// row's end; they are computed in a small buffer and dropped.
fn implicit_forward<T: Real>(sh: &ConvShape, x: &[T], wt: &[T], y: &mut [T]) {
    assert_eq!(sh.stride, 1, "implicit conv: stride");
    let (oh, ow, k, sc) = (sh.out_h(), sh.out_w(), sh.k, sh.s * sh.c);
    let (hp, wp) = sh.padded_hw();
    let xp = padded(sh, x);
    // One image's grid rows, up to its last output pixel's.
    let rows = sh.grid_rows();
    y.par_chunks_mut(oh * ow * k)
        .enumerate()
        .for_each(|(b, y)| {
            let mut grid = Scratch::new(FWD_BLOCK.min(rows) * k);
            for q0 in (0..rows).step_by(FWD_BLOCK) {
                let m = FWD_BLOCK.min(rows - q0);
                let grid = &mut grid[..m * k];
                let xb = &xp[(b * hp * wp + q0) * sh.c..];
                for r in 0..sh.r {
                    let wr = &wt[r * sc * k..];
                    gemm(
                        m,
                        k,
                        sc,
                        &xb[r * wp * sh.c..],
                        sh.c,
                        1,
                        wr,
                        k,
                        1,
                        grid,
                        k,
                        r > 0,
                    );
                }
                for (i, row) in grid.chunks_exact(k).enumerate() {
                    let (oy, ox) = ((q0 + i) / wp, (q0 + i) % wp);
                    if ox < ow {
                        copy_short(&mut y[(oy * ow + ox) * k..][..k], row);
                    }
                }
            }
        });
}

/// Whether an f32 conv of this shape runs on AMX tiles (conv_amx.rs, any stride): the run
/// takes bf16 products there and the window is wider than a pixel. A strided 1×1 conv (a
/// shortcut) is faster through im2col than through packing one-pixel windows.
fn amx_shape(sh: &ConvShape) -> bool {
    sh.r * sh.s > 1 && gemm_bf16::amx_products()
}

/// y = conv(x, W) given wt = Wᵀ on AMX tiles if `amx_shape` and T is f32; whether it did.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn on_amx<T: Real>(sh: &ConvShape, x: &[T], wt: &[T], y: &mut [T]) -> bool {
    if !amx_shape(sh) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(x), Some(wt), Some(y)) = (T::as_f32(x), T::as_f32(wt), T::as_f32_mut(y)) {
        super::conv_amx::implicit_forward(sh, x, wt, y);
        return true;
    }
    false
}

/// x with `pad` zeros around each image: N×Hp×Wp×C.
fn padded<T: Real>(sh: &ConvShape, x: &[T]) -> Scratch<T> {
    let (hp, wp) = sh.padded_hw();
    let mut xp = Scratch::new(sh.n * hp * wp * sh.c);
    pad_into(sh, x, &mut xp, |dst, src| dst.copy_from_slice(src));
    xp
}

/// Writes x with `pad` zeros around each image into dst (N×Hp×Wp×C, every value), each of
/// x's rows through `row` (a copy, or a conversion).
fn pad_into<T: Sync, U: Copy + Default + Send>(
    sh: &ConvShape,
    x: &[T],
    dst: &mut [U],
    row: impl Fn(&mut [U], &[T]) + Sync,
) {
    let (hp, wp) = sh.padded_hw();
    dst.par_chunks_mut(hp * wp * sh.c)
        .zip(x.par_chunks(sh.h * sh.w * sh.c))
        .for_each(|(dst, src)| pad_image(sh, src, dst, &row));
}

/// One image (H×W×C) with `pad` zeros around it into dst (Hp×Wp×C, every value), each of its
/// rows through `row`.
pub(super) fn pad_image<T, U: Copy + Default>(
    sh: &ConvShape,
    src: &[T],
    dst: &mut [U],
    row: impl Fn(&mut [U], &[T]),
) {
    let wp = sh.padded_hw().1;
    let (width, pad) = (sh.w * sh.c, sh.pad * sh.c);
    for (py, dst) in dst.chunks_exact_mut(wp * sh.c).enumerate() {
        // The input row; above the image it wraps to a huge value.
        let iy = py.wrapping_sub(sh.pad);
        if iy < sh.h {
            dst[..pad].fill(U::default());
            row(&mut dst[pad..pad + width], &src[iy * width..][..width]);
            dst[pad + width..].fill(U::default());
        } else {
            dst.fill(U::default());
        }
    }
}

/// dx = ∂L/∂x given dy = ∂L/∂y, overwritten.
pub fn conv2d_backward_input<T: Real>(sh: &ConvShape, dy: &[T], w: &[T], dx: &mut [T]) {
    sh.check(dx.len(), w.len(), dy.len());
    let (k, rsc) = (sh.k, sh.rsc());
    if sh.is_pointwise() {
        gemm(sh.pixels(), rsc, k, dy, k, 1, w, rsc, 1, dx, rsc, false);
        return;
    }
    if sh.is_implicit() {
        // dx[iy, ix, c] = Σ dy[iy + pad − r, ix + pad − s, k] · w[k, r, s, c]: the stride-1
        // conv of dy padded by R−1−pad with the window flipped (r' = R−1−r) and the channels'
        // roles swapped, whose Bᵀ is wt[(r', s', k), c] = w[k, R−1−r', S−1−s', c].
        let (r, s, c) = (sh.r, sh.s, sh.c);
        let flipped = ConvShape {
            h: sh.out_h(),
            w: sh.out_w(),
            c: k,
            k: c,
            pad: r - 1 - sh.pad,
            ..*sh
        };
        let mut wt = Scratch::new(w.len());
        for (j, w_k) in w.chunks_exact(rsc).enumerate() {
            for (p, w_rs) in w_k.chunks_exact(c).enumerate() {
                let (fr, fs) = (r - 1 - p / s, s - 1 - p % s);
                wt[((fr * s + fs) * k + j) * c..][..c].copy_from_slice(w_rs);
            }
        }
        if on_amx(&flipped, dy, &wt, dx) {
            return;
        }
        if fused(&flipped, dy, &wt, dx) {
            return;
        }
        // Small images through im2col: the implicit form runs gemms per image over its grid,
        // whose few rows (a 4×4 image's 22, 16 of them kept) stream all of Wᵀ from memory for
        // each image (ResNet-18's 4×4 stage: 2.4M values of W per 16 pixels). Measured on Zen
        // 3: that stage 210–230 → 85 ms, its 14×14 stage (222 grid rows) 46–63 → 42–44 ms.
        if flipped.grid_rows() < 2 * FWD_BLOCK {
            im2col_forward(&flipped, dy, &wt, dx);
        } else {
            implicit_forward(&flipped, dy, &wt, dx);
        }
        return;
    }
    // Each task owns a group of whole images, so its col2im writes collide with no other's,
    // and walks them in blocks of about DX_ROWS output pixels: a gemm into a small dcol, then
    // col2im of that block (in order, as windows of neighbouring blocks overlap).
    let rows = sh.out_h() * sh.out_w();
    let group = (DX_ROWS / rows).max(1);
    // A small image's gemm takes its whole group: one image's few pixels per gemm would pack
    // all of W again for each (ResNet-18's 4×4 stride-2 layer: 2.4M values per 16 pixels).
    let block = DX_ROWS.min(group * rows);
    dx.par_chunks_mut(group * sh.h * sh.w * sh.c)
        .zip(dy.par_chunks(group * rows * k))
        .for_each(|(dx, dy)| {
            dx.fill(T::zero());
            let mut dcol = Scratch::new(block * rsc);
            for (b, dy) in dy.chunks(block * k).enumerate() {
                let dcol = &mut dcol[..dy.len() / k * rsc];
                gemm(dy.len() / k, rsc, k, dy, k, 1, w, rsc, 1, dcol, rsc, false);
                col2im(sh, dcol, b * block, dx);
            }
        });
}

/// dw = ∂L/∂w given x and dy, overwritten.
pub fn conv2d_backward_weight<T: Real>(sh: &ConvShape, x: &[T], dy: &[T], dw: &mut [T]) {
    sh.check(x.len(), dw.len(), dy.len());
    // With AMX tiles, the implicit form reads the window rows from a bf16 copy of x.
    #[cfg(target_arch = "x86_64")]
    if amx_shape(sh) {
        if let (Some(x), Some(dy), Some(dw)) = (T::as_f32(x), T::as_f32(dy), T::as_f32_mut(dw)) {
            return super::conv_amx::implicit_backward_weight(sh, x, dy, dw);
        }
    }
    let (k, rsc, pixels, len) = (sh.k, sh.rsc(), sh.pixels(), dw.len());
    // Computed transposed, dWᵀ[p, k] += Σ_rows col[row, p] · dy[row, k] over a chunk of rows
    // (A = colᵀ by strides): the gemm's short side is then its columns, K, which a narrow
    // layer's (K = 16) tile covers exactly, rather than its rows, which a 14-row tile would pad.
    let chunk_dwt = |row0: usize, rows: usize, dwt: &mut [T]| {
        let dy = &dy[row0 * k..];
        if sh.is_pointwise() {
            gemm(
                rsc,
                k,
                rows,
                &x[row0 * rsc..],
                1,
                rsc,
                dy,
                k,
                1,
                dwt,
                k,
                false,
            );
        } else {
            // Blocks in a fixed order, each adding its share onto dwt.
            let mut col = Scratch::new(DW_BLOCK.min(rows) * rsc);
            for q0 in (0..rows).step_by(DW_BLOCK) {
                let n = DW_BLOCK.min(rows - q0);
                let col = &mut col[..n * rsc];
                im2col(sh, x, row0 + q0, col);
                gemm(rsc, k, n, col, 1, rsc, &dy[q0 * k..], k, 1, dwt, k, q0 > 0);
            }
        }
    };
    // Per-chunk partials, summed in chunk order into the first: the chunking depends only on
    // the shape, so the result is the same whatever the thread count.
    let chunks = pixels.div_ceil(DW_CHUNK);
    let mut partial = Scratch::new(chunks * len);
    partial
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(i, part)| {
            let row0 = i * DW_CHUNK;
            chunk_dwt(row0, DW_CHUNK.min(pixels - row0), part);
        });
    let (dwt, rest) = partial.split_at_mut(len);
    dwt.par_chunks_mut(4096).enumerate().for_each(|(blk, dwt)| {
        let off = blk * 4096;
        for part in rest.chunks_exact(len) {
            for (d, &p) in dwt.iter_mut().zip(&part[off..]) {
                *d += p;
            }
        }
    });
    transpose(dwt, rsc, k, dw);
}

/// dst (cols × rows) = srcᵀ (src rows × cols), both row-major. In 32×32 blocks: value by value
/// down a column, every store would touch another cache line (8% of a ResNet-18 step for the
/// weights alone).
fn transpose<T: Real>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const BLOCK: usize = 32;
    assert!(src.len() == rows * cols && dst.len() == rows * cols);
    dst.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(jb, dst)| {
            let (j0, width) = (jb * BLOCK, dst.len() / rows);
            for i0 in (0..rows).step_by(BLOCK) {
                for i in i0..(i0 + BLOCK).min(rows) {
                    for (jj, &v) in src[i * cols + j0..][..width].iter().enumerate() {
                        dst[jj * rows + i] = v;
                    }
                }
            }
        });
}

/// Fills col (rows × RSC) with the input windows of output pixels row0.., zero where a
/// window hangs over the padding.
fn im2col<T: Real>(sh: &ConvShape, x: &[T], row0: usize, col: &mut [T]) {
    let (oh, ow, c) = (sh.out_h(), sh.out_w(), sh.c);
    // Output pixels in order: the divisions of split_pixel only for the first.
    let (mut b, mut oy, mut ox) = split_pixel(row0, oh, ow);
    for col_row in col.chunks_exact_mut(sh.rsc()) {
        // Input column of the window's left edge; negative values wrap to huge ones, so one
        // comparison `< h` / `< w` covers both edges.
        let ix0 = (ox * sh.stride).wrapping_sub(sh.pad);
        let inside = ix0 < sh.w && ix0.wrapping_add(sh.s) <= sh.w;
        for (r, col_r) in col_row.chunks_exact_mut(sh.s * c).enumerate() {
            let iy = (oy * sh.stride + r).wrapping_sub(sh.pad);
            if iy < sh.h && inside {
                // A window row is S*C contiguous input values in NHWC: one copy.
                let src = ((b * sh.h + iy) * sh.w + ix0) * c;
                copy_short(col_r, &x[src..src + sh.s * c]);
                continue;
            }
            for (s, dst) in col_r.chunks_exact_mut(c).enumerate() {
                let ix = ix0.wrapping_add(s);
                if iy < sh.h && ix < sh.w {
                    let src = ((b * sh.h + iy) * sh.w + ix) * c;
                    copy_short(dst, &x[src..src + c]);
                } else {
                    dst.fill(T::zero());
                }
            }
        }
        (b, oy, ox) = next_pixel((b, oy, ox), oh, ow);
    }
}

/// The adjoint of im2col: adds the windows of output pixels row0.. back onto dx (counted from
/// the image that dx starts with).
fn col2im<T: Real>(sh: &ConvShape, dcol: &[T], row0: usize, dx: &mut [T]) {
    let (oh, ow, c) = (sh.out_h(), sh.out_w(), sh.c);
    let (mut b, mut oy, mut ox) = split_pixel(row0, oh, ow);
    for col_row in dcol.chunks_exact(sh.rsc()) {
        for (r, col_r) in col_row.chunks_exact(sh.s * c).enumerate() {
            let iy = (oy * sh.stride + r).wrapping_sub(sh.pad);
            for (s, src) in col_r.chunks_exact(c).enumerate() {
                let ix = (ox * sh.stride + s).wrapping_sub(sh.pad);
                if iy < sh.h && ix < sh.w {
                    let dst = ((b * sh.h + iy) * sh.w + ix) * c;
                    for (d, &g) in dx[dst..dst + c].iter_mut().zip(src) {
                        *d += g;
                    }
                }
            }
        }
        (b, oy, ox) = next_pixel((b, oy, ox), oh, ow);
    }
}

/// dst = src for runs of a few channels, in 8-wide moves: copy_from_slice would call libc's
/// memmove, whose overhead per call costs more than such a copy.
#[inline(always)]
pub(super) fn copy_short<T: Real>(dst: &mut [T], src: &[T]) {
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    for (d, &s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = s;
    }
}

/// Output pixel index → (image, output row, output column).
fn split_pixel(q: usize, oh: usize, ow: usize) -> (usize, usize, usize) {
    (q / (oh * ow), q / ow % oh, q % ow)
}

/// The output pixel after (b, oy, ox), without split_pixel's divisions.
fn next_pixel((b, oy, ox): (usize, usize, usize), oh: usize, ow: usize) -> (usize, usize, usize) {
    match (ox + 1 < ow, oy + 1 < oh) {
        (true, _) => (b, oy, ox + 1),
        (false, true) => (b, oy + 1, 0),
        (false, false) => (b + 1, 0, 0),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::device::cpu::random_vec as random;

    /// Direct loops in f64: y, and the two gradients of L = Σ y·dy.
    pub(crate) fn naive<T: Real>(
        sh: &ConvShape,
        x: &[T],
        w: &[T],
        dy: &[T],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (oh, ow) = (sh.out_h(), sh.out_w());
        let mut y = vec![0.0; sh.pixels() * sh.k];
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        for b in 0..sh.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for k in 0..sh.k {
                        let o = ((b * oh + oy) * ow + ox) * sh.k + k;
                        for r in 0..sh.r {
                            for s in 0..sh.s {
                                let iy = (oy * sh.stride + r) as isize - sh.pad as isize;
                                let ix = (ox * sh.stride + s) as isize - sh.pad as isize;
                                if iy < 0 || ix < 0 || iy >= sh.h as isize || ix >= sh.w as isize {
                                    continue;
                                }
                                for c in 0..sh.c {
                                    let xi =
                                        ((b * sh.h + iy as usize) * sh.w + ix as usize) * sh.c + c;
                                    let wi = ((k * sh.r + r) * sh.s + s) * sh.c + c;
                                    y[o] += x[xi].to_f64() * w[wi].to_f64();
                                    dx[xi] += dy[o].to_f64() * w[wi].to_f64();
                                    dw[wi] += dy[o].to_f64() * x[xi].to_f64();
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    pub(crate) fn rel_err<T: Real>(got: &[T], want: &[f64]) -> f64 {
        let err: f64 = got
            .iter()
            .zip(want)
            .map(|(&g, w)| (g.to_f64() - w).powi(2))
            .sum();
        let norm: f64 = want.iter().map(|w| w * w).sum();
        (err / norm).sqrt()
    }

    fn check<T: Real>(tol: f64) {
        let mut seed = 0;
        for &n in &[1, 3] {
            for &c in &[1, 3, 5, 13] {
                for &(r, stride, pad) in &[
                    (1, 1, 0),
                    (1, 2, 0),
                    (3, 1, 1),
                    (3, 2, 1),
                    (3, 1, 0),
                    (3, 1, 2),
                    (5, 1, 1),
                    (7, 2, 3),
                    (7, 1, 3),
                ] {
                    seed += 1;
                    let k = [4, 16, 19][seed as usize % 3];
                    let sh = ConvShape {
                        n,
                        h: 7,
                        w: 6,
                        c,
                        k,
                        r,
                        s: r,
                        stride,
                        pad,
                    };
                    let x = random::<T>(n * 7 * 6 * c, seed);
                    let w = random::<T>(k * r * r * c, seed + 100);
                    let dy = random::<T>(sh.pixels() * k, seed + 200);
                    let (y_want, dx_want, dw_want) = naive(&sh, &x, &w, &dy);
                    let mut y = random::<T>(y_want.len(), 1);
                    let mut dx = random::<T>(x.len(), 2);
                    let mut dw = random::<T>(w.len(), 3);
                    conv2d_forward(&sh, &x, &w, &mut y);
                    conv2d_backward_input(&sh, &dy, &w, &mut dx);
                    conv2d_backward_weight(&sh, &x, &dy, &mut dw);
                    for (name, e) in [
                        ("y", rel_err(&y, &y_want)),
                        ("dx", rel_err(&dx, &dx_want)),
                        ("dw", rel_err(&dw, &dw_want)),
                    ] {
                        assert!(e < tol, "{sh:?}: {name} rel err {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn conv_f32_matches_naive() {
        check::<f32>(1e-5);
    }

    #[test]
    fn conv_f64_matches_naive() {
        check::<f64>(1e-12);
    }

    #[test]
    fn transpose_moves_every_value_once() {
        for &(rows, cols) in &[(1, 1), (3, 70), (33, 5), (64, 96), (37, 41)] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut dst = random::<f32>(rows * cols, 1);
            transpose(&src, rows, cols, &mut dst);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        dst[j * rows + i],
                        src[i * cols + j],
                        "{rows}×{cols} ({i},{j})"
                    );
                }
            }
        }
    }

    /// Big enough for several forward blocks and weight-gradient chunks.
    #[test]
    fn conv_large_batch_matches_naive() {
        // 19×19 images: the input gradient's implicit form (grids of 2·FWD_BLOCK rows and more);
        // 70 channels: a window deeper than FWD_DEPTH, whose forward blocks (here 336 pixels:
        // one whole, one of 39) each hold several im2col chunks.
        for (n, hw, c, k) in [(9, 19, 6, 10), (15, 5, 70, 21)] {
            let sh = ConvShape {
                n,
                h: hw,
                w: hw,
                c,
                k,
                r: 3,
                s: 3,
                stride: 1,
                pad: 1,
            };
            let x = random::<f32>(sh.n * sh.h * sh.w * sh.c, 1);
            let w = random::<f32>(sh.k * sh.rsc(), 2);
            let dy = random::<f32>(sh.pixels() * sh.k, 3);
            let (y_want, dx_want, dw_want) = naive(&sh, &x, &w, &dy);
            let mut y = vec![0.0; y_want.len()];
            let mut dx = vec![0.0; x.len()];
            let mut dw = vec![0.0; w.len()];
            conv2d_forward(&sh, &x, &w, &mut y);
            conv2d_backward_input(&sh, &dy, &w, &mut dx);
            conv2d_backward_weight(&sh, &x, &dy, &mut dw);
            assert!(rel_err(&y, &y_want) < 1e-5, "{sh:?}: y");
            assert!(rel_err(&dx, &dx_want) < 1e-5, "{sh:?}: dx");
            assert!(rel_err(&dw, &dw_want) < 1e-5, "{sh:?}: dw");
        }
    }

    /// The tiled implicit forward with every microkernel this processor runs (and the portable
    /// one in f64), on odd sizes: K a multiple of the tile's columns and not (a padded Wᵀ),
    /// windows of 1, 3 and 5, padding 0 to 2, grids whose last tile runs past the image.
    #[test]
    fn fused_forward_matches_naive_with_every_kernel() {
        use crate::device::cpu::isa::Isa;
        let mut seed = 500;
        for &(n, h, w, c, k, r, pad) in &[
            (3, 7, 6, 1, 16, 3, 1),
            (2, 9, 11, 3, 19, 3, 1),
            (1, 5, 8, 8, 32, 3, 0),
            (2, 6, 5, 5, 4, 5, 2),
            (3, 4, 7, 13, 16, 1, 0),
            (1, 13, 10, 7, 33, 3, 2),
        ] {
            seed += 1;
            let sh = ConvShape {
                n,
                h,
                w,
                c,
                k,
                r,
                s: r,
                stride: 1,
                pad,
            };
            let x = random::<f32>(n * h * w * c, seed);
            let wgt = random::<f32>(k * sh.rsc(), seed + 100);
            let (y_want, _, _) = naive(&sh, &x, &wgt, &vec![0.0; sh.pixels() * k]);
            let mut wt = vec![0.0; wgt.len()];
            transpose(&wgt, k, sh.rsc(), &mut wt);
            for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
                let mut y = random::<f32>(y_want.len(), 1);
                let kernel = super::super::gemm::kernel_f32(isa, k);
                assert!(fused_forward(kernel, &sh, &x, &wt, &mut y), "{sh:?}");
                let e = rel_err(&y, &y_want);
                assert!(e < 1e-5, "{} {sh:?}: rel err {e}", isa.name());
            }
            let x = random::<f64>(x.len(), seed);
            let wgt = random::<f64>(wgt.len(), seed + 100);
            let (y_want, _, _) = naive(&sh, &x, &wgt, &vec![0.0; sh.pixels() * k]);
            let mut wt = vec![0.0; wgt.len()];
            transpose(&wgt, k, sh.rsc(), &mut wt);
            let mut y = random::<f64>(y_want.len(), 1);
            assert!(fused_forward(f64::microkernel(k), &sh, &x, &wt, &mut y));
            assert!(rel_err(&y, &y_want) < 1e-12, "f64 {sh:?}");
        }
        // A window too deep for Wᵀ's panel to stay in L1 is left to im2col, y untouched.
        let sh = ConvShape {
            n: 1,
            h: 4,
            w: 4,
            c: 64,
            k: 16,
            r: 3,
            s: 3,
            stride: 1,
            pad: 1,
        };
        let mut y = vec![7.0f32; sh.pixels() * sh.k];
        let (x, wt) = (vec![1.0; 16 * 64], vec![1.0; 16 * sh.rsc()]);
        assert!(!fused_forward(f32::microkernel(16), &sh, &x, &wt, &mut y));
        assert!(y.iter().all(|&v| v == 7.0));
    }
}
