//! A whole network: the ResNet encoder, some layers of the projection head and an optional
//! linear classifier. The three stages use three cuts of it:
//! - pretraining: encoder + the 3-layer projection head (dense-BN-ReLU, dense-BN-ReLU,
//!   dense-BN without β and without ReLU, output `proj_dim`);
//! - fine-tuning (and the supervised baseline): encoder + head layer 1 + a zero-initialised
//!   linear classifier, as SimCLRv2 fine-tunes "from the middle of the head";
//! - the distilled student: encoder + classifier.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::layers::{BatchNorm, Builder, Declare, Linear, Shapes};
use crate::nn::params::ParamStore;
use crate::nn::resnet::{Arch, ResNet};
use crate::ops;
use serde::{Deserialize, Serialize};

/// Everything needed to rebuild a model's structure; stored in checkpoint.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    /// How many projection-head layers are kept (3 pretraining, 1 fine-tuning, 0 student).
    pub head_layers: usize,
    /// Output width of the last head layer.
    pub proj_dim: usize,
    /// Classes of the linear classifier, if any.
    pub num_classes: Option<usize>,
}

struct HeadLayer {
    dense: Linear,
    bn: BatchNorm,
    relu: bool,
}

pub struct Model {
    pub spec: ModelSpec,
    pub store: ParamStore,
    encoder: ResNet,
    head: Vec<HeadLayer>,
    classifier: Option<Linear>,
}

impl ModelSpec {
    /// Bounds on every field, so that a hand-edited checkpoint cannot ask for absurd sizes.
    pub fn validate(&self) -> Result<()> {
        self.arch.validate()?;
        let ok = self.head_layers <= 3
            && (1..=65_536).contains(&self.proj_dim)
            && (1..=64).contains(&self.arch.in_channels)
            && self.num_classes.is_none_or(|k| (1..=100_000).contains(&k));
        if !ok {
            return Err(Error::Config(format!("invalid model spec {self:?}")));
        }
        Ok(())
    }
}

/// The model's layers, declared on `p` (allocating or shapes only).
fn declare(
    spec: &ModelSpec,
    p: &mut impl Declare,
) -> Result<(ResNet, Vec<HeadLayer>, Option<Linear>)> {
    spec.validate()?;
    let encoder = ResNet::new(&spec.arch, p)?;
    let features = spec.arch.feature_dim();
    let mut head = Vec::new();
    let mut dim = features;
    for i in 0..spec.head_layers {
        let last = i == 2;
        let out = if last { spec.proj_dim } else { features };
        let name = format!("head.{i}");
        head.push(HeadLayer {
            // Official init: N(0, 0.01²); no dense bias since BN follows.
            dense: Linear::new(p, &format!("{name}.dense"), dim, out, false, 0.01),
            bn: BatchNorm::new(p, &format!("{name}.bn"), out, !last, false),
            relu: !last,
        });
        dim = out;
    }
    let classifier = spec
        .num_classes
        .map(|k| Linear::new(p, "classifier", dim, k, true, 0.0));
    Ok((encoder, head, classifier))
}

/// The names, shapes and kinds of a model's parameters in store order, without allocating
/// them (parameter counts of any size; a checkpoint's shapes checked before loading it).
pub fn param_shapes(spec: &ModelSpec) -> Result<Shapes> {
    let mut shapes = Shapes::default();
    declare(spec, &mut shapes)?;
    Ok(shapes)
}

impl Model {
    pub fn new(spec: &ModelSpec, seed: u64) -> Result<Model> {
        let mut builder = Builder::new(seed);
        let (encoder, head, classifier) = declare(spec, &mut builder)?;
        Ok(Model {
            spec: spec.clone(),
            store: builder.store,
            encoder,
            head,
            classifier,
        })
    }

    /// Images [N, H, W, C] → (encoder features, output): the output is the projection when
    /// there is no classifier, else the logits.
    pub fn forward(&mut self, g: &mut Graph, x: Var, train: bool) -> (Var, Var) {
        let features = self.encoder.forward(g, &mut self.store, x, train);
        let mut h = features;
        for layer in &self.head {
            h = layer.dense.forward(g, &self.store, h);
            h = layer
                .bn
                .forward(g, &mut self.store, h, train, None, layer.relu);
        }
        if let Some(c) = &self.classifier {
            h = c.forward(g, &self.store, h);
        }
        // The network runs in its input's precision, and so does its output (the losses cast
        // to f32 themselves; NT-Xent takes bf16 rows on the tensor cores). The features, for
        // the kNN monitor and evaluation, leave as f32.
        (ops::cast::widen(g, features), h)
    }

    /// Linear evaluation's forward pass: the encoder frozen (inference mode, recorded nothing,
    /// so no gradient reaches it), then the classifier, recorded. Images → logits.
    pub fn forward_frozen_encoder(&mut self, g: &mut Graph, x: Var) -> Var {
        let record = g.record;
        g.record = false;
        let features = self.encoder.forward(g, &mut self.store, x, false);
        let features = ops::cast::widen(g, features);
        g.record = record;
        let classifier = self
            .classifier
            .as_ref()
            .expect("linear evaluation needs a classifier");
        classifier.forward(g, &self.store, features)
    }

    /// Moves every parameter and statistic to `device`.
    pub fn to_device(&mut self, device: &Device) {
        for p in &mut self.store.params {
            if p.value.device() != *device {
                p.value = p.value.to_device(device);
            }
        }
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.store.params[0].value.device()
    }

    /// Trained parameters of the network as used (BN statistics excluded).
    pub fn num_params(&self) -> usize {
        self.store.count("")
    }
}
