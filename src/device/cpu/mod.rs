//! The CPU device: plain Rust over slices, parallel with rayon. These functions are the
//! reference every other device's kernels are checked against, and generic over the element
//! type so that the gradient checks can run them in f64.

pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod loss;
pub mod normalize;
pub mod optim;
pub mod pool;
pub mod real;
