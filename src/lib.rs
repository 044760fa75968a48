//! simclr: SimCLRv2 (Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised
//! Learners") from scratch: tensors, an autograd tape, hand-written kernels, ResNets,
//! NT-Xent, LARS, fine-tuning and distillation, with no ML framework.

pub mod autograd;
pub mod backend;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod tensor;
pub mod train;
