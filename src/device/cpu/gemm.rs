//! Hand-written GEMM, the workhorse behind every conv and linear layer.
//!
//! The classic Goto/BLIS scheme. B is first copied ("packed") into panels of NR columns, each
//! stored depth by depth, zero-padded at the edge. C is then cut into MC×NC tiles, one rayon
//! task each. A task walks k in KC-deep slabs; for each slab it packs its rows of A into
//! panels of MR rows the same way, then runs the register-tile microkernel over every MR×NR
//! block, which streams both panels linearly and keeps its block of C in registers for the
//! whole slab: 6×16 f32 = 12 AVX2 registers, each loaded B vector feeds 6 FMAs.
//!
//! Determinism: every element of C is owned by exactly one task and summed over k in the same
//! order no matter how many threads run, so results are bit-identical run to run.

use super::real::Real;
use rayon::prelude::*;

/// Rows of the register tile.
pub const MR: usize = 6;
/// Columns of the register tile (two 8-wide AVX2 vectors of f32).
pub const NR: usize = 16;
/// Depth of a slab: an A panel (MR×KC) plus a B panel (KC×NR) stay in L1.
const KC: usize = 256;
/// Rows of C per task: the packed A slab (MC×KC, 96 KiB in f32) stays in L2.
const MC: usize = 96;
/// Columns of C per task (a multiple of NR).
const NC: usize = 256;

/// C[MR×NR] = A·B (+ C if accumulate) for packed panels of depth kc: A is kc×MR (k-major),
/// B is kc×NR, C has row stride ldc. Raw pointers because tasks write disjoint parts of one C.
pub type Microkernel<T> =
    unsafe fn(kc: usize, a: *const T, b: *const T, c: *mut T, ldc: usize, accumulate: bool);

/// C[m×n] = A[m×k]·B[k×n] (+ C if accumulate). A's element (i,p) is a[i*a_rs + p*a_cs],
/// B's element (p,j) is b[p*b_rs + j*b_cs] (so transposes are just strides); C is row-major
/// with row stride ldc.
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
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= ldc && c.len() >= (m - 1) * ldc + n,
        "gemm: C too small"
    );
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc)
                .take(m)
                .for_each(|row| row[..n].fill(T::zero()));
        }
        return;
    }
    assert!(
        a.len() > (m - 1) * a_rs + (k - 1) * a_cs,
        "gemm: A too small"
    );
    assert!(
        b.len() > (k - 1) * b_rs + (n - 1) * b_cs,
        "gemm: B too small"
    );

    // Pack all of B once, shared by every tile; panel q (columns q*NR..) starts at q*NR*k.
    // B is packed as the rows of Bᵀ: "row" j, depth p is b[j*b_cs + p*b_rs].
    let mut b_pack = Scratch::new(n.div_ceil(NR) * NR * k);
    b_pack
        .par_chunks_mut(NC * k)
        .enumerate()
        .for_each(|(g, dst)| {
            let j0 = g * NC;
            let bt = Strided {
                data: &b[j0 * b_cs..],
                rs: b_cs,
                ps: b_rs,
            };
            pack::<T, NR>(dst, &bt, 0, NC.min(n - j0), k);
        });

    let kernel = T::microkernel();
    let tiles_n = n.div_ceil(NC);
    let c_ptr = SendPtr(c.as_mut_ptr());
    (0..m.div_ceil(MC) * tiles_n).into_par_iter().for_each(|t| {
        let (i0, j0) = ((t / tiles_n) * MC, (t % tiles_n) * NC);
        let a = Strided {
            data: &a[i0 * a_rs..],
            rs: a_rs,
            ps: a_cs,
        };
        let tile = Tile {
            mb: MC.min(m - i0),
            nb: NC.min(n - j0),
            k,
        };
        // SAFETY: the tile (i0.., j0..) lies inside C (asserted above) and no other task
        // touches it, so the writes through this pointer never race or alias.
        let c = unsafe { c_ptr.get().add(i0 * ldc + j0) };
        unsafe { gemm_tile(kernel, &tile, &a, &b_pack[j0 * k..], c, ldc, accumulate) };
    });
}

/// A scratch buffer of `len` elements, recycled through a per-thread pool so that hot loops
/// don't pay for fresh allocations (large ones are mmapped: page faults on every use).
/// Its contents are unspecified: every user overwrites it completely before reading.
pub struct Scratch<T: Real>(Vec<T>);

impl<T: Real> Scratch<T> {
    pub fn new(len: usize) -> Self {
        // Take a free buffer that is big enough, else the last one (it will grow). A nested
        // task on this thread may hold a buffer meanwhile: it just takes another.
        let mut v = T::scratch_pool().with(|pool| {
            let mut pool = pool.borrow_mut();
            match pool.iter().position(|v| v.capacity() >= len) {
                Some(i) => pool.swap_remove(i),
                None => pool.pop().unwrap_or_default(),
            }
        });
        if v.len() < len {
            v.resize(len, T::zero());
        }
        v.truncate(len);
        Scratch(v)
    }
}

impl<T: Real> Drop for Scratch<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        T::scratch_pool().with(|p| p.borrow_mut().push(v));
    }
}

impl<T: Real> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Real> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

/// A raw pointer that may cross threads; used only for disjoint tiles of C.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    // A method, so closures capture the whole Send wrapper rather than the bare pointer field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// A strided view: "row" r, depth p is data[r*rs + p*ps].
struct Strided<'a, T> {
    data: &'a [T],
    rs: usize,
    ps: usize,
}

/// Extent of one task's tile of C, and the full depth k.
struct Tile {
    mb: usize,
    nb: usize,
    k: usize,
}

/// Computes one mb×nb tile of C (c points at its top-left element) from A and the packed B
/// panels of its columns.
unsafe fn gemm_tile<T: Real>(
    kernel: Microkernel<T>,
    t: &Tile,
    a: &Strided<T>,
    b_pack: &[T],
    c: *mut T,
    ldc: usize,
    accumulate: bool,
) {
    let mut a_pack = Scratch::new(t.mb.div_ceil(MR) * MR * KC.min(t.k));
    let mut edge = [T::zero(); MR * NR];
    for p0 in (0..t.k).step_by(KC) {
        let kc = KC.min(t.k - p0);
        pack::<T, MR>(&mut a_pack, a, p0, t.mb, kc);
        // Later slabs add onto what the earlier ones wrote.
        let acc = accumulate || p0 > 0;
        for j in (0..t.nb).step_by(NR) {
            let bp = b_pack[j * t.k + p0 * NR..].as_ptr();
            for i in (0..t.mb).step_by(MR) {
                let ap = a_pack[i * kc..].as_ptr();
                let cp = c.add(i * ldc + j);
                let (mr, nr) = (MR.min(t.mb - i), NR.min(t.nb - j));
                if mr == MR && nr == NR {
                    kernel(kc, ap, bp, cp, ldc, acc);
                } else {
                    // Partial block at the edge of C: compute a full one aside, copy what fits.
                    kernel(kc, ap, bp, edge.as_mut_ptr(), NR, false);
                    for ii in 0..mr {
                        for jj in 0..nr {
                            let dst = cp.add(ii * ldc + jj);
                            let v = edge[ii * NR + jj];
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

/// Portable microkernel: f64 always, f32 on CPUs without AVX2+FMA.
///
/// # Safety
/// a must hold kc*MR values, b kc*NR, and c an MR×NR block with row stride ldc.
pub unsafe fn kernel_generic<T: Real>(
    kc: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
) {
    let (a, b) = (
        std::slice::from_raw_parts(a, kc * MR),
        std::slice::from_raw_parts(b, kc * NR),
    );
    let mut acc = [[T::zero(); NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &ai) in acc.iter_mut().zip(ap) {
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

/// The f32 microkernel for this CPU: AVX2+FMA when available, else the portable one.
pub fn microkernel_f32() -> Microkernel<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return kernel_avx2;
    }
    kernel_generic::<f32>
}

/// 6×16 f32 tile in 12 ymm accumulators; per depth: 2 B loads, 6 A broadcasts, 12 FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let (ap, bp) = (a.add(p * MR), b.add(p * NR));
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm256_broadcast_ss(&*ap.add(i));
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            let dst = c.add(i * ldc + 8 * h);
            let v = if accumulate {
                _mm256_add_ps(v, _mm256_loadu_ps(dst))
            } else {
                v
            };
            _mm256_storeu_ps(dst, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64 → uniform values in [-1, 1).
    fn random<T: Real>(len: usize, seed: u64) -> Vec<T> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                T::from_f64((s >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
            })
            .collect()
    }

    fn check<T: Real>(tol: f64) {
        let sizes = [1, 7, 33, 100, 257];
        let mut case = 0u64;
        for &m in &sizes {
            for &n in &sizes {
                for &k in &sizes {
                    case += 1;
                    let (ta, tb, accumulate) = (case % 2 == 1, case % 3 == 1, case % 4 < 2);
                    let a = random::<T>(m * k, case);
                    let b = random::<T>(k * n, case + 1000);
                    // A stored row-major m×k or transposed (k×m); same for B.
                    let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
                    let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
                    let ldc = n + 3;
                    let c0 = random::<T>(m * ldc, case + 2000);
                    let mut c = c0.clone();
                    gemm(
                        m, n, k, &a, a_rs, a_cs, &b, b_rs, b_cs, &mut c, ldc, accumulate,
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
                                want += a[i * a_rs + p * a_cs].to_f64()
                                    * b[p * b_rs + j * b_cs].to_f64();
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
                    assert!(
                        rel < tol,
                        "m={m} n={n} k={k} ta={ta} tb={tb}: rel err {rel}"
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_f32_matches_naive() {
        check::<f32>(1e-5);
    }

    #[test]
    fn gemm_f64_matches_naive() {
        check::<f64>(1e-12);
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
