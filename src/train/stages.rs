//! The stages: contrastive pretraining, supervised training (the baseline from scratch and
//! fine-tuning from the pretrained head), and distillation into a student.

use crate::autograd::{Graph, Var};
use crate::data::augment::Augment;
use crate::data::loader::{Batch, Loader, Views};
use crate::error::{Error, Result};
use crate::nn::model::{Model, ModelSpec};
use crate::nn::resnet::Arch;
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::checkpoint::{self, Meta};
use crate::train::config::StageConfig;
use crate::train::eval;
use crate::train::metrics::Metrics;
use crate::train::trainer::{self, Outcome, Stage};
use crate::train::Context;
use serde_json::json;
use std::path::Path;

/// Keys that give each stage its own random streams.
const PRETRAIN: u64 = 1;
const SUPERVISED: u64 = 2;
const DISTILL: u64 = 3;

impl Context {
    pub fn arch(&self, name: &str, width: usize) -> Arch {
        Arch {
            name: name.to_string(),
            width,
            in_channels: self.train.c,
            image_size: self.train.h,
        }
    }

    /// Loader of one epoch over `indices` in a seeded order (a new order every epoch).
    fn epoch_loader(
        &self,
        key: u64,
        indices: &[usize],
        batch: usize,
        views: Views,
        epoch: usize,
    ) -> Loader {
        let mut order = indices.to_vec();
        Rng::derive(self.cfg.seed, &[key, epoch as u64]).shuffle(&mut order);
        Loader::new(
            self.train.clone(),
            order,
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

    fn save(&self, dir: &Path, stage: &str, epoch: usize, model: &Model) -> Result<()> {
        checkpoint::save(dir, model, &Meta::new(stage, epoch, &model.spec, &self.cfg))
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
        arch: ctx.arch(&cfg.arch, cfg.width),
        head_layers: 3,
        proj_dim: cfg.proj_dim,
        num_classes: None,
    };
    let mut model = Model::new(&spec, cfg.seed)?;
    model.to_device(&ctx.device);
    let (stage_cfg, batches) = fit_batch(&cfg.pretrain, ctx.train_indices.len(), "pretrain")?;
    let aug = Augment {
        crop_area: (cfg.crop_min, 1.0),
        ..Augment::simclr(ctx.train.h, cfg.color_strength)
    };
    let mut metrics = Metrics::create(out)?;
    let mut knn = f64::NAN;
    let outcome = trainer::run(
        &mut model,
        Stage {
            name: "pretrain",
            cfg: &stage_cfg,
            batches_per_epoch: batches,
            loader: &mut |epoch| {
                ctx.epoch_loader(
                    PRETRAIN,
                    &ctx.train_indices,
                    stage_cfg.batch_size,
                    Views::Two(aug.clone()),
                    epoch,
                )
            },
            loss: &mut |g, model, batch| {
                let x = ctx.input(g, batch);
                let (_, proj) = model.forward(g, x, true);
                let z = ops::normalize::l2_normalize(g, proj);
                ops::loss::ntxent(g, z, cfg.temperature)
            },
            end_epoch: &mut |model, epoch| {
                knn = eval::knn_top1(
                    model,
                    &ctx.train,
                    &ctx.knn_bank,
                    &ctx.test,
                    &ctx.test_indices,
                    &ctx.norm,
                    cfg.knn_k,
                );
                ctx.save(out, "pretrain", epoch, model)?;
                Ok(json!({"knn_top1": knn}))
            },
        },
        &mut metrics,
    )?;
    Ok(Pretrained {
        model,
        outcome,
        knn_top1: knn,
    })
}

pub struct Supervised {
    pub model: Model,
    pub outcome: Outcome,
    pub top1: f64,
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

/// Stage 2 (and the baseline): softmax cross-entropy on the labelled subset with crop and
/// flip, then top-1 on the test set. `stage` is "finetune" or "baseline".
pub fn supervised(
    ctx: &Context,
    mut model: Model,
    stage: &'static str,
    out: &Path,
) -> Result<Supervised> {
    model.to_device(&ctx.device);
    let (stage_cfg, batches) = fit_batch(&ctx.cfg.finetune, ctx.labelled.len(), stage)?;
    let aug = ctx.crop_flip();
    let mut metrics = Metrics::create(out)?;
    let mut top1 = f64::NAN;
    let epochs = stage_cfg.epochs;
    let outcome = trainer::run(
        &mut model,
        Stage {
            name: stage,
            cfg: &stage_cfg,
            batches_per_epoch: batches,
            loader: &mut |epoch| {
                ctx.epoch_loader(
                    SUPERVISED,
                    &ctx.labelled,
                    stage_cfg.batch_size,
                    Views::One(aug.clone()),
                    epoch,
                )
            },
            loss: &mut |g, model, batch| {
                let x = ctx.input(g, batch);
                let (_, logits) = model.forward(g, x, true);
                ops::loss::softmax_cross_entropy(g, logits, &batch.labels)
            },
            end_epoch: &mut |model, epoch| {
                if epoch < epochs {
                    return Ok(json!({}));
                }
                top1 = eval::top1(model, &ctx.test, &ctx.test_indices, &ctx.norm);
                ctx.save(out, stage, epoch, model)?;
                Ok(json!({"top1": top1}))
            },
        },
        &mut metrics,
    )?;
    Ok(Supervised {
        model,
        outcome,
        top1,
    })
}

/// Stage 3: the student learns the teacher's softened predictions on the (unlabelled)
/// training images; optionally mixed with the label loss on the labelled ones.
pub fn distill(ctx: &Context, teacher: &mut Model, out: &Path) -> Result<Supervised> {
    let cfg = &ctx.cfg;
    let mut student = Model::new(
        &ModelSpec {
            arch: ctx.arch(&cfg.student_arch, cfg.student_width),
            head_layers: 0,
            proj_dim: cfg.proj_dim,
            num_classes: teacher.spec.num_classes,
        },
        cfg.seed ^ DISTILL,
    )?;
    student.to_device(&ctx.device);
    teacher.to_device(&ctx.device);
    let (stage_cfg, batches) = fit_batch(&cfg.distill, ctx.train_indices.len(), "distill")?;
    let aug = ctx.crop_flip();
    let labelled: std::collections::HashSet<usize> = ctx.labelled.iter().copied().collect();
    let mut metrics = Metrics::create(out)?;
    let mut top1 = f64::NAN;
    let epochs = stage_cfg.epochs;
    let outcome = trainer::run(
        &mut student,
        Stage {
            name: "distill",
            cfg: &stage_cfg,
            batches_per_epoch: batches,
            loader: &mut |epoch| {
                ctx.epoch_loader(
                    DISTILL,
                    &ctx.train_indices,
                    stage_cfg.batch_size,
                    Views::One(aug.clone()),
                    epoch,
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
                ctx.save(out, "distill", epoch, model)?;
                if epoch < epochs {
                    return Ok(json!({}));
                }
                top1 = eval::top1(model, &ctx.test, &ctx.test_indices, &ctx.norm);
                Ok(json!({"top1": top1}))
            },
        },
        &mut metrics,
    )?;
    Ok(Supervised {
        model: student,
        outcome,
        top1,
    })
}
