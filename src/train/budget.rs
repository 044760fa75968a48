//! `simclr pipeline --budget 15m`: a wall-clock budget split over the stages, each stage's
//! length set from its measured speed so that its learning-rate schedule (warmup, cosine)
//! ends on time.
//!
//! The pipeline first times a few steps of every stage's network at its batch size, and its
//! inference on the training images (the evaluations' cost), on throwaway models: the real
//! stages' initialisation, data order and augmentations do not depend on it. Rank 0's
//! measurements decide for every rank. What is left of the budget is split by `SHARES`, and
//! each stage gets the most steps whose training and evaluations fit in its share
//! (`StagePlan::fit`). The plan is written to `budget.json` in the run's directory and into the
//! run's config, so `--resume` keeps the schedule instead of measuring again.

use crate::dist::Comm;
use crate::error::{Error, Result};
use crate::nn::model::Model;
use crate::optim::Optimizer;
use crate::train::checkpoint::Queued;
use crate::train::config::{Config, StageConfig};
use crate::train::eval::forward_all;
use crate::train::stages::{self, classifier_spec, learning_rates};
use crate::train::trainer::{train_step, Monitor, Queue, Stage};
use crate::train::{checkpoint, Context};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// The budget's split (what is left after measuring). Pretraining gets most: the
/// representation is what the other stages build on, and it keeps improving for as long as it
/// trains. The baseline and fine-tuning train on a few labelled images, which a few hundred
/// steps fit (their share pays for every learning rate tried), and distillation needs about
/// as many passes over the unlabelled images as pretraining takes in a quarter of its time.
pub const SHARES: Shares = Shares {
    baseline: 0.10,
    pretrain: 0.65,
    finetune: 0.10,
    distill: 0.15,
};

pub struct Shares {
    pub baseline: f64,
    pub pretrain: f64,
    pub finetune: f64,
    pub distill: f64,
}

/// The part of what is left of the budget that the stages' steps are planned to fill. A stage
/// runs a little slower than its few timed steps: in two 15-minute pipelines on the 2-core Xeon
/// the stages took 4–7% more than planned (935 and 965 s in all), so the plan keeps 6% aside.
const PLANNED: f64 = 0.94;

/// Steps run before timing (the first fills caches and allocators), then steps timed: at
/// least TIMED_STEPS, and more until they take TIMED_S. Eight of the supervised stages' 17 ms
/// steps were too short a sample: a baseline ran at 0.82× and its fine-tuning at 1.03× of what
/// eight steps each predicted, the same steps of the same network on the same machine.
const WARMUP_STEPS: usize = 2;
const TIMED_STEPS: usize = 8;
const TIMED_S: f64 = 2.0;
/// Training images whose inference is timed.
const TIMED_IMAGES: usize = 1000;

/// `--budget`: a duration such as `90s`, `15m`, `1h` or `1h30m` in seconds, or None for `off`.
pub fn parse(s: &str) -> Result<Option<f64>> {
    if s == "off" {
        return Ok(None);
    }
    let bad = || {
        Error::Config(format!(
            "--budget {s}: expected a duration such as 90s, 15m, 1h or 1h30m, or off"
        ))
    };
    let (mut seconds, mut rest, mut units) = (0u64, s, "hms");
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = rest[digits..].chars().next().ok_or_else(bad)?;
        // Each unit at most once, hours before minutes before seconds.
        let at = units.find(unit).ok_or_else(bad)?;
        units = &units[at + 1..];
        let scale = [3600, 60, 1]["hms".find(unit).expect("a unit")];
        seconds = number
            .checked_mul(scale)
            .and_then(|n| n.checked_add(seconds))
            .ok_or_else(bad)?;
        rest = &rest[digits + 1..];
    }
    if seconds == 0 {
        return Err(Error::Config(format!("--budget {s}: must be above zero")));
    }
    Ok(Some(seconds as f64))
}

/// How the budget was spent: what was measured, and the steps it gave each stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub budget_s: f64,
    /// Seconds from the pipeline's start to the end of the measurements.
    pub measured_in_s: f64,
    pub baseline: StagePlan,
    pub pretrain: StagePlan,
    pub finetune: StagePlan,
    pub distill: StagePlan,
    /// The re-plans between stages (`Plan::revise`), in order.
    #[serde(default)]
    pub revisions: Vec<Revision>,
}

/// A re-plan of the stages left: after which stage, how many seconds from the pipeline's
/// start, and how much slower than its timed steps that stage ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub after: String,
    pub elapsed_s: f64,
    pub slowdown: f64,
}

/// One stage's share of the budget and how it is spent: `runs` runs (the learning rates it
/// tries) of `steps` steps each, an evaluation after every epoch (`every_epoch`: the kNN
/// monitor) or at each run's end (validation or test top-1), and one more after the runs
/// (the chosen run's test top-1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagePlan {
    /// Its share of the budget, in seconds.
    pub seconds: f64,
    /// Measured: seconds per training step at the stage's batch size.
    pub step_s: f64,
    /// Measured: seconds per image of inference on one rank.
    pub image_s: f64,
    pub steps_per_epoch: usize,
    pub runs: usize,
    /// Estimated from `image_s`: seconds of each run's evaluation, and of the one after them.
    pub eval_s: f64,
    pub every_epoch: bool,
    pub final_eval_s: f64,
    /// The measured times above are multiplied by this: 1 when first planned, then how much
    /// slower than timed the finished stage of the same kind of step ran, if it was slower
    /// (`Plan::revise`).
    #[serde(default = "one")]
    pub slowdown: f64,
    /// The result: each run's steps.
    pub steps: usize,
}

fn one() -> f64 {
    1.0
}

impl StagePlan {
    /// Seconds that runs of `steps` steps take, evaluations included.
    pub fn seconds_for(&self, steps: usize) -> f64 {
        let evals = match self.every_epoch {
            true => steps.div_ceil(self.steps_per_epoch),
            false => 1,
        };
        let run = steps as f64 * self.step_s + evals as f64 * self.eval_s;
        self.slowdown * (self.runs as f64 * run + self.final_eval_s)
    }

    /// The plan with the most steps that fit in its seconds (0 when not even one does).
    pub fn fit(self) -> StagePlan {
        // seconds_for grows with the steps: the largest that fits, by bisection.
        let most = self.seconds / (self.step_s * self.slowdown);
        let (mut fits, mut over) = (0, (most as usize).saturating_add(1));
        while over - fits > 1 {
            let mid = fits + (over - fits) / 2;
            match self.seconds_for(mid) <= self.seconds {
                true => fits = mid,
                false => over = mid,
            }
        }
        let steps = if self.seconds_for(fits.max(1)) <= self.seconds {
            fits.max(1)
        } else {
            0
        };
        StagePlan { steps, ..self }
    }
}

/// Seconds per training step and per image of inference of `model` in `stage`, measured on
/// a throwaway optimiser (at learning rate 0: the model does not change) and the stage's own
/// batches, epoch after epoch as the trainer reads them. Every rank runs it (a step's
/// collectives need them all), for the same number of steps.
fn measure(ctx: &Context, mut model: Model, mut stage: Stage) -> Result<[f64; 2]> {
    model.to_device(&ctx.device);
    let cfg = &stage.cfg;
    let mut opt = Optimizer::new(cfg.optimizer, cfg.weight_decay, &model.store);
    let mut queue = Queue::new(&stage.objective, &model, Queued::default());
    let (mut done, mut until, mut timed) = (0, WARMUP_STEPS + TIMED_STEPS, Instant::now());
    for epoch in 0.. {
        let mut loader = ctx.epoch_loader(
            stage.key,
            stage.images,
            cfg.batch_size,
            stage.views.clone(),
            (epoch, 0),
        );
        for batch in &mut loader {
            let objective = (&mut stage.objective, &mut queue);
            let loss = train_step(ctx, &mut model, objective, &mut opt, batch, 0.0);
            // Waits for the device, so that each step is timed whole.
            loss.to_f32_vec();
            done += 1;
            if done == WARMUP_STEPS {
                timed = Instant::now();
            }
            if done == WARMUP_STEPS + TIMED_STEPS {
                // Rank 0's count of steps more, so that every rank runs as many.
                let took = timed.elapsed().as_secs_f64();
                let mut more = [((TIMED_S - took) * TIMED_STEPS as f64 / took)
                    .ceil()
                    .max(0.0)];
                from_rank0(&*ctx.comm, &mut more);
                until += more[0] as usize;
            }
            if done == until {
                break;
            }
        }
        loader.check()?;
        if done == until {
            break;
        }
    }
    let step_s = timed.elapsed().as_secs_f64() / (until - WARMUP_STEPS) as f64;
    let images = &ctx.train_indices[..ctx.train_indices.len().min(TIMED_IMAGES)];
    let start = Instant::now();
    forward_all(&mut model, &ctx.train, images, &ctx.norm, ctx.precision)?;
    let image_s = start.elapsed().as_secs_f64() / images.len() as f64;
    Ok([step_s, image_s])
}

/// Rank 0's `values` on every rank: the ranks act on one measurement.
fn from_rank0(comm: &dyn Comm, values: &mut [f64]) {
    if comm.rank() != 0 {
        values.fill(0.0);
    }
    comm.all_reduce_sum(values);
}

/// The run's plan: with `--resume`, the one in `<out>/budget.json` when there is one; else
/// measured now (rank 0 writes it there). `started` is when the pipeline began.
pub fn plan(ctx: &Context, budget_s: f64, out: &Path, started: Instant) -> Result<Plan> {
    let path = out.join("budget.json");
    if ctx.cfg.resume && path.exists() {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let plan: Plan = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Config(format!("{}: not a budget plan ({e})", path.display())))?;
        if plan.budget_s != budget_s {
            return Err(Error::Config(format!(
                "--resume: {} was planned for a budget of {} s, not {budget_s} s: resume with \
                 the flags of that run",
                out.display(),
                plan.budget_s
            )));
        }
        return Ok(plan);
    }
    let cfg = &ctx.cfg;
    let arch = ctx.arch(&cfg.arch, cfg.width, cfg.sk);
    let classifier = || Model::new(&classifier_spec(ctx, arch.clone()), cfg.seed);
    let stage = |name, recipe| stages::supervised_stage(ctx, name, recipe, Monitor::Validation);
    let baseline = measure(ctx, classifier()?, stage("baseline", &cfg.baseline)?)?;
    let pretrain_model = Model::new(&stages::pretrain_spec(ctx), cfg.seed)?;
    let pretrain = measure(ctx, pretrain_model, stages::pretrain_stage(ctx)?)?;
    let finetune = measure(ctx, classifier()?, stage("finetune", &cfg.finetune)?)?;
    let mut teacher = classifier()?;
    let student = Model::new(&stages::student_spec(ctx, Some(ctx.train.num_classes)), 0)?;
    let distill = measure(ctx, student, stages::distill_stage(ctx, &mut teacher)?)?;
    // Each stage's [step_s, image_s] in turn, then the seconds spent so far.
    let mut measured = [baseline, pretrain, finetune, distill].concat();
    measured.push(started.elapsed().as_secs_f64());
    from_rank0(&*ctx.comm, &mut measured);
    let at = |stage: usize| [measured[2 * stage], measured[2 * stage + 1]];
    let measured_in_s = measured[8];
    let left = PLANNED * (budget_s - measured_in_s);

    // An evaluation of n images: each rank infers its share.
    let eval = |n: usize, image_s: f64| n.div_ceil(ctx.comm.size()) as f64 * image_s;
    let (test, bank) = (ctx.test_indices.len(), ctx.knn_bank.len());
    let per_epoch =
        |recipe: &StageConfig, images: usize| images / recipe.batch_size.min(images).max(1);
    let labelled = ctx.labelled()?.len();
    // A supervised stage: each rate a run scored on the validation split, the chosen one on
    // the test set; one rate, one run scored on the test set.
    let supervised_plan = |share: f64, recipe: &StageConfig, [step_s, image_s]: [f64; 2]| {
        let runs = learning_rates(ctx, recipe).len();
        let searched = runs > 1;
        StagePlan {
            seconds: share * left,
            step_s,
            image_s,
            steps_per_epoch: per_epoch(recipe, labelled),
            runs,
            eval_s: eval(
                if searched {
                    ctx.val_indices.len()
                } else {
                    test
                },
                image_s,
            ),
            every_epoch: false,
            final_eval_s: if searched { eval(test, image_s) } else { 0.0 },
            slowdown: 1.0,
            steps: 0,
        }
        .fit()
    };
    let unlabelled_plan = |share: f64, recipe: &StageConfig, [step_s, image_s]: [f64; 2], knn| {
        StagePlan {
            seconds: share * left,
            step_s,
            image_s,
            steps_per_epoch: per_epoch(recipe, ctx.train_indices.len()),
            runs: 1,
            eval_s: eval(if knn { bank + test } else { test }, image_s),
            every_epoch: knn,
            final_eval_s: 0.0,
            slowdown: 1.0,
            steps: 0,
        }
        .fit()
    };
    let plan = Plan {
        budget_s,
        measured_in_s,
        baseline: supervised_plan(SHARES.baseline, &cfg.baseline, at(0)),
        pretrain: unlabelled_plan(SHARES.pretrain, &cfg.pretrain, at(1), true),
        finetune: supervised_plan(SHARES.finetune, &cfg.finetune, at(2)),
        distill: unlabelled_plan(SHARES.distill, &cfg.distill, at(3), false),
        revisions: Vec::new(),
    };
    for (name, p) in plan.stages() {
        if p.steps == 0 {
            return Err(Error::Config(format!(
                "a budget of {budget_s} s is too short: {name} gets {:.1} s, less than one step \
                 ({:.2} s) and its evaluations ({:.1} s) for each of its {} run(s)",
                p.seconds, p.step_s, p.eval_s, p.runs
            )));
        }
    }
    plan.save(ctx, out)?;
    Ok(plan)
}

/// Re-plans the stages after the first `done` of `plan`, which have run by now (rank 0's
/// clock since `started`, the pipeline's start), and saves it: what the stages may still spend,
/// and how fast they will run, are taken from what the finished stages took.
pub fn revise(
    ctx: &Context,
    plan: &mut Plan,
    done: usize,
    out: &Path,
    started: Instant,
) -> Result<()> {
    let mut elapsed = [started.elapsed().as_secs_f64()];
    from_rank0(&*ctx.comm, &mut elapsed);
    plan.revise(done, elapsed[0]);
    plan.save(ctx, out)
}

impl Plan {
    /// Writes the plan to `<out>/budget.json` (rank 0), where `--resume` finds it.
    fn save(&self, ctx: &Context, out: &Path) -> Result<()> {
        if ctx.is_main() {
            let json = serde_json::to_string_pretty(self).expect("plan serialises");
            checkpoint::write_atomic(&out.join("budget.json"), json.as_bytes())?;
        }
        Ok(())
    }

    /// The stages after the first `done`, the last of which ended `elapsed_s` seconds into the
    /// pipeline, re-planned: the budget left is split between them by their `SHARES`, and a
    /// stage whose kind of step has now run gets that stage's `slowdown` (its seconds over what
    /// its timed steps predicted): fine-tuning the baseline's (the same network at the same
    /// batch), distillation pretraining's (large batches of unlabelled images), but never
    /// faster than its own timed steps: the machine's speed drifts (on the 2-core VMs by up to
    /// 40% from one minute to the next), and a run whose pretraining ran at 0.89× its
    /// prediction then distilled at 1.08× of its own, ending 28 s over a 900 s budget. Ending
    /// a little early is the lesser fault. A stage keeps at least one step, even past the
    /// budget. Call with done = 1, 2, 3 in turn.
    pub fn revise(&mut self, done: usize, elapsed_s: f64) {
        assert_eq!(self.revisions.len() + 1, done, "revise: stages in turn");
        let shares = [
            SHARES.baseline,
            SHARES.pretrain,
            SHARES.finetune,
            SHARES.distill,
        ];
        // The finished stage each stage's step is like.
        let like = [None, None, Some(0), Some(1)];
        let stage_began = self
            .revisions
            .last()
            .map_or(self.measured_in_s, |r| r.elapsed_s);
        let (budget_s, after) = (self.budget_s, self.stages()[done - 1].0.to_string());
        let mut stages = [
            &mut self.baseline,
            &mut self.pretrain,
            &mut self.finetune,
            &mut self.distill,
        ];
        let finished = &stages[done - 1];
        // Its seconds at its measured speed (without the slowdown it was planned with).
        let as_measured = finished.seconds_for(finished.steps) / finished.slowdown;
        let slowdown = (elapsed_s - stage_began) / as_measured;
        let left = PLANNED * (budget_s - elapsed_s).max(0.0);
        let rest: f64 = shares[done..].iter().sum();
        for j in done..stages.len() {
            let p = &mut stages[j];
            let revised = StagePlan {
                seconds: left * shares[j] / rest,
                slowdown: match like[j] == Some(done - 1) {
                    true => slowdown.max(1.0),
                    false => p.slowdown,
                },
                ..(**p).clone()
            }
            .fit();
            **p = StagePlan {
                steps: revised.steps.max(1),
                ..revised
            };
        }
        self.revisions.push(Revision {
            after,
            elapsed_s,
            slowdown,
        });
    }

    pub fn stages(&self) -> [(&'static str, &StagePlan); 4] {
        [
            ("baseline", &self.baseline),
            ("pretrain", &self.pretrain),
            ("finetune", &self.finetune),
            ("distill", &self.distill),
        ]
    }

    /// Sets every stage's length in `cfg` to the plan's, and records the plan there.
    pub fn apply(&self, cfg: &mut Config) {
        for (stage, p) in [
            (&mut cfg.baseline, &self.baseline),
            (&mut cfg.pretrain, &self.pretrain),
            (&mut cfg.finetune, &self.finetune),
            (&mut cfg.distill, &self.distill),
        ] {
            stage.steps = Some(p.steps);
            stage.epochs = p.steps.div_ceil(p.steps_per_epoch);
        }
        cfg.plan = Some(self.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        for (s, seconds) in [
            ("90s", 90.0),
            ("15m", 900.0),
            ("1h", 3600.0),
            ("1h30m", 5400.0),
            ("2m30s", 150.0),
            ("1h0m5s", 3605.0),
        ] {
            assert_eq!(parse(s).unwrap(), Some(seconds), "{s}");
        }
        assert_eq!(parse("off").unwrap(), None);
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "1.5h",
            "-5m",
            "30m1h",
            "1m1m",
            "1h30",
            " 15m",
            "15 m",
            "0s",
            "0h0m",
            "99999999999999999999h",
            "5124095576030432h",
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert!(
                e.to_string().starts_with(&format!("--budget {bad}: ")),
                "{e}"
            );
        }
    }

    fn stage(seconds: f64, runs: usize, every_epoch: bool) -> StagePlan {
        StagePlan {
            seconds,
            step_s: 0.5,
            image_s: 0.0,
            steps_per_epoch: 10,
            runs,
            eval_s: 2.0,
            every_epoch,
            final_eval_s: 3.0,
            slowdown: 1.0,
            steps: 0,
        }
    }

    /// The steps are the most whose training and evaluations fit, worked out by hand.
    #[test]
    fn steps_fill_the_share_and_no_more() {
        // 2 runs of s steps of 0.5 s and an evaluation of 2 s, then one of 3 s: s + 7 seconds.
        assert_eq!(stage(50.0, 2, false).fit().steps, 43);
        assert_eq!(stage(49.9, 2, false).fit().steps, 42);
        // One run, an evaluation of 2 s per started epoch of 10 steps, then 3 s: 138 steps
        // (14 epochs) take 69 + 28 + 3 = 100 s; 139 take 100.5 s.
        assert_eq!(stage(100.0, 1, true).fit().steps, 138);
        assert_eq!(stage(99.9, 1, true).fit().steps, 137);
        // Just past an epoch's end, the next epoch's evaluation does not fit: 130 steps take
        // 65 + 26 + 3 = 94 s, 131 would start a 14th epoch (96.5 s).
        assert_eq!(stage(96.0, 1, true).fit().steps, 130);
        // The whole range of shares: the steps fit, one more does not.
        for tenths in 110..3000 {
            for (runs, every) in [(1, true), (3, false), (1, false)] {
                let p = stage(tenths as f64 / 10.0, runs, every).fit();
                assert!(p.steps >= 1, "{p:?}");
                assert!(p.seconds_for(p.steps) <= p.seconds, "{p:?}");
                assert!(p.seconds_for(p.steps + 1) > p.seconds, "{p:?}");
            }
        }
        // Too short for one step and its evaluations.
        assert_eq!(stage(5.4, 1, true).fit().steps, 0);
        assert_eq!(stage(5.5, 1, true).fit().steps, 1);
    }

    /// Stages that ran slower or faster than timed, and the budget left: the stages after them
    /// get the time left in proportion to their shares, each at the speed its kind of step ran.
    #[test]
    fn revisions_replan_the_stages_left_at_the_speed_seen() {
        let planned = |share: f64| stage(share * PLANNED * 990.0, 1, false).fit();
        let mut plan = Plan {
            budget_s: 1000.0,
            measured_in_s: 10.0,
            baseline: planned(SHARES.baseline),
            pretrain: planned(SHARES.pretrain),
            finetune: planned(SHARES.finetune),
            distill: planned(SHARES.distill),
            revisions: Vec::new(),
        };
        let before = plan.clone();
        // The baseline took twice its planned time.
        let mut elapsed = 10.0 + 2.0 * plan.baseline.seconds_for(plan.baseline.steps);
        plan.revise(1, elapsed);
        assert_eq!(plan.baseline, before.baseline);
        let r = &plan.revisions[0];
        assert_eq!((r.after.as_str(), r.elapsed_s), ("baseline", elapsed));
        assert!((r.slowdown - 2.0).abs() < 1e-12, "{r:?}");
        let left = PLANNED * (1000.0 - elapsed);
        let rest = 1.0 - SHARES.baseline;
        for (p, share, slowdown) in [
            (&plan.pretrain, SHARES.pretrain, 1.0),
            (&plan.finetune, SHARES.finetune, r.slowdown),
            (&plan.distill, SHARES.distill, 1.0),
        ] {
            assert!((p.seconds - left * share / rest).abs() < 1e-9, "{p:?}");
            assert_eq!(p.slowdown, slowdown, "{p:?}");
            assert!(p.seconds_for(p.steps) <= p.seconds, "{p:?}");
            assert!(p.seconds_for(p.steps + 1) > p.seconds, "{p:?}");
        }
        // At half the speed, the most steps that fit: a step takes 1 s, the run's evaluation
        // 4 s and the last one 6 s (0.5, 2 and 3 s as measured).
        let p = &plan.finetune;
        assert_eq!(p.steps, (p.seconds - 10.0) as usize, "{p:?}");
        // Pretraining then ran in 0.8 of its planned time: distillation is still planned at
        // its own timed speed, not faster, and fine-tuning keeps the baseline's.
        elapsed += 0.8 * plan.pretrain.seconds_for(plan.pretrain.steps);
        plan.revise(2, elapsed);
        assert!((plan.revisions[1].slowdown - 0.8).abs() < 1e-12);
        assert_eq!(plan.finetune.slowdown, 2.0);
        assert_eq!(plan.distill.slowdown, 1.0);
        let left = PLANNED * (1000.0 - elapsed);
        let rest = SHARES.finetune + SHARES.distill;
        assert!((plan.distill.seconds - left * SHARES.distill / rest).abs() < 1e-9);
        // Past the budget: the stage left still runs one step.
        plan.revise(3, 2000.0);
        assert_eq!((plan.distill.seconds, plan.distill.steps), (0.0, 1));
        assert_eq!(plan.revisions.len(), 3);
    }

    #[test]
    fn the_shares_split_the_whole_budget() {
        let s = SHARES;
        assert!((s.baseline + s.pretrain + s.finetune + s.distill - 1.0).abs() < 1e-12);
        assert!(s.pretrain > 0.5);
    }
}
