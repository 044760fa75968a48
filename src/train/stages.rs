//! The stages: contrastive pretraining, supervised training (the baseline from scratch,
//! fine-tuning from the pretrained head, linear evaluation), and distillation into a student.
//! Each builds its network and its `Stage` (what differs: images, views, objective, monitor)
//! and runs the one training loop, `trainer::train`. Under W ranks every stage runs on every
//! rank, each taking its share of every batch and of every evaluation.

use crate::data::augment::Augment;
use crate::data::loader::Views;
use crate::error::{Error, Result};
use crate::nn::model::{Model, ModelSpec};
use crate::nn::resnet::Arch;
use crate::train::checkpoint;
use crate::train::config::StageConfig;
use crate::train::trainer::{self, Monitor, Objective, Outcome, Stage};
use crate::train::Context;
use std::path::Path;

/// Keys that give each stage its own random streams.
const PRETRAIN: u64 = 1;
const SUPERVISED: u64 = 2;
const DISTILL: u64 = 3;

/// The stage config with a batch size that fits `n` images. Under W ranks a batch cut to the
/// images must still split over them (the trainer refuses a --batch-size that does not).
fn fit_batch(ctx: &Context, cfg: &StageConfig, n: usize, stage: &str) -> Result<StageConfig> {
    let batch = cfg.batch_size.min(n);
    if batch < 2 {
        return Err(Error::Config(format!(
            "{stage}: needs at least 2 images, has {n}"
        )));
    }
    let w = ctx.comm.size();
    if batch < cfg.batch_size && !batch.is_multiple_of(w) {
        return Err(Error::Config(format!(
            "{stage}: its batch of {} is cut to its {n} images, which do not split over the {w} \
             ranks: give it a batch size that does, of at most {n}",
            cfg.batch_size
        )));
    }
    Ok(StageConfig {
        batch_size: batch,
        ..cfg.clone()
    })
}

pub struct Pretrained {
    pub model: Model,
    pub outcome: Outcome,
    pub knn_top1: f64,
}

/// Stage 1's network: the encoder and the 3-layer projection head.
pub fn pretrain_spec(ctx: &Context) -> ModelSpec {
    let cfg = &ctx.cfg;
    ModelSpec {
        arch: ctx.arch(&cfg.arch, cfg.width, cfg.sk),
        head_layers: 3,
        proj_dim: cfg.proj_dim,
        num_classes: None,
    }
}

/// Stage 1: NT-Xent on two augmented views of each training image (labels unused), LARS,
/// kNN monitor on the test set after every epoch.
pub fn pretrain_stage(ctx: &Context) -> Result<Stage<'_>> {
    let cfg = &ctx.cfg;
    let aug = Augment {
        crop_area: (cfg.crop_min, 1.0),
        ..Augment::simclr(ctx.train.h, cfg.color_strength)
    };
    Ok(Stage {
        name: "pretrain",
        cfg: fit_batch(ctx, &cfg.pretrain, ctx.train_indices.len(), "pretrain")?,
        images: &ctx.train_indices,
        views: Views::Two(aug),
        key: PRETRAIN,
        objective: Objective::Contrastive {
            temperature: cfg.temperature,
            memory_size: cfg.memory_size,
            memory_momentum: cfg.memory_momentum,
        },
        monitor: Monitor::Knn,
    })
}

pub fn pretrain(ctx: &Context, out: &Path) -> Result<Pretrained> {
    let spec = pretrain_spec(ctx);
    let resume = ctx.resume_point(out, "pretrain", &spec)?;
    let (mut model, start) = ctx.begin(resume, Model::new(&spec, ctx.cfg.seed)?);
    let outcome = trainer::train(ctx, &mut model, pretrain_stage(ctx)?, out, start)?;
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
/// subset with `recipe`, measured by `monitor`. `name` is "finetune" (from pretrained weights),
/// "baseline" (the whole network from scratch), both on crop, flip and colour jitter, or
/// "linear" (the encoder frozen, the classifier trained; crop and flip).
pub fn supervised_stage<'a>(
    ctx: &'a Context,
    name: &'static str,
    recipe: &StageConfig,
    monitor: Monitor,
) -> Result<Stage<'a>> {
    let labelled = ctx.labelled()?;
    let aug = match name {
        "linear" => ctx.crop_flip(),
        _ => ctx.crop_flip_jitter(),
    };
    Ok(Stage {
        name,
        cfg: fit_batch(ctx, recipe, labelled.len(), name)?,
        images: labelled,
        views: Views::One(aug),
        key: SUPERVISED,
        objective: Objective::Supervised {
            frozen_encoder: name == "linear",
        },
        monitor,
    })
}

/// The learning rates the pipeline tries for a supervised stage: its grid when it has one and
/// there is a validation split to choose on, else its recipe's rate.
pub fn learning_rates(ctx: &Context, recipe: &StageConfig) -> Vec<f64> {
    match recipe.lr_grid.len() > 1 && !ctx.val_indices.is_empty() {
        true => recipe.lr_grid.clone(),
        false => vec![recipe.lr],
    }
}

/// Trains `model` through a supervised `stage` into `out` (resuming from its checkpoint there).
pub fn supervised(ctx: &Context, model: Model, stage: Stage, out: &Path) -> Result<Supervised> {
    let resume = ctx.resume_point(out, stage.name, &model.spec)?;
    let (mut model, start) = ctx.begin(resume, model);
    let outcome = trainer::train(ctx, &mut model, stage, out, start)?;
    Ok(Supervised::new(model, outcome))
}

/// The student's network, for a teacher of `num_classes` classes.
pub fn student_spec(ctx: &Context, num_classes: Option<usize>) -> ModelSpec {
    let cfg = &ctx.cfg;
    ModelSpec {
        arch: ctx.arch(&cfg.student_arch, cfg.student_width, false),
        head_layers: 0,
        proj_dim: cfg.proj_dim,
        num_classes,
    }
}

/// Stage 3: the student learns the teacher's softened predictions on the (unlabelled)
/// training images; optionally mixed with the label loss on the labelled ones.
pub fn distill_stage<'a>(ctx: &'a Context, teacher: &'a mut Model) -> Result<Stage<'a>> {
    let cfg = &ctx.cfg;
    let labelled = ctx.labelled()?.iter().copied().collect();
    teacher.to_device(&ctx.device);
    Ok(Stage {
        name: "distill",
        cfg: fit_batch(ctx, &cfg.distill, ctx.train_indices.len(), "distill")?,
        images: &ctx.train_indices,
        views: Views::One(ctx.crop_flip()),
        key: DISTILL,
        objective: Objective::Distill {
            teacher,
            temperature: cfg.distill_temperature,
            label_weight: cfg.distill_label_weight,
            labelled,
        },
        monitor: Monitor::Top1,
    })
}

pub fn distill(ctx: &Context, teacher: &mut Model, out: &Path) -> Result<Supervised> {
    let spec = student_spec(ctx, teacher.spec.num_classes);
    let resume = ctx.resume_point(out, "distill", &spec)?;
    let fresh = Model::new(&spec, ctx.cfg.seed ^ DISTILL)?;
    let (mut student, start) = ctx.begin(resume, fresh);
    let stage = distill_stage(ctx, teacher)?;
    let outcome = trainer::train(ctx, &mut student, stage, out, start)?;
    Ok(Supervised::new(student, outcome))
}
