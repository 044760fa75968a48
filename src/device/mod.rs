//! Devices the ops run on: `cpu` (rayon; the reference every kernel is checked against) and a
//! GPU — the real one through the driver (`cuda`), or the same kernels on the CPU emulator
//! (`emu`). Both GPU kinds are a `cuda::Gpu`, so everything above the runtime is shared.

pub mod cpu;
pub mod cuda;

use crate::error::{Error, Result};
use cuda::{Gpu, Schedule};

#[derive(Clone, Debug, PartialEq)]
pub enum Device {
    Cpu,
    Gpu(Gpu),
}

impl Device {
    /// Parses `--device auto|cpu|cuda[:N]|emu[:SCHEDULE]`; returns the device and one line
    /// saying what was chosen and why.
    pub fn select(name: &str) -> Result<(Device, String)> {
        // This rank's GPU: its rank on the machine, among the GPUs it sees (one, when the
        // launcher gives each rank its own through CUDA_VISIBLE_DEVICES).
        let rank_gpu =
            || crate::dist::local_rank() % cuda::driver::device_count().unwrap_or(1).max(1);
        let gpu_error = |e: cuda::GpuError| Error::Config(format!("--device {name}: {e}"));
        // Every device runs CPU kernels (the GPU ones on the host side): a bad SIMCLR_CPU_ISA
        // is reported here, before any of them.
        let isa = cpu::isa::selected()?.name();
        match name {
            "cpu" => Ok((
                Device::Cpu,
                format!("device: cpu (as requested), {isa} kernels"),
            )),
            "auto" => Ok(match Gpu::cuda(rank_gpu()) {
                Ok(gpu) => {
                    let why = format!("device: {} (auto: a GPU is present)", gpu.name());
                    (Device::Gpu(gpu), why)
                }
                Err(e) => (
                    Device::Cpu,
                    format!("device: cpu (auto: {e}), {isa} kernels"),
                ),
            }),
            // One process per GPU: a rank takes its own (`dist::local_rank`).
            "cuda" => {
                let gpu = Gpu::cuda(rank_gpu()).map_err(gpu_error)?;
                Ok((Device::Gpu(gpu.clone()), format!("device: {}", gpu.name())))
            }
            _ if name.starts_with("cuda:") => {
                let ordinal = name[5..].parse().map_err(|_| {
                    Error::Config(format!("--device {name}: expected cuda:<GPU number>"))
                })?;
                let gpu = Gpu::cuda(ordinal).map_err(gpu_error)?;
                Ok((Device::Gpu(gpu.clone()), format!("device: {}", gpu.name())))
            }
            _ if name == "emu" || name.starts_with("emu:") => {
                let schedule = match name.strip_prefix("emu:") {
                    None => std::env::var("SIMCLR_EMU_SCHEDULE").unwrap_or_else(|_| "rr".into()),
                    Some(s) => s.to_string(),
                };
                let schedule = Schedule::parse(&schedule).ok_or_else(|| {
                    Error::Config(format!(
                        "--device {name}: unknown emulator schedule {schedule} (expected rr, \
                         warp, rr-reverse or warp-reverse)"
                    ))
                })?;
                let gpu = Gpu::emu(schedule);
                let why = format!(
                    "device: {} (the CUDA kernels on the CPU emulator: slow, for testing)",
                    gpu.name()
                );
                Ok((Device::Gpu(gpu), why))
            }
            _ => Err(Error::Config(format!(
                "--device {name}: unknown device (expected auto, cpu, cuda, cuda:N or emu)"
            ))),
        }
    }

    /// The GPU, on a GPU device.
    pub fn gpu(&self) -> Option<&Gpu> {
        match self {
            Device::Gpu(gpu) => Some(gpu),
            Device::Cpu => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Gpu(gpu) => gpu.name().into(),
        }
    }

    /// Waits for queued GPU work and reports the first GPU error since the last check.
    pub fn check(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(gpu) => gpu.check().map_err(|e| Error::Gpu(e.to_string())),
        }
    }
}
