//! Ops: one module per op family. Each forward checks its shapes, makes one call to the backend
//! of its input (`crate::backend`, the CPU or the GPU) and records a node on the tape; the
//! node's `Backward` implementation is the family's hand-written backward pass, again one
//! backend call per gradient. No op asks where a tensor lives or what its element type is.

pub mod batchnorm;
pub mod cast;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod loss;
pub mod normalize;
pub mod ntxent;
pub mod pool;
pub mod sk;
