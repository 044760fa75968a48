//! NT-Xent, the contrastive loss of SimCLR, over L2-normalised projections. The backend
//! computes the loss and its gradient together (on a GPU in one fused kernel pair that never
//! writes the 2N×2N similarity matrix); backward scales the gradient by the upstream one.
//!
//! SimCLRv2's memory buffer (MoCo-style) adds the projections of past steps as negatives:
//! `Memory` keeps the last K rows scored, every rank's, and `ntxent_with_memory` scores them
//! as extra columns of every anchor's softmax, with no gradient flowing into them. With a
//! momentum encoder (`ntxent_with_keys`), the memory keeps that encoder's rows instead.

use crate::autograd::{Graph, Var};
use crate::backend;
use crate::dist::Comm;
use crate::ops::loss::Loss;
use crate::tensor::Tensor;

/// NT-Xent over L2-normalised rows [2N, d] (rows i and i+N are a positive pair), with the
/// rows of every rank of the graph's `comm` as negatives (`dist`).
pub fn ntxent(g: &mut Graph, z: Var, temperature: f64) -> Var {
    scored(g, z, None, temperature).0
}

/// The memory buffer: the newest `size` rows NT-Xent scored (every rank's, so every rank holds
/// the same), detached, first to last from the newest step to the oldest.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub size: usize,
    /// [≤ size, d]; none before the first step.
    pub rows: Option<Tensor>,
}

/// `ntxent` with the memory's rows as extra negatives; then the memory takes this step's rows
/// of every rank in front and drops the oldest beyond its size (first in, first out).
pub fn ntxent_with_memory(g: &mut Graph, z: Var, memory: &mut Memory, temperature: f64) -> Var {
    let (loss, candidates) = scored(g, z, memory.rows.as_ref(), temperature);
    memory.rows = Some(candidates.first_rows(memory.size));
    loss
}

/// `ntxent_with_memory` whose memory takes, of every rank in front, `keys` (a momentum
/// encoder's rows of this batch, MoCo's keys) instead of the rows scored.
pub fn ntxent_with_keys(
    g: &mut Graph,
    z: Var,
    memory: &mut Memory,
    keys: &Tensor,
    temperature: f64,
) -> Var {
    let (loss, _) = scored(g, z, memory.rows.as_ref(), temperature);
    let rows = stacked(keys, memory.rows.as_ref(), &*g.comm);
    memory.rows = Some(rows.first_rows(memory.size));
    loss
}

/// Every rank's `rows`, rank by rank, then `memory`'s (in the rows' type): the order of
/// NT-Xent's candidates.
fn stacked(rows: &Tensor, memory: Option<&Tensor>, comm: &dyn Comm) -> Tensor {
    let d = rows.shape[1];
    let memory = memory.map(|m| backend::of(rows).cast(m, rows.dtype()));
    let Some(gpu) = rows.gpu() else {
        let mut all = comm.all_gather(rows.as_slice::<f32>());
        if let Some(m) = &memory {
            all.extend_from_slice(m.as_slice());
        }
        return Tensor::from_vec(&[all.len() / d, d], all);
    };
    let gathered = (comm.size() > 1).then(|| comm.all_gather_device(gpu, rows.buffer()));
    let ranks = gathered.as_ref().unwrap_or(rows.buffer());
    let mut parts = vec![(ranks, ranks.len())];
    parts.extend(memory.as_ref().map(|m| (m.buffer(), m.numel())));
    let all = gpu.concat(&parts);
    Tensor::from_gpu(&[all.len() / d, d], all)
}

/// The loss of `z` against every rank's rows and `memory`'s (moved to z's device and type),
/// and those candidates, every rank's rows first.
fn scored(g: &mut Graph, z: Var, memory: Option<&Tensor>, temperature: f64) -> (Var, Tensor) {
    let zv = g.value(z);
    assert!(
        zv.shape.len() == 2 && zv.shape[0] >= 2 && zv.shape[0].is_multiple_of(2),
        "ntxent: expected [2N, d] rows, got {:?}",
        zv.shape
    );
    let backend = backend::of(zv);
    let memory = memory.map(|m| {
        assert!(
            m.shape.len() == 2 && m.shape[1] == zv.shape[1],
            "ntxent: memory rows {:?} do not match z {:?}",
            m.shape,
            zv.shape
        );
        backend.cast(&m.to_device(&zv.device()), zv.dtype())
    });
    let (loss, grad, candidates) = backend.ntxent(zv, memory.as_ref(), temperature, &*g.comm);
    (g.push(loss, Loss { x: z, grad }), candidates)
}
