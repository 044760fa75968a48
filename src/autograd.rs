//! The autograd tape, in the spirit of micrograd and llm.c: every op appends a node (what
//! it was, which values it read, what it saved) to a flat list in creation order, and
//! `backward` walks that list in reverse, each node handing its output's gradient to its op's
//! hand-written backward function and accumulating the results into its inputs' gradients
//! (accumulate, never overwrite: residual connections read one value twice).
//!
//! Parameters enter the graph as leaves copied from the `ParamStore`; after `backward`,
//! `param_grads` hands back each leaf's gradient with the parameter's index in the store.

use crate::device::cpu::conv::ConvShape;
use crate::device::cpu::pool::{AvgPoolShape, PoolShape};
use crate::nn::params::ParamStore;
use crate::ops;
use crate::tensor::Tensor;

/// A value in the graph: an index into its list of tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// One recorded op with what its backward pass needs.
pub enum Op {
    Conv2d {
        x: Var,
        w: Var,
        shape: ConvShape,
    },
    /// Batch norm, with the ReLU after it fused when `relu`.
    BatchNorm {
        x: Var,
        gamma: Var,
        beta: Option<Var>,
        relu: bool,
        saved: ops::batchnorm::Saved,
    },
    Relu {
        x: Var,
    },
    MaxPool {
        x: Var,
        shape: PoolShape,
    },
    GlobalAvgPool {
        x: Var,
    },
    /// Average pooling with TF 'SAME' padding (the ResNet-D shortcut).
    AvgPool {
        x: Var,
        shape: AvgPoolShape,
    },
    /// A selective-kernel conv's global descriptor: its two streams summed, then averaged.
    SkPool {
        x: Var,
    },
    /// A selective-kernel conv's output: its two streams mixed by a softmax over the logits.
    SkCombine {
        x: Var,
        logits: Var,
    },
    Linear {
        x: Var,
        w: Var,
        b: Option<Var>,
    },
    Add {
        a: Var,
        b: Var,
    },
    L2Normalize {
        x: Var,
        inv_norm: Tensor,
    },
    /// A loss whose kernel computed dloss/dx together with the loss (NT-Xent, softmax
    /// cross-entropy, distillation): backward only scales the saved gradient.
    Loss {
        x: Var,
        grad: Tensor,
    },
}

struct Node {
    op: Op,
    out: Var,
}

pub struct Graph {
    values: Vec<Tensor>,
    nodes: Vec<Node>,
    grads: Vec<Option<Tensor>>,
    leaves: Vec<(usize, Var)>,
    /// Whether backward computes each value's gradient: not for input batches, so the first
    /// convolution never computes the gradient of the images.
    wants_grad: Vec<bool>,
    /// When false (evaluation), ops compute values but record nothing for backward.
    pub record: bool,
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

    /// A parameter of the store, as a leaf whose gradient `param_grads` returns.
    pub fn param(&mut self, store: &ParamStore, id: usize) -> Var {
        let v = self.add(store.params[id].value.clone(), true);
        if self.record {
            self.leaves.push((id, v));
        }
        v
    }

    /// Adds an op's output; the op is kept only when recording.
    pub(crate) fn push(&mut self, t: Tensor, op: Op) -> Var {
        let out = self.add(t, true);
        if self.record {
            self.nodes.push(Node { op, out });
        }
        out
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.values[v.0]
    }

    pub fn grad(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    /// Backpropagates from a scalar `loss` (seeded with dloss/dloss = 1).
    pub fn backward(&mut self, loss: Var) {
        assert_eq!(self.value(loss).numel(), 1, "backward from a non-scalar");
        let seed = Tensor::full(&[1], self.value(loss).dtype(), 1.0);
        self.backward_from(loss, seed);
    }

    /// Backpropagates an arbitrary gradient `dy` of value `out` (the gradient checks use it
    /// to test ops whose output is not a scalar).
    pub fn backward_from(&mut self, out: Var, dy: Tensor) {
        assert!(self.record, "backward on a graph that recorded nothing");
        assert_eq!(self.value(out).shape, dy.shape, "seed gradient shape");
        self.grads = vec![None; self.values.len()];
        self.grads[out.0] = Some(dy);
        let nodes = std::mem::take(&mut self.nodes);
        for node in nodes.iter().rev() {
            let Some(dy) = self.grads[node.out.0].take() else {
                continue;
            };
            // An op's output gradient is consumed here: only inputs and leaves keep theirs.
            for (v, g) in ops::backward(&node.op, &self.values, &self.wants_grad, node.out, dy) {
                if !self.wants_grad[v.0] {
                    continue;
                }
                match &mut self.grads[v.0] {
                    Some(acc) => acc.add_assign(&g),
                    slot => *slot = Some(g),
                }
            }
        }
        self.nodes = nodes;
    }

    /// Gradients of the parameter leaves, by parameter index (zeros for unused parameters).
    pub fn param_grads(&mut self) -> Vec<(usize, Tensor)> {
        let leaves = std::mem::take(&mut self.leaves);
        leaves
            .into_iter()
            .map(|(id, v)| {
                let g = self.grads.get_mut(v.0).and_then(|g| g.take());
                let value = &self.values[v.0];
                (id, g.unwrap_or_else(|| value.zeros_like()))
            })
            .collect()
    }
}
