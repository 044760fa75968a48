//! Checkpoints: the parameters (and BN statistics) in a safetensors file whose metadata
//! also holds the model's spec, plus a human-readable checkpoint.json beside it (stage,
//! epoch, architecture, the full config). Both are written to a temporary file and renamed,
//! so an interrupted write never leaves a broken checkpoint in place of a good one.

use crate::error::{Error, Result};
use crate::nn::model::{Model, ModelSpec};
use crate::nn::params::ParamStore;
use crate::tensor::{DType, Tensor};
use crate::train::config::Config;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FILE: &str = "checkpoint.safetensors";
pub const META_FILE: &str = "checkpoint.json";
const FORMAT: &str = "simclr-checkpoint-v1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    /// pretrain, finetune, baseline or distill.
    pub stage: String,
    /// Epochs completed.
    pub epoch: usize,
    pub spec: ModelSpec,
    /// The run's full config, for the record (kept as JSON so that checkpoints stay readable
    /// when the config gains fields).
    pub config: serde_json::Value,
}

impl Meta {
    pub fn new(stage: &str, epoch: usize, spec: &ModelSpec, config: &Config) -> Meta {
        Meta {
            format: FORMAT.into(),
            stage: stage.into(),
            epoch,
            spec: spec.clone(),
            config: serde_json::to_value(config).expect("config serialises"),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

pub fn save(dir: &Path, model: &Model, meta: &Meta) -> Result<()> {
    let meta_json = serde_json::to_string_pretty(meta).expect("config serialises");
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = model
        .store
        .params
        .iter()
        .map(|p| {
            let values = p.value.to_f32_vec();
            (
                p.name.clone(),
                bytemuck::cast_slice(&values).to_vec(),
                p.value.shape.clone(),
            )
        })
        .collect();
    let views = bytes.iter().map(|(name, data, shape)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), data).expect("sizes match");
        (name.clone(), view)
    });
    let info = HashMap::from([("simclr".to_string(), meta_json.clone())]);
    let file = safetensors::serialize(views, Some(info))
        .map_err(|e| Error::Checkpoint(format!("cannot serialise checkpoint: {e}")))?;
    write_atomic(&dir.join(FILE), &file)?;
    write_atomic(&dir.join(META_FILE), meta_json.as_bytes())
}

/// Accepts the checkpoint file or the directory holding it.
fn resolve(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(FILE)
    } else {
        path.to_path_buf()
    }
}

/// Reads a checkpoint and rebuilds its model.
pub fn load(path: &Path) -> Result<(Model, Meta)> {
    let path = resolve(path);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let not_ours = |why: String| {
        Error::Checkpoint(format!(
            "{}: not a simclr checkpoint ({why})",
            path.display()
        ))
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| not_ours(format!("{e}")))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("simclr"))
        .ok_or_else(|| not_ours("no simclr metadata".into()))?;
    let meta: Meta =
        serde_json::from_str(meta_json).map_err(|e| not_ours(format!("bad metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(not_ours(format!("format {}", meta.format)));
    }
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| not_ours(format!("{e}")))?;
    // The stem's shape must agree with the spec before the spec decides what to allocate.
    let a = &meta.spec.arch;
    let k = if a.small_stem() { 3 } else { 7 };
    let stem = tensors
        .tensor("encoder.stem.conv.weight")
        .map_err(|_| not_ours("tensor encoder.stem.conv.weight is missing".into()))?;
    if stem.shape() != [a.width, k, k, a.in_channels] {
        return Err(not_ours(format!(
            "its spec says width {} but the stem is {:?}",
            a.width,
            stem.shape()
        )));
    }
    let mut model =
        Model::new(&meta.spec, 0).map_err(|e| not_ours(format!("bad architecture: {e}")))?;
    for p in &mut model.store.params {
        let t = tensors
            .tensor(&p.name)
            .map_err(|_| not_ours(format!("tensor {} is missing", p.name)))?;
        if t.dtype() != Dtype::F32 || t.shape() != p.value.shape.as_slice() {
            return Err(not_ours(format!(
                "tensor {} is {:?} {:?}, expected F32 {:?}",
                p.name,
                t.dtype(),
                t.shape(),
                p.value.shape
            )));
        }
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        p.value = Tensor::from_vec(&p.value.shape, values);
    }
    Ok((model, meta))
}

/// Copies every parameter of `from` whose name starts with one of `prefixes` into `to`
/// (which must hold it with the same shape): how fine-tuning takes the pretrained encoder
/// and head layer 1.
pub fn copy_params(from: &ParamStore, to: &mut ParamStore, prefixes: &[&str]) -> Result<()> {
    for p in &mut to.params {
        if !prefixes.iter().any(|pre| p.name.starts_with(pre)) {
            continue;
        }
        let src = from
            .find(&p.name)
            .map(|i| from.value(i))
            .ok_or_else(|| Error::Checkpoint(format!("checkpoint has no tensor {}", p.name)))?;
        if src.shape != p.value.shape {
            return Err(Error::Checkpoint(format!(
                "checkpoint tensor {} has shape {:?}, expected {:?}",
                p.name, src.shape, p.value.shape
            )));
        }
        // On the receiving model's device.
        p.value = src.to_dtype(DType::F32).to_device(&p.value.device());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::resnet::Arch;

    #[test]
    fn save_load_round_trip() {
        let spec = ModelSpec {
            arch: Arch {
                name: "resnet8".into(),
                width: 4,
                in_channels: 1,
                image_size: 12,
            },
            head_layers: 1,
            proj_dim: 8,
            num_classes: Some(3),
        };
        let mut model = Model::new(&spec, 7).unwrap();
        // Make every tensor distinctive (the classifier starts at zero).
        for (i, p) in model.store.params.iter_mut().enumerate() {
            let v: Vec<f64> = (0..p.value.numel())
                .map(|j| (i * 1000 + j) as f64 * 1e-3)
                .collect();
            p.value = Tensor::from_f64(&p.value.shape, DType::F32, &v);
        }
        let dir = std::env::temp_dir().join(format!("simclr-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config::preset("tiny").unwrap();
        save(&dir, &model, &Meta::new("finetune", 2, &spec, &config)).unwrap();
        let (loaded, meta) = load(&dir).unwrap();
        assert_eq!((meta.stage.as_str(), meta.epoch), ("finetune", 2));
        assert_eq!(loaded.spec, spec);
        for (a, b) in model.store.params.iter().zip(&loaded.store.params) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.value.to_f32_vec(), b.value.to_f32_vec());
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).unwrap()).unwrap();
        assert_eq!(json["spec"]["arch"]["name"], "resnet8");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
