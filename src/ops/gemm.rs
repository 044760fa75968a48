//! The GEMM family's op: the dense layer y = x·Wᵀ + b with x [B, in], W [out, in] (PyTorch's
//! layout), b [out]. All three products go through the backends' one GEMM (device/cpu/gemm.rs,
//! kernels/gemm.cu); transposes are only strides.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::tensor::Tensor;

pub fn linear(g: &mut Graph, x: Var, w: Var, b: Option<Var>) -> Var {
    let (xv, wv) = (g.value(x), g.value(w));
    assert!(
        xv.shape.len() == 2 && wv.shape[1] == xv.shape[1],
        "linear: weight {:?} does not fit input {:?}",
        wv.shape,
        xv.shape
    );
    let y = backend::of(xv).linear_forward(xv, wv, b.map(|b| g.value(b)));
    g.push(y, Linear { x, w, b })
}

struct Linear {
    x: Var,
    w: Var,
    b: Option<Var>,
}

impl Backward for Linear {
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let (x, w) = (v.get(self.x), v.get(self.w));
        let (dx, dw, db) = backend::of(&dy).linear_backward(x, w, &dy, self.b.is_some());
        let mut grads = vec![(self.x, dx), (self.w, dw)];
        grads.extend(self.b.zip(db));
        grads
    }
}
