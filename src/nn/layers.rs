//! The layers models are built from. A layer holds only the indices of its parameters in
//! the `ParamStore`; `forward` reads them into the graph. Layers declare their parameters
//! through `Declare`, so that the same construction code either allocates and initialises the
//! values (`Builder`) or only records the shapes (`Shapes`: counting the parameters of a
//! ResNet-152 3×+SK, 3 GB of f32, allocates nothing).

use crate::autograd::{Graph, Var};
use crate::nn::params::{Kind, ParamStore};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// How a parameter starts.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// N(0, std²), drawn from the model's generator in declaration order.
    Normal(f64),
    /// Every element equal to the value.
    Const(f64),
}

/// Where layers put their parameters. Returns the parameter's index: its position in
/// declaration order, in either implementation.
pub trait Declare {
    fn declare(&mut self, name: String, shape: &[usize], kind: Kind, init: Init) -> usize;
}

/// Allocates and initialises the parameters: the store, and the generator the initial values
/// are drawn from (in declaration order, so a seed always gives the same model).
pub struct Builder {
    pub store: ParamStore,
    pub rng: Rng,
}

impl Builder {
    pub fn new(seed: u64) -> Builder {
        Builder {
            store: ParamStore::default(),
            rng: Rng::new(seed),
        }
    }
}

impl Declare for Builder {
    fn declare(&mut self, name: String, shape: &[usize], kind: Kind, init: Init) -> usize {
        let value = match init {
            Init::Normal(std) => {
                let n: usize = shape.iter().product();
                let values: Vec<f64> = (0..n).map(|_| self.rng.normal() * std).collect();
                Tensor::from_f64(shape, DType::F32, &values)
            }
            Init::Const(v) => Tensor::full(shape, DType::F32, v),
        };
        self.store.add(name, value, kind)
    }
}

/// A parameter's name, shape and kind, without its values.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamShape {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: Kind,
}

/// The shapes of a model's parameters, in store order.
#[derive(Default)]
pub struct Shapes {
    pub params: Vec<ParamShape>,
}

impl Declare for Shapes {
    fn declare(&mut self, name: String, shape: &[usize], kind: Kind, _init: Init) -> usize {
        self.params.push(ParamShape {
            name,
            shape: shape.to_vec(),
            kind,
        });
        self.params.len() - 1
    }
}

impl Shapes {
    /// Number of trained scalars (BN statistics excluded) under a name prefix, as
    /// `ParamStore::count`.
    pub fn count(&self, prefix: &str) -> usize {
        self.params
            .iter()
            .filter(|p| p.kind != Kind::Stat && p.name.starts_with(prefix))
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }
}

/// Convolution without bias, "same" padding for odd kernels; He-normal init (fan-in).
pub struct Conv {
    w: usize,
    stride: usize,
    pad: usize,
}

impl Conv {
    pub fn new(
        store: &mut impl Declare,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> Conv {
        let std = (2.0 / (k * k * cin) as f64).sqrt();
        let w = store.declare(
            format!("{name}.weight"),
            &[cout, k, k, cin],
            Kind::Weight,
            Init::Normal(std),
        );
        Conv {
            w,
            stride,
            pad: k / 2,
        }
    }

    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Var {
        let w = g.param(self.w, store.value(self.w));
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
        store: &mut impl Declare,
        name: &str,
        c: usize,
        center: bool,
        zero_gamma: bool,
    ) -> BatchNorm {
        let g0 = if zero_gamma { 0.0 } else { 1.0 };
        let mut add = |field: &str, kind, v| {
            store.declare(format!("{name}.{field}"), &[c], kind, Init::Const(v))
        };
        let gamma = add("gamma", Kind::Bias, g0);
        let beta = center.then(|| add("beta", Kind::Bias, 0.0));
        let mean = add("running_mean", Kind::Stat, 0.0);
        let var = add("running_var", Kind::Stat, 1.0);
        BatchNorm {
            gamma,
            beta,
            mean,
            var,
        }
    }

    /// `skip` fuses a residual add after the normalisation, `relu` a ReLU after that.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
        skip: Option<Var>,
        relu: bool,
    ) -> Var {
        let gamma = g.param(self.gamma, store.value(self.gamma));
        let beta = self.beta.map(|b| g.param(b, store.value(b)));
        if train {
            let (mean, var) = store.values_mut(self.mean, self.var);
            ops::batchnorm::batch_norm_train(g, x, gamma, beta, skip, relu, mean, var)
        } else {
            let (mean, var) = (store.value(self.mean), store.value(self.var));
            ops::batchnorm::batch_norm_eval(g, x, gamma, beta, skip, relu, mean, var)
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
        store: &mut impl Declare,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
        std: f64,
    ) -> Linear {
        let w = store.declare(
            format!("{name}.weight"),
            &[out, inp],
            Kind::Weight,
            Init::Normal(std),
        );
        let b = bias
            .then(|| store.declare(format!("{name}.bias"), &[out], Kind::Bias, Init::Const(0.0)));
        Linear { w, b }
    }

    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Var {
        let w = g.param(self.w, store.value(self.w));
        let b = self.b.map(|b| g.param(b, store.value(b)));
        ops::gemm::linear(g, x, w, b)
    }
}
