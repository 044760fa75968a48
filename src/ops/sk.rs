//! The two ops of a selective-kernel convolution (SimCLRv2's `sk_conv2d`). Its 3×3 conv makes
//! two streams as one [N, H, W, 2C] tensor (stream 0 in channels [0, C), stream 1 in [C, 2C));
//! `sk_pool` gives the global descriptor the mixing logits are computed from (by 1×1 convs),
//! and `sk_combine` mixes the two streams with a softmax over each channel's pair of logits.

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::tensor::Tensor;

/// (n, c) of a two-stream tensor [N, H, W, 2C]; c is one stream's channel count.
fn two_streams(op: &str, shape: &[usize]) -> (usize, usize) {
    assert!(
        shape.len() == 4 && shape[3].is_multiple_of(2),
        "{op}: expected two streams [N, H, W, 2C], got {shape:?}"
    );
    (shape[0], shape[3] / 2)
}

/// x [N, H, W, 2C] → [N, 1, 1, C]: the mean over H, W of the two streams' sum.
pub fn sk_pool(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    two_streams("sk_pool", &xv.shape);
    let y = backend::of(xv).sk_pool_forward(xv);
    g.push(y, SkPool { x })
}

struct SkPool {
    x: Var,
}

impl Backward for SkPool {
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let dx = backend::of(&dy).sk_pool_backward(&v.get(self.x).shape, &dy);
        vec![(self.x, dx)]
    }
}

/// x [N, H, W, 2C], logits [N, 1, 1, 2C] → y [N, H, W, C] with
/// y[.., c] = a·x[.., c] + b·x[.., C + c], (a, b) = softmax(logits[n, c], logits[n, C + c]).
pub fn sk_combine(g: &mut Graph, x: Var, logits: Var) -> Var {
    let (xv, lv) = (g.value(x), g.value(logits));
    let (n, c) = two_streams("sk_combine", &xv.shape);
    assert_eq!(
        lv.shape,
        [n, 1, 1, 2 * c],
        "sk_combine: logits do not match the streams {:?}",
        xv.shape
    );
    let y = backend::of(xv).sk_combine_forward(xv, lv);
    g.push(y, SkCombine { x, logits })
}

struct SkCombine {
    x: Var,
    logits: Var,
}

impl Backward for SkCombine {
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let (x, logits) = (v.get(self.x), v.get(self.logits));
        let (dx, dlogits) = backend::of(&dy).sk_combine_backward(x, logits, &dy);
        vec![(self.x, dx), (self.logits, dlogits)]
    }
}
