//! GEMM on AMX tiles (amx.rs) with bf16 products, `gemm_bf16`'s fast way. A and B are packed
//! into bf16 tiles, zero-padded to whole tiles, and C is cut into MC×NC tasks as in gemm.rs;
//! each task runs 32×32 blocks of C (32×16 for gemms of at most 16 columns) through the tile
//! unit. Packing is most of the cost at the sizes here: rows are converted in AVX-512
//! registers, and of two operands stored k-major the smaller one is transposed.
//!
//! Determinism: each element of C is summed over k in an order fixed by the shape alone.

use super::amx;
use super::gemm::{check_operands, operand_views, SendPtr, Strided};
use super::gemm_bf16::to_bf16;
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of C per task: an even number of 16-row tiles.
const MC: usize = 64;
/// Columns of C per task: an even number of 16-column tiles.
const NC: usize = 256;
/// Depths per tile.
const KT: usize = 32;
/// Gemms of fewer multiply-adds than this run on the calling thread alone.
const SMALL: usize = 1 << 21;

/// dst[i] = to_bf16(src[i]) for the length of the shorter, in AVX-512 registers.
///
/// # Safety
/// The processor must have AVX-512F and BW (every one with AMX does).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn convert(dst: &mut [u16], src: &[f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = to_bf16(x);
    }
}

/// `to_bf16` of 16 values at once (the same bits, NaN included).
///
/// # Safety
/// The processor must have AVX-512F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn to_bf16_x16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let b = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        b,
        _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)),
    ));
    let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet))
}

/// bf16 bits of `lo` and `hi` in one u32, `lo` first in memory: the depth pair a tile row holds.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

thread_local! {
    /// This thread's buffer for packed A tiles, kept between calls (pack_a writes all of it).
    static A_TILES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `gemm_bf16` on AMX tiles.
///
/// # Panics
/// Where AMX is not `available()`, or on operands smaller than their strides say.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn gemm_amx(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        amx::available(),
        "gemm_amx: this processor has no AMX tiles"
    );
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
    let (a, bt) = operand_views((a, a_rs, a_cs), (b, b_rs, b_cs));
    let c_ptr = SendPtr(c.as_mut_ptr());
    // The tiles want A's rows and B's columns contiguous along k. When neither is (both stored
    // k-major, as in a weight gradient), the operand transposed into tiles had better be the
    // smaller one: then compute Cᵀ = Bᵀ·Aᵀ, B's columns as rows.
    if a.rs == 1 && a.ps != 1 && bt.rs == 1 && n < m {
        tiled(n, m, k, &bt, &a, c_ptr, (1, ldc), accumulate);
    } else {
        tiled(m, n, k, &a, &bt, c_ptr, (ldc, 1), accumulate);
    }
}

/// C = A·B (+ C) on AMX tiles, C's element (i, j) at c[i·c_rs + j·c_cs] for (c_rs, c_cs) = `cs`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn tiled(
    m: usize,
    n: usize,
    k: usize,
    a: &Strided<f32>,
    bt: &Strided<f32>,
    c: SendPtr<f32>,
    cs: (usize, usize),
    accumulate: bool,
) {
    let (c_rs, c_cs) = cs;
    let kt = k.div_ceil(KT).max(1);
    // Blocks of 32 columns, or one of 16 for a gemm of at most 16.
    let nb = if n <= 16 { 1 } else { 2 };
    let panels = n.div_ceil(16 * nb) * nb;
    // B, packed once for every task: panel q's depth tile t at (q·kt + t)·TILE.
    let mut b_tiles = vec![0u32; panels * kt * amx::TILE];
    // SAFETY: AMX processors have AVX-512 (asserted with available() above).
    let pack = |(q, dst): (usize, &mut [u32])| unsafe { pack_b(dst, bt, q * 16, n, k) };
    // A small gemm runs on this thread alone: splitting it costs more than it saves (the
    // convolutions call many, from tasks of their own).
    let small = m * n * k < SMALL;
    if small {
        b_tiles
            .chunks_mut(kt * amx::TILE)
            .enumerate()
            .for_each(pack);
    } else {
        b_tiles
            .par_chunks_mut(kt * amx::TILE)
            .enumerate()
            .for_each(pack);
    }
    let b_tiles = &b_tiles;
    let tiles_n = n.div_ceil(NC);
    let tasks = m.div_ceil(MC) * tiles_n;
    let task = |task: usize| {
        let (i0, j0) = ((task / tiles_n) * MC, (task % tiles_n) * NC);
        let (mb, nc) = (MC.min(m - i0), NC.min(n - j0));
        let row_tiles = mb.div_ceil(32) * 2;
        A_TILES.with(|buf| {
            let mut a_tiles = buf.borrow_mut();
            let len = row_tiles * kt * amx::TILE;
            if a_tiles.len() < len {
                a_tiles.resize(len, 0);
            }
            let a_tiles = &mut a_tiles[..len];
            // SAFETY: as for pack_b.
            unsafe { pack_a(a_tiles, a, i0, mb, k) };
            // A partial or transposed block of C is computed here and copied.
            let mut edge = [0f32; 32 * 32];
            // SAFETY: available() was asserted; the tiles hold kt depth tiles for every row
            // and column tile read; a block written in place lies inside C, the edge buffer
            // holds a whole one; the task's part of C lies inside C (asserted in gemm_amx)
            // and no other task writes it.
            unsafe {
                amx::configure();
                for j in (0..nc).step_by(16 * nb) {
                    let q = (j0 + j) / 16;
                    let b0 = b_tiles[q * kt * amx::TILE..].as_ptr();
                    let b1 = b_tiles[(q + nb - 1) * kt * amx::TILE..].as_ptr();
                    let width = 16 * nb;
                    for i in (0..mb).step_by(32) {
                        let r = i / 16;
                        let a0 = a_tiles[r * kt * amx::TILE..].as_ptr();
                        let a1 = a_tiles[(r + 1) * kt * amx::TILE..].as_ptr();
                        let cp = c.get().add((i0 + i) * c_rs + (j0 + j) * c_cs);
                        let (rows, cols) = (32.min(mb - i), width.min(nc - j));
                        let in_place = rows == 32 && cols == width && c_cs == 1;
                        let (dst, ld) = if in_place {
                            (cp, c_rs)
                        } else {
                            for ii in 0..rows {
                                for jj in 0..cols {
                                    edge[ii * width + jj] = *cp.add(ii * c_rs + jj * c_cs);
                                }
                            }
                            (edge.as_mut_ptr(), width)
                        };
                        let steps = (0..kt).map(|t| amx::Step {
                            a0: a0.add(t * amx::TILE).cast(),
                            a1: a1.add(t * amx::TILE).cast(),
                            b0: b0.add(t * amx::TILE),
                            b1: b1.add(t * amx::TILE),
                        });
                        if nb == 2 {
                            amx::product::<2>(steps, 64, dst, ld, accumulate);
                        } else {
                            amx::product::<1>(steps, 64, dst, ld, accumulate);
                        }
                        if !in_place {
                            for ii in 0..rows {
                                for jj in 0..cols {
                                    *cp.add(ii * c_rs + jj * c_cs) = edge[ii * width + jj];
                                }
                            }
                        }
                    }
                }
                amx::release();
            }
        });
    };
    if small {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Packs rows i0..i0+rows of A (all k depths) into whole 16-row tiles, rows past the end and
/// depths past k zero: row tile r's depth tile t at (r·kt + t)·TILE, each row 16 depth pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_a(dst: &mut [u32], a: &Strided<f32>, i0: usize, rows: usize, k: usize) {
    let kt = k.div_ceil(KT).max(1);
    for (r, tiles) in dst.chunks_exact_mut(kt * amx::TILE).enumerate() {
        let live = 16.min(rows.saturating_sub(r * 16));
        for (t, tile) in tiles.chunks_exact_mut(amx::TILE).enumerate() {
            let (p0, depths) = (t * KT, KT.min(k.saturating_sub(t * KT)));
            if depths < KT || live < 16 {
                tile.fill(0);
            }
            if live == 0 {
                continue;
            }
            let src = &a.data[(i0 + r * 16) * a.rs + p0 * a.ps..];
            if a.rs == 1 {
                // A's rows adjacent: each depth pair's 16 values are read together and
                // scattered down the tile's column.
                for pp in 0..depths / 2 {
                    let (lo, hi) = (
                        &src[2 * pp * a.ps..][..live],
                        &src[(2 * pp + 1) * a.ps..][..live],
                    );
                    for (rr, (&x, &y)) in lo.iter().zip(hi).enumerate() {
                        tile[rr * 16 + pp] = pair(x, y);
                    }
                }
                if depths % 2 == 1 {
                    let pp = depths / 2;
                    for (rr, &x) in src[2 * pp * a.ps..][..live].iter().enumerate() {
                        tile[rr * 16 + pp] = pair(x, 0.0);
                    }
                }
            } else {
                for (rr, out) in tile.chunks_exact_mut(16).enumerate().take(live) {
                    let row = &src[rr * a.rs..];
                    if a.ps == 1 {
                        // Depth pairs in memory order are just the row's bf16 values in turn.
                        convert(bytemuck::cast_slice_mut(out), &row[..depths]);
                        continue;
                    } else {
                        for (pp, d) in out.iter_mut().enumerate().take(depths / 2) {
                            *d = pair(row[2 * pp * a.ps], row[(2 * pp + 1) * a.ps]);
                        }
                    }
                    if depths % 2 == 1 {
                        out[depths / 2] = pair(row[(depths - 1) * a.ps], 0.0);
                    }
                }
            }
        }
    }
}

/// Packs columns j0..j0+16 of B, given as Bᵀ (all k depths), into B tiles: depth tile t at t·TILE, its row
/// t' holding, column after column, the pair of depths 2t' and 2t'+1. dst arrives zeroed, so
/// columns past n and depths past k stay zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_b(dst: &mut [u32], bt: &Strided<f32>, j0: usize, n: usize, k: usize) {
    let cols = 16.min(n.saturating_sub(j0));
    if cols == 0 {
        return; // a padding panel
    }
    for (pp, out) in dst.chunks_exact_mut(16).enumerate().take(k / 2) {
        let lo = &bt.data[2 * pp * bt.ps + j0 * bt.rs..];
        let hi = &bt.data[(2 * pp + 1) * bt.ps + j0 * bt.rs..];
        if bt.rs == 1 {
            for (d, (&x, &y)) in out.iter_mut().zip(lo[..cols].iter().zip(&hi[..cols])) {
                *d = pair(x, y);
            }
        } else {
            for (jj, d) in out.iter_mut().enumerate().take(cols) {
                *d = pair(lo[jj * bt.rs], hi[jj * bt.rs]);
            }
        }
    }
    if k % 2 == 1 {
        let lo = &bt.data[(k - 1) * bt.ps + j0 * bt.rs..];
        for (jj, d) in dst[k / 2 * 16..][..cols].iter_mut().enumerate() {
            *d = pair(lo[jj * bt.rs], 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The vector rounding gives `to_bf16`'s bits: on ties, the largest values, infinities,
    /// NaNs and any bit pattern at all.
    #[test]
    fn vector_rounding_matches_the_scalar_one() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            return;
        }
        let special = [
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -0.0,
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
        ];
        let mut rng = Rng::new(7);
        let mut values: Vec<f32> = special.to_vec();
        values.extend((0..4000).map(|_| f32::from_bits(rng.next_u64() as u32)));
        values.resize(values.len().next_multiple_of(16), 0.5);
        for chunk in values.chunks_exact(16) {
            let mut got = [0u16; 16];
            // SAFETY: AVX-512F and BW were detected above.
            unsafe {
                use std::arch::x86_64::*;
                let v = to_bf16_x16(_mm512_loadu_ps(chunk.as_ptr()));
                _mm256_storeu_si256(got.as_mut_ptr().cast(), v);
            }
            let want: Vec<u16> = chunk.iter().map(|&x| to_bf16(x)).collect();
            assert_eq!(got.as_slice(), want.as_slice(), "{chunk:?}");
        }
    }
}
