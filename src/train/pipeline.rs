//! The commands: each stage alone, evaluation, and `pipeline`, which runs the supervised
//! baseline, pretraining, fine-tuning and distillation in turn and writes report.json.
//!
//! Under W ranks every rank runs every stage (each its share of every batch and of every
//! evaluation) and returns the same results; rank 0 alone writes into the run's directory and
//! prints the summaries.

use crate::error::{Error, Result};
use crate::nn::model::Model;
use crate::train::config::StageConfig;
use crate::train::stages::{self, classifier_spec, supervised_stage, Supervised};
use crate::train::trainer::Monitor;
use crate::train::{budget, checkpoint, Context};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A supervised stage's result: its test top-1 and how its learning rate was chosen.
#[derive(Serialize)]
pub struct SupervisedReport {
    pub arch: String,
    pub params: usize,
    pub top1: f64,
    /// The learning rate it trained at.
    pub lr: f64,
    /// The rates tried on the validation split (absent: one rate, no search).
    pub lr_search: Option<LrSearch>,
    /// The directory of its checkpoint, in the run's.
    pub checkpoint: String,
    pub wall_s: f64,
}

/// The learning rates a supervised stage tried, each run's validation top-1, and the best.
#[derive(Serialize)]
pub struct LrSearch {
    pub val_images: usize,
    pub grid: Vec<f64>,
    pub val_top1: Vec<f64>,
    pub chosen: f64,
}

#[derive(Serialize)]
pub struct PretrainReport {
    pub arch: String,
    pub params: usize,
    pub epochs: usize,
    pub final_loss: f64,
    pub knn_top1: f64,
    pub checkpoint: String,
    pub wall_s: f64,
}

#[derive(Serialize)]
pub struct DistillReport {
    pub student_arch: String,
    pub student_params: usize,
    pub top1: f64,
    pub checkpoint: String,
    pub wall_s: f64,
}

#[derive(Serialize)]
pub struct Report {
    pub dataset: String,
    pub device: String,
    /// The instruction set of the CPU kernels (`device::cpu::isa`): avx512, avx2 or portable.
    pub cpu_kernels: &'static str,
    /// How the CPU's gemms multiply (`device::cpu::gemm_bf16`): f32, or bf16 products under
    /// `--precision bf16` on the cpu.
    pub cpu_products: &'static str,
    pub label_fraction: f64,
    pub labelled_examples: usize,
    pub seed: u64,
    pub baseline: SupervisedReport,
    pub pretrain: PretrainReport,
    pub finetune: SupervisedReport,
    pub distill: DistillReport,
    pub total_wall_s: f64,
    /// The run's config: with a budget, its plan (`plan`) and the steps it set.
    pub config: crate::train::config::Config,
}

fn describe(model: &Model) -> String {
    let a = &model.spec.arch;
    format!("{}-w{}", a.name, a.width)
}

/// A stage's directory in the run's, made by the rank that writes.
fn sub_dir(ctx: &Context, out: &Path, name: &str) -> Result<PathBuf> {
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

pub fn pipeline(ctx: &mut Context, out: &Path) -> Result<Report> {
    let start = Instant::now();
    // A resumed run keeps the plan in its budget.json: its clock started again, so it cannot
    // tell how long the stages before took, and does not re-plan.
    let resumed = ctx.cfg.resume && out.join("budget.json").exists();
    if let Some(budget_s) = ctx.cfg.budget_s {
        say(
            ctx,
            format_args!(
                "budget {budget_s} s: {}",
                match resumed {
                    true => "the run's plan (budget.json), not measured again",
                    false => "timing each stage's steps and evaluations",
                }
            ),
        );
        let plan = budget::plan(ctx, budget_s, out, start)?;
        say_plan(ctx, &plan, 0);
        plan.apply(&mut ctx.cfg);
    }
    // After the first `done` stages: with a budget, the stages left re-planned on the time left.
    let revise = |ctx: &mut Context, done: usize| -> Result<()> {
        let Some(mut plan) = ctx.cfg.plan.clone().filter(|_| !resumed) else {
            return Ok(());
        };
        budget::revise(ctx, &mut plan, done, out, start)?;
        let r = plan.revisions.last().expect("just revised");
        say(
            ctx,
            format_args!(
                "budget: {:.0} s spent; {} took {:.2}x the time its timed steps predicted; \
                 re-planned:",
                r.elapsed_s, r.after, r.slowdown
            ),
        );
        say_plan(ctx, &plan, done);
        plan.apply(&mut ctx.cfg);
        Ok(())
    };
    let labelled = ctx.labelled()?.len();
    say(
        ctx,
        format_args!("[1/4] supervised baseline on {labelled} labelled images"),
    );
    let (_, baseline_report) = {
        let ctx = &*ctx;
        let arch = ctx.arch(&ctx.cfg.arch, ctx.cfg.width, ctx.cfg.sk);
        let fresh = || Model::new(&classifier_spec(ctx, arch.clone()), ctx.cfg.seed);
        tuned(ctx, "baseline", &ctx.cfg.baseline, fresh, out)?
    };
    revise(ctx, 1)?;
    let images = ctx.train_indices.len();
    say(ctx, format_args!("[2/4] pretraining on {images} images"));
    let pre = stages::pretrain(ctx, &sub_dir(ctx, out, "pretrain")?)?;
    revise(ctx, 2)?;
    say(
        ctx,
        format_args!("[3/4] fine-tuning on {labelled} labelled images"),
    );
    let (mut ft, finetune_report) = {
        let ctx = &*ctx;
        let start_ft = || stages::from_pretrained(ctx, &pre.model);
        tuned(ctx, "finetune", &ctx.cfg.finetune, start_ft, out)?
    };
    revise(ctx, 3)?;
    let ctx = &*ctx;
    let cfg = &ctx.cfg;
    let student = format!("{}-w{}", cfg.student_arch, cfg.student_width);
    say(ctx, format_args!("[4/4] distilling into {student}"));
    let st = stages::distill(ctx, &mut ft.model, &sub_dir(ctx, out, "distill")?)?;
    let report = Report {
        dataset: cfg.data.display().to_string(),
        device: ctx.device.name(),
        cpu_kernels: crate::device::cpu::isa::name(),
        cpu_products: crate::device::cpu::gemm_bf16::describe(),
        label_fraction: ctx.label_fraction()?,
        labelled_examples: labelled,
        seed: cfg.seed,
        baseline: baseline_report,
        pretrain: PretrainReport {
            arch: describe(&pre.model),
            params: pre.model.num_params(),
            epochs: cfg.pretrain.epochs,
            final_loss: pre.outcome.final_loss,
            knn_top1: pre.knn_top1,
            checkpoint: "pretrain".into(),
            wall_s: pre.outcome.wall_s,
        },
        finetune: finetune_report,
        distill: DistillReport {
            student_arch: describe(&st.model),
            student_params: st.model.num_params(),
            top1: st.top1,
            checkpoint: "distill".into(),
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

/// The plan's stages after the first `done`: their seconds and steps.
fn say_plan(ctx: &Context, plan: &budget::Plan, done: usize) {
    for (name, p) in &plan.stages()[done..] {
        say(
            ctx,
            format_args!(
                "  {name}: {:.0} s for {} run(s) of {} steps ({:.3} s each, {} epochs)",
                p.seconds,
                p.runs,
                p.steps,
                p.step_s * p.slowdown,
                p.steps.div_ceil(p.steps_per_epoch)
            ),
        );
    }
}

/// A supervised stage (`name`: baseline or finetune) of the pipeline, each run starting from
/// `start()`. With several learning rates to try (`stages::learning_rates`), one run per rate
/// in `<out>/<name>/lr-<rate>`, each scored on the validation split; the best is kept and
/// scored on the test set. With one, one run in `<out>/<name>`, scored on the test set.
fn tuned(
    ctx: &Context,
    name: &'static str,
    recipe: &StageConfig,
    start: impl Fn() -> Result<Model>,
    out: &Path,
) -> Result<(Supervised, SupervisedReport)> {
    let dir = sub_dir(ctx, out, name)?;
    let lrs = stages::learning_rates(ctx, recipe);
    let at = |lr| StageConfig {
        lr,
        ..recipe.clone()
    };
    let relative = |dir: &Path| dir.strip_prefix(out).unwrap_or(dir).display().to_string();
    let report = |run: &Supervised, lr, lr_search, dir: &Path, wall_s| SupervisedReport {
        arch: describe(&run.model),
        params: run.model.num_params(),
        top1: run.top1,
        lr,
        lr_search,
        checkpoint: relative(dir),
        wall_s,
    };
    if lrs.len() == 1 {
        if recipe.lr_grid.len() > 1 {
            say(
                ctx,
                format_args!(
                    "{name}: too few labelled images outside the subset for a validation split; \
                     lr {} without a search",
                    recipe.lr
                ),
            );
        }
        let stage = supervised_stage(ctx, name, &at(lrs[0]), Monitor::Top1)?;
        let run = stages::supervised(ctx, start()?, stage, &dir)?;
        let r = report(&run, lrs[0], None, &dir, run.outcome.wall_s);
        return Ok((run, r));
    }
    // The best run so far: its score, rate, directory and model (the others are let go).
    let mut best: Option<(f64, f64, PathBuf, Supervised)> = None;
    let (mut val_top1, mut wall_s) = (Vec::new(), 0.0);
    for &lr in &lrs {
        let run_dir = sub_dir(ctx, &dir, &format!("lr-{lr}"))?;
        let stage = supervised_stage(ctx, name, &at(lr), Monitor::Validation)?;
        let run = stages::supervised(ctx, start()?, stage, &run_dir)?;
        let score = run.outcome.record["val_top1"].as_f64().unwrap_or(f64::NAN);
        say(
            ctx,
            format_args!("{name}: lr {lr}: validation top-1 {score:.4}"),
        );
        val_top1.push(score);
        wall_s += run.outcome.wall_s;
        // The first best wins a tie: the same choice on every run and every rank.
        if best.as_ref().is_none_or(|b| score > b.0) {
            best = Some((score, lr, run_dir, run));
        }
    }
    let (_, lr, run_dir, mut run) = best.expect("a grid has rates");
    let scored = Instant::now();
    run.top1 = ctx.test_top1(&mut run.model, &ctx.norm)?;
    say(
        ctx,
        format_args!("{name}: chose lr {lr}: test top-1 {:.4}", run.top1),
    );
    let search = LrSearch {
        val_images: ctx.val_indices.len(),
        grid: lrs,
        val_top1,
        chosen: lr,
    };
    wall_s += scored.elapsed().as_secs_f64();
    let r = report(&run, lr, Some(search), &run_dir, wall_s);
    Ok((run, r))
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
        "| supervised baseline ({}, lr {}) | {} | {:.2}% | {:.0} s |",
        r.baseline.arch,
        r.baseline.lr,
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
        "| fine-tuned teacher (lr {}) | {} | {:.2}% | {:.0} s |",
        r.finetune.lr,
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
