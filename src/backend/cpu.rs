//! The CPU backend: each method runs the reference kernels of `device/cpu/` on the tensors'
//! slices, in the tensors' element type (f32 for training, f64 for the gradient checks).

use super::{nhwc, Backend, BnGrads, BnSaved, StepParams, Update};
use crate::device::cpu::batchnorm::{EPS, MOMENTUM};
use crate::device::cpu::conv::ConvShape;
use crate::device::cpu::pool::{AvgPoolShape, PoolShape};
use crate::device::cpu::{
    batchnorm, conv, elementwise, gemm, loss, normalize, ntxent, optim, pool, recycle, sk,
};
use crate::dist::Comm;
use crate::tensor::{DType, Element, Tensor};
use crate::with_dtype;

pub struct Cpu;

/// A new tensor of `shape` written by `f`, which must write every element: its buffer may be a
/// dropped tensor's (recycle.rs).
fn out<T: Element>(shape: &[usize], f: impl FnOnce(&mut [T])) -> Tensor {
    let mut y = recycle::take(shape.iter().product());
    f(&mut y);
    Tensor::from_vec(shape, y)
}

/// A loss and its gradient (shaped like the input) as tensors.
fn loss_pair<T: Element>(x: &Tensor, (loss, grad): (f64, Vec<T>)) -> (Tensor, Tensor) {
    (
        Tensor::from_f64(&[1], T::DTYPE, &[loss]),
        Tensor::from_vec(&x.shape, grad),
    )
}

fn channels(x: &Tensor) -> usize {
    *x.shape.last().unwrap()
}

impl Backend for Cpu {
    fn conv_forward(&self, s: &ConvShape, x: &Tensor, w: &Tensor) -> Tensor {
        with_dtype!(x.dtype(), T => out::<T>(&s.out_shape(), |y| {
            conv::conv2d_forward(s, x.as_slice(), w.as_slice(), y)
        }))
    }

    fn conv_backward_input(&self, s: &ConvShape, dy: &Tensor, w: &Tensor) -> Tensor {
        with_dtype!(dy.dtype(), T => out::<T>(&s.in_shape(), |dx| {
            conv::conv2d_backward_input(s, dy.as_slice(), w.as_slice(), dx)
        }))
    }

    fn conv_backward_weight(&self, s: &ConvShape, x: &Tensor, dy: &Tensor) -> Tensor {
        with_dtype!(dy.dtype(), T => out::<T>(&s.weight_shape(), |dw| {
            conv::conv2d_backward_weight(s, x.as_slice(), dy.as_slice(), dw)
        }))
    }

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
    ) -> (Tensor, BnSaved) {
        let c = channels(x);
        with_dtype!(x.dtype(), T => {
            let mut stats = None;
            let y = out::<T>(&x.shape, |y| {
                let beta = beta.map(|b| b.as_slice::<T>());
                let skip = skip.map(|s| s.as_slice::<T>());
                let s = batchnorm::forward_train(x.as_slice(), c, gamma.as_slice(), beta, EPS, skip, relu, comm, y);
                stats = Some(s);
            });
            let stats = stats.unwrap();
            batchnorm::update_running(&stats, MOMENTUM, running_mean.as_mut_slice::<T>(), running_var.as_mut_slice::<T>());
            (y, BnSaved::Cpu(stats))
        })
    }

    fn batchnorm_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        skip: Option<&Tensor>,
        relu: bool,
        running_mean: &Tensor,
        running_var: &Tensor,
    ) -> Tensor {
        let c = channels(x);
        with_dtype!(x.dtype(), T => out::<T>(&x.shape, |y| {
            let beta = beta.map(|b| b.as_slice::<T>());
            batchnorm::forward_eval(x.as_slice(), c, gamma.as_slice(), beta,
                running_mean.as_slice(), running_var.as_slice(), EPS, skip.map(|s| s.as_slice::<T>()), relu, y);
        }))
    }

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
    ) -> BnGrads {
        let BnSaved::Cpu(stats) = saved else {
            panic!("batch norm: GPU statistics for a cpu tensor")
        };
        let c = gamma.numel();
        with_dtype!(dy.dtype(), T => {
            // With the fused ReLU, dy passes only where the output is positive: BN's backward
            // writes that gated dy into `gated`, every element of it.
            let mut gated = relu_out.map(|_| recycle::take::<T>(dy.numel()));
            let mut sums = None;
            let dx = out::<T>(&x.shape, |dx| {
                let relu = relu_out.map(|y| y.as_slice()).zip(gated.as_deref_mut());
                sums = Some(batchnorm::backward(x.as_slice(), dy.as_slice(), relu, c, gamma.as_slice(), stats, comm, dx));
            });
            let (dg, db) = sums.unwrap();
            // As a tensor, so that its buffer is recycled when dropped.
            let gated = gated.map(|g| Tensor::from_vec(&dy.shape, g));
            let dsum = with_sum.then(|| gated.unwrap_or_else(|| dy.clone()));
            BnGrads {
                dgamma: Tensor::from_f64(&[c], T::DTYPE, &dg),
                dbeta: with_beta.then(|| Tensor::from_f64(&[c], T::DTYPE, &db)),
                dsum,
                dx,
            }
        })
    }

    fn full(&self, shape: &[usize], dtype: DType, value: f64) -> Tensor {
        Tensor::full(shape, dtype, value)
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Tensor {
        assert!(
            dtype != DType::BF16,
            "cast: bf16 tensors live only on a GPU (cuda or emu)"
        );
        x.to_dtype(dtype)
    }

    fn relu(&self, x: &Tensor) -> Tensor {
        with_dtype!(x.dtype(), T => out::<T>(&x.shape, |y| elementwise::relu_forward(x.as_slice(), y)))
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Tensor {
        with_dtype!(dy.dtype(), T => out::<T>(&dy.shape, |dx| {
            elementwise::relu_backward(y.as_slice(), dy.as_slice(), dx)
        }))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Tensor {
        with_dtype!(a.dtype(), T => out::<T>(&a.shape, |y| elementwise::add(a.as_slice(), b.as_slice(), y)))
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) {
        with_dtype!(x.dtype(), T => elementwise::add_assign(acc.as_mut_slice::<T>(), x.as_slice()))
    }

    fn scale_by(&self, x: &Tensor, s: &Tensor) -> Tensor {
        with_dtype!(x.dtype(), T => out::<T>(&x.shape, |y| {
            elementwise::scale(x.as_slice(), s.as_slice::<T>()[0], y)
        }))
    }

    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let (rows, inp, outs) = (x.shape[0], x.shape[1], w.shape[0]);
        with_dtype!(x.dtype(), T => out::<T>(&[rows, outs], |y| {
            if let Some(b) = b {
                for row in y.chunks_mut(outs) {
                    row.copy_from_slice(b.as_slice::<T>());
                }
            }
            gemm::gemm(rows, outs, inp, x.as_slice(), inp, 1, w.as_slice(), 1, inp, y, outs, b.is_some());
        }))
    }

    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let (rows, inp, outs) = (x.shape[0], x.shape[1], w.shape[0]);
        with_dtype!(dy.dtype(), T => {
            let dys = dy.as_slice::<T>();
            let dx = out::<T>(&x.shape, |dx| gemm::gemm(rows, inp, outs, dys, outs, 1, w.as_slice(), inp, 1, dx, inp, false));
            let dw = out::<T>(&w.shape, |dw| gemm::gemm(outs, inp, rows, dys, 1, outs, x.as_slice(), inp, 1, dw, inp, false));
            let db = with_bias.then(|| out::<T>(&[outs], |db| {
                db.fill(T::default());
                for row in dys.chunks(outs) {
                    for (d, &g) in db.iter_mut().zip(row) {
                        *d += g;
                    }
                }
            }));
            (dx, dw, db)
        })
    }

    fn maxpool_forward(&self, s: &PoolShape, x: &Tensor) -> Tensor {
        with_dtype!(x.dtype(), T => out::<T>(&s.out_shape(), |y| pool::maxpool2d_forward(s, x.as_slice(), y)))
    }

    fn maxpool_backward(&self, s: &PoolShape, x: &Tensor, dy: &Tensor) -> Tensor {
        with_dtype!(dy.dtype(), T => out::<T>(&x.shape, |dx| {
            pool::maxpool2d_backward(s, x.as_slice(), dy.as_slice(), dx)
        }))
    }

    fn avg_pool_forward(&self, s: &AvgPoolShape, x: &Tensor) -> Tensor {
        with_dtype!(x.dtype(), T => out::<T>(&s.out_shape(), |y| pool::avg_pool2d_forward(s, x.as_slice(), y)))
    }

    fn avg_pool_backward(&self, s: &AvgPoolShape, dy: &Tensor) -> Tensor {
        with_dtype!(dy.dtype(), T => out::<T>(&s.in_shape(), |dx| pool::avg_pool2d_backward(s, dy.as_slice(), dx)))
    }

    fn global_avg_pool_forward(&self, x: &Tensor) -> Tensor {
        let (n, hw, c) = nhwc(&x.shape);
        with_dtype!(x.dtype(), T => out::<T>(&[n, c], |y| {
            pool::global_avg_pool_forward(n, hw, c, x.as_slice(), y)
        }))
    }

    fn global_avg_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor {
        let (n, hw, c) = nhwc(x_shape);
        with_dtype!(dy.dtype(), T => out::<T>(x_shape, |dx| {
            pool::global_avg_pool_backward(n, hw, c, dy.as_slice(), dx)
        }))
    }

    fn sk_pool_forward(&self, x: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(&x.shape);
        with_dtype!(x.dtype(), T => out::<T>(&[n, 1, 1, c2 / 2], |y| {
            sk::sk_pool_forward(n, hw, c2 / 2, x.as_slice(), y)
        }))
    }

    fn sk_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(x_shape);
        with_dtype!(dy.dtype(), T => out::<T>(x_shape, |dx| {
            sk::sk_pool_backward(n, hw, c2 / 2, dy.as_slice(), dx)
        }))
    }

    fn sk_combine_forward(&self, x: &Tensor, logits: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(&x.shape);
        let shape = [n, x.shape[1], x.shape[2], c2 / 2];
        with_dtype!(x.dtype(), T => out::<T>(&shape, |y| {
            sk::sk_combine_forward(n, hw, c2 / 2, x.as_slice(), logits.as_slice(), y)
        }))
    }

    fn sk_combine_backward(&self, x: &Tensor, logits: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
        let (n, hw, c2) = nhwc(&x.shape);
        with_dtype!(dy.dtype(), T => {
            let mut dlogits = vec![T::default(); logits.numel()];
            let dx = out::<T>(&x.shape, |dx| {
                sk::sk_combine_backward(n, hw, c2 / 2, x.as_slice(), logits.as_slice(), dy.as_slice(), dx, &mut dlogits)
            });
            (dx, Tensor::from_vec(&logits.shape, dlogits))
        })
    }

    fn l2_normalize_forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let d = x.shape[1];
        with_dtype!(x.dtype(), T => {
            let mut inv = Vec::new();
            let z = out::<T>(&x.shape, |z| inv = normalize::l2_normalize_forward(x.as_slice(), d, z));
            (z, Tensor::from_vec(&[inv.len()], inv))
        })
    }

    fn l2_normalize_backward(&self, z: &Tensor, inv_norm: &Tensor, dz: &Tensor) -> Tensor {
        let d = z.shape[1];
        with_dtype!(dz.dtype(), T => out::<T>(&dz.shape, |dx| {
            normalize::l2_normalize_backward(z.as_slice(), dz.as_slice(), inv_norm.as_slice(), d, dx)
        }))
    }

    fn ntxent(
        &self,
        z: &Tensor,
        memory: Option<&Tensor>,
        temperature: f64,
        comm: &dyn Comm,
    ) -> (Tensor, Tensor, Tensor) {
        let d = z.shape[1];
        if comm.size() == 1 {
            return with_dtype!(z.dtype(), T => {
                let zs = z.as_slice::<T>();
                let past = memory.map_or(&[][..], |m| m.as_slice::<T>());
                let (loss, dz) = loss_pair::<T>(z, ntxent::ntxent(zs, past, d, temperature));
                let candidates = match memory {
                    None => z.clone(),
                    Some(_) => Tensor::from_vec(&[(zs.len() + past.len()) / d, d], [zs, past].concat()),
                };
                (loss, dz, candidates)
            });
        }
        // This rank's rows against the gathered rows of all and the memory's; each rank's
        // candidate's gradient summed over the ranks that scored it, back to the rank that
        // holds it.
        let z32 = z.as_slice::<f32>();
        let mut all = comm.all_gather(z32);
        let queued = memory.map_or(0, |m| m.shape[0]);
        if let Some(m) = memory {
            all.extend_from_slice(m.as_slice::<f32>());
        }
        let first = comm.rank() * z.shape[0];
        let (loss, mut dz, dcol) = ntxent::ntxent_rows(z32, &all, first, queued, d, temperature);
        let dcol = comm.reduce_scatter_sum(&dcol);
        dz.iter_mut().zip(&dcol).for_each(|(a, b)| *a += b);
        let (loss, dz) = loss_pair::<f32>(z, (loss, dz));
        (loss, dz, Tensor::from_vec(&[all.len() / d, d], all))
    }

    fn softmax(&self, logits: &Tensor, temperature: f64) -> Tensor {
        let classes = logits.shape[1];
        with_dtype!(logits.dtype(), T => {
            Tensor::from_vec(&logits.shape, loss::softmax(logits.as_slice::<T>(), classes, temperature))
        })
    }

    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> (Tensor, Tensor) {
        let classes = logits.shape[1];
        with_dtype!(logits.dtype(), T => {
            loss_pair::<T>(logits, loss::softmax_cross_entropy(logits.as_slice(), classes, labels))
        })
    }

    fn distillation(
        &self,
        logits: &Tensor,
        teacher_probs: &Tensor,
        temperature: f64,
        labels: &[u32],
        alpha: f64,
    ) -> (Tensor, Tensor) {
        let classes = logits.shape[1];
        with_dtype!(logits.dtype(), T => loss_pair::<T>(logits, loss::distillation(
            logits.as_slice(), teacher_probs.as_slice(), classes, temperature, labels, alpha)))
    }

    fn lars_step(&self, updates: &mut [Update], p: StepParams) {
        for u in updates {
            with_dtype!(u.w.dtype(), T => {
                let (w, g, v) = (u.w.as_mut_slice::<T>(), u.g.as_slice::<T>(), u.v.as_mut_slice::<T>());
                let wd = u.weight_decay;
                // The trust ratio uses the gradient with weight decay added.
                let trust = if u.adapt { optim::lars_trust(w, g, wd, p.eta) } else { 1.0 };
                optim::lars_update(w, g, v, p.lr * trust, p.momentum, wd);
            })
        }
    }

    fn sgd_step(&self, updates: &mut [Update], p: StepParams) {
        for u in updates {
            with_dtype!(u.w.dtype(), T => {
                let (w, g, v) = (u.w.as_mut_slice::<T>(), u.g.as_slice::<T>(), u.v.as_mut_slice::<T>());
                optim::sgd_update(w, g, v, p.lr, p.momentum, u.weight_decay, true)
            })
        }
    }
}
