//! The full configuration of a run: a preset's values, overridden by explicit flags,
//! validated once, and stored in every checkpoint.json and report.

use crate::data::subset::LabelSpec;
use crate::error::{Error, Result};
use crate::nn::resnet::Arch;
use crate::optim::schedule::LrScaling;
use crate::optim::OptimizerKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How one training stage runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Base learning rate, before batch-size scaling.
    pub lr: f64,
    pub lr_scaling: LrScaling,
    /// Fraction of the steps spent in linear warmup.
    pub warmup: f64,
    pub weight_decay: f64,
    pub optimizer: OptimizerKind,
    /// The learning rates `pipeline` tries for this stage, each scored on the validation split,
    /// keeping the best (empty: `lr` alone).
    #[serde(default)]
    pub lr_grid: Vec<f64>,
    /// Set by the budget: the stage's steps, its last epoch cut short (None: `epochs` whole
    /// epochs).
    #[serde(default)]
    pub steps: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub data: PathBuf,
    pub preset: String,
    pub labels: String,
    pub seed: u64,
    pub device: String,
    /// auto (bf16 on cuda, f32 elsewhere), bf16 or f32: on a GPU the activations' storage, on
    /// the cpu the gemms' products (activations stay f32).
    #[serde(default = "auto")]
    pub precision: String,
    /// Where the training views are augmented: auto (the device on cuda, else the cpu), cpu
    /// or device.
    #[serde(default = "auto")]
    pub augment_on: String,
    /// Run the steady-state training step as one CUDA graph (on a GPU device).
    #[serde(default = "yes")]
    pub cuda_graphs: bool,
    /// Image folders: decoded batch by batch (on), up front into memory (off), or on when
    /// the decoded images would not fit in 4 GiB (auto).
    #[serde(default = "auto")]
    pub stream: String,
    /// Decode workers of a streamed folder (0: all cores but one).
    #[serde(default)]
    pub workers: usize,
    /// Encoder of the pretrained / fine-tuned network (and the baseline).
    pub arch: String,
    pub width: usize,
    /// Selective kernels (+ ResNet-D) in the pretrained / fine-tuned network.
    #[serde(default)]
    pub sk: bool,
    pub proj_dim: usize,
    /// Use only the first N training images (after a seeded shuffle); None = all.
    pub train_images: Option<usize>,
    /// Evaluate on only the first N test images; None = all.
    pub test_images: Option<usize>,
    /// Labelled training images outside the labelled subset that choose the pipeline's
    /// learning rates (at most this many).
    #[serde(default)]
    pub val_images: usize,
    /// `pipeline`'s wall-clock budget in seconds, which sets every stage's length (None: the
    /// stages' epochs).
    #[serde(default)]
    pub budget_s: Option<f64>,
    /// How the budget was spent: the speeds measured and the steps they gave each stage.
    #[serde(default)]
    pub plan: Option<crate::train::budget::Plan>,
    /// The supervised baseline's own recipe (weight decay, colour jitter besides crop + flip).
    pub baseline: StageConfig,
    pub pretrain: StageConfig,
    /// NT-Xent temperature.
    pub temperature: f64,
    /// Rows of SimCLRv2's memory buffer: past projections, extra negatives of NT-Xent (0: off).
    #[serde(default)]
    pub memory_size: usize,
    /// Momentum m of the encoder that fills the memory buffer (w_k ← m·w_k + (1 − m)·w after
    /// every step; 0: the trained network's own rows fill it).
    #[serde(default)]
    pub memory_momentum: f64,
    /// Colour-jitter strength s of the pretraining augmentation.
    pub color_strength: f64,
    /// Smallest crop area fraction of the random resized crop.
    pub crop_min: f64,
    /// Neighbours of the kNN monitor.
    pub knn_k: usize,
    /// Training images (a seeded subset) whose features form the kNN monitor's memory bank.
    pub knn_bank: usize,
    pub finetune: StageConfig,
    /// Linear evaluation: a classifier on the frozen encoder (Nesterov SGD, crop + flip).
    pub linear: StageConfig,
    pub distill: StageConfig,
    pub student_arch: String,
    pub student_width: usize,
    /// Distillation temperature τ.
    pub distill_temperature: f64,
    /// Weight α of the label loss mixed into distillation on labelled examples.
    pub distill_label_weight: f64,
    /// Dataset format (None: detected from the files present).
    #[serde(default)]
    pub format: Option<crate::data::Format>,
    /// Resize images to N×N (None: native size; image folders default to 224).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// The labelled subset as a list of file names (overrides `labels`).
    #[serde(default)]
    pub labels_file: Option<PathBuf>,
    /// Also checkpoint every N steps within an epoch (0: at epoch ends only).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Continue the run in --out from the checkpoints it holds.
    #[serde(default)]
    pub resume: bool,
}

fn auto() -> String {
    "auto".into()
}

fn yes() -> bool {
    true
}

impl Config {
    pub fn preset(name: &str) -> Result<Config> {
        let sgd = |epochs, batch_size, lr| StageConfig {
            epochs,
            batch_size,
            lr,
            lr_scaling: LrScaling::None,
            warmup: 0.0,
            weight_decay: 0.0,
            optimizer: OptimizerKind::Sgd,
            lr_grid: Vec::new(),
            steps: None,
        };
        let default = Config {
            data: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data")),
            preset: name.to_string(),
            labels: "10".into(),
            seed: 0,
            device: "auto".into(),
            precision: "auto".into(),
            augment_on: "auto".into(),
            cuda_graphs: true,
            stream: "auto".into(),
            workers: 0,
            arch: "resnet8".into(),
            width: 16,
            sk: false,
            proj_dim: 128,
            train_images: None,
            test_images: None,
            val_images: 5000,
            // 15 minutes: the README's run, on any machine (budget.rs splits it).
            budget_s: Some(900.0),
            plan: None,
            // The baseline's own recipe: weight decay and colour jitter against overfitting
            // its 100 images, and a learning rate chosen on the validation split.
            baseline: StageConfig {
                weight_decay: 5e-4,
                lr_grid: vec![0.03, 0.1, 0.3],
                ..sgd(300, 25, 0.1)
            },
            pretrain: StageConfig {
                epochs: 5,
                batch_size: 256,
                lr: 1.0,
                lr_scaling: LrScaling::Linear,
                warmup: 0.05,
                weight_decay: 1e-6,
                optimizer: OptimizerKind::Lars,
                lr_grid: Vec::new(),
                steps: None,
            },
            temperature: 0.1,
            memory_size: 0,
            memory_momentum: 0.0,
            color_strength: 0.5,
            crop_min: 0.2,
            knn_k: 200,
            knn_bank: 10_000,
            // Fine-tuning 100 images gets the baseline's defences against overfitting them
            // (measured: +1.7 points of test top-1 at 10 labels per class), and its own grid.
            finetune: StageConfig {
                weight_decay: 5e-4,
                lr_grid: vec![0.01, 0.03, 0.1],
                ..sgd(300, 25, 0.03)
            },
            // The official protocol's optimiser: momentum SGD, lr 0.1·B/256, weight decay 1e-6,
            // no warmup; fewer epochs than its 90 on this small default.
            linear: StageConfig {
                lr_scaling: LrScaling::Linear,
                weight_decay: 1e-6,
                ..sgd(20, 256, 0.1)
            },
            // lr 0.4 rather than 0.1: the student then matched or passed the teacher (measured at
            // 10 labels per class and at 1%; 0.1 left it 1.4 and 4.3 points under).
            distill: sgd(3, 256, 0.4),
            student_arch: "resnet8".into(),
            student_width: 11,
            distill_temperature: 1.0,
            distill_label_weight: 0.0,
            format: None,
            image_size: None,
            labels_file: None,
            checkpoint_every: 0,
            resume: false,
        };
        match name {
            "default" => Ok(default),
            "tiny" => Ok(Config {
                train_images: Some(400),
                test_images: Some(200),
                width: 8,
                student_width: 4,
                pretrain: StageConfig {
                    epochs: 1,
                    batch_size: 64,
                    ..default.pretrain.clone()
                },
                val_images: 60,
                budget_s: None,
                baseline: StageConfig {
                    lr_grid: vec![0.05, 0.2],
                    ..sgd(2, 32, 0.05)
                },
                finetune: StageConfig {
                    lr_grid: vec![0.02, 0.05],
                    ..sgd(2, 32, 0.05)
                },
                linear: sgd(2, 32, 0.1),
                distill: sgd(1, 64, 0.1),
                knn_k: 20,
                ..default
            }),
            // The paper's ImageNet recipe, from the official code's README and the SimCLRv2
            // paper: pretraining with LARS at batch 4096 for 800 epochs, lr 0.075·√B, weight
            // decay 1e-4, τ = 0.1, 5% warmup; fine-tuning the whole network from head layer 1
            // on 1% of the labels with LARS, lr 0.005·√B, batch 1024, 60 epochs, no weight
            // decay. Distillation is not in the official README: it reuses the pretraining
            // optimiser, unlabelled images only, τ = 1.
            "imagenet-r50-1x"
            | "imagenet-r50-1x-sk"
            | "imagenet-r50-2x-sk"
            | "imagenet-r152-3x-sk" => {
                let (arch, width, sk) = match name {
                    "imagenet-r50-1x" => ("resnet50", 64, false),
                    "imagenet-r50-1x-sk" => ("resnet50", 64, true),
                    "imagenet-r50-2x-sk" => ("resnet50", 128, true),
                    _ => ("resnet152", 192, true),
                };
                let lars = |epochs, batch_size, lr, weight_decay, warmup| StageConfig {
                    epochs,
                    batch_size,
                    lr,
                    lr_scaling: LrScaling::Sqrt,
                    warmup,
                    weight_decay,
                    optimizer: OptimizerKind::Lars,
                    lr_grid: Vec::new(),
                    steps: None,
                };
                Ok(Config {
                    image_size: Some(224),
                    labels: "1%".into(),
                    arch: arch.into(),
                    width,
                    sk,
                    budget_s: None,
                    pretrain: lars(800, 4096, 0.075, 1e-4, 0.05),
                    // Not tuned for ImageNet: the baseline keeps fine-tuning's recipe.
                    baseline: lars(60, 1024, 0.005, 0.0, 0.0),
                    finetune: lars(60, 1024, 0.005, 0.0, 0.0),
                    linear: StageConfig {
                        epochs: 90,
                        batch_size: 4096,
                        ..default.linear.clone()
                    },
                    distill: lars(400, 4096, 0.075, 1e-4, 0.05),
                    color_strength: 1.0,
                    crop_min: 0.08,
                    student_arch: "resnet50".into(),
                    student_width: 64,
                    knn_bank: 50_000,
                    ..default
                })
            }
            _ => Err(Error::Config(format!(
                "--preset {name}: unknown preset (expected default, tiny, imagenet-r50-1x, \
                 imagenet-r50-1x-sk, imagenet-r50-2x-sk or imagenet-r152-3x-sk)"
            ))),
        }
    }

    pub fn label_spec(&self) -> Result<LabelSpec> {
        self.labels.parse()
    }

    /// Checks what a preset cannot get wrong but a flag can.
    pub fn validate(&self) -> Result<()> {
        self.label_spec()?;
        for (flag, arch, width) in [
            ("--arch", &self.arch, self.width),
            ("--student-arch", &self.student_arch, self.student_width),
        ] {
            let arch = Arch {
                name: arch.clone(),
                width,
                in_channels: 1,
                image_size: 1,
                sk: false,
            };
            arch.validate()
                .map_err(|e| Error::Config(format!("{flag}: {e}")))?;
        }
        for (name, s) in [
            ("pretrain", &self.pretrain),
            ("baseline", &self.baseline),
            ("finetune", &self.finetune),
            ("distill", &self.distill),
            ("linear evaluation", &self.linear),
        ] {
            if s.batch_size < 2 {
                return Err(Error::Config(format!(
                    "{name} batch size {} is too small: batch norm and NT-Xent need at least 2",
                    s.batch_size
                )));
            }
            if s.epochs == 0 {
                return Err(Error::Config(format!("{name} epochs must be at least 1")));
            }
            for &lr in std::iter::once(&s.lr).chain(&s.lr_grid) {
                if !(lr > 0.0 && lr.is_finite()) {
                    return Err(Error::Config(format!(
                        "{name} learning rate must be positive, got {lr}"
                    )));
                }
            }
            if !(s.weight_decay >= 0.0 && s.weight_decay.is_finite()) {
                return Err(Error::Config(format!(
                    "{name} weight decay must be zero or positive, got {}",
                    s.weight_decay
                )));
            }
            if !(0.0..1.0).contains(&s.warmup) {
                return Err(Error::Config(format!(
                    "{name} warmup must be in [0, 1), got {}",
                    s.warmup
                )));
            }
        }
        for (flag, t) in [
            ("--temperature", self.temperature),
            ("--distill-temperature", self.distill_temperature),
        ] {
            if !(t > 0.0 && t.is_finite()) {
                return Err(Error::Config(format!("{flag} must be positive, got {t}")));
            }
        }
        let views = 2 * self.pretrain.batch_size;
        if !self.memory_size.is_multiple_of(views) {
            return Err(Error::Config(format!(
                "--memory-size {} is not a multiple of the {views} views of a pretraining batch \
                 (the memory holds whole batches)",
                self.memory_size
            )));
        }
        if !(0.0..1.0).contains(&self.memory_momentum) {
            return Err(Error::Config(format!(
                "--memory-momentum must be in [0, 1), got {}",
                self.memory_momentum
            )));
        }
        if self.memory_momentum > 0.0 && self.memory_size == 0 {
            return Err(Error::Config(
                "--memory-momentum needs a memory buffer: give --memory-size too".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.distill_label_weight) {
            return Err(Error::Config(
                "--distill-label-weight must be in [0, 1]".into(),
            ));
        }
        // Its hue shifts reach ±0.2 × strength: at most half a turn, as torchvision requires.
        if !(0.0..=2.5).contains(&self.color_strength) {
            return Err(Error::Config(format!(
                "--color-strength must be in [0, 2.5], got {}",
                self.color_strength
            )));
        }
        if !(self.crop_min > 0.0 && self.crop_min <= 1.0) {
            return Err(Error::Config(format!(
                "--crop-min must be in (0, 1], got {}",
                self.crop_min
            )));
        }
        if self.train_images == Some(0) || self.test_images == Some(0) {
            return Err(Error::Config(
                "--train-images and --test-images must be at least 1".into(),
            ));
        }
        if self.knn_k == 0 || self.knn_bank == 0 {
            return Err(Error::Config(
                "--knn-k and --knn-bank must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
