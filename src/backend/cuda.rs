//! The GPU backend (the real driver or the emulator): each method allocates its outputs from
//! the caching allocator and launches the kernels of `kernels/*.cu` through `device/cuda/`.
//! Tensors on a GPU hold f32 buffers.

use super::{nhwc, Backend, BnSaved, StepParams, Update};
use crate::device::cpu::batchnorm::{EPS, MOMENTUM};
use crate::device::cpu::conv::ConvShape;
use crate::device::cpu::pool::{AvgPoolShape, PoolShape};
use crate::device::cuda::{
    batchnorm, conv, elementwise, gemm, loss, normalize, ntxent, optim, pool, sk, Buffer, Gpu,
};
use crate::tensor::Tensor;

impl Gpu {
    /// A fresh tensor of `shape` written by `f`.
    fn out(&self, shape: &[usize], f: impl FnOnce(&mut Buffer)) -> Tensor {
        let mut y = Tensor::gpu_output(self, shape);
        f(y.buffer_mut());
        y
    }

    /// A loss kernel's outputs: the 1-float loss and a gradient shaped like `x`.
    fn loss_pair(&self, x: &Tensor, f: impl FnOnce(&mut Buffer, &mut Buffer)) -> (Tensor, Tensor) {
        let mut grad = Tensor::gpu_output(self, &x.shape);
        let loss = self.out(&[1], |loss| f(loss, grad.buffer_mut()));
        (loss, grad)
    }
}

/// (rows, channels) of a tensor normalised over its last dimension.
fn rows_channels(x: &Tensor) -> (usize, usize) {
    let c = *x.shape.last().unwrap();
    (x.numel() / c, c)
}

impl Backend for Gpu {
    fn conv_forward(&self, s: &ConvShape, x: &Tensor, w: &Tensor) -> Tensor {
        self.out(&s.out_shape(), |y| {
            conv::forward(self, s, x.buffer(), w.buffer(), y)
        })
    }

    fn conv_backward_input(&self, s: &ConvShape, dy: &Tensor, w: &Tensor) -> Tensor {
        self.out(&s.in_shape(), |dx| {
            conv::backward_input(self, s, dy.buffer(), w.buffer(), dx)
        })
    }

    fn conv_backward_weight(&self, s: &ConvShape, x: &Tensor, dy: &Tensor) -> Tensor {
        self.out(&s.weight_shape(), |dw| {
            conv::backward_weight(self, s, x.buffer(), dy.buffer(), dw)
        })
    }

    fn batchnorm_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        relu: bool,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
    ) -> (Tensor, BnSaved) {
        let (rows, c) = rows_channels(x);
        let (mut mean, mut invstd) = (self.alloc_f32(c), self.alloc_f32(c));
        let beta = beta.map(Tensor::buffer);
        let y = self.out(&x.shape, |y| {
            let (x, gamma, eps) = (x.buffer(), gamma.buffer(), EPS as f32);
            batchnorm::forward_train(
                self,
                rows,
                c,
                x,
                gamma,
                beta,
                eps,
                relu,
                y,
                &mut mean,
                &mut invstd,
            )
        });
        let (rm, rv) = (running_mean.buffer_mut(), running_var.buffer_mut());
        batchnorm::update_running(
            self,
            rows,
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
        relu: bool,
        running_mean: &Tensor,
        running_var: &Tensor,
    ) -> Tensor {
        let (rows, c) = rows_channels(x);
        let beta = beta.map(Tensor::buffer);
        self.out(&x.shape, |y| {
            let (rm, rv) = (running_mean.buffer(), running_var.buffer());
            let (x, gamma, eps) = (x.buffer(), gamma.buffer(), EPS as f32);
            batchnorm::forward_eval(self, rows, c, x, gamma, beta, rm, rv, eps, relu, y)
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
    ) -> (Tensor, Tensor, Option<Tensor>) {
        let BnSaved::Gpu { mean, invstd } = saved else {
            panic!("batch norm: cpu statistics for a GPU tensor")
        };
        let (rows, c) = rows_channels(x);
        let mut dx = Tensor::gpu_output(self, &x.shape);
        let mut dgamma = Tensor::gpu_output(self, &[c]);
        let mut dbeta = with_beta.then(|| Tensor::gpu_output(self, &[c]));
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
        );
        (dx, dgamma, dbeta)
    }

    fn relu(&self, x: &Tensor) -> Tensor {
        self.out(&x.shape, |y| elementwise::relu_forward(self, x.buffer(), y))
    }

    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Tensor {
        self.out(&dy.shape, |dx| {
            elementwise::relu_backward(self, y.buffer(), dy.buffer(), dx)
        })
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Tensor {
        self.out(&a.shape, |y| {
            elementwise::add(self, a.buffer(), b.buffer(), y)
        })
    }

    fn add_assign(&self, acc: &mut Tensor, x: &Tensor) {
        elementwise::add_assign(self, acc.buffer_mut(), x.buffer())
    }

    fn scale_by(&self, x: &Tensor, s: &Tensor) -> Tensor {
        self.out(&x.shape, |y| {
            elementwise::scale_by(self, x.buffer(), s.buffer(), y)
        })
    }

    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let (rows, inp, outs) = (x.shape[0], x.shape[1], w.shape[0]);
        self.out(&[rows, outs], |y| {
            gemm::gemm(
                self,
                rows,
                outs,
                inp,
                x.buffer(),
                false,
                w.buffer(),
                true,
                y,
                false,
            );
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
        let (xb, wb, dyb) = (x.buffer(), w.buffer(), dy.buffer());
        let dx = self.out(&x.shape, |dx| {
            gemm::gemm(self, rows, inp, outs, dyb, false, wb, false, dx, false)
        });
        let dw = self.out(&w.shape, |dw| {
            gemm::gemm(self, outs, inp, rows, dyb, true, xb, false, dw, false)
        });
        let db = with_bias.then(|| {
            self.out(&[outs], |db| {
                elementwise::sum_rows(self, rows, outs, dyb, db)
            })
        });
        (dx, dw, db)
    }

    fn maxpool_forward(&self, s: &PoolShape, x: &Tensor) -> Tensor {
        self.out(&s.out_shape(), |y| {
            pool::maxpool_forward(self, s, x.buffer(), y)
        })
    }

    fn maxpool_backward(&self, s: &PoolShape, x: &Tensor, dy: &Tensor) -> Tensor {
        self.out(&x.shape, |dx| {
            pool::maxpool_backward(self, s, x.buffer(), dy.buffer(), dx)
        })
    }

    fn avg_pool_forward(&self, s: &AvgPoolShape, x: &Tensor) -> Tensor {
        self.out(&s.out_shape(), |y| {
            pool::avg_pool_forward(self, s, x.buffer(), y)
        })
    }

    fn avg_pool_backward(&self, s: &AvgPoolShape, dy: &Tensor) -> Tensor {
        self.out(&s.in_shape(), |dx| {
            pool::avg_pool_backward(self, s, dy.buffer(), dx)
        })
    }

    fn global_avg_pool_forward(&self, x: &Tensor) -> Tensor {
        let (n, hw, c) = nhwc(&x.shape);
        self.out(&[n, c], |y| {
            pool::global_avg_pool_forward(self, n, hw, c, x.buffer(), y)
        })
    }

    fn global_avg_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor {
        let (n, hw, c) = nhwc(x_shape);
        self.out(x_shape, |dx| {
            pool::global_avg_pool_backward(self, n, hw, c, dy.buffer(), dx)
        })
    }

    fn sk_pool_forward(&self, x: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(&x.shape);
        self.out(&[n, 1, 1, c2 / 2], |y| {
            sk::sk_pool_forward(self, n, hw, c2 / 2, x.buffer(), y)
        })
    }

    fn sk_pool_backward(&self, x_shape: &[usize], dy: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(x_shape);
        self.out(x_shape, |dx| {
            sk::sk_pool_backward(self, n, hw, c2 / 2, dy.buffer(), dx)
        })
    }

    fn sk_combine_forward(&self, x: &Tensor, logits: &Tensor) -> Tensor {
        let (n, hw, c2) = nhwc(&x.shape);
        let shape = [n, x.shape[1], x.shape[2], c2 / 2];
        self.out(&shape, |y| {
            sk::sk_combine_forward(self, n, hw, c2 / 2, x.buffer(), logits.buffer(), y)
        })
    }

    fn sk_combine_backward(&self, x: &Tensor, logits: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
        let (n, hw, c2) = nhwc(&x.shape);
        let mut dlogits = Tensor::gpu_output(self, &logits.shape);
        let dx = self.out(&x.shape, |dx| {
            let (xb, lb, dyb) = (x.buffer(), logits.buffer(), dy.buffer());
            sk::sk_combine_backward(self, n, hw, c2 / 2, xb, lb, dyb, dx, dlogits.buffer_mut())
        });
        (dx, dlogits)
    }

    fn l2_normalize_forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (rows, d) = (x.shape[0], x.shape[1]);
        let mut inv = Tensor::gpu_output(self, &[rows]);
        let z = self.out(&x.shape, |z| {
            normalize::l2_normalize_forward(self, rows, d, x.buffer(), z, inv.buffer_mut())
        });
        (z, inv)
    }

    fn l2_normalize_backward(&self, z: &Tensor, inv_norm: &Tensor, dz: &Tensor) -> Tensor {
        let (rows, d) = (z.shape[0], z.shape[1]);
        self.out(&dz.shape, |dx| {
            let (zb, dzb, inv) = (z.buffer(), dz.buffer(), inv_norm.buffer());
            normalize::l2_normalize_backward(self, rows, d, zb, dzb, inv, dx)
        })
    }

    fn ntxent(&self, z: &Tensor, temperature: f64) -> (Tensor, Tensor) {
        let (rows, d) = (z.shape[0], z.shape[1]);
        self.loss_pair(z, |loss, grad| {
            ntxent::ntxent(self, rows, d, z.buffer(), temperature as f32, loss, grad)
        })
    }

    fn softmax(&self, logits: &Tensor, temperature: f64) -> Tensor {
        let (rows, classes) = (logits.shape[0], logits.shape[1]);
        self.out(&logits.shape, |probs| {
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
        let labels = self.upload(labels);
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
        let labels = self.upload(labels);
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
