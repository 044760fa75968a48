//! Row-wise L2 normalisation of projections before NT-Xent.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::tensor::Tensor;

pub fn l2_normalize(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    assert_eq!(
        xv.shape.len(),
        2,
        "l2_normalize: expected [rows, d], got {:?}",
        xv.shape
    );
    let (z, inv_norm) = backend::of(xv).l2_normalize_forward(xv);
    g.push(z, L2Normalize { x, inv_norm })
}

struct L2Normalize {
    x: Var,
    /// 1/‖x‖ of each row.
    inv_norm: Tensor,
}

impl Backward for L2Normalize {
    fn backward(&self, v: &Values, dz: Tensor) -> Vec<(Var, Tensor)> {
        let dx = backend::of(&dz).l2_normalize_backward(v.out(), &self.inv_norm, &dz);
        vec![(self.x, dx)]
    }
}
