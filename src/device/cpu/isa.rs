//! The instruction set the CPU kernels use, picked once per process at run time: the binary is
//! built for baseline x86-64 (or any other target), so it cannot assume what the processor has.
//! The best one present is used: AVX-512F, else AVX2+FMA, else plain Rust that the compiler
//! vectorises for the baseline (SSE2 on x86-64, NEON on aarch64).
//! `SIMCLR_CPU_ISA=avx512|avx2|portable` forces one, to compare them or to test the others.

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// The environment variable that forces an instruction set.
pub const ENV: &str = "SIMCLR_CPU_ISA";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: the gemm's 14×32 f32 tile in 28 zmm registers.
    Avx512,
    /// AVX2 and FMA: the 6×16 tile in 12 ymm registers.
    Avx2,
    /// Portable Rust, the 6×16 tile left to the compiler's vectoriser.
    Portable,
}

impl Isa {
    /// Best first: the order in which they are tried.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The name `SIMCLR_CPU_ISA` takes, printed in run headers.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this processor runs it.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => false,
            Isa::Portable => true,
        }
    }
}

/// The instruction set for a `SIMCLR_CPU_ISA` value (None or empty: the best supported one).
fn choose(
    forced: Option<&str>,
    supported: impl Fn(Isa) -> bool,
) -> std::result::Result<Isa, String> {
    let names = || {
        let have: Vec<_> = Isa::ALL
            .into_iter()
            .filter(|&i| supported(i))
            .map(Isa::name)
            .collect();
        have.join(", ")
    };
    match forced.filter(|s| !s.is_empty()) {
        None => Ok(Isa::ALL
            .into_iter()
            .find(|&i| supported(i))
            .unwrap_or(Isa::Portable)),
        Some(value) => match Isa::ALL.into_iter().find(|i| i.name() == value) {
            None => Err(format!(
                "{ENV}={value}: unknown instruction set (expected avx512, avx2 or portable)"
            )),
            Some(isa) if !supported(isa) => Err(format!(
                "{ENV}={value}: this processor lacks it (it runs: {})",
                names()
            )),
            Some(isa) => Ok(isa),
        },
    }
}

/// The instruction set of this process, from `SIMCLR_CPU_ISA` and the processor; decided on
/// the first call. An unknown or unsupported forced value is a one-line error: the devices
/// check it when they are created, before any kernel runs.
pub fn selected() -> Result<Isa> {
    static CHOICE: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
    CHOICE
        .get_or_init(|| choose(std::env::var(ENV).ok().as_deref(), Isa::is_supported))
        .clone()
        .map_err(Error::Config)
}

/// The instruction set the kernels run with.
///
/// # Panics
/// On a bad `SIMCLR_CPU_ISA` when no device was created first (a device reports it as an error).
pub fn active() -> Isa {
    selected().unwrap_or_else(|e| panic!("{e}"))
}

/// The name of the instruction set the kernels run with ("avx512", "avx2" or "portable"), for
/// run headers and reports.
pub fn name() -> &'static str {
    active().name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_supported_set_is_chosen() {
        assert_eq!(choose(None, |_| true), Ok(Isa::Avx512));
        assert_eq!(choose(Some(""), |i| i != Isa::Avx512), Ok(Isa::Avx2));
        assert_eq!(choose(None, |i| i == Isa::Portable), Ok(Isa::Portable));
    }

    #[test]
    fn a_forced_set_is_used_when_supported() {
        for isa in Isa::ALL {
            assert_eq!(choose(Some(isa.name()), |_| true), Ok(isa));
        }
    }

    #[test]
    fn a_bad_forced_set_is_a_one_line_error() {
        let unknown = choose(Some("sse9"), |_| true).unwrap_err();
        assert_eq!(
            unknown,
            "SIMCLR_CPU_ISA=sse9: unknown instruction set (expected avx512, avx2 or portable)"
        );
        let lacking = choose(Some("avx512"), |i| i != Isa::Avx512).unwrap_err();
        assert_eq!(
            lacking,
            "SIMCLR_CPU_ISA=avx512: this processor lacks it (it runs: avx2, portable)"
        );
    }
}
