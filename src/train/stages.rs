//! The stages: contrastive pretraining, supervised training (the baseline from scratch and
//! fine-tuning from the pretrained head), and distillation into a student.

use crate::autograd::{Graph, Var};
use crate::data::augment::Augment;
use crate::data::loader::{Batch, Loader, Views};
use crate::error::{Error, Result};
use crate::nn::model::{Model, ModelSpec};
use crate::nn::resnet::Arch;
use crate::ops;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::checkpoint::{self, Meta, Resume};
use crate::train::config::StageConfig;
use crate::train::eval;
use crate::train::metrics::Metrics;
use crate::train::trainer::{self, Outcome, Position, Stage};

/// Where a resumed stage starts, and the optimiser state saved there.
type Start = (Position, Vec<(usize, Tensor)>);
use crate::train::Context;
use serde_json::{json, Value};
use std::path::Path;

/// Keys that give each stage its own random streams.
const PRETRAIN: u64 = 1;
const SUPERVISED: u64 = 2;
const DISTILL: u64 = 3;

impl Context {
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
    /// so the remaining batches are exactly those of an uninterrupted epoch.
    fn epoch_loader(
        &self,
        key: u64,
        indices: &[usize],
        batch: usize,
        views: Views,
        (epoch, skip): (usize, usize),
    ) -> Loader {
        let mut order = indices.to_vec();
        Rng::derive(self.cfg.seed, &[key, epoch as u64]).shuffle(&mut order);
        Loader::new(
            self.train.clone(),
            order.split_off((skip * batch).min(order.len())),
            batch,
            true,
            views,
            self.norm.clone(),
            self.train.h,
            self.cfg.seed ^ key,
            epoch as u64,
            2,
        )
    }

    /// Crop and flip only: the augmentation of the supervised stages.
    fn crop_flip(&self) -> Augment {
        Augment {
            crop_area: (self.cfg.crop_min, 1.0),
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            blur_prob: 0.0,
            ..Augment::simclr(self.train.h, 0.0)
        }
    }

    fn input(&self, g: &mut Graph, batch: &Batch) -> Var {
        let x = Tensor::from_vec(
            &[batch.rows, self.train.h, self.train.w, self.train.c],
            batch.x.clone(),
        );
        g.input(x.to_device(&self.device))
    }

    /// A training checkpoint of `stage` at `pos` in `dir`.
    fn save(
        &self,
        dir: &Path,
        stage: &str,
        (model, opt): (&Model, &Optimizer),
        pos: &Position,
    ) -> Result<()> {
        let meta = Meta {
            batch: pos.batch,
            loss_sum: pos.loss_sum,
            elapsed_s: pos.elapsed_s,
            record: pos.record.clone(),
            ..Meta::new(stage, pos.epoch, &model.spec, &self.cfg)
        };
        checkpoint::save(dir, model, Some(opt), &meta)
    }

    /// With --resume, the checkpoint `stage` left in `dir` (none: the stage starts afresh).
    /// It must be of the same stage, network and settings (the device may differ).
    fn resume_point(&self, dir: &Path, stage: &str, spec: &ModelSpec) -> Result<Option<Resume>> {
        if !self.cfg.resume || !dir.join(checkpoint::FILE).exists() {
            return Ok(None);
        }
        let mut r = checkpoint::load_training(dir)?;
        let mut saved = r.meta.config.clone();
        let mut now = serde_json::to_value(&self.cfg).expect("config serialises");
        // Settings that may change between the run and its resumption.
        for c in [&mut saved, &mut now] {
            for key in ["device", "resume", "checkpoint_every"] {
                c[key] = Value::Null;
            }
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
    fn begin(&self, resume: Option<Resume>, fresh: Model) -> (Model, Option<Start>) {
        let (mut model, start) = match resume {
            Some(r) => {
                let m = r.meta;
                let pos = Position {
                    epoch: m.epoch,
                    batch: m.batch,
                    loss_sum: m.loss_sum,
                    elapsed_s: m.elapsed_s,
                    record: m.record,
                };
                (r.model, Some((pos, r.velocity)))
            }
            None => (fresh, None),
        };
        model.to_device(&self.device);
        (model, start)
    }

    /// metrics.jsonl of a stage: continued when resuming, else new.
    fn metrics(&self, dir: &Path, start: &Option<Start>) -> Result<Metrics> {
        Metrics::open(dir, start.is_some())
    }
}

/// The batch size a stage can use on `n` images, and the stage config with it.
fn fit_batch(cfg: &StageConfig, n: usize, stage: &str) -> Result<(StageConfig, usize)> {
    let batch = cfg.batch_size.min(n);
    if batch < 2 {
        return Err(Error::Config(format!(
            "{stage}: needs at least 2 images, has {n}"
        )));
    }
    Ok((
        StageConfig {
            batch_size: batch,
            ..cfg.clone()
        },
        n / batch,
    ))
}

pub struct Pretrained {
    pub model: Model,
    pub outcome: Outcome,
    pub knn_top1: f64,
}

/// Stage 1: NT-Xent on two augmented views of each training image (labels unused), LARS,
/// kNN monitor on the test set after every epoch.
pub fn pretrain(ctx: &Context, out: &Path) -> Result<Pretrained> {
    let cfg = &ctx.cfg;
    let spec = ModelSpec {
        arch: ctx.arch(&cfg.arch, cfg.width, cfg.sk),
        head_layers: 3,
        proj_dim: cfg.proj_dim,
        num_classes: None,
    };
    let resume = ctx.resume_point(out, "pretrain", &spec)?;
    let (mut model, start) = ctx.begin(resume, Model::new(&spec, cfg.seed)?);
    let (stage_cfg, batches) = fit_batch(&cfg.pretrain, ctx.train_indices.len(), "pretrain")?;
    let aug = Augment {
        crop_area: (cfg.crop_min, 1.0),
        ..Augment::simclr(ctx.train.h, cfg.color_strength)
    };
    let mut metrics = ctx.metrics(out, &start)?;
    let outcome = trainer::run(
        &mut model,
        Stage {
            name: "pretrain",
            cfg: &stage_cfg,
            batches_per_epoch: batches,
            loader: &mut |epoch, skip| {
                ctx.epoch_loader(
                    PRETRAIN,
                    &ctx.train_indices,
                    stage_cfg.batch_size,
                    Views::Two(aug.clone()),
                    (epoch, skip),
                )
            },
            loss: &mut |g, model, batch| {
                let x = ctx.input(g, batch);
                let (_, proj) = model.forward(g, x, true);
                let z = ops::normalize::l2_normalize(g, proj);
                ops::ntxent::ntxent(g, z, cfg.temperature)
            },
            end_epoch: &mut |model, _| {
                let knn = eval::knn_top1(
                    model,
                    &ctx.train,
                    &ctx.knn_bank,
                    &ctx.test,
                    &ctx.test_indices,
                    &ctx.norm,
                    cfg.knn_k,
                );
                Ok(json!({"knn_top1": knn}))
            },
            save: &mut |model, opt, pos| ctx.save(out, "pretrain", (model, opt), pos),
            checkpoint_every: cfg.checkpoint_every,
            start,
        },
        &mut metrics,
    )?;
    let knn_top1 = outcome.record["knn_top1"].as_f64().unwrap_or(f64::NAN);
    Ok(Pretrained {
        model,
        outcome,
        knn_top1,
    })
}

pub struct Supervised {
    pub model: Model,
    pub outcome: Outcome,
    pub top1: f64,
}

impl Supervised {
    fn new(model: Model, outcome: Outcome) -> Supervised {
        let top1 = outcome.record["top1"].as_f64().unwrap_or(f64::NAN);
        Supervised {
            model,
            outcome,
            top1,
        }
    }
}

/// The network fine-tuning trains: encoder + head layer 1 + zero-initialised classifier.
pub fn classifier_spec(ctx: &Context, arch: Arch) -> ModelSpec {
    ModelSpec {
        arch,
        head_layers: 1,
        proj_dim: ctx.cfg.proj_dim,
        num_classes: Some(ctx.train.num_classes),
    }
}

/// Fine-tuning's starting point: the pretrained encoder and head layer 1.
pub fn from_pretrained(ctx: &Context, pretrained: &Model) -> Result<Model> {
    let mut model = Model::new(
        &classifier_spec(ctx, pretrained.spec.arch.clone()),
        ctx.cfg.seed,
    )?;
    model.to_device(&ctx.device);
    checkpoint::copy_params(
        &pretrained.store,
        &mut model.store,
        &["encoder.", "head.0."],
    )?;
    Ok(model)
}

/// Linear evaluation's network: the pretrained encoder and a zero-initialised classifier on
/// its features.
pub fn linear_classifier(ctx: &Context, pretrained: &Model) -> Result<Model> {
    let spec = ModelSpec {
        arch: pretrained.spec.arch.clone(),
        head_layers: 0,
        proj_dim: ctx.cfg.proj_dim,
        num_classes: Some(ctx.train.num_classes),
    };
    let mut model = Model::new(&spec, ctx.cfg.seed)?;
    model.to_device(&ctx.device);
    checkpoint::copy_params(&pretrained.store, &mut model.store, &["encoder."])?;
    Ok(model)
}

/// Stage 2 (and the baseline, and linear evaluation): softmax cross-entropy on the labelled
/// subset with crop and flip, then top-1 on the test set. `stage` is "finetune", "baseline"
/// (the whole network trained) or "linear" (the encoder frozen, the classifier trained).
pub fn supervised(
    ctx: &Context,
    model: Model,
    stage: &'static str,
    out: &Path,
) -> Result<Supervised> {
    let resume = ctx.resume_point(out, stage, &model.spec)?;
    let (mut model, start) = ctx.begin(resume, model);
    let frozen = stage == "linear";
    let recipe = if frozen {
        &ctx.cfg.linear
    } else {
        &ctx.cfg.finetune
    };
    let (stage_cfg, batches) = fit_batch(recipe, ctx.labelled.len(), stage)?;
    let aug = ctx.crop_flip();
    let mut metrics = ctx.metrics(out, &start)?;
    let epochs = stage_cfg.epochs;
    let outcome = trainer::run(
        &mut model,
        Stage {
            name: stage,
            cfg: &stage_cfg,
            batches_per_epoch: batches,
            loader: &mut |epoch, skip| {
                ctx.epoch_loader(
                    SUPERVISED,
                    &ctx.labelled,
                    stage_cfg.batch_size,
                    Views::One(aug.clone()),
                    (epoch, skip),
                )
            },
            loss: &mut |g, model, batch| {
                let x = ctx.input(g, batch);
                let logits = match frozen {
                    true => model.forward_frozen_encoder(g, x),
                    false => model.forward(g, x, true).1,
                };
                ops::loss::softmax_cross_entropy(g, logits, &batch.labels)
            },
            end_epoch: &mut |model, epoch| {
                if epoch < epochs {
                    return Ok(json!({}));
                }
                let top1 = eval::top1(model, &ctx.test, &ctx.test_indices, &ctx.norm);
                Ok(json!({"top1": top1}))
            },
            save: &mut |model, opt, pos| ctx.save(out, stage, (model, opt), pos),
            checkpoint_every: ctx.cfg.checkpoint_every,
            start,
        },
        &mut metrics,
    )?;
    Ok(Supervised::new(model, outcome))
}

/// Stage 3: the student learns the teacher's softened predictions on the (unlabelled)
/// training images; optionally mixed with the label loss on the labelled ones.
pub fn distill(ctx: &Context, teacher: &mut Model, out: &Path) -> Result<Supervised> {
    let cfg = &ctx.cfg;
    let spec = ModelSpec {
        arch: ctx.arch(&cfg.student_arch, cfg.student_width, false),
        head_layers: 0,
        proj_dim: cfg.proj_dim,
        num_classes: teacher.spec.num_classes,
    };
    let resume = ctx.resume_point(out, "distill", &spec)?;
    let (mut student, start) = ctx.begin(resume, Model::new(&spec, cfg.seed ^ DISTILL)?);
    teacher.to_device(&ctx.device);
    let (stage_cfg, batches) = fit_batch(&cfg.distill, ctx.train_indices.len(), "distill")?;
    let aug = ctx.crop_flip();
    let labelled: std::collections::HashSet<usize> = ctx.labelled.iter().copied().collect();
    let mut metrics = ctx.metrics(out, &start)?;
    let epochs = stage_cfg.epochs;
    let outcome = trainer::run(
        &mut student,
        Stage {
            name: "distill",
            cfg: &stage_cfg,
            batches_per_epoch: batches,
            loader: &mut |epoch, skip| {
                ctx.epoch_loader(
                    DISTILL,
                    &ctx.train_indices,
                    stage_cfg.batch_size,
                    Views::One(aug.clone()),
                    (epoch, skip),
                )
            },
            loss: &mut |g, student, batch| {
                let mut tg = Graph::new(false);
                let tx = ctx.input(&mut tg, batch);
                let (_, teacher_logits) = teacher.forward(&mut tg, tx, false);
                let probs = ops::loss::softmax(tg.value(teacher_logits), cfg.distill_temperature);
                let labels: Vec<u32> = batch
                    .indices
                    .iter()
                    .zip(&batch.labels)
                    .map(|(i, &y)| {
                        if labelled.contains(i) {
                            y
                        } else {
                            ops::loss::UNLABELLED
                        }
                    })
                    .collect();
                let x = ctx.input(g, batch);
                let (_, logits) = student.forward(g, x, true);
                ops::loss::distillation(
                    g,
                    logits,
                    &probs,
                    cfg.distill_temperature,
                    &labels,
                    cfg.distill_label_weight,
                )
            },
            end_epoch: &mut |model, epoch| {
                if epoch < epochs {
                    return Ok(json!({}));
                }
                let top1 = eval::top1(model, &ctx.test, &ctx.test_indices, &ctx.norm);
                Ok(json!({"top1": top1}))
            },
            save: &mut |model, opt, pos| ctx.save(out, "distill", (model, opt), pos),
            checkpoint_every: cfg.checkpoint_every,
            start,
        },
        &mut metrics,
    )?;
    Ok(Supervised::new(student, outcome))
}
