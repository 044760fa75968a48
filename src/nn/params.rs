//! The parameter store: every trainable tensor and batch-norm statistic of a model under a
//! stable name (the checkpoint key), with its kind, which decides how optimisers treat it.

use crate::tensor::Tensor;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Conv and dense kernels: weight decay and LARS adaptation apply.
    Weight,
    /// Biases and BN γ/β: trained, but excluded from weight decay and LARS adaptation.
    Bias,
    /// BN running mean/variance: saved, never trained.
    Stat,
}

pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub kind: Kind,
}

#[derive(Default)]
pub struct ParamStore {
    pub params: Vec<Param>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    pub fn add(&mut self, name: String, value: Tensor, kind: Kind) -> usize {
        assert!(
            !self.index.contains_key(&name),
            "duplicate parameter {name}"
        );
        self.index.insert(name.clone(), self.params.len());
        self.params.push(Param { name, value, kind });
        self.params.len() - 1
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn value(&self, id: usize) -> &Tensor {
        &self.params[id].value
    }

    /// The values of two different parameters, to write both (batch norm's running mean and
    /// variance).
    pub fn values_mut(&mut self, a: usize, b: usize) -> (&mut Tensor, &mut Tensor) {
        let [pa, pb] = self
            .params
            .get_disjoint_mut([a, b])
            .expect("two different parameters");
        (&mut pa.value, &mut pb.value)
    }

    /// Number of trained scalars (BN statistics excluded), optionally under a name prefix.
    pub fn count(&self, prefix: &str) -> usize {
        self.params
            .iter()
            .filter(|p| p.kind != Kind::Stat && p.name.starts_with(prefix))
            .map(|p| p.value.numel())
            .sum()
    }
}
