//! Shared by the kernel tests: the devices under test, random inputs, and the error measure.
#![allow(dead_code)] // each test binary uses its own subset

use simclr::device::cuda::{Elem, Gpu, Schedule};
use std::path::PathBuf;
use std::sync::Once;

/// A per-test temporary directory, removed when the test ends.
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(test: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("simclr-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }

    /// Writes `bytes` to `name` (creating parent directories); returns its path.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIMCLR_TEST_DEVICES=cuda (scripts/gpu_suite.sh): the real GPU alone, no emulator (CI runs
/// that), and no GPU is then a failure rather than a skip.
pub fn cuda_only() -> bool {
    std::env::var("SIMCLR_TEST_DEVICES").is_ok_and(|v| v == "cuda")
}

/// The emulator under every schedule (a missing barrier shows under one order or another; the
/// kernels' tests are small enough to run four times), plus the real GPU when one is present;
/// without one, says so once.
pub fn gpus() -> Vec<(String, Gpu)> {
    gpus_under(&Schedule::ALL)
}

/// As `gpus`, with the emulator under the round-robin schedule alone: for tests of whole
/// networks or large sizes, whose kernels the kernel tests already run under every schedule.
pub fn gpus_one_schedule() -> Vec<(String, Gpu)> {
    gpus_under(&[Schedule::Rr])
}

fn gpus_under(schedules: &[Schedule]) -> Vec<(String, Gpu)> {
    let schedules = if cuda_only() { &[] } else { schedules };
    let mut gpus: Vec<(String, Gpu)> = schedules
        .iter()
        .map(|&s| (format!("emu:{}", s.name()), Gpu::emu(s)))
        .collect();
    match Gpu::cuda(0) {
        Ok(gpu) => gpus.push((gpu.name().to_string(), gpu)),
        Err(e) if cuda_only() => panic!("SIMCLR_TEST_DEVICES=cuda but no cuda device: {e}"),
        Err(e) => {
            static SKIP: Once = Once::new();
            SKIP.call_once(|| eprintln!("skipping the cuda device: {e}"));
        }
    }
    gpus
}

/// Uniform values in [-1, 1), seeded (never zeros: a kernel that writes nothing must fail).
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = simclr::rng::Rng::new(seed);
    (0..len).map(|_| rng.range(-1.0, 1.0) as f32).collect()
}

/// ‖got − want‖ / ‖want‖ (or the absolute error when want is all zeros).
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        diff += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// The values rounded to bf16 (nearest even) and back: the inputs a bf16 kernel really sees,
/// from which its f32 reference is computed.
pub fn round_bf16(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect()
}

/// The values a buffer of `elem` holds after uploading `values`: the values themselves, or
/// rounded to bf16.
pub fn as_stored(elem: Elem, values: Vec<f32>) -> Vec<f32> {
    match elem {
        Elem::F32 => values,
        Elem::Bf16 => round_bf16(&values),
    }
}

/// The tolerance for an activation output stored as `elem`: f32's own, or 1e-2 for bf16, whose
/// outputs are rounded to bf16 (~4e-3 relative) against an f32 reference on the same
/// bf16-rounded inputs.
pub fn tolerance(elem: Elem, f32_tolerance: f64) -> f64 {
    match elem {
        Elem::F32 => f32_tolerance,
        Elem::Bf16 => 1e-2,
    }
}
