//! Devices the ops run on. Only `cpu` exists so far; the CUDA device (hand-written kernels
//! driven through the same ops) plugs in here.

pub mod cpu;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
}

impl Device {
    /// Parses `--device`. `auto` picks the best device present and says why in one line.
    pub fn select(name: &str) -> Result<(Device, String)> {
        match name {
            "cpu" => Ok((Device::Cpu, "device: cpu (as requested)".into())),
            "auto" => Ok((
                Device::Cpu,
                "device: cpu (auto: this build has no GPU backend yet)".into(),
            )),
            _ => Err(Error::Config(format!(
                "--device {name}: unknown device (expected cpu or auto)"
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
        }
    }
}
