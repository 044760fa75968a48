//! ResNet encoders: ResNet-8 (a small CPU variant: three stages of one basic block),
//! ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks), with a base width (channels of
//! the first stage; 64 is the paper's 1×) and the small-image stem (3×3 stride 1, no max
//! pool) used automatically for images under 64 px. The last BN of every residual block
//! starts with γ = 0.

use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::nn::layers::{BatchNorm, Conv};
use crate::nn::params::ParamStore;
use crate::ops;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// What defines an encoder's shape; stored in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// resnet8, resnet18, resnet34 or resnet50.
    pub name: String,
    /// Channels of the first stage (64 = the paper's 1× width).
    pub width: usize,
    pub in_channels: usize,
    pub image_size: usize,
}

enum BlockKind {
    Basic,
    Bottleneck,
}

/// Blocks per stage and block kind of each depth.
fn layout(name: &str) -> Result<(&'static [usize], BlockKind)> {
    Ok(match name {
        "resnet8" => (&[1, 1, 1], BlockKind::Basic),
        "resnet18" => (&[2, 2, 2, 2], BlockKind::Basic),
        "resnet34" => (&[3, 4, 6, 3], BlockKind::Basic),
        "resnet50" => (&[3, 4, 6, 3], BlockKind::Bottleneck),
        _ => {
            return Err(Error::Config(format!(
                "unknown architecture {name} (expected resnet8, resnet18, resnet34 or resnet50)"
            )))
        }
    })
}

impl Arch {
    pub fn validate(&self) -> Result<()> {
        layout(&self.name)?;
        if !(1..=4096).contains(&self.width) {
            return Err(Error::Config(format!(
                "width {} is not in 1..=4096",
                self.width
            )));
        }
        Ok(())
    }

    pub fn small_stem(&self) -> bool {
        self.image_size < 64
    }

    /// Width of the encoder's output (after global average pooling).
    pub fn feature_dim(&self) -> usize {
        let (stages, kind) = layout(&self.name).expect("validated arch");
        let last = self.width << (stages.len() - 1);
        match kind {
            BlockKind::Basic => last,
            BlockKind::Bottleneck => last * 4,
        }
    }
}

struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &mut ParamStore,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        zero_gamma: bool,
        rng: &mut Rng,
    ) -> ConvBn {
        ConvBn {
            conv: Conv::new(store, &format!("{name}.conv"), cin, cout, k, stride, rng),
            bn: BatchNorm::new(store, &format!("{name}.bn"), cout, true, zero_gamma),
        }
    }

    fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
        relu: bool,
    ) -> Var {
        let y = self.conv.forward(g, store, x);
        self.bn.forward(g, store, y, train, relu)
    }
}

/// A residual block: its conv-BN layers (ReLU between them) and an optional projection
/// shortcut (1×1 conv + BN) where the shape changes.
struct Block {
    layers: Vec<ConvBn>,
    shortcut: Option<ConvBn>,
}

impl Block {
    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Var {
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            // ReLU between the layers, fused into the batch norm; the last one follows the sum.
            h = layer.forward(g, store, h, train, i + 1 < self.layers.len());
        }
        let skip = match &self.shortcut {
            Some(s) => s.forward(g, store, x, train, false),
            None => x,
        };
        let sum = ops::elementwise::add(g, h, skip);
        ops::elementwise::relu(g, sum)
    }
}

pub struct ResNet {
    pub arch: Arch,
    stem: ConvBn,
    blocks: Vec<Block>,
}

impl ResNet {
    /// Adds the encoder's parameters under `encoder.` to the store.
    pub fn new(arch: &Arch, store: &mut ParamStore, rng: &mut Rng) -> Result<ResNet> {
        arch.validate()?;
        let (stages, kind) = layout(&arch.name)?;
        let (k, stride) = if arch.small_stem() { (3, 1) } else { (7, 2) };
        let stem = ConvBn::new(
            store,
            "encoder.stem",
            arch.in_channels,
            arch.width,
            k,
            stride,
            false,
            rng,
        );
        let mut blocks = Vec::new();
        let mut cin = arch.width;
        for (s, &count) in stages.iter().enumerate() {
            let mid = arch.width << s;
            for b in 0..count {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let name = format!("encoder.stage{}.{b}", s + 1);
                let (layers, cout) = match kind {
                    BlockKind::Basic => (
                        vec![
                            ConvBn::new(
                                store,
                                &format!("{name}.a"),
                                cin,
                                mid,
                                3,
                                stride,
                                false,
                                rng,
                            ),
                            ConvBn::new(store, &format!("{name}.b"), mid, mid, 3, 1, true, rng),
                        ],
                        mid,
                    ),
                    BlockKind::Bottleneck => (
                        vec![
                            ConvBn::new(store, &format!("{name}.a"), cin, mid, 1, 1, false, rng),
                            ConvBn::new(
                                store,
                                &format!("{name}.b"),
                                mid,
                                mid,
                                3,
                                stride,
                                false,
                                rng,
                            ),
                            ConvBn::new(store, &format!("{name}.c"), mid, mid * 4, 1, 1, true, rng),
                        ],
                        mid * 4,
                    ),
                };
                let shortcut = (stride != 1 || cin != cout).then(|| {
                    ConvBn::new(
                        store,
                        &format!("{name}.shortcut"),
                        cin,
                        cout,
                        1,
                        stride,
                        false,
                        rng,
                    )
                });
                blocks.push(Block { layers, shortcut });
                cin = cout;
            }
        }
        Ok(ResNet {
            arch: arch.clone(),
            stem,
            blocks,
        })
    }

    /// [N, H, W, C] images → [N, feature_dim] features.
    pub fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Var {
        let mut h = self.stem.forward(g, store, x, train, true);
        if !self.arch.small_stem() {
            h = ops::pool::maxpool2d(g, h, 3, 2, 1);
        }
        for block in &self.blocks {
            h = block.forward(g, store, h, train);
        }
        ops::pool::global_avg_pool(g, h)
    }
}
