//! The commands: each stage alone, evaluation, and `pipeline`, which runs the supervised
//! baseline, pretraining, fine-tuning and distillation in turn and writes report.json.
//!
//! Under W ranks every rank runs every stage (each its share of every batch and of every
//! evaluation) and returns the same results; rank 0 alone writes into the run's directory and
//! prints the summaries.

use crate::error::{Error, Result};
use crate::nn::model::Model;
use crate::train::checkpoint;
use crate::train::stages::{self, classifier_spec};
use crate::train::Context;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Serialize)]
pub struct BaselineReport {
    pub arch: String,
    pub params: usize,
    pub top1: f64,
    pub wall_s: f64,
}

#[derive(Serialize)]
pub struct PretrainReport {
    pub arch: String,
    pub params: usize,
    pub epochs: usize,
    pub final_loss: f64,
    pub knn_top1: f64,
    pub wall_s: f64,
}

#[derive(Serialize)]
pub struct FinetuneReport {
    pub params: usize,
    pub top1: f64,
    pub wall_s: f64,
}

#[derive(Serialize)]
pub struct DistillReport {
    pub student_arch: String,
    pub student_params: usize,
    pub top1: f64,
    pub wall_s: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub dataset: String,
    pub device: String,
    pub label_fraction: f64,
    pub labelled_examples: usize,
    pub seed: u64,
    pub baseline: BaselineReport,
    pub pretrain: PretrainReport,
    pub finetune: FinetuneReport,
    pub distill: DistillReport,
    pub total_wall_s: f64,
    pub config: crate::train::config::Config,
}

fn describe(model: &Model) -> String {
    let a = &model.spec.arch;
    format!("{}-w{}", a.name, a.width)
}

/// A stage's directory in the run's, made by the rank that writes.
fn sub_dir(ctx: &Context, out: &Path, name: &str) -> Result<std::path::PathBuf> {
    let dir = out.join(name);
    if ctx.is_main() {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(dir)
}

/// Prints `line` on rank 0 (the one process's output, not one copy per rank).
fn say(ctx: &Context, line: std::fmt::Arguments) {
    if ctx.is_main() {
        println!("{line}");
    }
}

pub fn pipeline(ctx: &Context, out: &Path) -> Result<Report> {
    let start = Instant::now();
    let cfg = &ctx.cfg;
    let labelled = ctx.labelled()?.len();
    say(
        ctx,
        format_args!("[1/4] supervised baseline on {labelled} labelled images"),
    );
    let fresh = Model::new(
        &classifier_spec(ctx, ctx.arch(&cfg.arch, cfg.width, cfg.sk)),
        cfg.seed,
    )?;
    let dir = |name| sub_dir(ctx, out, name);
    let baseline = stages::supervised(ctx, fresh, "baseline", &dir("baseline")?)?;
    let images = ctx.train_indices.len();
    say(ctx, format_args!("[2/4] pretraining on {images} images"));
    let pre = stages::pretrain(ctx, &dir("pretrain")?)?;
    say(
        ctx,
        format_args!("[3/4] fine-tuning on {labelled} labelled images"),
    );
    let start_ft = stages::from_pretrained(ctx, &pre.model)?;
    let mut ft = stages::supervised(ctx, start_ft, "finetune", &dir("finetune")?)?;
    let student = format!("{}-w{}", cfg.student_arch, cfg.student_width);
    say(ctx, format_args!("[4/4] distilling into {student}"));
    let st = stages::distill(ctx, &mut ft.model, &dir("distill")?)?;
    let report = Report {
        dataset: cfg.data.display().to_string(),
        device: ctx.device.name(),
        label_fraction: ctx.label_fraction()?,
        labelled_examples: labelled,
        seed: cfg.seed,
        baseline: BaselineReport {
            arch: describe(&baseline.model),
            params: baseline.model.num_params(),
            top1: baseline.top1,
            wall_s: baseline.outcome.wall_s,
        },
        pretrain: PretrainReport {
            arch: describe(&pre.model),
            params: pre.model.num_params(),
            epochs: cfg.pretrain.epochs,
            final_loss: pre.outcome.final_loss,
            knn_top1: pre.knn_top1,
            wall_s: pre.outcome.wall_s,
        },
        finetune: FinetuneReport {
            params: ft.model.num_params(),
            top1: ft.top1,
            wall_s: ft.outcome.wall_s,
        },
        distill: DistillReport {
            student_arch: describe(&st.model),
            student_params: st.model.num_params(),
            top1: st.top1,
            wall_s: st.outcome.wall_s,
        },
        total_wall_s: start.elapsed().as_secs_f64(),
        config: cfg.clone(),
    };
    if ctx.is_main() {
        let json = serde_json::to_string_pretty(&report).expect("report serialises");
        checkpoint::write_atomic(&out.join("report.json"), json.as_bytes())?;
        print_table(&report);
    }
    Ok(report)
}

fn print_table(r: &Report) {
    println!();
    println!(
        "{} labelled examples ({:.2}% of the training images), seed {}, device {}",
        r.labelled_examples,
        100.0 * r.label_fraction,
        r.seed,
        r.device
    );
    println!("| model | params | test top-1 | wall time |");
    println!("|---|---:|---:|---:|");
    println!(
        "| supervised baseline ({}) | {} | {:.2}% | {:.0} s |",
        r.baseline.arch,
        r.baseline.params,
        100.0 * r.baseline.top1,
        r.baseline.wall_s
    );
    println!(
        "| SimCLR pretraining ({}, kNN) | {} | {:.2}% | {:.0} s |",
        r.pretrain.arch,
        r.pretrain.params,
        100.0 * r.pretrain.knn_top1,
        r.pretrain.wall_s
    );
    println!(
        "| fine-tuned teacher | {} | {:.2}% | {:.0} s |",
        r.finetune.params,
        100.0 * r.finetune.top1,
        r.finetune.wall_s
    );
    println!(
        "| distilled student ({}) | {} | {:.2}% | {:.0} s |",
        r.distill.student_arch,
        r.distill.student_params,
        100.0 * r.distill.top1,
        r.distill.wall_s
    );
    println!("total wall time {:.0} s", r.total_wall_s);
}

/// `simclr eval`: the kNN monitor for any checkpoint (on its encoder's features), and test
/// top-1 too for one with a classifier; printed (by rank 0) and returned (on every rank).
pub fn evaluate(ctx: &Context, ckpt: &Path) -> Result<serde_json::Value> {
    let (mut model, meta) = checkpoint::load(ckpt)?;
    check_input(ctx, &model)?;
    model.to_device(&ctx.device);
    // The images standardised as the model's training data was.
    let norm = meta.normalize_or(&ctx.norm);
    let knn = ctx.knn_top1(&mut model, &norm)?;
    let mut record = serde_json::json!({
        "stage": meta.stage,
        "knn_top1": knn,
        "test_images": ctx.test_indices.len(),
    });
    if model.spec.num_classes.is_some() {
        record["top1"] = ctx.test_top1(&mut model, &norm)?.into();
    }
    ctx.device.check()?;
    say(ctx, format_args!("{record}"));
    Ok(record)
}

/// A checkpoint's model must take the dataset's images.
pub fn check_input(ctx: &Context, model: &Model) -> Result<()> {
    let a = &model.spec.arch;
    if a.in_channels != ctx.train.c || a.image_size != ctx.train.h {
        return Err(Error::Checkpoint(format!(
            "checkpoint expects {}x{}x{} images, the data has {}x{}x{}",
            a.image_size, a.image_size, a.in_channels, ctx.train.h, ctx.train.w, ctx.train.c
        )));
    }
    if let Some(k) = model.spec.num_classes {
        if k != ctx.train.num_classes {
            return Err(Error::Checkpoint(format!(
                "checkpoint has {k} classes, the data has {}",
                ctx.train.num_classes
            )));
        }
    }
    Ok(())
}
