//! The GPU backend (the real driver or the emulator): each method allocates its outputs from
//! the caching allocator and launches the kernels of `kernels/*.cu` through `device/cuda/`.
//!
//! Tensors on a GPU hold f32 or bf16 buffers, and this file is where the mixed-precision rules
//! live (docs/ARCHITECTURE.md, "Precision"): an activation's output (and an activation
//! gradient) has the element type of its input; parameters, their gradients, BN statistics and
//! losses are f32. A conv or dense layer on bf16 activations reads a bf16 copy of its f32
//! weights, made here; bf16 dense layers are 1×1 convolutions on the tensor-core kernels.

use super::{nhwc, Backend, BnGrads, BnSaved, StepParams, Update};
use crate::device::cpu::batchnorm::{EPS, MOMENTUM};
use crate::device::cpu::conv::ConvShape;
use crate::device::cpu::pool::{AvgPoolShape, PoolShape};
use crate::device::cuda::{
    batchnorm, conv, elementwise, gemm, loss, normalize, ntxent, optim, pool, sk, Buffer, Elem, Gpu,
};
use crate::dist::Comm;
use crate::tensor::{DType, Tensor};
use std::borrow::Cow;

impl Gpu {
    /// A fresh tensor of `shape` and element type `elem` written by `f`.
    fn out(&self, shape: &[usize], elem: Elem, f: impl FnOnce(&mut Buffer)) -> Tensor {
        let mut y = Tensor::gpu_output_as(self, shape, elem);
        f(y.buffer_mut());
        y
    }

    /// The f32 weights `w` as the activations' element type: themselves, or a bf16 copy.
    fn weights_as<'a>(&self, w: &'a Tensor, elem: Elem) -> Cow<'a, Buffer> {
        let wb = w.buffer();
        if wb.elem() == elem {
            return Cow::Borrowed(wb);
        }
        let mut copy = self.alloc(wb.len(), elem);
        elementwise::cast(self, wb, &mut copy);
        Cow::Owned(copy)
    }

    /// A loss kernel's outputs: the 1-float loss and a gradient shaped like `x`.
    fn loss_pair(&self, x: &Tensor, f: impl FnOnce(&mut Buffer, &mut Buffer)) -> (Tensor, Tensor) {
        let mut grad = Tensor::gpu_output_as(self, &x.shape, elem(x));
        let loss = self.out(&[1], Elem::F32, |loss| f(loss, grad.buffer_mut()));
        (loss, grad)
    }
}

/// A dense layer x [rows, inp] · Wᵀ (W [outs, inp]) as the 1×1 convolution it is: rows images
/// of one pixel. bf16 dense layers run on the tensor-core conv kernels this way.
fn dense(rows: usize, inp: usize, outs: usize) -> ConvShape {
    ConvShape {
        n: rows,
        h: 1,
        w: 1,
        c: inp,
        k: outs,
        r: 1,
        s: 1,
        stride: 1,
        pad: 0,
    }
}

/// The element type of a GPU tensor's buffer.
fn elem(t: &Tensor) -> Elem {
    t.buffer().elem()
}

/// (rows, channels) of a tensor normalised over its last dimension.
fn rows_channels(x: &Tensor) -> (usize, usize) {
    let c = *x.shape.last().unwrap();
    (x.numel() / c, c)
}

impl Backend for Gpu {
    fn conv_forward(&self, s: &ConvShape, x: &Tensor, w: &Tensor) -> Tensor {
        let elem = elem(x);
        let w = self.weights_as(w, elem);
        self.out(&s.out_shape(), elem, |y| {
            conv::forward(self, s, x.buffer(), &w, y)
        })
    }

    fn conv_backward_input(&self, s: &ConvShape, dy: &Tensor, w: &Tensor) -> Tensor {
        let elem = elem(dy);
        let w = self.weights_as(w, elem);
        self.out(&s.in_shape(), elem, |dx| {
            conv::backward_input(self, s, dy.buffer(), &w, dx)
        })
    }

    fn conv_backward_weight(&self, s: &ConvShape, x: &Tensor, dy: &Tensor) -> Tensor {
        self.out(&s.weight_shape(), Elem::F32, |dw| {
            conv::backward_weight(self, s, x.buffer(), dy.buffer(), dw)
        })
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
        let (rows, c) = rows_channels(x);
        let (mut mean, mut invstd) = (self.alloc_f32(c), self.alloc_f32(c));
        let (beta, skip) = (beta.map(Tensor::buffer), skip.map(Tensor::buffer));
        let y = self.out(&x.shape, elem(x), |y| {
            let (x, gamma, eps) = (x.buffer(), gamma.buffer(), EPS as f32);
            batchnorm::forward_train(
                self,
                rows,
                c,
                x,
                gamma,
                beta,
                eps,
                skip,
                relu,
                y,
                &mut mean,
                &mut invstd,
                comm,
            )
        });
        let (rm, rv) = (running_mean.buffer_mut(), running_var.buffer_mut());
        // The statistics are of all ranks' rows (global batch norm).
        batchnorm::update_running(
            self,
            rows * comm.size(),
            c,
            &mean,
            &invstd,
            EPS as f32,
            MOMENTUM as f32,
            rm,
            rv,
        );
        (y, BnSaved::Gpu { mean, invstd })
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
        let (rows, c) = rows_channels(x);
        let (beta, skip) = (beta.map(Tensor::buffer), skip.map(Tensor::buffer));
        self.out(&x.shape, elem(x), |y| {
            let (rm, rv) = (running_mean.buffer(), running_var.buffer());
            let (x, gamma, eps) = (x.buffer(), gamma.buffer(), EPS as f32);
            batchnorm::forward_eval(self, rows, c, x, gamma, beta, rm, rv, eps, skip, relu, y)
        })
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
        let BnSaved::Gpu { mean, invstd } = saved else {
            panic!("batch norm: cpu statistics for a GPU tensor")
        };
        let (rows, c) = rows_channels(x);
        let mut dx = Tensor::gpu_output_as(self, &x.shape, elem(x));
        let mut dgamma = Tensor::gpu_output(self, &[c]);
        let mut dbeta = with_beta.then(|| Tensor::gpu_output(self, &[c]));
        let mut dsum = with_sum.then(|| Tensor::gpu_output_as(self, &x.shape, elem(x)));
        batchnorm::backward(
            self,
            rows,
            c,
            x.buffer(),
            relu_out.map(Tensor::buffer),
            dy.buffer(),
            gamma.buffer(),
            mean,
            invstd,
            dx.buffer_mut(),
            dgamma.buffer_mut(),
            dbeta.as_mut().map(Tensor::buffer_mut),
            dsum.as_mut().map(Tensor::buffer_mut),
            comm,
        );
        BnGrads {
            dx,
            dgamma,
            dbeta,
            dsum,
        }
    }

    fn full(&self, shape: &[usize], dtype: DType, value: f64) -> Tensor {
        let y = self.out(shape, Elem::F32, |y| {
            elementwise::fill(self, y, value as f32)
        });
        self.cast(&y, dtype)
    }

    fn cast(&self, x: &Tensor, dtype: DType) -> Tensor {
        let to = dtype.elem();
        if elem(x) == to {
            return x.clone();
        }
        self.out(&x.shape, to, |y| elementwise::cast(self, x.buffer(), y))
    }

    fn relu(&self, x: &Tensor) -> Tensor {
        self.out(&x.shape, elem(x), |y| {
            elementwise::relu_forward(self, x.buffer(), y)
        })
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Tensor {
        self.out(&dy.shape, elem(dy), |dx| {
            elementwise::relu_backward(self, y.buffer(), dy.buffer(), dx)
        })
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Tensor {
        self.out(&a.shape, elem(a), |y| {
            elementwise::add(self, a.buffer(), b.buffer(), y)
        })
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) {
        elementwise::add_assign(self, acc.buffer_mut(), x.buffer())
    }

    fn scale_by(&self, x: &Tensor, s: &Tensor) -> Tensor {
        self.out(&x.shape, elem(x), |y| {
            elementwise::scale_by(self, x.buffer(), s.buffer(), y)
        })
    }

    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let (rows, inp, outs) = (x.shape[0], x.shape[1], w.shape[0]);
        let elem = elem(x);
        let wb = self.weights_as(w, elem);
        self.out(&[rows, outs], elem, |y| {
            match elem {
                Elem::F32 => {
                    let xb = x.buffer();
                    gemm::gemm(self, rows, outs, inp, xb, false, &wb, true, y, false)
                }
                Elem::Bf16 => conv::forward(self, &dense(rows, inp, outs), x.buffer(), &wb, y),
            }
            if let Some(b) = b {
                elementwise::bias_add(self, rows, outs, y, b.buffer());
            }
        })
    }

    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        with_bias: bool,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let (rows, inp, outs) = (x.shape[0], x.shape[1], w.shape[0]);
        let (xb, dyb, elem) = (x.buffer(), dy.buffer(), elem(x));
        let wb = self.weights_as(w, elem);
        let s = dense(rows, inp, outs);
        let dx = self.out(&x.shape, elem, |dx| match elem {
            Elem::F32 => gemm::gemm(self, rows, inp, outs, dyb, false, &wb, false, dx, false),
            Elem::Bf16 => conv::backward_input(self, &s, dyb, &wb, dx),
        });
        let dw = self.out(&w.shape, Elem::F32, |dw| match elem {
            Elem::F32 => gemm::gemm(self, outs, inp, rows, dyb, true, xb, false, dw, false),
            Elem::Bf16 => conv::backward_weight(self, &s, xb, dyb, dw),
        });
        let db = with_bias.then(|| {
            self.out(&[outs], Elem::F32, |db| {
                elementwise::sum_rows(self, rows, outs, dyb, db)
            })
        });
        (dx, dw, db)
    }

    fn maxpool_forward(&self, s: &PoolShape, x: &Tensor) -> Tensor {
        self.out(&s.out_shape(), elem(x), |y| {
            pool::maxpool_forward(self, s, x.buffer(), y)
        })
    }

    fn maxpool_backward(&self, s: &PoolShape, x: &Tensor, dy: &Tensor) -> Tensor {
        self.out(&x.shape, elem(x), |dx| {
            pool::maxpool_backward(self, s, x.buffer(), dy.buffer(), dx)
        })
    }

    fn avg_pool_forward(&self, s: &AvgPoolShape, x: &Tensor) -> Tensor {
        self.out(&s.out_shape(), elem(x), |y| {
            pool::avg_pool_forward(self, s, x.buffer(), y)
        })
    }

    fn avg_pool_backward(&self, s: &AvgPoolShape, dy: &Tensor) -> Tensor {
        self.out(&s.in_shape(), elem(dy), |dx| {
            pool::avg_pool_backward(self, s, dy.buffer(), dx)
        })
    }

    fn global_avg_pool_forward(&self, x: &Tensor) -> Tensor {
        let (n, hw, c) = nhwc(&x.shape);
        self.out(&[n, c], elem(x), |y| {
            pool::global_avg_pool_forward(self, n, hw, c, x.buffer(), y)
        })
    }

    fn global_avg_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor {
        let (n, hw, c) = nhwc(x_shape);
        self.out(x_shape, elem(dy), |dx| {
            pool::global_avg_pool_backward(self, n, hw, c, dy.buffer(), dx)
        })
    }

    fn sk_pool_forward(&self, x: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(&x.shape);
        self.out(&[n, 1, 1, c2 / 2], elem(x), |y| {
            sk::sk_pool_forward(self, n, hw, c2 / 2, x.buffer(), y)
        })
    }

    fn sk_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(x_shape);
        self.out(x_shape, elem(dy), |dx| {
            sk::sk_pool_backward(self, n, hw, c2 / 2, dy.buffer(), dx)
        })
    }

    fn sk_combine_forward(&self, x: &Tensor, logits: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(&x.shape);
        let shape = [n, x.shape[1], x.shape[2], c2 / 2];
        self.out(&shape, elem(x), |y| {
            sk::sk_combine_forward(self, n, hw, c2 / 2, x.buffer(), logits.buffer(), y)
        })
    }

    fn sk_combine_backward(&self, x: &Tensor, logits: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
        let (n, hw, c2) = nhwc(&x.shape);
        let mut dlogits = Tensor::gpu_output_as(self, &logits.shape, elem(logits));
        let dx = self.out(&x.shape, elem(x), |dx| {
            let (xb, lb, dyb) = (x.buffer(), logits.buffer(), dy.buffer());
            sk::sk_combine_backward(self, n, hw, c2 / 2, xb, lb, dyb, dx, dlogits.buffer_mut())
        });
        (dx, dlogits)
    }

    fn l2_normalize_forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (rows, d) = (x.shape[0], x.shape[1]);
        let mut inv = Tensor::gpu_output(self, &[rows]);
        let z = self.out(&x.shape, elem(x), |z| {
            normalize::l2_normalize_forward(self, rows, d, x.buffer(), z, inv.buffer_mut())
        });
        (z, inv)
    }

    fn l2_normalize_backward(&self, z: &Tensor, inv_norm: &Tensor, dz: &Tensor) -> Tensor {
        let (rows, d) = (z.shape[0], z.shape[1]);
        self.out(&dz.shape, elem(dz), |dx| {
            let (zb, dzb, inv) = (z.buffer(), dz.buffer(), inv_norm.buffer());
            normalize::l2_normalize_backward(self, rows, d, zb, dzb, inv, dx)
        })
    }

    fn ntxent(
        &self,
        z: &Tensor,
        memory: Option<&Tensor>,
        temperature: f64,
        comm: &dyn Comm,
    ) -> (Tensor, Tensor, Tensor) {
        let (rows, d, t) = (z.shape[0], z.shape[1], temperature as f32);
        let one = comm.size() == 1;
        if one && memory.is_none() {
            let (loss, dz) = self.loss_pair(z, |loss, grad| {
                ntxent::ntxent(self, rows, d, z.buffer(), t, loss, grad)
            });
            return (loss, dz, z.clone());
        }
        // This rank's rows against every rank's, then the memory's. Between the two passes the
        // ranks gather their anchors' log-sum-exps, all that the other ranks' share of this
        // rank's gradient needs (kernels/ntxent.cu): no column gradients to reduce-scatter, as
        // on the cpu.
        let ranks = match one {
            true => Cow::Borrowed(z.buffer()),
            false => Cow::Owned(comm.all_gather_device(self, z.buffer())),
        };
        let queued = memory.map_or(0, |m| m.shape[0]);
        let all = match memory {
            None => ranks,
            Some(m) => Cow::Owned(self.concat(&[(&ranks, ranks.len()), (m.buffer(), m.numel())])),
        };
        let shard = ntxent::Shard::new(self, z.buffer(), &all, comm.rank() * rows, queued, d, t);
        let mut lse = self.alloc_f32(rows);
        shard.lse(&mut lse);
        let lse_all = match one {
            true => None,
            false => Some(comm.all_gather_device(self, &lse)),
        };
        let (loss, dz) = self.loss_pair(z, |loss, grad| {
            shard.loss(&lse, loss);
            shard.grad(lse_all.as_ref().unwrap_or(&lse), grad);
        });
        drop(shard);
        let candidates = Tensor::from_gpu(&[all.len() / d, d], all.into_owned());
        (loss, dz, candidates)
    }

    fn softmax(&self, logits: &Tensor, temperature: f64) -> Tensor {
        let (rows, classes) = (logits.shape[0], logits.shape[1]);
        self.out(&logits.shape, Elem::F32, |probs| {
            loss::softmax(
                self,
                rows,
                classes,
                logits.buffer(),
                temperature as f32,
                probs,
            )
        })
    }

    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &[u32]) -> (Tensor, Tensor) {
        let (rows, classes) = (logits.shape[0], logits.shape[1]);
        let labels = self.upload_pinned(labels);
        self.loss_pair(logits, |loss, grad| {
            loss::softmax_cross_entropy(self, rows, classes, logits.buffer(), &labels, loss, grad)
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
        let (rows, classes) = (logits.shape[0], logits.shape[1]);
        let labels = self.upload_pinned(labels);
        self.loss_pair(logits, |loss, grad| {
            let (lb, tb) = (logits.buffer(), teacher_probs.buffer());
            let (t, a) = (temperature as f32, alpha as f32);
            loss::distillation(self, rows, classes, lb, tb, t, &labels, a, loss, grad)
        })
    }

    fn lars_step(&self, updates: &mut [Update], p: StepParams) {
        optim::lars_step(
            self,
            &mut buffers(updates),
            p.lr as f32,
            p.momentum as f32,
            p.eta as f32,
        );
    }

    fn sgd_step(&self, updates: &mut [Update], p: StepParams) {
        optim::sgd_step(
            self,
            &mut buffers(updates),
            p.lr as f32,
            p.momentum as f32,
            true,
        );
    }
}

/// The optimiser's view of each update: its buffers and constants.
fn buffers<'a>(updates: &'a mut [Update]) -> Vec<optim::Param<'a>> {
    updates
        .iter_mut()
        .map(|u| optim::Param {
            w: u.w.buffer_mut(),
            g: u.g.buffer(),
            v: u.v.buffer_mut(),
            weight_decay: u.weight_decay as f32,
            adapt: u.adapt,
        })
        .collect()
}
