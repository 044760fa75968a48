//! 2-D convolution without bias (batch norm always follows): x NHWC, w KRSC, y NHWC.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::device::cpu::conv::ConvShape;
use crate::tensor::Tensor;

pub fn conv2d(g: &mut Graph, x: Var, w: Var, stride: usize, pad: usize) -> Var {
    let (xv, wv) = (g.value(x), g.value(w));
    let (xs, ws) = (&xv.shape, &wv.shape);
    assert_eq!(xs.len(), 4, "conv2d input must be NHWC, got {xs:?}");
    assert_eq!(
        ws[3], xs[3],
        "conv2d: weight {ws:?} does not fit input {xs:?}"
    );
    let shape = ConvShape {
        n: xs[0],
        h: xs[1],
        w: xs[2],
        c: xs[3],
        k: ws[0],
        r: ws[1],
        s: ws[2],
        stride,
        pad,
    };
    let y = backend::of(xv).conv_forward(&shape, xv, wv);
    g.push(y, Conv { x, w, shape })
}

struct Conv {
    x: Var,
    w: Var,
    shape: ConvShape,
}

impl Backward for Conv {
    /// The weight gradient, and the input gradient unless x needs none (the images).
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let (x, w) = (v.get(self.x), v.get(self.w));
        let b = backend::of(&dy);
        let mut grads = vec![(self.w, b.conv_backward_weight(&self.shape, x, &dy))];
        if v.wants_grad(self.x) {
            grads.push((self.x, b.conv_backward_input(&self.shape, &dy, w)));
        }
        grads
    }
}
