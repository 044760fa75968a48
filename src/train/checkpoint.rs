//! Checkpoints: the parameters (and BN statistics) in a safetensors file whose metadata
//! also holds the model's spec, plus a human-readable checkpoint.json beside it (stage,
//! position reached, architecture, the full config). Both are written to a temporary file and
//! renamed, so an interrupted write never leaves a broken checkpoint in place of a good one.
//!
//! Checkpoints written during training also hold the optimiser's state (each velocity as
//! `optimizer.velocity.<parameter>`) and the exact position (epoch, batch, the epoch's loss
//! so far), in the same file, so that a killed run resumes where it stopped: the data order and
//! augmentations are functions of (seed, epoch, image), so nothing else needs saving but, when
//! pretraining with `--memory-size`, the memory buffer's rows (`ntxent.memory`) and, with
//! `--memory-momentum`, its momentum encoder's weights (`ntxent.key_encoder.<parameter>`).

use crate::data::augment::Normalize;
use crate::error::{Error, Result};
use crate::nn::model::{param_shapes, Model, ModelSpec};
use crate::nn::params::ParamStore;
use crate::optim::Optimizer;
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
    /// Batches completed of the next epoch (0 at an epoch's end).
    #[serde(default)]
    pub batch: usize,
    /// Sum of those batches' losses (for the epoch's mean after a resume).
    #[serde(default)]
    pub loss_sum: f64,
    /// Training seconds so far.
    #[serde(default)]
    pub elapsed_s: f64,
    /// The last epoch's record (mean loss, kNN or top-1), as in metrics.jsonl.
    #[serde(default)]
    pub record: serde_json::Value,
    pub spec: ModelSpec,
    /// How the model's images were standardised (the training data's statistics). Absent in
    /// checkpoints written before it was stored: those are read with the statistics of the
    /// data they are given (`normalize_or`).
    #[serde(default)]
    pub normalize: Option<Normalize>,
    /// The run's full config, for the record (kept as JSON so that checkpoints stay readable
    /// when the config gains fields).
    pub config: serde_json::Value,
    /// The ranks that trained it (data parallelism): a resumed run needs as many, for the
    /// same shards of every batch.
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}

impl Meta {
    pub fn new(stage: &str, epoch: usize, spec: &ModelSpec, config: &Config) -> Meta {
        Meta {
            format: FORMAT.into(),
            stage: stage.into(),
            epoch,
            batch: 0,
            loss_sum: 0.0,
            elapsed_s: 0.0,
            record: serde_json::Value::Null,
            spec: spec.clone(),
            normalize: None,
            config: serde_json::to_value(config).expect("config serialises"),
            ranks: 1,
        }
    }

    /// The standardisation the model was trained with, else `fallback` (an older checkpoint).
    pub fn normalize_or(&self, fallback: &Normalize) -> Normalize {
        self.normalize.clone().unwrap_or_else(|| fallback.clone())
    }
}

const VELOCITY: &str = "optimizer.velocity.";
const MEMORY: &str = "ntxent.memory";
const KEY_ENCODER: &str = "ntxent.key_encoder.";

/// NT-Xent's memory buffer as a checkpoint keeps it: its rows, [rows, projection width], and
/// with `--memory-momentum` the momentum encoder's weights, in the model's parameter order.
#[derive(Clone, Debug, Default)]
pub struct Queued {
    pub rows: Option<Tensor>,
    pub key_encoder: Option<Vec<Tensor>>,
}

/// What a resumed stage starts from.
pub struct Resume {
    pub model: Model,
    pub meta: Meta,
    /// Optimiser velocities by parameter index.
    pub velocity: Vec<(usize, Tensor)>,
    /// NT-Xent's memory buffer (`ops::ntxent::Memory`), if it had one.
    pub queued: Queued,
}

/// Writes `bytes` to `path` through a temporary file beside it (`<name>.tmp`, one per file),
/// flushed to the disk before the rename: a reader, or a crash, sees the old file or the new
/// one. Data-parallel runs call it on rank 0 alone.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let write = || {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Saves the model, and the optimiser's state and NT-Xent's memory buffer when training. A
/// parameter that is no longer finite (a step whose loss was finite but whose update was not) is
/// refused in one line, and the last good checkpoint is kept.
pub fn save(
    dir: &Path,
    model: &Model,
    opt: Option<&Optimizer>,
    queued: &Queued,
    meta: &Meta,
) -> Result<()> {
    let meta_json = serde_json::to_string_pretty(meta).expect("config serialises");
    let entry = |name: String, t: &Tensor| {
        let values = t.to_f32_vec();
        if !values.iter().all(|v| v.is_finite()) {
            return Err(Error::Train(format!(
                "{name} holds non-finite values (lower --lr?); the checkpoint is not written, \
                 the last good one is kept"
            )));
        }
        Ok((
            name,
            bytemuck::cast_slice(&values).to_vec(),
            t.shape.clone(),
        ))
    };
    let mut bytes: Vec<(String, Vec<u8>, Vec<usize>)> = (model.store.params.iter())
        .map(|p| entry(p.name.clone(), &p.value))
        .collect::<Result<_>>()?;
    if let Some(opt) = opt {
        for (id, v) in opt.velocity() {
            let name = &model.store.params[id].name;
            bytes.push(entry(format!("{VELOCITY}{name}"), v)?);
        }
    }
    if let Some(m) = &queued.rows {
        bytes.push(entry(MEMORY.into(), m)?);
    }
    for (p, w) in model
        .store
        .params
        .iter()
        .zip(queued.key_encoder.iter().flatten())
    {
        bytes.push(entry(format!("{KEY_ENCODER}{}", p.name), w)?);
    }
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
    load_training(path).map(|r| (r.model, r.meta))
}

/// Reads a checkpoint with the optimiser state it holds (none for a checkpoint written
/// before training began to save it).
pub fn load_training(path: &Path) -> Result<Resume> {
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
    if let Some(n) = &meta.normalize {
        let c = meta.spec.arch.in_channels;
        let finite = n.mean.iter().all(|m| m.is_finite());
        let positive = n.std.iter().all(|s| s.is_finite() && *s > 0.0);
        if n.mean.len() != c || n.std.len() != c || !finite || !positive {
            return Err(not_ours(format!(
                "its normalisation {n:?} does not fit {c}-channel images"
            )));
        }
    }
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| not_ours(format!("{e}")))?;
    // Every tensor the spec declares must be in the file with its shape before the spec
    // decides what to allocate (a forged spec cannot ask for gigabytes the file lacks).
    let shapes =
        param_shapes(&meta.spec).map_err(|e| not_ours(format!("bad architecture: {e}")))?;
    for p in &shapes.params {
        let t = tensors
            .tensor(&p.name)
            .map_err(|_| not_ours(format!("tensor {} is missing", p.name)))?;
        if t.dtype() != Dtype::F32 || t.shape() != p.shape.as_slice() {
            return Err(not_ours(format!(
                "tensor {} is {:?} {:?}, expected F32 {:?} (its spec says {} width {})",
                p.name,
                t.dtype(),
                t.shape(),
                p.shape,
                meta.spec.arch.name,
                meta.spec.arch.width
            )));
        }
    }
    let mut model =
        Model::new(&meta.spec, 0).map_err(|e| not_ours(format!("bad architecture: {e}")))?;
    for p in &mut model.store.params {
        let t = tensors.tensor(&p.name).expect("checked above");
        p.value = Tensor::from_vec(&p.value.shape, f32s(t.data()));
    }
    let mut velocity = Vec::new();
    for (id, p) in model.store.params.iter().enumerate() {
        if let Ok(t) = tensors.tensor(&format!("{VELOCITY}{}", p.name)) {
            if t.dtype() != Dtype::F32 || t.shape() != p.value.shape.as_slice() {
                return Err(not_ours(format!(
                    "the velocity of {} has the wrong shape",
                    p.name
                )));
            }
            velocity.push((id, Tensor::from_vec(&p.value.shape, f32s(t.data()))));
        }
    }
    let rows = match tensors.tensor(MEMORY) {
        Ok(t) => {
            let d = meta.spec.proj_dim;
            if t.dtype() != Dtype::F32 || t.shape().len() != 2 || t.shape()[1] != d {
                return Err(not_ours(format!(
                    "its memory buffer is {:?} {:?}, expected F32 rows of width {d}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Some(Tensor::from_vec(t.shape(), f32s(t.data())))
        }
        Err(_) => None,
    };
    // All of the model's parameters, or none.
    let mut key_encoder = Vec::new();
    for p in &model.store.params {
        if let Ok(t) = tensors.tensor(&format!("{KEY_ENCODER}{}", p.name)) {
            if t.dtype() != Dtype::F32 || t.shape() != p.value.shape.as_slice() {
                return Err(not_ours(format!(
                    "its momentum encoder's {} has the wrong shape",
                    p.name
                )));
            }
            key_encoder.push(Tensor::from_vec(&p.value.shape, f32s(t.data())));
        }
    }
    let key_encoder = match key_encoder.len() {
        0 => None,
        n if n == model.store.params.len() => Some(key_encoder),
        _ => return Err(not_ours("its momentum encoder lacks weights".into())),
    };
    Ok(Resume {
        model,
        meta,
        velocity,
        queued: Queued { rows, key_encoder },
    })
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
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
        // On the receiving model's device, and its own: the two models train apart.
        let value = src.to_dtype(DType::F32).to_device(&p.value.device());
        p.value = if value.is_unique() {
            value
        } else {
            value.deep_copy()
        };
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nn::resnet::Arch;

    pub(crate) fn small_spec() -> ModelSpec {
        ModelSpec {
            arch: Arch {
                name: "resnet8".into(),
                width: 4,
                in_channels: 1,
                image_size: 12,
                sk: false,
            },
            head_layers: 1,
            proj_dim: 8,
            num_classes: Some(3),
        }
    }

    #[test]
    fn save_load_round_trip() {
        let spec = small_spec();
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
        save(
            &dir,
            &model,
            None,
            &Queued::default(),
            &Meta::new("finetune", 2, &spec, &config),
        )
        .unwrap();
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

    /// NT-Xent's memory buffer survives the round trip; one of another width than the
    /// projection's is refused in one line.
    #[test]
    fn memory_buffer_round_trips_and_a_wrong_width_is_refused() {
        let spec = small_spec();
        let model = Model::new(&spec, 7).unwrap();
        let dir = std::env::temp_dir().join(format!("simclr-ckpt-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = Meta::new("pretrain", 1, &spec, &Config::preset("tiny").unwrap());
        let rows: Vec<f32> = (0..5 * 8).map(|i| i as f32 * 0.01).collect();
        // With a momentum encoder: another model's weights.
        let keys = Model::new(&spec, 8).unwrap();
        let weights: Vec<Tensor> = keys.store.params.iter().map(|p| p.value.clone()).collect();
        let queued = Queued {
            rows: Some(Tensor::from_vec(&[5, 8], rows.clone())),
            key_encoder: Some(weights.clone()),
        };
        save(&dir, &model, None, &queued, &meta).unwrap();
        let back = load_training(&dir).unwrap().queued;
        let memory = back.rows.expect("a memory buffer");
        assert_eq!(
            (memory.shape.as_slice(), memory.to_f32_vec()),
            (&[5, 8][..], rows)
        );
        let f32s = |ws: &[Tensor]| ws.iter().map(|w| w.to_f32_vec()).collect::<Vec<_>>();
        assert_eq!(
            f32s(&back.key_encoder.expect("its encoder")),
            f32s(&weights)
        );
        save(&dir, &model, None, &Queued::default(), &meta).unwrap();
        let back = load_training(&dir).unwrap().queued;
        assert!(back.rows.is_none() && back.key_encoder.is_none());
        let wrong = Queued {
            rows: Some(Tensor::from_vec(&[8, 5], vec![0.0f32; 40])),
            key_encoder: None,
        };
        save(&dir, &model, None, &wrong, &meta).unwrap();
        let e = load_training(&dir).err().expect("a wrong memory loaded");
        assert!(e.to_string().contains("memory buffer"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A parameter gone non-finite is refused in one line, and the checkpoint there is kept.
    #[test]
    fn non_finite_parameters_are_not_saved() {
        let spec = small_spec();
        let mut model = Model::new(&spec, 7).unwrap();
        let dir = std::env::temp_dir().join(format!("simclr-ckpt-nan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meta = Meta::new("finetune", 1, &spec, &Config::preset("tiny").unwrap());
        save(&dir, &model, None, &Queued::default(), &meta).unwrap();
        let good = std::fs::read(dir.join(FILE)).unwrap();
        let p = &mut model.store.params[3];
        let mut v = p.value.to_f64_vec();
        v[0] = f64::NAN;
        p.value = Tensor::from_f64(&p.value.shape, DType::F32, &v);
        let name = p.name.clone();
        let err = save(&dir, &model, None, &Queued::default(), &meta)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&name) && err.contains("non-finite"), "{err}");
        assert_eq!(std::fs::read(dir.join(FILE)).unwrap(), good);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The input normalisation survives the round trip; one that does not fit the model's
    /// images (a forged or corrupt file) is refused in one line instead of failing later.
    #[test]
    fn stored_normalisation_round_trips_and_bad_ones_are_refused() {
        let spec = small_spec();
        let model = Model::new(&spec, 7).unwrap();
        let dir = std::env::temp_dir().join(format!("simclr-ckpt-norm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config::preset("tiny").unwrap();
        let with = |mean: Vec<f32>, std: Vec<f32>| Meta {
            normalize: Some(Normalize { mean, std }),
            ..Meta::new("finetune", 1, &spec, &config)
        };
        save(
            &dir,
            &model,
            None,
            &Queued::default(),
            &with(vec![0.3], vec![0.2]),
        )
        .unwrap();
        let (_, meta) = load(&dir).unwrap();
        assert_eq!(meta.normalize, with(vec![0.3], vec![0.2]).normalize);
        for (mean, std) in [
            (vec![], vec![]),
            (vec![0.3, 0.3], vec![0.2, 0.2]),
            (vec![0.3], vec![0.0]),
        ] {
            save(&dir, &model, None, &Queued::default(), &with(mean, std)).unwrap();
            let e = load(&dir)
                .err()
                .expect("a bad normalisation loaded")
                .to_string();
            assert!(
                e.contains("normalisation") && e.contains("1-channel"),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
