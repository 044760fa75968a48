//! Optimisers (LARS for pretraining, SGD with Nesterov momentum for fine-tuning and
//! distillation by default) and the learning-rate schedule.

pub mod schedule;

use crate::backend::{self, StepParams, Update};
use crate::nn::params::{Kind, ParamStore};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Lars,
    Sgd,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lars" => Ok(OptimizerKind::Lars),
            "sgd" => Ok(OptimizerKind::Sgd),
            _ => Err(format!("unknown optimizer {s} (expected lars or sgd)")),
        }
    }
}

pub struct Optimizer {
    pub kind: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    /// LARS trust coefficient η.
    pub eta: f64,
    velocity: Vec<Option<Tensor>>,
}

impl Optimizer {
    /// The velocity of every trained parameter of `store` is allocated here, on the
    /// parameter's device, so that the first training step already has the full memory
    /// footprint (on a GPU, later steps then take everything from the caching allocator).
    pub fn new(kind: OptimizerKind, weight_decay: f64, store: &ParamStore) -> Optimizer {
        let velocity = store
            .params
            .iter()
            .map(|p| (p.kind != Kind::Stat).then(|| p.value.zeros_like()))
            .collect();
        Optimizer {
            kind,
            momentum: 0.9,
            weight_decay,
            eta: 0.001,
            velocity,
        }
    }

    /// The velocity of each trained parameter, by parameter index (for checkpoints).
    pub fn velocity(&self) -> impl Iterator<Item = (usize, &Tensor)> {
        self.velocity
            .iter()
            .enumerate()
            .filter_map(|(id, v)| v.as_ref().map(|v| (id, v)))
    }

    /// Restores velocities saved by a checkpoint, onto each parameter's device.
    pub fn restore(&mut self, store: &ParamStore, velocity: Vec<(usize, Tensor)>) {
        for (id, v) in velocity {
            self.velocity[id] = Some(v.to_device(&store.params[id].value.device()));
        }
    }

    /// One update of every parameter that has a gradient, in one backend call (a few
    /// launches on a GPU). Weight decay and LARS's layer-wise adaptation apply to conv/dense
    /// kernels only, never to BN parameters or biases (as the official implementation excludes
    /// them).
    pub fn step(&mut self, store: &mut ParamStore, grads: &[(usize, Tensor)], lr: f64) {
        let Some((_, first)) = grads.first() else {
            return;
        };
        let backend = backend::of(first);
        let mut grad_of: Vec<Option<&Tensor>> = vec![None; store.params.len()];
        for (id, g) in grads {
            grad_of[*id] = Some(g);
        }
        let mut updates: Vec<Update> = store
            .params
            .iter_mut()
            .zip(&mut self.velocity)
            .zip(grad_of)
            .filter_map(|((param, v), g)| {
                let g = g?;
                debug_assert_ne!(param.kind, Kind::Stat);
                let v = v
                    .as_mut()
                    .expect("a gradient for a parameter the optimiser does not train");
                let adapt = param.kind == Kind::Weight;
                Some(Update {
                    w: &mut param.value,
                    g,
                    v,
                    weight_decay: if adapt { self.weight_decay } else { 0.0 },
                    adapt,
                })
            })
            .collect();
        let p = StepParams {
            lr,
            momentum: self.momentum,
            eta: self.eta,
        };
        match self.kind {
            OptimizerKind::Lars => backend.lars_step(&mut updates, p),
            OptimizerKind::Sgd => backend.sgd_step(&mut updates, p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn store() -> ParamStore {
        let mut s = ParamStore::default();
        s.add(
            "w".into(),
            Tensor::from_vec(&[2], vec![3.0f64, 4.0]),
            Kind::Weight,
        );
        s.add(
            "b".into(),
            Tensor::from_vec(&[2], vec![3.0f64, 4.0]),
            Kind::Bias,
        );
        s.add("z".into(), Tensor::zeros(&[2], DType::F64), Kind::Weight);
        s
    }

    #[test]
    fn lars_trust_ratio_and_exclusions() {
        let mut s = store();
        let g = Tensor::from_vec(&[2], vec![0.6f64, 0.8]);
        let grads: Vec<(usize, Tensor)> = (0..3).map(|i| (i, g.clone())).collect();
        let mut opt = Optimizer::new(OptimizerKind::Lars, 0.0, &s);
        opt.step(&mut s, &grads, 2.0);
        // ‖w‖ = 5, ‖g‖ = 1: trust = 0.001·5, step = 2·0.005·g.
        let w = s.params[0].value.to_f64_vec();
        assert!(
            (w[0] - (3.0 - 0.01 * 0.6)).abs() < 1e-12 && (w[1] - (4.0 - 0.01 * 0.8)).abs() < 1e-12
        );
        // Biases and BN parameters: no adaptation, plain momentum step lr·g.
        let b = s.params[1].value.to_f64_vec();
        assert!((b[0] - (3.0 - 1.2)).abs() < 1e-12);
        // A zero weight norm gives trust 1.
        let z = s.params[2].value.to_f64_vec();
        assert!((z[0] + 1.2).abs() < 1e-12);
        // Second step: momentum 0.9 carries the first velocity.
        opt.step(&mut s, &grads[1..2], 2.0);
        let b = s.params[1].value.to_f64_vec();
        assert!((b[0] - (3.0 - 1.2 - (0.9 * 1.2 + 1.2))).abs() < 1e-12);
    }

    #[test]
    fn weight_decay_only_on_weights_and_nesterov_sgd() {
        let mut s = store();
        let zero = Tensor::zeros(&[2], DType::F64);
        let grads: Vec<(usize, Tensor)> = (0..2).map(|i| (i, zero.clone())).collect();
        let mut opt = Optimizer::new(OptimizerKind::Sgd, 0.1, &s);
        opt.step(&mut s, &grads, 1.0);
        // w: g = 0.1·w, v = g, Nesterov step = g + 0.9·v = 1.9·0.1·w.
        let w = s.params[0].value.to_f64_vec();
        assert!((w[0] - 3.0 * (1.0 - 0.19)).abs() < 1e-12);
        assert_eq!(s.params[1].value.to_f64_vec(), vec![3.0, 4.0]);
    }
}
