//! Intel AMX (Advanced Matrix Extensions): eight 1 KiB tile registers and a unit that multiplies
//! them, one `tdpbf16ps` being C[16×16 f32] += A[16×32 bf16]·B[32×16 bf16], 8,192 multiply-adds
//! that 16 AVX-512 FMAs would take 32 instructions to do in f32. Rust has no stable intrinsics
//! for it, so the instructions are written as inline assembly (no code the compiler emits uses
//! the tile registers, so their contents last from one `asm!` block to the next).
//!
//! Operands live in memory as whole tiles of 16 rows × 64 bytes, each 1 KiB contiguous:
//! - an A tile holds 16 rows of C by 32 depths, row-major;
//! - a B tile holds 32 depths by 16 columns of C as 16 rows of depth pairs: row t is
//!   (B[2t, 0], B[2t+1, 0], B[2t, 1], B[2t+1, 1], ...), the layout `tdpbf16ps` reads.

use std::arch::asm;
use std::sync::OnceLock;

/// Depth pairs (two bf16 values in a u32) per tile.
pub const TILE: usize = 16 * 16;

/// Whether this processor has AMX tiles with bf16 and Linux lets this process use them; the
/// first call asks Linux for the tiles' 8 KiB of register state (ARCH_REQ_XCOMP_PERM).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| has_amx_bf16() && os_grants_tiles())
}

/// CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
fn has_amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 is read only where it exists.
    let both = (1 << 22) | (1 << 24);
    __cpuid(0).eax >= 7 && __cpuid_count(7, 0).edx & both == both
}

#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a permission; it changes nothing else in the process.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// The LDTILECFG operand: palette 1, every tile register 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Configures this thread's tiles (each thread has its own); `release` undoes it.
///
/// # Safety
/// `available()` must be true.
pub unsafe fn configure() {
    let mut cfg = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
}

/// Returns the tiles to their initial state, so that the OS need not save them.
///
/// # Safety
/// `available()` must be true.
pub unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// One step of a `product`: A tiles at a0 (rows 0–15) and a1 (rows 16–31), B tiles at b0
/// (columns 0–15) and b1 (columns 16–31, read only when NB = 2). A's rows are `a_stride` bytes
/// apart; B tiles are packed (64-byte rows).
#[derive(Clone, Copy)]
pub struct Step {
    pub a0: *const u16,
    pub a1: *const u16,
    pub b0: *const u32,
    pub b1: *const u32,
}

/// C (32 rows × 16·NB columns of f32 at c, row stride `ldc` floats) = Σ over `steps` of A·B,
/// plus C's own values if `accumulate`.
///
/// # Safety
/// The tiles must be `configure`d on this thread; every step's pointers must hold whole tiles
/// (16 rows of 64 bytes, A's `a_stride` bytes apart), and c the 32 rows of 16·NB floats.
pub unsafe fn product<const NB: usize>(
    steps: impl Iterator<Item = Step>,
    a_stride: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // B tiles' row stride in bytes.
    let s = 64usize;
    // C's tile (i, j) starts at row 16i, column 16j; its row stride in bytes.
    let (c0, c1, c2, c3) = (c, c.add(16), c.add(16 * ldc), c.add(16 * ldc + 16));
    let ldc = 4 * ldc;
    match (accumulate, NB) {
        (false, _) => asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        ),
        (true, 2) => asm!(
            "tileloadd tmm0, [{c0} + {ldc}*1]",
            "tileloadd tmm1, [{c1} + {ldc}*1]",
            "tileloadd tmm2, [{c2} + {ldc}*1]",
            "tileloadd tmm3, [{c3} + {ldc}*1]",
            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
            ldc = in(reg) ldc, options(nostack, readonly),
        ),
        (true, _) => asm!(
            "tileloadd tmm0, [{c0} + {ldc}*1]",
            "tileloadd tmm2, [{c2} + {ldc}*1]",
            c0 = in(reg) c0, c2 = in(reg) c2, ldc = in(reg) ldc, options(nostack, readonly),
        ),
    }
    for Step { a0, a1, b0, b1 } in steps {
        if NB == 2 {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) a_stride, s = in(reg) s, options(nostack, readonly),
            );
        } else {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                sa = in(reg) a_stride, s = in(reg) s, options(nostack, readonly),
            );
        }
    }
    if NB == 2 {
        asm!(
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c1} + {ldc}*1], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c3} + {ldc}*1], tmm3",
            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
            ldc = in(reg) ldc, options(nostack),
        );
    } else {
        asm!(
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c2} + {ldc}*1], tmm2",
            c0 = in(reg) c0, c2 = in(reg) c2, ldc = in(reg) ldc, options(nostack),
        );
    }
}
