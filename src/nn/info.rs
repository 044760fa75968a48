//! `simclr info`: what an architecture costs, from its parameter shapes alone (no values are
//! allocated, so a ResNet-152 3×+SK, 795M parameters, is counted instantly).

use crate::error::Result;
use crate::nn::model::{param_shapes, ModelSpec};
use crate::nn::resnet::Arch;
use serde::Serialize;
use std::fmt;

/// Output width of the pretraining projection head (the paper's 128).
pub const PROJ_DIM: usize = 128;

#[derive(Clone, Debug, Serialize)]
pub struct Info {
    pub arch: String,
    /// Channels of the first stage, and as a multiple of the paper's 64.
    pub width: usize,
    pub width_multiplier: f64,
    pub sk: bool,
    pub image_size: usize,
    pub in_channels: usize,
    /// Trained parameters of the encoder (the figure the paper's tables give).
    pub encoder_params: usize,
    /// Trained parameters of the 3-layer projection head used in pretraining (output 128).
    pub head_params: usize,
    /// Encoder output width (input of the head and of classifiers).
    pub feature_dim: usize,
    /// Tensors of encoder + head, BN statistics included, and their size in f32 (the weights a
    /// pretraining checkpoint holds, without optimiser state).
    pub tensors: usize,
    pub weight_bytes: usize,
}

/// The sizes of `arch` with the pretraining head (3 layers, output 128); an invalid `arch` is
/// an error naming the problem.
pub fn info(arch: &Arch) -> Result<Info> {
    let spec = ModelSpec {
        arch: arch.clone(),
        head_layers: 3,
        proj_dim: PROJ_DIM,
        num_classes: None,
    };
    let shapes = param_shapes(&spec)?;
    let scalars: usize = shapes
        .params
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    Ok(Info {
        arch: arch.name.clone(),
        width: arch.width,
        width_multiplier: arch.width as f64 / 64.0,
        sk: arch.sk,
        image_size: arch.image_size,
        in_channels: arch.in_channels,
        encoder_params: shapes.count("encoder."),
        head_params: shapes.count("head."),
        feature_dim: arch.feature_dim(),
        tensors: shapes.params.len(),
        weight_bytes: scalars * 4,
    })
}

/// Millions, one decimal.
fn millions(n: usize) -> String {
    format!("{:.1}M", n as f64 / 1e6)
}

/// The text form of `simclr info`, e.g. "resnet50 2×+SK (width 128, 224 px, 3 channels):
/// encoder 140.3M parameters, projection head 34.1M, features 4096, weights 698.2 MB".
impl fmt::Display for Info {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let sk = if self.sk { "+SK" } else { "" };
        write!(
            f,
            "{} {}×{sk} (width {}, {} px, {} channels): encoder {} parameters, projection \
             head {}, features {}, weights {:.1} MB",
            self.arch,
            self.width_multiplier,
            self.width,
            self.image_size,
            self.in_channels,
            millions(self.encoder_params),
            millions(self.head_params),
            self.feature_dim,
            self.weight_bytes as f64 / 1e6,
        )
    }
}
