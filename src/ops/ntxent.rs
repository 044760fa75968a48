//! NT-Xent, the contrastive loss of SimCLR, over L2-normalised projections. The backend
//! computes the loss and its gradient together (on a GPU in one fused kernel pair that never
//! writes the 2N×2N similarity matrix); backward scales the gradient by the upstream one.

use crate::autograd::{Graph, Var};
use crate::backend;
use crate::ops::loss::Loss;

/// NT-Xent over L2-normalised rows [2N, d] (rows i and i+N are a positive pair), with the
/// rows of every rank of the graph's `comm` as negatives (`dist`).
pub fn ntxent(g: &mut Graph, z: Var, temperature: f64) -> Var {
    let zv = g.value(z);
    assert!(
        zv.shape.len() == 2 && zv.shape[0] >= 2 && zv.shape[0].is_multiple_of(2),
        "ntxent: expected [2N, d] rows, got {:?}",
        zv.shape
    );
    let (loss, grad) = backend::of(zv).ntxent(zv, temperature, &*g.comm);
    g.push(loss, Loss { x: z, grad })
}
