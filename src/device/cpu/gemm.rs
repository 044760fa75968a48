//! Hand-written GEMM, the workhorse behind every conv and linear layer.
//!
//! The Goto/BLIS scheme, minus most of the packing. C is cut into MC×NC tiles, one rayon task
//! each. A task walks k in KC-deep slabs and runs the register-tile microkernel over every
//! MR×NR block, which keeps its block of C in registers for the whole slab. The kernel reads A
//! through its strides and B through its row stride in place: at the small K and N of the convs
//! here, copying them into panels cost as much as the arithmetic. Only what it cannot read in
//! place, or not well, is packed (zero-padded panels of MR rows / NR columns stored depth by
//! depth): the partial panels at the edges, B when its columns are not contiguous, and A in
//! wide tiles when its depth is strided or its rows collide in L1 (`gemm_tile`). A B panel whose
//! rows are not adjacent is copied contiguous once per slab, for all the row blocks using it.
//!
//! The microkernel, and with it the tile MR×NR, is chosen at run time for the processor
//! (isa.rs): 14×32 in AVX-512 registers (14×16 for gemms of at most 16 columns), 6×16 in AVX2
//! registers or in portable Rust.
//!
//! Determinism: every element of C is owned by exactly one task and summed over k in the same
//! order no matter how many threads run, so results are bit-identical run to run.

use super::gemm_bf16;
use super::isa::Isa;
use super::real::Real;
use rayon::prelude::*;

/// Depth of a slab: an A panel (MR×KC) plus a B panel (KC×NR) stay in L1.
const KC: usize = 256;
/// Columns of C per task (a multiple of every NR).
const NC: usize = 256;

/// C[MR×NR] = A·B (+ C if accumulate) over depth kc: A's element (i,p) is a[i*a_rs + p*a_ps]
/// (a packed panel has a_rs = 1, a_ps = MR), B's row p is the NR values at b[p*ldb..], C has
/// row stride ldc. Raw pointers because tasks write disjoint parts of one C.
pub type Microkernel<T> = unsafe fn(
    kc: usize,
    a: *const T,
    a_rs: usize,
    a_ps: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
);

/// A microkernel and the register tile (MR×NR) it computes.
#[derive(Clone, Copy)]
pub enum Kernel<T> {
    /// 6×16: AVX2 (12 ymm accumulators) and the portable kernel.
    Tile6x16(Microkernel<T>),
    /// 14×32: AVX-512 (28 zmm accumulators; each pair of B loads feeds 28 FMAs).
    Tile14x32(Microkernel<T>),
    /// 14×16: AVX-512 for narrow gemms (the width-16 ResNet-8's convolutions), where the
    /// 32-column tile would compute half padding.
    Tile14x16(Microkernel<T>),
}

/// The f32 kernel of an instruction set the processor supports (`Isa::is_supported`) for a
/// gemm of `n` columns.
pub fn kernel_f32(isa: Isa, n: usize) -> Kernel<f32> {
    assert!(isa.is_supported(), "gemm: {} unsupported here", isa.name());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if n <= 16 => Kernel::Tile14x16(kernel_avx512_narrow),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Kernel::Tile14x32(kernel_avx512),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernel::Tile6x16(kernel_avx2),
        _ => Kernel::Tile6x16(kernel_generic::<f32, 6, 16>),
    }
}

/// C[m×n] = A[m×k]·B[k×n] (+ C if accumulate). A's element (i,p) is a[i*a_rs + p*a_cs],
/// B's element (p,j) is b[p*b_rs + j*b_cs] (so transposes are just strides); C is row-major
/// with row stride ldc. Runs the microkernel of this process's instruction set, or in f32
/// under `--precision bf16` the bf16 products of gemm_bf16.rs.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    if gemm_bf16::products() {
        if let (Some(a), Some(b), Some(c)) = (T::as_f32(a), T::as_f32(b), T::as_f32_mut(c)) {
            return gemm_bf16::gemm_bf16(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc, accumulate);
        }
    }
    gemm_with(
        T::microkernel(n),
        m,
        n,
        k,
        a,
        a_rs,
        a_cs,
        b,
        b_rs,
        b_cs,
        c,
        ldc,
        accumulate,
    );
}

/// `gemm` with a given microkernel: the tests run every one the processor supports.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with<T: Real>(
    kernel: Kernel<T>,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    check_operands(
        m,
        n,
        k,
        (a.len(), a_rs, a_cs),
        (b.len(), b_rs, b_cs),
        (c.len(), ldc),
    );
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc)
                .take(m)
                .for_each(|row| row[..n].fill(T::zero()));
        }
        return;
    }
    let (a, bt) = operand_views((a, a_rs, a_cs), (b, b_rs, b_cs));
    let shape = Tile { mb: m, nb: n, k };
    match kernel {
        Kernel::Tile6x16(f) => tiled::<T, 6, 16>(f, &shape, &a, &bt, c, ldc, accumulate),
        Kernel::Tile14x32(f) => tiled::<T, 14, 32>(f, &shape, &a, &bt, c, ldc, accumulate),
        Kernel::Tile14x16(f) => tiled::<T, 14, 16>(f, &shape, &a, &bt, c, ldc, accumulate),
    }
}

/// Panics unless C (m×n, given as its length and row stride) and, when k > 0, A and B (their
/// lengths and strides, as `gemm` takes them) hold what their strides say; m and n are > 0.
pub(super) fn check_operands(
    m: usize,
    n: usize,
    k: usize,
    (a, a_rs, a_cs): (usize, usize, usize),
    (b, b_rs, b_cs): (usize, usize, usize),
    (c, ldc): (usize, usize),
) {
    assert!(n <= ldc && c >= (m - 1) * ldc + n, "gemm: C too small");
    if k > 0 {
        assert!(a > (m - 1) * a_rs + (k - 1) * a_cs, "gemm: A too small");
        assert!(b > (k - 1) * b_rs + (n - 1) * b_cs, "gemm: B too small");
    }
}

/// The whole product with an MR×NR microkernel, the C (m×n, `s`) cut into MC×NC tasks.
fn tiled<T: Real, const MR: usize, const NR: usize>(
    kernel: Microkernel<T>,
    s: &Tile,
    a: &Strided<T>,
    bt: &Strided<T>,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    let (m, n, k) = (s.mb, s.nb, s.k);
    // Rows of C per task (MC): the packed A slab, MC×KC, stays in L2 (96 KiB in f32 for the
    // 6-row tile, 224 KiB for the 14-row one).
    let mc = 16 * MR;
    // A row-major B is read in place by gemms of at most this many rows: each of its panels is
    // then streamed by only a few row panels, too few to repay a copy. Larger gemms pack it (a
    // panel read in place spans kc rows of B, which at power-of-two strides collide in L1).
    let in_place_rows = 4 * mc;

    // Pack once, shared by every tile, the B panels the kernel cannot read in place: all of
    // them if B's columns are strided, else just a partial last one. Panel q of the packed
    // columns starts at q*NR*k, stored as the rows of Bᵀ.
    let n_full = if bt.rs == 1 && m <= in_place_rows {
        n / NR * NR
    } else {
        0
    };
    let mut b_pack = Scratch::new((n - n_full).div_ceil(NR) * NR * k);
    b_pack
        .par_chunks_mut(NC * k)
        .enumerate()
        .for_each(|(g, dst)| {
            let j0 = n_full + g * NC;
            let cols = Strided {
                data: &bt.data[j0 * bt.rs..],
                ..*bt
            };
            pack::<T, NR>(dst, &cols, 0, NC.min(n - j0), k);
        });

    let b = PanelsB {
        b: bt.data,
        b_rs: bt.ps,
        n_full,
        pack: &b_pack,
        k,
    };
    let tiles_n = n.div_ceil(NC);
    let c_ptr = SendPtr(c.as_mut_ptr());
    (0..m.div_ceil(mc) * tiles_n).into_par_iter().for_each(|t| {
        let (i0, j0) = ((t / tiles_n) * mc, (t % tiles_n) * NC);
        let a = Strided {
            data: &a.data[i0 * a.rs..],
            ..*a
        };
        let tile = Tile {
            mb: mc.min(m - i0),
            nb: NC.min(n - j0),
            k,
        };
        // SAFETY: the tile (i0.., j0..) lies inside C (asserted in gemm_with) and no other
        // task touches it, so the writes through this pointer never race or alias.
        let c = unsafe { c_ptr.get().add(i0 * ldc + j0) };
        unsafe { gemm_tile::<T, MR, NR>(kernel, &tile, &a, &b, j0, c, ldc, accumulate) };
    });
}

/// A scratch buffer of `len` elements, recycled through a per-thread pool so that hot loops
/// don't pay for fresh allocations (large ones are mmapped: page faults on every use).
/// Its contents are unspecified: every user overwrites it completely before reading.
pub struct Scratch<T: Real> {
    buf: Vec<T>,
    len: usize,
}

impl<T: Real> Scratch<T> {
    pub fn new(len: usize) -> Self {
        // Take a free buffer that is big enough, else the last one (it will grow). A nested
        // task on this thread may hold a buffer meanwhile: it just takes another. Buffers are
        // never shrunk, so only memory new to a buffer is ever zero-filled.
        let mut buf = T::scratch_pool().with(|pool| {
            let mut pool = pool.borrow_mut();
            match pool.iter().position(|v| v.len() >= len) {
                Some(i) => pool.swap_remove(i),
                None => pool.pop().unwrap_or_default(),
            }
        });
        if buf.len() < len {
            buf.resize(len, T::zero());
        }
        Scratch { buf, len }
    }
}

impl<T: Real> Drop for Scratch<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.buf);
        T::scratch_pool().with(|p| p.borrow_mut().push(v));
    }
}

impl<T: Real> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: Real> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

/// A raw pointer that may cross threads; used only for disjoint tiles of C.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    // A method, so closures capture the whole Send wrapper rather than the bare pointer field.
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// A strided view: "row" r, depth p is data[r*rs + p*ps].
pub(super) struct Strided<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub ps: usize,
}

/// A gemm's operands as the views its packers read: A (row i, depth p) and Bᵀ ("row" j is B's
/// column j, depth p at b[j*b_cs + p*b_rs]).
pub(super) fn operand_views<'a, T>(
    (a, a_rs, a_cs): (&'a [T], usize, usize),
    (b, b_rs, b_cs): (&'a [T], usize, usize),
) -> (Strided<'a, T>, Strided<'a, T>) {
    let a = Strided {
        data: a,
        rs: a_rs,
        ps: a_cs,
    };
    let bt = Strided {
        data: b,
        rs: b_cs,
        ps: b_rs,
    };
    (a, bt)
}

/// Extent of a block of C (a task's tile, or the whole of C), and the full depth k.
struct Tile {
    mb: usize,
    nb: usize,
    k: usize,
}

/// Where the microkernel finds B: columns below n_full in place (b_cs = 1), the rest packed.
struct PanelsB<'a, T> {
    b: &'a [T],
    b_rs: usize,
    n_full: usize,
    pack: &'a [T],
    k: usize,
}

impl<T> PanelsB<'_, T> {
    /// The NR-column panel starting at column j: pointer to its row 0 and its row stride.
    fn panel<const NR: usize>(&self, j: usize) -> (*const T, usize) {
        if j < self.n_full {
            (self.b[j..].as_ptr(), self.b_rs)
        } else {
            (self.pack[(j - self.n_full) * self.k..].as_ptr(), NR)
        }
    }
}

/// Computes one mb×nb tile of C (c points at its top-left element, column j0 of C).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_tile<T: Real, const MR: usize, const NR: usize>(
    kernel: Microkernel<T>,
    t: &Tile,
    a: &Strided<T>,
    b: &PanelsB<T>,
    j0: usize,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
) {
    // Rows 0..full are read in place, the others packed (zero-padded to whole panels). A tile
    // of a few panels of B reads A in place: packing would cost more than it saves. Wider tiles
    // do too when each row's depth is contiguous and the 6-row tile's rows do not share L1
    // sets (a row stride that is not a multiple of 4 KiB): packing is a scalar gather, and
    // skipping it made ResNet-18's 3×3 convs of 128–512 channels 6–27% faster on Zen 3
    // (im2col rows of 4.5–18 KiB). At strides of 4 KiB (a 1×1 conv of 1,024 channels) all
    // six rows of a slab fall in the same L1 sets, and the 14-row tile's rows fill an 8-way
    // set even at 2 KiB (not measured), so those are packed.
    let spread = MR <= 8 && a.ps == 1 && !(a.rs * std::mem::size_of::<T>()).is_multiple_of(4096);
    let full = if t.nb <= 4 * NR || spread {
        t.mb / MR * MR
    } else {
        0
    };
    let mut a_pack = Scratch::new((t.mb - full).div_ceil(MR) * MR * KC.min(t.k));
    // A panel of B read in place whose rows are not adjacent (ldb > NR) is first copied here,
    // kc×NR contiguous, for all the row blocks that use it: its rows, ldb apart, fall in a few
    // L1 sets when ldb is a multiple of 1 KiB (256 or 512 channels), so read in place each
    // microkernel call fetched them again from L2 (measured on Zen 3, one core: a 96×64×256
    // gemm 63 → 83 GFLOP/s; with B already contiguous, 96×16×256 ran at 93).
    let mut b_copy = Scratch::new(KC.min(t.k) * NR);
    let mut edge = [[T::zero(); NR]; MR];
    for p0 in (0..t.k).step_by(KC) {
        let kc = KC.min(t.k - p0);
        if full < t.mb {
            let rest = Strided {
                data: &a.data[full * a.rs..],
                ..*a
            };
            pack::<T, MR>(&mut a_pack, &rest, p0, t.mb - full, kc);
        }
        // Later slabs add onto what the earlier ones wrote.
        let acc = accumulate || p0 > 0;
        for j in (0..t.nb).step_by(NR) {
            let (bp, ldb) = b.panel::<NR>(j0 + j);
            let mut bp = bp.add(p0 * ldb);
            let ldb = if ldb > NR {
                // SAFETY: the panel's kc rows of NR values, ldb apart, lie in B (checked in
                // gemm_with).
                for (p, dst) in b_copy.chunks_exact_mut(NR).take(kc).enumerate() {
                    dst.copy_from_slice(std::slice::from_raw_parts(bp.add(p * ldb), NR));
                }
                bp = b_copy.as_ptr();
                NR
            } else {
                ldb
            };
            for i in (0..t.mb).step_by(MR) {
                let (ap, a_rs, a_ps) = if i < full {
                    (a.data[i * a.rs + p0 * a.ps..].as_ptr(), a.rs, a.ps)
                } else {
                    (a_pack[(i - full) * kc..].as_ptr(), 1, MR)
                };
                let cp = c.add(i * ldc + j);
                let (mr, nr) = (MR.min(t.mb - i), NR.min(t.nb - j));
                if mr == MR && nr == NR {
                    kernel(kc, ap, a_rs, a_ps, bp, ldb, cp, ldc, acc);
                } else {
                    // Partial block at the edge of C: compute a full one aside, copy what fits.
                    kernel(
                        kc,
                        ap,
                        a_rs,
                        a_ps,
                        bp,
                        ldb,
                        edge.as_mut_ptr().cast(),
                        NR,
                        false,
                    );
                    for (ii, row) in edge.iter().enumerate().take(mr) {
                        for (jj, &v) in row.iter().enumerate().take(nr) {
                            let dst = cp.add(ii * ldc + jj);
                            *dst = if acc { *dst + v } else { v };
                        }
                    }
                }
            }
        }
    }
}

/// Packs rows 0..rows, depths p0..p0+kc of `src` into panels of W rows: panel after panel,
/// each kc×W with the W row values of one depth adjacent. Rows past the end are zero.
/// W is a constant so the inner copies compile to a few vector moves.
fn pack<T: Real, const W: usize>(
    dst: &mut [T],
    src: &Strided<T>,
    p0: usize,
    rows: usize,
    kc: usize,
) {
    let (data, rs, ps) = (&src.data[p0 * src.ps..], src.rs, src.ps);
    // When the rows of one depth are contiguous (e.g. a row-major B), copy the full panels
    // depth by depth, so the source is read sequentially rather than with a stride of ps.
    let full = if rs == 1 { rows / W } else { 0 };
    if full > 0 {
        for p in 0..kc {
            for (q, chunk) in data[p * ps..][..full * W].chunks_exact(W).enumerate() {
                dst[(q * kc + p) * W..][..W].copy_from_slice(chunk);
            }
        }
    }
    // Other panels: gather each row along its depth; missing rows become zeros.
    for (r0, panel) in (full * W..rows)
        .step_by(W)
        .zip(dst[full * kc * W..].chunks_exact_mut(kc * W))
    {
        for r in 0..W {
            if r0 + r < rows {
                let row = &data[(r0 + r) * rs..][..(kc - 1) * ps + 1];
                for (p, out) in panel.chunks_exact_mut(W).enumerate() {
                    out[r] = row[p * ps];
                }
            } else {
                panel.chunks_exact_mut(W).for_each(|out| out[r] = T::zero());
            }
        }
    }
}

/// Portable MR×NR microkernel, for f64 and for f32 on processors without AVX2+FMA: plain
/// loops over a tile of accumulators, which the compiler vectorises for the target's baseline.
///
/// # Safety
/// a, b and c must hold the MR×kc, kc×NR and MR×NR blocks that their strides describe.
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel_generic<T: Real, const MR: usize, const NR: usize>(
    kc: usize,
    a: *const T,
    a_rs: usize,
    a_ps: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[T::zero(); NR]; MR];
    for p in 0..kc {
        let bp = std::slice::from_raw_parts(b.add(p * ldb), NR);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = *a.add(i * a_rs + p * a_ps);
            for (x, &bj) in row.iter_mut().zip(bp) {
                *x += ai * bj;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let dst = c.add(i * ldc + j);
            *dst = if accumulate { *dst + v } else { v };
        }
    }
}

/// The f32 vector operations of the x86 microkernels, for one register width: the AVX2 and the
/// AVX-512 kernel are one body (`kernel_x86`) over these. Every method is inlined into the
/// `#[target_feature]` kernel that calls it, so each compiles to one instruction.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    /// f32 values per register.
    const WIDTH: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn splat(p: *const f32) -> Self;
    /// a·b + c in one rounding.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn store(p: *mut f32, v: Self);
}

/// `Lanes` for a register type from its intrinsics, named in the order of the trait's methods.
#[cfg(target_arch = "x86_64")]
macro_rules! lanes {
    ($v:ident, $width:literal, $zero:ident, $load:ident, $splat:ident, $fmadd:ident, $add:ident, $store:ident) => {
        impl Lanes for std::arch::x86_64::$v {
            const WIDTH: usize = $width;
            #[inline(always)]
            unsafe fn zero() -> Self {
                std::arch::x86_64::$zero()
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                std::arch::x86_64::$load(p)
            }
            #[inline(always)]
            unsafe fn splat(p: *const f32) -> Self {
                std::arch::x86_64::$splat(*p)
            }
            #[inline(always)]
            unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
                std::arch::x86_64::$fmadd(a, b, c)
            }
            #[inline(always)]
            unsafe fn add(a: Self, b: Self) -> Self {
                std::arch::x86_64::$add(a, b)
            }
            #[inline(always)]
            unsafe fn store(p: *mut f32, v: Self) {
                std::arch::x86_64::$store(p, v)
            }
        }
    };
}
#[rustfmt::skip]
#[cfg(target_arch = "x86_64")]
lanes!(__m256, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps);
#[rustfmt::skip]
#[cfg(target_arch = "x86_64")]
lanes!(__m512, 16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps);

/// MR×(NV·WIDTH) f32 tile in NV·MR vector accumulators; per depth: NV B loads, MR A
/// broadcasts, NV·MR FMAs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_x86<V: Lanes, const MR: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_ps: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[V::zero(); NV]; MR];
    for p in 0..kc {
        let (ap, bp) = (a.add(p * a_ps), b.add(p * ldb));
        let bv: [V; NV] = std::array::from_fn(|h| V::load(bp.add(h * V::WIDTH)));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = V::splat(ap.add(i * a_rs));
            for (x, &bh) in row.iter_mut().zip(&bv) {
                *x = V::fmadd(ai, bh, *x);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            let dst = c.add(i * ldc + V::WIDTH * h);
            V::store(
                dst,
                if accumulate {
                    V::add(v, V::load(dst))
                } else {
                    v
                },
            );
        }
    }
}

/// A `Microkernel` named `$name`: `kernel_x86` over `$v` registers, MR = `$mr`, NV = `$nv`,
/// compiled for `$feature` (called only where the processor has it, isa.rs).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernel {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $v:ident, $mr:literal, $nv:literal) => {
        $(#[$doc])*
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            kc: usize,
            a: *const f32,
            a_rs: usize,
            a_ps: usize,
            b: *const f32,
            ldb: usize,
            c: *mut f32,
            ldc: usize,
            accumulate: bool,
        ) {
            use std::arch::x86_64::$v;
            kernel_x86::<$v, $mr, $nv>(kc, a, a_rs, a_ps, b, ldb, c, ldc, accumulate)
        }
    };
}
#[cfg(target_arch = "x86_64")]
x86_kernel!(
    /// 6×16 in 12 ymm registers.
    kernel_avx2, "avx2,fma", __m256, 6, 2
);
#[cfg(target_arch = "x86_64")]
x86_kernel!(
    /// 14×32 in 28 zmm registers (of 32; the broadcasts fold into the FMAs).
    kernel_avx512, "avx512f", __m512, 14, 2
);
#[cfg(target_arch = "x86_64")]
x86_kernel!(
    /// 14×16 in 14 zmm registers: one B load and 14 FMAs per depth.
    kernel_avx512_narrow, "avx512f", __m512, 14, 1
);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::device::cpu::random_vec as random;

    /// One product to check: A (m×k) stored row-major or transposed (ta), the same for B (tb),
    /// and C (m×n, row stride ldc, padding between rows) before it.
    pub(crate) struct Case<T> {
        pub m: usize,
        pub n: usize,
        pub k: usize,
        pub a: Vec<T>,
        pub a_rs: usize,
        pub a_cs: usize,
        pub b: Vec<T>,
        pub b_rs: usize,
        pub b_cs: usize,
        pub c0: Vec<T>,
        pub ldc: usize,
        pub accumulate: bool,
        /// "m=.. n=.. k=.. ta=.. tb=..", for messages.
        pub name: String,
    }

    /// Odd sizes of 1 to 257 on every side, fresh random operands, both layouts of A and B,
    /// with and without accumulation.
    pub(crate) fn cases<T: Real>() -> impl Iterator<Item = Case<T>> {
        let sizes = [1, 7, 33, 100, 257];
        let shapes = sizes.into_iter().flat_map(move |m| {
            sizes
                .into_iter()
                .flat_map(move |n| sizes.into_iter().map(move |k| (m, n, k)))
        });
        shapes.zip(1u64..).map(|((m, n, k), case)| {
            let (ta, tb, accumulate) = (case % 2 == 1, case % 3 == 1, case % 4 < 2);
            let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
            let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
            let ldc = n + 3;
            Case {
                m,
                n,
                k,
                a: random::<T>(m * k, case),
                a_rs,
                a_cs,
                b: random::<T>(k * n, case + 1000),
                b_rs,
                b_cs,
                c0: random::<T>(m * ldc, case + 2000),
                ldc,
                accumulate,
                name: format!("m={m} n={n} k={k} ta={ta} tb={tb}"),
            }
        })
    }

    fn check<T: Real>(kernel: Kernel<T>, tol: f64) {
        for Case {
            m,
            n,
            k,
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            b_cs,
            c0,
            ldc,
            accumulate,
            name,
        } in cases::<T>()
        {
            let mut c = c0.clone();
            gemm_with(
                kernel, m, n, k, &a, a_rs, a_cs, &b, b_rs, b_cs, &mut c, ldc, accumulate,
            );
            let (mut err, mut norm) = (0.0, 0.0);
            for i in 0..m {
                for j in 0..n {
                    let mut want = if accumulate {
                        c0[i * ldc + j].to_f64()
                    } else {
                        0.0
                    };
                    for p in 0..k {
                        want += a[i * a_rs + p * a_cs].to_f64() * b[p * b_rs + j * b_cs].to_f64();
                    }
                    err += (c[i * ldc + j].to_f64() - want).powi(2);
                    norm += want * want;
                }
                // The padding between rows must be untouched.
                assert_eq!(
                    &c[i * ldc + n..(i + 1) * ldc],
                    &c0[i * ldc + n..(i + 1) * ldc]
                );
            }
            let rel = (err / norm.max(1e-300)).sqrt();
            assert!(rel < tol, "{name}: rel err {rel}");
        }
    }

    #[test]
    fn gemm_f32_matches_naive() {
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            for n in [16, 17] {
                check::<f32>(kernel_f32(isa, n), 1e-5);
            }
        }
    }

    #[test]
    fn narrow_gemms_take_a_16_wide_tile() {
        let tile = |n| match f32::microkernel(n) {
            Kernel::Tile6x16(_) | Kernel::Tile14x16(_) => 16,
            Kernel::Tile14x32(_) => 32,
        };
        let wide = if crate::device::cpu::isa::active() == Isa::Avx512 {
            32
        } else {
            16
        };
        assert_eq!(
            (tile(1), tile(16), tile(17), tile(512)),
            (16, 16, wide, wide)
        );
    }

    #[test]
    fn gemm_f64_matches_naive() {
        check::<f64>(f64::microkernel(1), 1e-12);
    }

    #[test]
    fn gemm_is_deterministic() {
        let (m, n, k) = (300, 200, 600);
        let a = random::<f32>(m * k, 1);
        let b = random::<f32>(k * n, 2);
        let mut c1 = vec![0.0; m * n];
        let mut c2 = vec![0.0; m * n];
        gemm(m, n, k, &a, k, 1, &b, n, 1, &mut c1, n, false);
        gemm(m, n, k, &a, k, 1, &b, n, 1, &mut c2, n, false);
        assert_eq!(c1, c2);
    }
}
