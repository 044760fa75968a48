//! Learning rate: linear warmup then cosine decay to zero, with the base rate scaled by the
//! batch size linearly (lr·B/256) or by its square root (lr·√B), as in the paper.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    Linear,
    Sqrt,
    /// Use --lr as given.
    None,
}

impl std::str::FromStr for LrScaling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(LrScaling::Linear),
            "sqrt" => Ok(LrScaling::Sqrt),
            "none" => Ok(LrScaling::None),
            _ => Err(format!(
                "unknown scaling {s} (expected linear, sqrt or none)"
            )),
        }
    }
}

pub fn scaled_lr(lr: f64, batch: usize, scaling: LrScaling) -> f64 {
    match scaling {
        LrScaling::Linear => lr * batch as f64 / 256.0,
        LrScaling::Sqrt => lr * (batch as f64).sqrt(),
        LrScaling::None => lr,
    }
}

/// The rate at `step` (0-based) of `total` steps, `warmup` of them linear warmup.
pub fn lr_at(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = (total - warmup).max(1);
    let progress = (step - warmup) as f64 / decay_steps as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        assert!((lr_at(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(lr_at(1.0, 99, 10, 100) < 0.001);
        assert_eq!(scaled_lr(0.3, 512, LrScaling::Linear), 0.6);
        assert_eq!(scaled_lr(0.1, 400, LrScaling::Sqrt), 2.0);
    }
}
