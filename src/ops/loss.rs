//! The three losses of SimCLRv2. Each kernel returns the loss and its gradient together;
//! the node keeps the gradient and backward scales it by the upstream gradient.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::loss as kernel;
use crate::device::cuda::{loss as gpu_kernel, ntxent as gpu_ntxent, Buffer, Gpu};
use crate::tensor::Tensor;
use crate::with_dtype;

pub use kernel::UNLABELLED;

/// The loss node: its value and its saved gradient, on the device of the logits.
fn push_loss(g: &mut Graph, x: Var, loss: Tensor, grad: Tensor) -> Var {
    g.push(loss, Op::Loss { x, grad })
}

fn cpu_loss(loss: f64, grad: Tensor) -> (Tensor, Tensor) {
    (Tensor::from_f64(&[1], grad.dtype(), &[loss]), grad)
}

/// Runs a GPU loss kernel that writes a 1-float loss and a gradient shaped like `x`.
fn gpu_loss(gpu: &Gpu, x: &Tensor, run: impl FnOnce(&mut Buffer, &mut Buffer)) -> (Tensor, Tensor) {
    let mut loss = Tensor::gpu_output(gpu, &[1]);
    let mut grad = Tensor::gpu_output(gpu, &x.shape);
    run(loss.buffer_mut(), grad.buffer_mut());
    (loss, grad)
}

/// NT-Xent over L2-normalised rows [2N, d] (rows i and i+N are a positive pair).
pub fn ntxent(g: &mut Graph, z: Var, temperature: f64) -> Var {
    let zv = g.value(z);
    let (rows, d) = (zv.shape[0], zv.shape[1]);
    let (loss, grad) = match zv.gpu() {
        Some(gpu) => gpu_loss(gpu, zv, |loss, grad| {
            gpu_ntxent::ntxent(gpu, rows, d, zv.buffer(), temperature as f32, loss, grad)
        }),
        None => with_dtype!(zv.dtype(), T => {
            let (loss, grad) = kernel::ntxent(zv.as_slice::<T>(), d, temperature);
            cpu_loss(loss, Tensor::from_vec(&zv.shape, grad))
        }),
    };
    push_loss(g, z, loss, grad)
}

/// Mean softmax cross-entropy of logits [B, K] against labels.
pub fn softmax_cross_entropy(g: &mut Graph, logits: Var, labels: &[u32]) -> Var {
    let lv = g.value(logits);
    let (rows, classes) = (lv.shape[0], lv.shape[1]);
    let (loss, grad) = match lv.gpu() {
        Some(gpu) => gpu_loss(gpu, lv, |loss, grad| {
            let labels = gpu.upload(labels);
            gpu_kernel::softmax_cross_entropy(gpu, rows, classes, lv.buffer(), &labels, loss, grad)
        }),
        None => with_dtype!(lv.dtype(), T => {
            let (loss, grad) = kernel::softmax_cross_entropy(lv.as_slice::<T>(), classes, labels);
            cpu_loss(loss, Tensor::from_vec(&lv.shape, grad))
        }),
    };
    push_loss(g, logits, loss, grad)
}

/// Distillation: cross-entropy of the student's softened predictions against the teacher's
/// softened probabilities `teacher_probs` [B, K] (already computed with the same τ), mixed
/// with weight `alpha` with the label loss on rows whose label is not `UNLABELLED`.
pub fn distillation(
    g: &mut Graph,
    logits: Var,
    teacher_probs: &Tensor,
    temperature: f64,
    labels: &[u32],
    alpha: f64,
) -> Var {
    let lv = g.value(logits);
    let (rows, classes) = (lv.shape[0], lv.shape[1]);
    let (loss, grad) = match lv.gpu() {
        Some(gpu) => gpu_loss(gpu, lv, |loss, grad| {
            let labels = gpu.upload(labels);
            gpu_kernel::distillation(
                gpu,
                rows,
                classes,
                lv.buffer(),
                teacher_probs.buffer(),
                temperature as f32,
                &labels,
                alpha as f32,
                loss,
                grad,
            )
        }),
        None => with_dtype!(lv.dtype(), T => {
            let (loss, grad) = kernel::distillation(lv.as_slice::<T>(), teacher_probs.as_slice::<T>(), classes, temperature, labels, alpha);
            cpu_loss(loss, Tensor::from_vec(&lv.shape, grad))
        }),
    };
    push_loss(g, logits, loss, grad)
}

/// Softmax of logits / τ (the teacher's soft labels; predictions).
pub fn softmax(logits: &Tensor, temperature: f64) -> Tensor {
    let (rows, classes) = (logits.shape[0], logits.shape[1]);
    match logits.gpu() {
        Some(gpu) => {
            let mut probs = Tensor::gpu_output(gpu, &logits.shape);
            gpu_kernel::softmax(
                gpu,
                rows,
                classes,
                logits.buffer(),
                temperature as f32,
                probs.buffer_mut(),
            );
            probs
        }
        None => {
            with_dtype!(logits.dtype(), T => Tensor::from_vec(&logits.shape, kernel::softmax(logits.as_slice::<T>(), classes, temperature)))
        }
    }
}
