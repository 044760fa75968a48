//! PyTorch interop: a checkpoint's encoder (and classifier) under torchvision's ResNet names,
//! and a checkpoint's predictions as JSON lines.
//!
//! `export_torchvision` writes a safetensors file that `torchvision.models.resnetN()` loads
//! with `strict=True`. Our names map to torchvision's as follows (BN: γ → `weight`,
//! β → `bias`, `running_mean`, `running_var`, plus `num_batches_tracked`, an int64 scalar
//! we do not count, written as 0):
//!
//! | simclr                                    | torchvision                      |
//! |-------------------------------------------|----------------------------------|
//! | `encoder.stem.conv.weight`                | `conv1.weight`                   |
//! | `encoder.stem.bn.*`                       | `bn1.*`                          |
//! | `encoder.stageS.B.{a,b,c}.conv.weight`    | `layerS.B.conv{1,2,3}.weight`    |
//! | `encoder.stageS.B.{a,b,c}.bn.*`           | `layerS.B.bn{1,2,3}.*`           |
//! | `encoder.stageS.B.shortcut.conv.weight`   | `layerS.B.downsample.0.weight`   |
//! | `encoder.stageS.B.shortcut.bn.*`          | `layerS.B.downsample.1.*`        |
//! | `classifier.{weight,bias}` (student)      | `fc.{weight,bias}`               |
//!
//! Conv kernels go from our KRSC [out, kh, kw, in] to PyTorch's OIHW [out, in, kh, kw];
//! dense weights are [out, in] on both sides and are copied as they are.
//!
//! The classifier of a fine-tuned (or baseline) checkpoint sits on head layer 1, not on the
//! encoder, as SimCLRv2 fine-tunes from the middle of the projection head. Its `fc` is then
//! `nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, k))`:
//! `head.0.dense.weight` → `fc.0.weight`, `head.0.bn.*` → `fc.1.*`, `classifier.*` →
//! `fc.3.*`. Set `model.fc` to that before loading. A checkpoint without a classifier
//! (pretraining) exports the encoder alone: set `model.fc = nn.Identity()` before loading
//! (the projection head is not exported).
//!
//! What torchvision lacks keeps torchvision's names where a counterpart exists, and otherwise
//! follows timm's ResNet-D names; `scripts/check_export.py`'s `build_resnet` builds the
//! matching PyTorch module from torchvision's own blocks:
//! - Widths other than 64 (the paper's 2×, 3×): the same names, every channel count scaled.
//! - ResNet-D stem (with SK): `conv1` is `Sequential(conv, BN, ReLU, conv, BN, ReLU, conv)`:
//!   `encoder.stem.{0,1,2}.conv` → `conv1.{0,3,6}.weight`, `encoder.stem.{0,1}.bn` →
//!   `conv1.{1,4}.*`, `encoder.stem.2.bn` → `bn1.*`.
//! - ResNet-D shortcut: `downsample` is `Sequential(2×2 average pool, conv, BN)`:
//!   `.shortcut.conv` → `downsample.1.weight`, `.shortcut.bn` → `downsample.2.*`.
//! - Selective kernel (bottleneck 3×3 conv): `conv2`/`bn2` make both streams (2C outputs),
//!   followed by a module `sk` mixing them into C: `.b.sk_reduce.conv` → `sk.fc_reduce.weight`,
//!   `.b.sk_reduce.bn` → `sk.bn.*`, `.b.sk_expand.conv` → `sk.fc_select.weight`.
//!
//! What torchvision's ResNets cannot hold is refused with one line: ResNet-8, the small-image
//! stem (3×3 stride-1 conv without max pool, used below 64 px) and inputs with other than 3
//! channels (torchvision's stem is RGB: 1-channel Fashion-MNIST is refused; train on RGB
//! data of at least 64 px to export).

use crate::data::augment::Normalize;
use crate::data::{load, Format, LoadOptions};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::model::{param_shapes, ModelSpec};
use crate::train::checkpoint;
use crate::train::eval::{argmax, forward_all};
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What `export_torchvision` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportSummary {
    /// resnet18, resnet34, resnet50, resnet101 or resnet152.
    pub arch: String,
    /// Channels of the first stage (64 without SK: torchvision's own constructors hold it).
    pub width: usize,
    /// Selective kernels and ResNet-D.
    pub sk: bool,
    /// Side of the images the model was trained on.
    pub image_size: usize,
    /// "linear" (`fc.weight`, `fc.bias`), "head" (`fc` is the Sequential of head layer 1 and
    /// the classifier) or "none" (encoder only).
    pub fc: String,
    pub num_classes: Option<usize>,
    /// Tensors written.
    pub tensors: usize,
    /// Scalars written (BN statistics and counters included).
    pub values: usize,
    /// The input standardisation the model expects: x = (pixel / 255 − mean[c]) / std[c], per
    /// channel (None for a checkpoint written before it was stored).
    pub normalize: Option<Normalize>,
}

/// One tensor of the exported file: its torchvision name, dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    /// "F32" or "I64", as safetensors spells them.
    pub dtype: &'static str,
    pub shape: Vec<usize>,
}

/// Where one exported tensor comes from.
enum Source {
    /// The parameter with this index in the store: conv kernels (rank 4) are transposed
    /// KRSC → OIHW, the rest (vectors, dense [out, in]) copied.
    Param(usize),
    /// A BN's `num_batches_tracked`.
    Counter,
}

/// How the classifier is laid out in torchvision's `fc`.
#[derive(Clone, Copy, PartialEq)]
enum Fc {
    None,
    Linear,
    Head,
}

impl Fc {
    fn name(self) -> &'static str {
        match self {
            Fc::None => "none",
            Fc::Linear => "linear",
            Fc::Head => "head",
        }
    }
}

/// The `fc` layout of a model of this spec, or why torchvision cannot hold it.
fn fc_layout(spec: &ModelSpec) -> std::result::Result<Fc, String> {
    let a = &spec.arch;
    if a.name == "resnet8" {
        return Err(
            "resnet8 has no torchvision counterpart (torchvision has resnet18, 34, 50, 101, 152)"
                .into(),
        );
    }
    if a.small_stem() {
        return Err(format!(
            "this {} for {}px images has the small-image stem (3x3 stride-1 conv, no max pool), \
             which torchvision's ResNets lack; train on images of at least 64 px to export",
            a.name, a.image_size
        ));
    }
    if a.in_channels != 3 {
        return Err(format!(
            "this {} takes {}-channel images but torchvision's ResNets take 3 (RGB)",
            a.name, a.in_channels
        ));
    }
    match (spec.num_classes, spec.head_layers) {
        (None, _) => Ok(Fc::None),
        (Some(_), 0) => Ok(Fc::Linear),
        (Some(_), 1) => Ok(Fc::Head),
        (Some(_), n) => Err(format!(
            "its classifier follows {n} head layers; only 0 (distilled) or 1 (fine-tuned) export"
        )),
    }
}

/// Our BN field → torchvision's.
fn bn_field(x: &str) -> &str {
    match x {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

/// torchvision's name for one of our parameters: Ok(None) for a projection-head tensor that
/// is not exported, Err for a name this module does not know.
fn torchvision_name(ours: &str, fc: Fc, sk: bool) -> std::result::Result<Option<String>, String> {
    let unknown = || format!("no torchvision name for {ours}");
    let parts: Vec<&str> = ours.split('.').collect();
    let name = match parts.as_slice() {
        ["encoder", "stem", "conv", "weight"] => "conv1.weight".to_string(),
        ["encoder", "stem", "bn", x] => format!("bn1.{}", bn_field(x)),
        // The ResNet-D stem: conv1 = Sequential(conv, BN, ReLU, conv, BN, ReLU, conv), bn1.
        ["encoder", "stem", i, "conv", "weight"] => match *i {
            "0" => "conv1.0.weight".into(),
            "1" => "conv1.3.weight".into(),
            "2" => "conv1.6.weight".into(),
            _ => return Err(unknown()),
        },
        ["encoder", "stem", i, "bn", x] => match *i {
            "0" => format!("conv1.1.{}", bn_field(x)),
            "1" => format!("conv1.4.{}", bn_field(x)),
            "2" => format!("bn1.{}", bn_field(x)),
            _ => return Err(unknown()),
        },
        ["encoder", stage, block, "b", mix, kind, x] if stage.starts_with("stage") => {
            let s = &stage["stage".len()..];
            match (*mix, *kind) {
                ("sk_reduce", "conv") => format!("layer{s}.{block}.sk.fc_reduce.{x}"),
                ("sk_reduce", "bn") => format!("layer{s}.{block}.sk.bn.{}", bn_field(x)),
                ("sk_expand", "conv") => format!("layer{s}.{block}.sk.fc_select.{x}"),
                _ => return Err(unknown()),
            }
        }
        ["encoder", stage, block, layer, kind, x] if stage.starts_with("stage") => {
            let s = &stage["stage".len()..];
            let (conv, bn) = match (*layer, sk) {
                ("a", _) => ("conv1", "bn1"),
                ("b", _) => ("conv2", "bn2"),
                ("c", _) => ("conv3", "bn3"),
                ("shortcut", false) => ("downsample.0", "downsample.1"),
                // ResNet-D: downsample = Sequential(average pool, conv, BN).
                ("shortcut", true) => ("downsample.1", "downsample.2"),
                _ => return Err(unknown()),
            };
            match *kind {
                "conv" => format!("layer{s}.{block}.{conv}.{x}"),
                "bn" => format!("layer{s}.{block}.{bn}.{}", bn_field(x)),
                _ => return Err(unknown()),
            }
        }
        ["head", "0", "dense", x] if fc == Fc::Head => format!("fc.0.{x}"),
        ["head", "0", "bn", x] if fc == Fc::Head => format!("fc.1.{}", bn_field(x)),
        ["head", ..] => return Ok(None),
        ["classifier", x] if fc == Fc::Head => format!("fc.3.{x}"),
        ["classifier", x] => format!("fc.{x}"),
        _ => return Err(unknown()),
    };
    Ok(Some(name))
}

/// Every tensor of the exported file for a model of `spec` whose parameters are named
/// `names` (in store order), with a `num_batches_tracked` after each BN's running variance.
fn plan<'a>(
    spec: &ModelSpec,
    names: impl Iterator<Item = &'a str>,
) -> std::result::Result<(Fc, Vec<(String, Source)>), String> {
    let fc = fc_layout(spec)?;
    let mut entries = Vec::new();
    for (i, ours) in names.enumerate() {
        let Some(name) = torchvision_name(ours, fc, spec.arch.sk)? else {
            continue;
        };
        let counter = name
            .strip_suffix(".running_var")
            .map(|bn| format!("{bn}.num_batches_tracked"));
        entries.push((name, Source::Param(i)));
        if let Some(counter) = counter {
            entries.push((counter, Source::Counter));
        }
    }
    Ok((fc, entries))
}

/// KRSC [o, kh, kw, i] → OIHW [o, i, kh, kw].
fn krsc_to_oihw(v: &[f32], shape: &[usize]) -> Vec<f32> {
    let [o, kh, kw, i] = [shape[0], shape[1], shape[2], shape[3]];
    let mut out = vec![0f32; v.len()];
    for a in 0..o {
        for y in 0..kh {
            for x in 0..kw {
                for c in 0..i {
                    out[((a * i + c) * kh + y) * kw + x] = v[((a * kh + y) * kw + x) * i + c];
                }
            }
        }
    }
    out
}

fn exported_shape(shape: &[usize]) -> Vec<usize> {
    match shape {
        [o, kh, kw, i] => vec![*o, *i, *kh, *kw],
        s => s.to_vec(),
    }
}

/// The torchvision names, dtypes and shapes `export_torchvision` writes for a model of
/// `spec`, without allocating it (what CI compares with the key lists torchvision wrote).
pub fn torchvision_keys(spec: &ModelSpec) -> Result<Vec<Key>> {
    let shapes = param_shapes(spec)?;
    let names = shapes.params.iter().map(|p| p.name.as_str());
    let (_, entries) = plan(spec, names).map_err(Error::Checkpoint)?;
    Ok(entries
        .into_iter()
        .map(|(name, source)| match source {
            Source::Param(i) => Key {
                name,
                dtype: "F32",
                shape: exported_shape(&shapes.params[i].shape),
            },
            Source::Counter => Key {
                name,
                dtype: "I64",
                shape: vec![],
            },
        })
        .collect())
}

/// Writes the checkpoint `ckpt` (file or run directory) as a torchvision ResNet state dict
/// to `out` (safetensors, through a temporary file and a rename).
pub fn export_torchvision(ckpt: &Path, out: &Path) -> Result<ExportSummary> {
    let (model, meta) = checkpoint::load(ckpt)?;
    let params = &model.store.params;
    let (fc, entries) =
        plan(&model.spec, params.iter().map(|p| p.name.as_str())).map_err(|why| {
            Error::Checkpoint(format!(
                "{}: cannot export to torchvision: {why}",
                ckpt.display()
            ))
        })?;
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = entries
        .into_iter()
        .map(|(name, source)| match source {
            Source::Param(i) => {
                let t = &params[i].value;
                let v = t.to_f32_vec();
                let v = if t.shape.len() == 4 {
                    krsc_to_oihw(&v, &t.shape)
                } else {
                    v
                };
                let bytes = bytemuck::cast_slice(&v).to_vec();
                (name, Dtype::F32, exported_shape(&t.shape), bytes)
            }
            Source::Counter => (name, Dtype::I64, vec![], 0i64.to_le_bytes().to_vec()),
        })
        .collect();
    let a = &model.spec.arch;
    let summary = ExportSummary {
        arch: a.name.clone(),
        width: a.width,
        sk: a.sk,
        image_size: a.image_size,
        fc: fc.name().into(),
        num_classes: model.spec.num_classes,
        tensors: data.len(),
        values: data
            .iter()
            .map(|(_, _, shape, _)| shape.iter().product::<usize>())
            .sum(),
        normalize: meta.normalize,
    };
    let views = data.iter().map(|(name, dtype, shape, bytes)| {
        let view = TensorView::new(*dtype, shape.clone(), bytes).expect("sizes match");
        (name.clone(), view)
    });
    // "format": "pt" is what PyTorch's own safetensors writer records; the summary tells
    // scripts/check_export.py which module to build.
    let info = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "simclr_export".to_string(),
            serde_json::to_string(&summary).expect("summary serialises"),
        ),
    ]);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| Error::Checkpoint(format!("cannot serialise the export: {e}")))?;
    checkpoint::write_atomic(out, &bytes)?;
    Ok(summary)
}

/// One line of `predict`'s output.
#[derive(Serialize)]
struct Prediction<'a> {
    /// The image's position in the split predicted.
    index: usize,
    /// The image's file, for image folders (lossy: a JSON string must be UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<Cow<'a, str>>,
    logits: &'a [f32],
    class: usize,
}

/// Runs the classifier of checkpoint `ckpt` on `device` over the dataset in `data` (format
/// detected unless given; images resized to the checkpoint's size where they differ) and
/// writes one JSON line per image, in the dataset's order, to `out`: the test split when the
/// directory has one, else every training image (e.g. a folder of unlabelled images).
/// Images are preprocessed as evaluation does: the centre view, standardised with the
/// statistics stored in the checkpoint (those of the model's training data). Returns the
/// number of lines.
pub fn predict(
    ckpt: &Path,
    data: &Path,
    format: Option<Format>,
    device: &Device,
    out: &Path,
) -> Result<usize> {
    let (mut model, meta) = checkpoint::load(ckpt)?;
    let Some(classes) = model.spec.num_classes else {
        return Err(Error::Checkpoint(format!(
            "{}: has no classifier; predict needs a fine-tuned or distilled checkpoint",
            ckpt.display()
        )));
    };
    let a = &model.spec.arch;
    let options = LoadOptions {
        format,
        image_size: Some(a.image_size),
        skip_unlabelled: false,
        ..LoadOptions::default()
    };
    let dir = load(data, &options)?;
    if dir.train.c != a.in_channels {
        return Err(Error::Checkpoint(format!(
            "{}: takes {}-channel images, {} has {}-channel images",
            ckpt.display(),
            a.in_channels,
            data.display(),
            dir.train.c
        )));
    }
    // As the model's training data was standardised, so that an image gets the same logits
    // whatever other images sit beside it (older checkpoints: this data's statistics).
    let norm = meta.normalize_or(&Normalize::from_dataset(&*dir.train.statistics_sample()?));
    let images = Arc::new(if dir.test.n > 0 { dir.test } else { dir.train });
    let indices: Vec<usize> = (0..images.n).collect();
    model.to_device(device);
    // The precision `--precision auto` would use on this device: bf16 on a real GPU.
    let precision = crate::train::context::precision("auto", device)?;
    let (_, logits) = forward_all(&mut model, &images, &indices, &norm, precision)?;
    device.check()?;
    let mut text = String::new();
    for (index, row) in logits.chunks(classes).enumerate() {
        let line = Prediction {
            index,
            path: images.paths.get(index).map(|p| p.to_string_lossy()),
            logits: row,
            class: argmax(row),
        };
        text += &serde_json::to_string(&line).expect("prediction serialises");
        text.push('\n');
    }
    checkpoint::write_atomic(out, text.as_bytes())?;
    Ok(indices.len())
}
