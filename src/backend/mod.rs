//! The seam between the ops and the devices: one method per kernel entry point, implemented
//! once by the CPU (`cpu.rs`, over the reference kernels in `device/cpu/`) and once by the GPU
//! (`cuda.rs`, launching `kernels/*.cu` on the driver or the emulator).
//!
//! An op (`src/ops/`) checks shapes, makes one call here on the backend of its input, and
//! records itself on the tape; it never asks where a tensor lives or what its element type is.
//! Inputs live on the backend's device; outputs are fresh tensors there. Each backend handles
//! the element types it supports in its own file (the CPU: f32 and f64 through `with_dtype!`;
//! the GPU: f32 and bf16 buffers, with the mixed-precision rules in `cuda.rs`), so a new dtype
//! is added in one place per backend.
//!
//! A trait rather than an enum with a match per method: each backend's methods sit together in
//! one file, a new op adds one method here and one entry per backend, and `of` is the only place
//! that looks at where a tensor lives.

pub mod cpu;
pub mod cuda;

use crate::device::cpu::batchnorm::BnStats;
use crate::device::cpu::conv::ConvShape;
use crate::device::cpu::pool::{AvgPoolShape, PoolShape};
use crate::device::cuda::Buffer;
use crate::dist::Comm;
use crate::tensor::{DType, Storage, Tensor};

/// What training-mode batch norm keeps for its backward pass, on the device that computed it.
pub enum BnSaved {
    Cpu(BnStats),
    Gpu { mean: Buffer, invstd: Buffer },
}

/// A batch norm's gradients: dx, dγ, dβ (when it has β) and the fused residual sum's (when
/// asked).
pub struct BnGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Option<Tensor>,
    pub dsum: Option<Tensor>,
}

/// One parameter tensor's optimiser update: its value, gradient and velocity (all on the
/// backend's device), its weight decay, and whether LARS adapts its rate (conv and dense
/// kernels; never BN parameters or biases, as the official implementation).
pub struct Update<'a> {
    pub w: &'a mut Tensor,
    pub g: &'a Tensor,
    pub v: &'a mut Tensor,
    pub weight_decay: f64,
    pub adapt: bool,
}

/// The optimiser's constants for one step.
#[derive(Clone, Copy, Debug)]
pub struct StepParams {
    pub lr: f64,
    pub momentum: f64,
    /// LARS trust coefficient η.
    pub eta: f64,
}

pub trait Backend {
    // conv: x NHWC, w KRSC, y NHWC, no bias.
    fn conv_forward(&self, s: &ConvShape, x: &Tensor, w: &Tensor) -> Tensor;
    fn conv_backward_input(&self, s: &ConvShape, dy: &Tensor, w: &Tensor) -> Tensor;
    fn conv_backward_weight(&self, s: &ConvShape, x: &Tensor, dy: &Tensor) -> Tensor;

    // batchnorm over the last dimension, with an optional fused residual add (`skip`, added to
    // the normalised x) and ReLU after it. Training mode moves the running statistics in place;
    // its statistics are those of all ranks of `comm` (global batch norm, `dist`).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        skip: Option<&Tensor>,
        relu: bool,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        comm: &dyn Comm,
    ) -> (Tensor, BnSaved);
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        skip: Option<&Tensor>,
        relu: bool,
        running_mean: &Tensor,
        running_var: &Tensor,
    ) -> Tensor;
    /// `relu_out` = the forward's output when its ReLU was fused. `with_sum`: the forward
    /// fused a residual sum, whose gradient (dy masked by the ReLU) its skip receives.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &self,
        x: &Tensor,
        relu_out: Option<&Tensor>,
        dy: &Tensor,
        gamma: &Tensor,
        saved: &BnSaved,
        with_beta: bool,
        with_sum: bool,
        comm: &dyn Comm,
    ) -> BnGrads;

    /// A tensor of `shape` and `dtype` holding `value` everywhere, made on this backend's
    /// device (the backward pass's seed: no copy from the host).
    fn full(&self, shape: &[usize], dtype: DType, value: f64) -> Tensor;

    /// The same values as another element type (mixed precision: f32 ↔ bf16 on a GPU; f32 ↔ f64
    /// on the CPU). A tensor already of that type comes back shared.
    fn cast(&self, x: &Tensor, dtype: DType) -> Tensor;

    // elementwise
    fn relu(&self, x: &Tensor) -> Tensor;
    /// dy where the ReLU's output y > 0, else 0.
    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Tensor;
    fn add(&self, a: &Tensor, b: &Tensor) -> Tensor;
    /// acc += x (gradient accumulation; acc is not shared).
    fn add_assign(&self, acc: &mut Tensor, x: &Tensor);
    /// x times the single value of `s` (read on the device: no host round trip).
    fn scale_by(&self, x: &Tensor, s: &Tensor) -> Tensor;

    // gemm: the dense layer y = x·Wᵀ (+ b), x [B, in], W [out, in]
    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor;
    /// (dx, dW, db when `with_bias`).
    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> (Tensor, Tensor, Option<Tensor>);

    // pool
    fn maxpool_forward(&self, s: &PoolShape, x: &Tensor) -> Tensor;
    fn maxpool_backward(&self, s: &PoolShape, x: &Tensor, dy: &Tensor) -> Tensor;
    fn avg_pool_forward(&self, s: &AvgPoolShape, x: &Tensor) -> Tensor;
    fn avg_pool_backward(&self, s: &AvgPoolShape, dy: &Tensor) -> Tensor;
    fn global_avg_pool_forward(&self, x: &Tensor) -> Tensor;
    fn global_avg_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor;

    // sk: two streams [N, H, W, 2C]
    fn sk_pool_forward(&self, x: &Tensor) -> Tensor;
    fn sk_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor;
    fn sk_combine_forward(&self, x: &Tensor, logits: &Tensor) -> Tensor;
    /// (dx, dlogits).
    fn sk_combine_backward(&self, x: &Tensor, logits: &Tensor, dy: &Tensor) -> (Tensor, Tensor);

    // normalize: rows to unit L2 norm
    /// (z, 1/‖x‖ per row).
    fn l2_normalize_forward(&self, x: &Tensor) -> (Tensor, Tensor);
    fn l2_normalize_backward(&self, z: &Tensor, inv_norm: &Tensor, dz: &Tensor) -> Tensor;

    // ntxent: (loss [1], dloss/dz, the candidates). The rows z are this rank's; the negatives
    // are every rank's of `comm` (the gradient is that of the sum of the ranks' losses), then the
    // `memory`'s rows when given (past rows of z's type: negatives only, no gradient). The
    // candidates are every rank's rows followed by the memory's: the next memory's source.
    fn ntxent(
        &self,
        z: &Tensor,
        memory: Option<&Tensor>,
        temperature: f64,
        comm: &dyn Comm,
    ) -> (Tensor, Tensor, Tensor);

    // loss
    fn softmax(&self, logits: &Tensor, temperature: f64) -> Tensor;
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> (Tensor, Tensor);
    fn distillation(
        &self,
        logits: &Tensor,
        teacher_probs: &Tensor,
        temperature: f64,
        labels: &[u32],
        alpha: f64,
    ) -> (Tensor, Tensor);

    // optim: every parameter of a step in one call (a few launches on a GPU).
    fn lars_step(&self, updates: &mut [Update], p: StepParams);
    /// Nesterov SGD.
    fn sgd_step(&self, updates: &mut [Update], p: StepParams);
}

/// (n, h·w, c) of an [N, H, W, C] shape.
fn nhwc(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1] * shape[2], shape[3])
}

/// The backend of the device `t` lives on.
pub fn of(t: &Tensor) -> &dyn Backend {
    match t.storage() {
        Storage::Gpu(buf) => buf.gpu(),
        Storage::CpuF32(_) | Storage::CpuF64(_) => &cpu::Cpu,
    }
}
