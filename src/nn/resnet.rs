//! ResNet encoders as in the official SimCLRv2 code (google-research/simclr, tf2/resnet.py):
//! ResNet-18/34 (basic blocks), ResNet-50/101/152 (bottlenecks, stride on the 3×3 conv), and
//! ResNet-8, a small CPU variant (three stages of one basic block).
//!
//! - Width: `Arch::width` is the channel count of the first stage (64 is the paper's 1×, 128
//!   2×, 192 3×); every other channel count, the stem's included, scales with it.
//! - Stem: 7×7 stride-2 conv, BN-ReLU, 3×3 stride-2 max pool. For images under 64 px the
//!   small-image stem instead: one 3×3 stride-1 conv, BN-ReLU, no max pool.
//! - Selective kernels (`Arch::sk`, the paper's "+SK"): every bottleneck's 3×3 conv becomes a
//!   selective-kernel conv (`SkConv`), and the network becomes a ResNet-D (Bag of Tricks,
//!   arXiv:1812.01187): the 7×7 stem becomes three 3×3 convs (C/2 stride 2, C/2, C, each
//!   with BN-ReLU) and the projection shortcuts average-pool (2×2, the block's stride) before
//!   a stride-1 1×1 conv, so that they see every pixel instead of one in four. As in the
//!   official code, basic blocks (ResNet-8/18/34) get only the ResNet-D part, and the small-
//!   image stem stays the single 3×3 conv (SK and the pooled shortcuts still apply).
//! - Projection shortcuts (conv + BN) only where a block changes the shape, as torchvision
//!   (the official code also projects in the first block of ResNet-18/34, where the shape
//!   does not change; torchvision's parameter counts are the ones users compare with).
//! - The last BN of every residual block starts with γ = 0, so blocks start as identities.
//!
//! Padding: strided convs pad symmetrically (k/2), which equals TF's fixed padding for odd
//! kernels; the shortcut's average pool uses TF's 'SAME' padding with padded elements left out
//! of the mean, which equals the official pool wherever the pooled map has an even size (all
//! of them at 224 px and 32 px; for odd sizes the official code averages in one zero row).

use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::nn::layers::{BatchNorm, Conv, Declare};
use crate::nn::params::ParamStore;
use crate::ops;
use serde::{Deserialize, Serialize};

/// What defines an encoder's shape; stored in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// resnet8, resnet18, resnet34, resnet50, resnet101 or resnet152.
    pub name: String,
    /// Channels of the first stage (64 = the paper's 1× width, 128 = 2×, 192 = 3×).
    pub width: usize,
    pub in_channels: usize,
    pub image_size: usize,
    /// Selective kernels and ResNet-D (absent in older checkpoints: off).
    #[serde(default)]
    pub sk: bool,
}

/// The official SK ratio is 0.0625: the mixing layers' hidden width is max(C/16, 32).
const SK_REDUCTION: usize = 16;
const SK_MIN_DIM: usize = 32;

#[derive(Clone, Copy, PartialEq)]
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
        "resnet101" => (&[3, 4, 23, 3], BlockKind::Bottleneck),
        "resnet152" => (&[3, 8, 36, 3], BlockKind::Bottleneck),
        _ => {
            return Err(Error::Config(format!(
                "unknown architecture {name} (expected resnet8, resnet18, resnet34, resnet50, \
                 resnet101 or resnet152)"
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
        if self.sk && self.width < 2 {
            return Err(Error::Config(
                "width 1 with --sk: the ResNet-D stem needs width/2 ≥ 1 channels".into(),
            ));
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

/// A convolution and its batch norm (with a residual add and the ReLU fused into the batch
/// norm when asked).
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(
        p: &mut impl Declare,
        name: &str,
        (cin, cout): (usize, usize),
        (k, stride): (usize, usize),
        zero_gamma: bool,
    ) -> ConvBn {
        ConvBn {
            conv: Conv::new(p, &format!("{name}.conv"), cin, cout, k, stride),
            bn: BatchNorm::new(p, &format!("{name}.bn"), cout, true, zero_gamma),
        }
    }

    fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
        skip: Option<Var>,
        relu: bool,
    ) -> Var {
        let y = self.conv.forward(g, store, x);
        self.bn.forward(g, store, y, train, skip, relu)
    }
}

/// The selective-kernel 3×3 conv of a bottleneck (official `SK_Conv2D`, arXiv:1903.06586):
/// one 3×3 conv makes two streams of C channels (BN-ReLU), their sum is average-pooled over
/// the image, squeezed by a 1×1 conv to max(C/16, 32) (BN-ReLU) and expanded by a 1×1 conv
/// to two logits per channel, whose softmax weighs the two streams into the C outputs.
struct SkConv {
    streams: ConvBn,
    reduce: ConvBn,
    expand: Conv,
}

impl SkConv {
    fn new(p: &mut impl Declare, name: &str, cin: usize, c: usize, stride: usize) -> SkConv {
        let mid = (c / SK_REDUCTION).max(SK_MIN_DIM);
        SkConv {
            streams: ConvBn::new(p, name, (cin, 2 * c), (3, stride), false),
            reduce: ConvBn::new(p, &format!("{name}.sk_reduce"), (c, mid), (1, 1), false),
            expand: Conv::new(p, &format!("{name}.sk_expand.conv"), mid, 2 * c, 1, 1),
        }
    }

    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Var {
        let streams = self.streams.forward(g, store, x, train, None, true);
        let pooled = ops::sk::sk_pool(g, streams);
        let z = self.reduce.forward(g, store, pooled, train, None, true);
        let logits = self.expand.forward(g, store, z);
        ops::sk::sk_combine(g, streams, logits)
    }
}

/// A layer of a residual block's main path.
enum Layer {
    ConvBn(ConvBn),
    Sk(SkConv),
}

impl Layer {
    /// Conv-BN layers end in a ReLU, after the block's sum with `skip` on its last layer. The SK
    /// conv's output needs no ReLU (a convex combination of two ReLU outputs is already ≥ 0);
    /// it sits only where a ReLU would go, never last.
    fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
        skip: Option<Var>,
    ) -> Var {
        match self {
            Layer::ConvBn(l) => l.forward(g, store, x, train, skip, true),
            Layer::Sk(l) => {
                assert!(skip.is_none(), "an SK conv is never a block's last layer");
                l.forward(g, store, x, train)
            }
        }
    }
}

/// The projection shortcut of a block that changes the shape: a 1×1 conv (stride s) + BN, or
/// for ResNet-D a 2×2 average pool (stride s) then a stride-1 1×1 conv + BN. In the first
/// bottleneck (stride 1, 4× the channels) that pool is a 2×2 'SAME' blur, as in the official
/// code.
struct Shortcut {
    avg_pool_stride: Option<usize>,
    proj: ConvBn,
}

impl Shortcut {
    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Var {
        let x = match self.avg_pool_stride {
            Some(stride) => ops::pool::avg_pool2d(g, x, 2, stride),
            None => x,
        };
        self.proj.forward(g, store, x, train, None, false)
    }
}

/// A residual block: its layers (ReLU between them) and an optional projection shortcut.
struct Block {
    layers: Vec<Layer>,
    shortcut: Option<Shortcut>,
}

impl Block {
    /// Declares the block `name` taking `cin` channels; returns it and its output channels.
    fn new(
        p: &mut impl Declare,
        name: &str,
        kind: BlockKind,
        sk: bool,
        (cin, mid): (usize, usize),
        stride: usize,
    ) -> (Block, usize) {
        let conv = |p: &mut _, l: &str, cin, cout, k, stride, zero_gamma| {
            let name = format!("{name}.{l}");
            Layer::ConvBn(ConvBn::new(p, &name, (cin, cout), (k, stride), zero_gamma))
        };
        let (layers, cout) = match kind {
            BlockKind::Basic => (
                vec![
                    conv(p, "a", cin, mid, 3, stride, false),
                    conv(p, "b", mid, mid, 3, 1, true),
                ],
                mid,
            ),
            BlockKind::Bottleneck => {
                let a = conv(p, "a", cin, mid, 1, 1, false);
                let b = if sk {
                    Layer::Sk(SkConv::new(p, &format!("{name}.b"), mid, mid, stride))
                } else {
                    conv(p, "b", mid, mid, 3, stride, false)
                };
                let c = conv(p, "c", mid, mid * 4, 1, 1, true);
                (vec![a, b, c], mid * 4)
            }
        };
        let shortcut = (stride != 1 || cin != cout).then(|| {
            let name = format!("{name}.shortcut");
            let conv_stride = if sk { 1 } else { stride };
            Shortcut {
                avg_pool_stride: sk.then_some(stride),
                proj: ConvBn::new(p, &name, (cin, cout), (1, conv_stride), false),
            }
        });
        (Block { layers, shortcut }, cout)
    }

    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Var {
        let skip = match &self.shortcut {
            Some(s) => s.forward(g, store, x, train),
            None => x,
        };
        let mut h = x;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            // ReLU after every layer, fused into its batch norm; the last batch norm adds the
            // skip before its ReLU, so the block's sum and ReLU take no pass of their own.
            h = layer.forward(g, store, h, train, (i == last).then_some(skip));
        }
        h
    }
}

pub struct ResNet {
    pub arch: Arch,
    /// Conv-BN-ReLU layers before the max pool: one, or three for the ResNet-D stem.
    stem: Vec<ConvBn>,
    blocks: Vec<Block>,
}

impl ResNet {
    /// Declares the encoder's parameters under `encoder.`: `encoder.stem` (or
    /// `encoder.stem.{0,1,2}` for the ResNet-D stem), then `encoder.stage{S}.{B}.{a,b,c}` and
    /// `.shortcut`, each with `.conv.weight` and `.bn.{gamma,beta,running_mean,running_var}`;
    /// an SK conv adds `.b.sk_reduce.{conv,bn}` and `.b.sk_expand.conv` (its `.b.conv` makes
    /// both streams: 2C output channels).
    pub fn new(arch: &Arch, p: &mut impl Declare) -> Result<ResNet> {
        arch.validate()?;
        let (stages, kind) = layout(&arch.name)?;
        let (c, cin) = (arch.width, arch.in_channels);
        let stem = if arch.small_stem() {
            vec![ConvBn::new(p, "encoder.stem", (cin, c), (3, 1), false)]
        } else if arch.sk {
            let half = c / 2;
            vec![
                ConvBn::new(p, "encoder.stem.0", (cin, half), (3, 2), false),
                ConvBn::new(p, "encoder.stem.1", (half, half), (3, 1), false),
                ConvBn::new(p, "encoder.stem.2", (half, c), (3, 1), false),
            ]
        } else {
            vec![ConvBn::new(p, "encoder.stem", (cin, c), (7, 2), false)]
        };
        let mut blocks = Vec::new();
        let mut cin = c;
        for (s, &count) in stages.iter().enumerate() {
            for b in 0..count {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let name = format!("encoder.stage{}.{b}", s + 1);
                let (block, cout) = Block::new(p, &name, kind, arch.sk, (cin, c << s), stride);
                blocks.push(block);
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
        let mut h = x;
        for layer in &self.stem {
            h = layer.forward(g, store, h, train, None, true);
        }
        if !self.arch.small_stem() {
            h = ops::pool::maxpool2d(g, h, 3, 2, 1);
        }
        for block in &self.blocks {
            h = block.forward(g, store, h, train);
        }
        ops::pool::global_avg_pool(g, h)
    }
}
