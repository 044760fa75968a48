//! ReLU and addition (the residual connection).

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::tensor::Tensor;

pub fn relu(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    let y = backend::of(xv).relu(xv);
    g.push(y, Relu { x })
}

struct Relu {
    x: Var,
}

impl Backward for Relu {
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        vec![(self.x, backend::of(&dy).relu_backward(v.out(), &dy))]
    }
}

pub fn add(g: &mut Graph, a: Var, b: Var) -> Var {
    let (av, bv) = (g.value(a), g.value(b));
    assert_eq!(av.shape, bv.shape, "add: shapes differ");
    let y = backend::of(av).add(av, bv);
    g.push(y, Add { a, b })
}

struct Add {
    a: Var,
    b: Var,
}

impl Backward for Add {
    /// The sum hands its gradient to both inputs: the same tensor, shared.
    fn backward(&self, _: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        vec![(self.a, dy.clone()), (self.b, dy)]
    }
}
