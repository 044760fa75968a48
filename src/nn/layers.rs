//! The layers models are built from. A layer holds only the indices of its parameters in
//! the `ParamStore`; `forward` reads them into the graph.

use crate::autograd::{Graph, Var};
use crate::nn::params::{Kind, ParamStore};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

fn normal(shape: &[usize], std: f64, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| rng.normal() * std).collect();
    Tensor::from_f64(shape, DType::F32, &values)
}

/// Convolution without bias, "same" padding for odd kernels; He-normal init (fan-in).
pub struct Conv {
    w: usize,
    stride: usize,
    pad: usize,
}

impl Conv {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        rng: &mut Rng,
    ) -> Conv {
        let std = (2.0 / (k * k * cin) as f64).sqrt();
        let w = store.add(
            format!("{name}.weight"),
            normal(&[cout, k, k, cin], std, rng),
            Kind::Weight,
        );
        Conv {
            w,
            stride,
            pad: k / 2,
        }
    }

    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Var {
        let w = g.param(store, self.w);
        ops::conv::conv2d(g, x, w, self.stride, self.pad)
    }
}

/// Batch norm with γ, optional β (`center`), running mean and variance.
pub struct BatchNorm {
    gamma: usize,
    beta: Option<usize>,
    mean: usize,
    var: usize,
}

impl BatchNorm {
    /// `zero_gamma` starts γ at 0 (the last BN of each residual block, so blocks start as
    /// identities).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c: usize,
        center: bool,
        zero_gamma: bool,
    ) -> BatchNorm {
        let g0 = if zero_gamma { 0.0 } else { 1.0 };
        let gamma = store.add(
            format!("{name}.gamma"),
            Tensor::full(&[c], DType::F32, g0),
            Kind::Bias,
        );
        let beta = center.then(|| {
            store.add(
                format!("{name}.beta"),
                Tensor::zeros(&[c], DType::F32),
                Kind::Bias,
            )
        });
        let mean = store.add(
            format!("{name}.running_mean"),
            Tensor::zeros(&[c], DType::F32),
            Kind::Stat,
        );
        let var = store.add(
            format!("{name}.running_var"),
            Tensor::full(&[c], DType::F32, 1.0),
            Kind::Stat,
        );
        BatchNorm {
            gamma,
            beta,
            mean,
            var,
        }
    }

    /// `relu` fuses a ReLU after the normalisation.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
        relu: bool,
    ) -> Var {
        let gamma = g.param(store, self.gamma);
        let beta = self.beta.map(|b| g.param(store, b));
        if train {
            // Take the two statistics out of the store to update them in place.
            let mut mean = std::mem::replace(
                &mut store.params[self.mean].value,
                Tensor::zeros(&[0], DType::F32),
            );
            let mut var = std::mem::replace(
                &mut store.params[self.var].value,
                Tensor::zeros(&[0], DType::F32),
            );
            let y = ops::batchnorm::batch_norm_train(g, x, gamma, beta, relu, &mut mean, &mut var);
            store.params[self.mean].value = mean;
            store.params[self.var].value = var;
            y
        } else {
            ops::batchnorm::batch_norm_eval(
                g,
                x,
                gamma,
                beta,
                relu,
                store.value(self.mean),
                store.value(self.var),
            )
        }
    }
}

/// Dense layer y = x·Wᵀ (+ b).
pub struct Linear {
    w: usize,
    b: Option<usize>,
}

impl Linear {
    /// `std` 0 gives a zero-initialised layer (the fine-tuning classifier).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
        std: f64,
        rng: &mut Rng,
    ) -> Linear {
        let w = store.add(
            format!("{name}.weight"),
            normal(&[out, inp], std, rng),
            Kind::Weight,
        );
        let b = bias.then(|| {
            store.add(
                format!("{name}.bias"),
                Tensor::zeros(&[out], DType::F32),
                Kind::Bias,
            )
        });
        Linear { w, b }
    }

    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Var {
        let w = g.param(store, self.w);
        let b = self.b.map(|b| g.param(store, b));
        ops::linear::linear(g, x, w, b)
    }
}
