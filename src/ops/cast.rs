//! Casts between element types: the seams of mixed precision, where bf16 activations enter the
//! network (the images) and where they leave it (its features; its outputs in the f32 losses).
//! The gradient goes back through the reverse cast.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::tensor::{DType, Tensor};

/// `x` as `dtype`; `x` itself (no node) when it already is.
pub fn cast(g: &mut Graph, x: Var, dtype: DType) -> Var {
    let xv = g.value(x);
    let from = xv.dtype();
    if from == dtype {
        return x;
    }
    let y = backend::of(xv).cast(xv, dtype);
    g.push(y, Cast { x, from })
}

/// `x` in f32 when it is bf16, else itself (f32, or the gradient checks' f64): what the losses
/// compute in.
pub fn widen(g: &mut Graph, x: Var) -> Var {
    match g.value(x).dtype() {
        DType::BF16 => cast(g, x, DType::F32),
        _ => x,
    }
}

struct Cast {
    x: Var,
    /// The input's element type, which its gradient takes.
    from: DType,
}

impl Backward for Cast {
    fn backward(&self, _: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        vec![(self.x, backend::of(&dy).cast(&dy, self.from))]
    }
}
