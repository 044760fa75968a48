//! The context every stage runs in: the resolved config, the device, the loaded data, the
//! labelled subset and the normalisation, and what stages do with it (their data loaders,
//! checkpoints, resumption).

use crate::backend;
use crate::data::augment::{Augment, Normalize};
use crate::data::loader::{Loader, Pixels, Views};
use crate::data::subset;
use crate::data::Dataset;
use crate::device::cuda::augment::augment;
use crate::device::Device;
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::nn::model::{Model, ModelSpec};
use crate::nn::resnet::Arch;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use crate::train::checkpoint::{self, Meta, Resume};
use crate::train::config::Config;
use crate::train::trainer::{Position, Start};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

pub struct Context {
    pub cfg: Config,
    pub device: Device,
    /// The activations' element type: f32, or bf16 on a GPU (`--precision`).
    pub precision: DType,
    /// Training views augmented by the device's kernels (`--augment-on`).
    pub augment_on_device: bool,
    pub format: String,
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
    /// Training images in use (all, or a seeded subset with --train-images).
    pub train_indices: Vec<usize>,
    pub test_indices: Vec<usize>,
    /// The labelled subset (indices into the training set), or why it cannot be drawn: only
    /// the stages that train on labels ask for it (`labelled`), so pretraining and its kNN
    /// monitor run on any dataset.
    labelled: std::result::Result<Vec<usize>, String>,
    /// The validation split (indices into the training set, outside the labelled subset) that
    /// chooses the pipeline's learning rates; empty when too few images remain for one.
    pub val_indices: Vec<usize>,
    /// The kNN monitor's memory bank (indices into the training set).
    pub knn_bank: Vec<usize>,
    pub norm: Normalize,
    /// The ranks training together (`dist`): one process, or MPI's world under mpirun.
    pub comm: Arc<dyn Comm>,
}

/// `--precision` on `device`: the activations' element type. On a GPU bf16 stores them in
/// bf16; on the cpu they stay f32 and bf16 means bf16 products in every gemm, which
/// `Context::new` turns on (`gemm_bf16::set_products`). Auto is bf16 on a real GPU and f32 on the CPU and the emulator (where
/// f32 keeps results comparable with the CPU's).
pub fn precision(flag: &str, device: &Device) -> Result<DType> {
    let gpu = device.gpu();
    match flag {
        "f32" => Ok(DType::F32),
        "bf16" if gpu.is_some() => Ok(DType::BF16),
        "bf16" => Ok(DType::F32),
        "auto" => Ok(match gpu {
            Some(gpu) if !gpu.is_emulated() => DType::BF16,
            _ => DType::F32,
        }),
        other => Err(Error::Config(format!(
            "--precision {other}: expected auto, bf16 or f32"
        ))),
    }
}

/// `--augment-on` on `device`: whether the training views are augmented on the device. Auto
/// is the device on a real GPU and the cpu elsewhere.
pub fn augment_on_device(flag: &str, device: &Device) -> Result<bool> {
    let gpu = device.gpu();
    match flag {
        "cpu" => Ok(false),
        "device" if gpu.is_some() => Ok(true),
        "device" => Err(Error::Config(
            "--augment-on device needs a GPU device (--device cuda or emu)".into(),
        )),
        "auto" => Ok(gpu.is_some_and(|gpu| !gpu.is_emulated())),
        other => Err(Error::Config(format!(
            "--augment-on {other}: expected auto, cpu or device"
        ))),
    }
}

impl Context {
    pub fn new(cfg: Config) -> Result<Context> {
        cfg.validate()?;
        let (device, why) = Device::select(&cfg.device)?;
        let precision = precision(&cfg.precision, &device)?;
        let augment_on_device = augment_on_device(&cfg.augment_on, &device)?;
        let comm = dist::from_env(&device).map_err(Error::Config)?;
        if comm.size() > 1 {
            let settings = serde_json::to_string(&cfg).expect("config serialises");
            if !dist::all_agree(&*comm, &settings) {
                return Err(Error::Config(format!(
                    "the {} ranks were started with different settings",
                    comm.size()
                )));
            }
            println!("data parallel: rank {} of {}", comm.rank(), comm.size());
        }
        let on = if augment_on_device { "device" } else { "cpu" };
        // On the cpu, --precision bf16 rounds the gemms' operands (gemm_bf16.rs).
        let bf16_products = cfg.precision == "bf16" && device.gpu().is_none();
        crate::device::cpu::gemm_bf16::set_products(bf16_products);
        let products = match bf16_products {
            true => format!(", {}", crate::device::cpu::gemm_bf16::describe()),
            false => String::new(),
        };
        println!(
            "{why}, {} activations{products}, augmentation on the {on}",
            precision.name()
        );
        let opts = crate::data::LoadOptions {
            format: cfg.format,
            image_size: cfg.image_size,
            skip_unlabelled: false,
            stream: crate::data::parse_stream(&cfg.stream)?,
            workers: cfg.workers,
        };
        let data = crate::data::load(&cfg.data, &opts)?;
        let mut train_indices: Vec<usize> = (0..data.train.n).collect();
        if let Some(n) = cfg.train_images {
            Rng::derive(cfg.seed, &[0x5EED]).shuffle(&mut train_indices);
            train_indices.truncate(n);
            train_indices.sort_unstable();
        }
        let test_indices: Vec<usize> =
            (0..data.test.n.min(cfg.test_images.unwrap_or(usize::MAX))).collect();
        let labelled = subset::labelled(
            &data.train,
            &train_indices,
            &cfg.label_spec()?,
            cfg.labels_file.as_deref(),
            cfg.seed,
        )
        .map_err(|e| e.to_string());
        let val_indices = match &labelled {
            Ok(labelled) => subset::validation(
                &data.train.labels,
                data.train.num_classes,
                &train_indices,
                labelled,
                cfg.val_images,
                cfg.seed,
            ),
            Err(_) => Vec::new(),
        };
        // The kNN monitor votes with labels: its bank holds labelled images only.
        let mut knn_bank: Vec<usize> = train_indices
            .iter()
            .copied()
            .filter(|&i| data.train.labels[i] != crate::data::UNLABELLED)
            .collect();
        Rng::derive(cfg.seed, &[0xB4A7]).shuffle(&mut knn_bank);
        knn_bank.truncate(cfg.knn_bank);
        let norm = Normalize::from_dataset(&*data.train.statistics_sample()?);
        println!(
            "data: {} ({}), {} train / {} test images of {}x{}x{}, {} classes",
            cfg.data.display(),
            data.format,
            train_indices.len(),
            test_indices.len(),
            data.train.h,
            data.train.w,
            data.train.c,
            data.train.num_classes
        );
        Ok(Context {
            cfg,
            device,
            precision,
            augment_on_device,
            format: data.format,
            train: Arc::new(data.train),
            test: Arc::new(data.test),
            train_indices,
            test_indices,
            labelled,
            val_indices,
            knn_bank,
            norm,
            comm,
        })
    }

    /// Standardises images from now on as the model of checkpoint `meta` was trained: a stage
    /// or an evaluation that starts from a checkpoint sees the pixels its model saw, whatever
    /// data it is given.
    pub fn normalize_as(&mut self, meta: &Meta) {
        self.norm = meta.normalize_or(&self.norm);
    }

    /// The labelled subset, for the stages that train on labels.
    pub fn labelled(&self) -> Result<&[usize]> {
        match &self.labelled {
            Ok(labelled) => Ok(labelled),
            Err(why) => Err(Error::Config(why.clone())),
        }
    }

    /// Fraction of the labelled training images in use that form the labelled subset (the
    /// nominal fraction when one was asked for; the actual one for a count or a file).
    pub fn label_fraction(&self) -> Result<f64> {
        let labelled = self.labelled()?.len();
        let labelled_in_use = self
            .train_indices
            .iter()
            .filter(|&&i| self.train.labels[i] != crate::data::UNLABELLED)
            .count();
        Ok(match (&self.cfg.labels_file, self.cfg.label_spec()) {
            (None, Ok(spec)) => spec.fraction_of(labelled_in_use, labelled),
            _ => labelled as f64 / labelled_in_use.max(1) as f64,
        })
    }

    pub fn arch(&self, name: &str, width: usize, sk: bool) -> Arch {
        Arch {
            name: name.to_string(),
            width,
            in_channels: self.train.c,
            image_size: self.train.h,
            sk,
        }
    }

    /// Loader of one epoch over `indices` in a seeded order (a new order every epoch),
    /// without its first `skip` batches (a resumed epoch). Augmentations are seeded by image,
    /// so the remaining batches are exactly those of an uninterrupted epoch. `batch` is the
    /// global batch: with W ranks, this rank's loader gives its 1/W of each (the same images,
    /// and views, as one process would give that rank's rows).
    pub fn epoch_loader(
        &self,
        key: u64,
        indices: &[usize],
        batch: usize,
        views: Views,
        (epoch, skip): (usize, usize),
    ) -> Loader {
        let mut order = indices.to_vec();
        Rng::derive(self.cfg.seed, &[key, epoch as u64]).shuffle(&mut order);
        let order = order.split_off((skip * batch).min(order.len()));
        let (share, rank) = (batch / self.comm.size(), self.comm.rank());
        let mine: Vec<usize> = (order.chunks_exact(batch))
            .flat_map(|b| b[rank * share..(rank + 1) * share].to_vec())
            .collect();
        Loader::new(
            self.train.clone(),
            mine,
            share,
            true,
            views,
            self.norm.clone(),
            self.train.h,
            self.cfg.seed ^ key,
            epoch as u64,
            2,
            self.augment_on_device,
        )
    }

    /// Crop and flip only: linear evaluation's augmentation.
    pub fn crop_flip(&self) -> Augment {
        Augment {
            crop_area: (self.cfg.crop_min, 1.0),
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            blur_prob: 0.0,
            ..Augment::simclr(self.train.h, 0.0)
        }
    }

    /// The baseline's and fine-tuning's augmentation: crop and flip, and colour jitter at the
    /// pretraining's strength (a supervised recipe's usual defence against overfitting a few
    /// labels).
    pub fn crop_flip_jitter(&self) -> Augment {
        Augment {
            crop_area: (self.cfg.crop_min, 1.0),
            grayscale_prob: 0.0,
            blur_prob: 0.0,
            ..Augment::simclr(self.train.h, self.cfg.color_strength)
        }
    }

    /// A batch's images as a tensor on the run's device in the run's precision: bf16 images
    /// make the network run in bf16 (every op's output takes its input's type) up to the f32
    /// losses. On a GPU the batch goes through page-locked memory without the host waiting for
    /// it: standardised f32 from the loader, or (`Pixels::Raw`) the u8 images and the views,
    /// which the device augments straight into the run's precision.
    pub fn images(&self, pixels: Pixels, rows: usize) -> Tensor {
        let (h, w, c) = (self.train.h, self.train.w, self.train.c);
        let shape = [rows, h, w, c];
        let x = match (pixels, &self.device) {
            (Pixels::Ready(x), Device::Cpu) => Tensor::from_vec(&shape, x),
            (Pixels::Ready(x), Device::Gpu(gpu)) => Tensor::from_gpu(&shape, gpu.upload_pinned(&x)),
            (
                Pixels::Raw {
                    images,
                    views,
                    frame,
                },
                Device::Gpu(gpu),
            ) => {
                let elem = self.precision.elem();
                let mut out = gpu.alloc(rows * h * w * c, elem);
                let (images, views) = (gpu.upload_pinned(&images), gpu.upload_pinned(&views));
                augment(
                    gpu,
                    &images,
                    (h, w, c),
                    &views,
                    rows,
                    &frame,
                    &self.norm,
                    &mut out,
                );
                return Tensor::from_gpu(&shape, out);
            }
            (Pixels::Raw { .. }, Device::Cpu) => {
                unreachable!("--augment-on device is refused on the cpu")
            }
        };
        backend::of(&x).cast(&x, self.precision)
    }

    /// Whether this process writes the run's files (rank 0, or the one process).
    pub fn is_main(&self) -> bool {
        self.comm.rank() == 0
    }

    /// A training checkpoint of `stage` at `pos` in `dir`, written by rank 0 alone.
    pub fn save(
        &self,
        dir: &Path,
        stage: &str,
        (model, opt): (&Model, &Optimizer),
        pos: &Position,
    ) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let meta = Meta {
            normalize: Some(self.norm.clone()),
            batch: pos.batch,
            loss_sum: pos.loss_sum,
            elapsed_s: pos.elapsed_s,
            record: pos.record.clone(),
            ranks: self.comm.size(),
            ..Meta::new(stage, pos.epoch, &model.spec, &self.cfg)
        };
        checkpoint::save(dir, model, Some(opt), &pos.queued, &meta)
    }

    /// With --resume, the checkpoint `stage` left in `dir` (none: the stage starts afresh).
    /// It must be of the same stage, network and settings (the device may differ).
    pub fn resume_point(
        &self,
        dir: &Path,
        stage: &str,
        spec: &ModelSpec,
    ) -> Result<Option<Resume>> {
        if !self.cfg.resume || !dir.join(checkpoint::FILE).exists() {
            return Ok(None);
        }
        let mut r = checkpoint::load_training(dir)?;
        let mut saved = r.meta.config.clone();
        let mut now = serde_json::to_value(&self.cfg).expect("config serialises");
        // Settings that may change between the run and its resumption.
        for c in [&mut saved, &mut now] {
            for key in [
                "device",
                "precision",
                "augment_on",
                "cuda_graphs",
                "resume",
                "checkpoint_every",
            ] {
                c[key] = Value::Null;
            }
            // With a budget, re-planning after a stage changes the stages' lengths after it
            // (`budget::revise`): this stage's own must match, the others may differ.
            c["plan"] = Value::Null;
            for other in ["baseline", "pretrain", "finetune", "distill", "linear"] {
                if other != stage {
                    c[other]["steps"] = Value::Null;
                    c[other]["epochs"] = Value::Null;
                }
            }
        }
        if r.meta.ranks != self.comm.size() {
            return Err(Error::Config(format!(
                "--resume: {} was trained on {} rank(s), this run has {}: resume with as many",
                dir.display(),
                r.meta.ranks,
                self.comm.size()
            )));
        }
        if r.meta.stage != stage || r.meta.spec != *spec || saved != now {
            return Err(Error::Config(format!(
                "--resume: {} holds a {} checkpoint of other settings; resume with the flags of that run",
                dir.display(),
                r.meta.stage
            )));
        }
        println!(
            "{stage}: resuming from epoch {} batch {} in {}",
            r.meta.epoch,
            r.meta.batch,
            dir.display()
        );
        r.model.to_device(&self.device);
        Ok(Some(r))
    }

    /// The model a stage trains and where it starts: its checkpoint's model, position and
    /// optimiser state when resuming, else `fresh` from the beginning. On the run's device.
    pub fn begin(&self, resume: Option<Resume>, fresh: Model) -> (Model, Option<Start>) {
        let (mut model, start) = match resume {
            Some(r) => {
                let m = r.meta;
                let pos = Position {
                    epoch: m.epoch,
                    batch: m.batch,
                    loss_sum: m.loss_sum,
                    elapsed_s: m.elapsed_s,
                    record: m.record,
                    queued: r.queued,
                };
                (r.model, Some((pos, r.velocity)))
            }
            None => (fresh, None),
        };
        model.to_device(&self.device);
        (model, start)
    }
}
