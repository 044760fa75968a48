//! The autograd tape, in the spirit of micrograd and llm.c: every op appends a node (its
//! backward pass, holding which values it read and what it saved) to a flat list in creation
//! order, and `backward` walks that list in reverse, each node turning its output's gradient
//! into its inputs' gradients, which are accumulated (accumulate, never overwrite: residual
//! connections read one value twice).
//!
//! The tape knows nothing of the ops: each op family in `src/ops/` implements `Backward` for
//! the node it records. Values are shared, not copied: a parameter enters the graph as another
//! reference to the store's tensor, and a gradient that fans out to two inputs is one tensor
//! until one of them accumulates into it. After `backward`, `param_grads` hands back each
//! parameter's gradient with its index in the store.

use crate::backend;
use crate::dist::Comm;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A value in the graph: an index into its list of tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// An op's backward pass, recorded by its forward.
pub trait Backward {
    /// The gradients the op sends to its inputs, given its output's gradient `dy`.
    fn backward(&self, values: &Values, dy: Tensor) -> Vec<(Var, Tensor)>;
}

/// What a backward pass reads: the graph's values, and the output of the op being run.
pub struct Values<'a> {
    values: &'a [Tensor],
    wants_grad: &'a [bool],
    out: Var,
}

impl Values<'_> {
    pub fn get(&self, v: Var) -> &Tensor {
        &self.values[v.0]
    }

    /// Whether `v` needs its gradient (ops whose input gradient is costly skip it when not).
    pub fn wants_grad(&self, v: Var) -> bool {
        self.wants_grad[v.0]
    }

    /// The op's output.
    pub fn out(&self) -> &Tensor {
        &self.values[self.out.0]
    }
}

struct Node {
    op: Box<dyn Backward>,
    out: Var,
}

pub struct Graph {
    values: Vec<Tensor>,
    nodes: Vec<Node>,
    grads: Vec<Option<Tensor>>,
    /// (index in the parameter store, value, the number of nodes before it) of every parameter
    /// read: only nodes pushed after a leaf can read it, so once backward is below that
    /// number the leaf's gradient is final.
    leaves: Vec<(usize, Var, usize)>,
    /// Whether backward computes each value's gradient: not for input batches, so the first
    /// convolution never computes the gradient of the images.
    wants_grad: Vec<bool>,
    /// When false (evaluation), ops compute values but record nothing for backward.
    pub record: bool,
    /// The ranks the batch is split over (`dist`): batch norm's statistics and NT-Xent's
    /// negatives are those of all of them. One process by default.
    pub comm: Arc<dyn Comm>,
}

impl Graph {
    pub fn new(record: bool) -> Graph {
        Graph {
            values: Vec::new(),
            nodes: Vec::new(),
            grads: Vec::new(),
            leaves: Vec::new(),
            wants_grad: Vec::new(),
            record,
            comm: crate::dist::solo(),
        }
    }

    fn add(&mut self, t: Tensor, wants_grad: bool) -> Var {
        self.values.push(t);
        self.wants_grad.push(wants_grad);
        Var(self.values.len() - 1)
    }

    /// A value that needs no gradient (an input batch).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.add(t, false)
    }

    /// An input whose gradient backward computes (the gradient checks differentiate inputs).
    pub fn variable(&mut self, t: Tensor) -> Var {
        self.add(t, true)
    }

    /// Parameter number `id` of its store, whose value is `value`: a leaf whose gradient
    /// `param_grads` returns. The graph shares the value; nothing is copied.
    pub fn param(&mut self, id: usize, value: &Tensor) -> Var {
        let v = self.add(value.clone(), true);
        if self.record {
            self.leaves.push((id, v, self.nodes.len()));
        }
        v
    }

    /// Adds an op's output; its backward is kept only when recording.
    pub fn push(&mut self, t: Tensor, op: impl Backward + 'static) -> Var {
        let out = self.add(t, true);
        if self.record {
            self.nodes.push(Node {
                op: Box::new(op),
                out,
            });
        }
        out
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.values[v.0]
    }

    pub fn grad(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    /// Backpropagates from a scalar `loss` (seeded with dloss/dloss = 1, on its device).
    pub fn backward(&mut self, loss: Var) {
        let seed = self.seed(loss);
        self.backward_from(loss, seed);
    }

    /// Backpropagates from a scalar `loss`, handing each parameter's gradient to `ready` (by
    /// parameter index; zeros for an unused parameter) as soon as no node left can change it:
    /// data parallelism starts averaging it over the ranks while the rest of the backward
    /// runs (`dist::backward`). Ends the graph's use of the parameters, as `param_grads` does.
    pub fn backward_with(&mut self, loss: Var, ready: &mut dyn FnMut(usize, Tensor)) {
        let seed = self.seed(loss);
        self.propagate(loss, seed, Some(ready));
    }

    fn seed(&self, loss: Var) -> Tensor {
        let value = self.value(loss);
        assert_eq!(value.numel(), 1, "backward from a non-scalar");
        backend::of(value).full(&[1], value.dtype(), 1.0)
    }

    /// Backpropagates an arbitrary gradient `dy` of value `out` (the gradient checks use it
    /// to test ops whose output is not a scalar).
    pub fn backward_from(&mut self, out: Var, dy: Tensor) {
        self.propagate(out, dy, None);
    }

    fn propagate(
        &mut self,
        out: Var,
        dy: Tensor,
        mut ready: Option<&mut dyn FnMut(usize, Tensor)>,
    ) {
        assert!(self.record, "backward on a graph that recorded nothing");
        assert_eq!(self.value(out).shape, dy.shape, "seed gradient shape");
        self.grads = vec![None; self.values.len()];
        self.grads[out.0] = Some(dy);
        let nodes = std::mem::take(&mut self.nodes);
        for k in (0..=nodes.len()).rev() {
            if let Some(ready) = ready.as_mut() {
                // Nodes k.. are done: the leaves read after node k - 1 are final.
                while self.leaves.last().is_some_and(|&(_, _, at)| at >= k) {
                    let (id, v, _) = self.leaves.pop().unwrap();
                    ready(id, self.take_leaf(v));
                }
            }
            let Some(node) = k.checked_sub(1).map(|i| &nodes[i]) else {
                break;
            };
            // An op's output gradient is consumed here: only inputs and leaves keep theirs.
            let Some(dy) = self.grads[node.out.0].take() else {
                continue;
            };
            let values = Values {
                values: &self.values,
                wants_grad: &self.wants_grad,
                out: node.out,
            };
            for (v, g) in node.op.backward(&values, dy) {
                if self.wants_grad[v.0] {
                    accumulate(&mut self.grads[v.0], g);
                }
            }
        }
        self.nodes = nodes;
    }

    /// Gradients of the parameter leaves, by parameter index (zeros for unused parameters).
    /// This ends the graph's use of the parameters: it lets go of their values, so that the
    /// optimiser can update them in place.
    pub fn param_grads(&mut self) -> Vec<(usize, Tensor)> {
        let leaves = std::mem::take(&mut self.leaves);
        leaves
            .into_iter()
            .map(|(id, v, _)| (id, self.take_leaf(v)))
            .collect()
    }

    /// A leaf's gradient (zeros when nothing read it), letting go of its value.
    fn take_leaf(&mut self, v: Var) -> Tensor {
        let value = std::mem::replace(&mut self.values[v.0], Tensor::empty());
        let g = self.grads.get_mut(v.0).and_then(|g| g.take());
        g.unwrap_or_else(|| value.zeros_like())
    }
}

/// Adds `g` into a value's gradient: in place when nothing else holds it, else into a fresh
/// tensor (a gradient shared by a fan-out is never written through).
fn accumulate(slot: &mut Option<Tensor>, g: Tensor) {
    match slot {
        None => *slot = Some(g),
        Some(acc) if acc.is_unique() => backend::of(&g).add_assign(acc, &g),
        Some(acc) => *acc = backend::of(&g).add(acc, &g),
    }
}
