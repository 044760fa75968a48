//! The training loop of every stage, in one function that reads top to bottom: epochs of
//! batches from a background loader; per batch a graph (forward, loss, backward), an optimiser
//! step at the warmup+cosine rate, a metrics line and the progress bar; per epoch the stage's
//! monitor and a checkpoint. What differs between stages comes in as data (`Stage`): which
//! images, how many views, which objective, which monitor.

use crate::autograd::{Graph, Var};
use crate::backend;
use crate::data::loader::{Batch, Views};
use crate::device::cuda::{Counters, Gpu, GpuError, Pending};
use crate::dist::{self, Comm};
use crate::error::{Error, Result};
use crate::nn::model::Model;
use crate::ops;
use crate::ops::ntxent::Memory;
use crate::optim::schedule::{lr_at, scaled_lr};
use crate::optim::Optimizer;
use crate::tensor::{Storage, Tensor};
use crate::train::checkpoint::Queued;
use crate::train::config::StageConfig;
use crate::train::metrics::{progress, Metrics};
use crate::train::Context;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stage checkpoints at an epoch's end when this much time has passed since its last
/// checkpoint, and always at its last epoch. An epoch of 100 labelled images is 4 steps of a
/// few milliseconds: a checkpoint at each one's end (written, flushed to the disk, renamed:
/// about 2 ms on the 2-core CI machine) cost the 15-minute pipeline's baseline and fine-tuning
/// runs over a second of their 30 s each.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What a stage trains.
pub struct Stage<'a> {
    /// pretrain, baseline, finetune, linear or distill: the checkpoint's and the metrics' name.
    pub name: &'static str,
    /// Its recipe, with a batch size that fits its images.
    pub cfg: StageConfig,
    /// The training images it reads (indices into the training set).
    pub images: &'a [usize],
    /// One or two augmented views of each image.
    pub views: Views,
    /// The key of its random stream (each epoch's order, the augmentations).
    pub key: u64,
    pub objective: Objective<'a>,
    pub monitor: Monitor,
}

/// The loss a stage minimises.
pub enum Objective<'a> {
    /// NT-Xent between the projections of the two views of each image (pretraining), with the
    /// last `memory_size` projections as extra negatives (SimCLRv2's memory buffer; 0: none),
    /// those of a momentum encoder when `memory_momentum` > 0.
    Contrastive {
        temperature: f64,
        memory_size: usize,
        memory_momentum: f64,
    },
    /// Softmax cross-entropy against the labels. `frozen_encoder`: only the classifier
    /// learns, on features of the encoder in inference mode (linear evaluation).
    Supervised { frozen_encoder: bool },
    /// The teacher's softened predictions, mixed with weight `label_weight` with the label
    /// loss on the images in `labelled` (distillation).
    Distill {
        teacher: &'a mut Model,
        temperature: f64,
        label_weight: f64,
        labelled: HashSet<usize>,
    },
}

/// NT-Xent's memory buffer and, with `--memory-momentum` m, MoCo's momentum encoder that fills
/// it (SimCLRv2's appendix): a copy of the network whose weights follow the trained one's,
/// w_k ← m·w_k + (1 − m)·w after every step. Its projections of each batch (BN on the batch's
/// statistics, no gradient) join the memory instead of the trained network's, so the rows
/// there change slowly from step to step.
pub struct Queue {
    pub memory: Memory,
    pub key_encoder: Option<(Model, f64)>,
}

impl Queue {
    /// The queue of `objective` (empty for the other losses) for `model`, whose copy the
    /// momentum encoder starts as, or from a checkpoint's `saved` state.
    pub fn new(objective: &Objective, model: &Model, saved: Queued) -> Queue {
        let (size, momentum) = match objective {
            Objective::Contrastive {
                memory_size,
                memory_momentum,
                ..
            } => (*memory_size, *memory_momentum),
            _ => (0, 0.0),
        };
        let device = model.device();
        let key_encoder = (size > 0 && momentum > 0.0).then(|| {
            let mut keys = Model::new(&model.spec, 0).expect("the trained model's own spec");
            let weights = match saved.key_encoder {
                Some(saved) => saved,
                None => (model.store.params.iter())
                    .map(|p| p.value.clone())
                    .collect(),
            };
            for (p, w) in keys.store.params.iter_mut().zip(weights) {
                p.value = w.to_device(&device).deep_copy();
            }
            (keys, momentum)
        });
        Queue {
            memory: Memory {
                size,
                rows: saved.rows.map(|m| m.to_device(&device)),
            },
            key_encoder,
        }
    }

    /// What a checkpoint keeps of it: copies of the momentum encoder's weights, as its forward
    /// pass writes its BN statistics in place.
    pub fn saved(&self) -> Queued {
        Queued {
            rows: self.memory.rows.clone(),
            key_encoder: (self.key_encoder.as_ref())
                .map(|(k, _)| k.store.params.iter().map(|p| p.value.deep_copy()).collect()),
        }
    }

    /// The momentum encoder's projections of `images`, L2-normalised, if there is one.
    fn keys(&mut self, g: &Graph, images: &Tensor) -> Option<Tensor> {
        let (keys, _) = self.key_encoder.as_mut()?;
        let mut kg = Graph::new(false);
        kg.comm = g.comm.clone();
        let x = kg.input(images.clone());
        let (_, projection) = keys.forward(&mut kg, x, true);
        let z = ops::normalize::l2_normalize(&mut kg, projection);
        Some(kg.value(z).clone())
    }

    /// After a step: the momentum encoder's weights move toward `model`'s.
    fn follow(&mut self, model: &Model) {
        let Some((keys, m)) = self.key_encoder.as_mut() else {
            return;
        };
        // The weights share one device and type: m and 1 − m made there once per step.
        let Some(first) = model.store.params.first() else {
            return;
        };
        let (b, dtype) = (backend::of(&first.value), first.value.dtype());
        let (keep, take) = (b.full(&[1], dtype, *m), b.full(&[1], dtype, 1.0 - *m));
        for (k, p) in keys.store.params.iter_mut().zip(&model.store.params) {
            k.value = b.add(&b.scale_by(&k.value, &keep), &b.scale_by(&p.value, &take));
        }
    }
}

/// What a stage measures at the end of an epoch.
pub enum Monitor {
    /// kNN top-1 of the encoder's features, every epoch (pretraining).
    Knn,
    /// Test top-1 of the classifier, after the last epoch.
    Top1,
    /// Top-1 on the validation split, after the last epoch (a candidate learning rate).
    Validation,
}

pub struct Outcome {
    /// Mean loss over the last epoch.
    pub final_loss: f64,
    pub wall_s: f64,
    /// The last epoch's record (mean loss, kNN or top-1).
    pub record: Value,
}

/// Where training stands: saved in every checkpoint, and where a resumed run starts.
#[derive(Clone, Debug, Default)]
pub struct Position {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches completed of the next epoch.
    pub batch: usize,
    /// Sum of those batches' losses.
    pub loss_sum: f64,
    /// Training seconds so far (across resumes).
    pub elapsed_s: f64,
    /// The last completed epoch's record.
    pub record: Value,
    /// NT-Xent's memory buffer (`Objective::Contrastive`), if any.
    pub queued: Queued,
}

/// Where a resumed stage starts, and the optimiser state saved there.
pub type Start = (Position, Vec<(usize, Tensor)>);

/// Trains `model` through `stage`, from `start` when resuming, writing checkpoints and
/// metrics.jsonl into `out`.
pub fn train(
    ctx: &Context,
    model: &mut Model,
    mut stage: Stage,
    out: &Path,
    start: Option<Start>,
) -> Result<Outcome> {
    let started = Instant::now();
    let cfg = &stage.cfg;
    let per_epoch = stage.images.len() / cfg.batch_size;
    // A stage given its steps (by the budget) cuts its last epoch short.
    let total = cfg.steps.unwrap_or(cfg.epochs * per_epoch);
    let epochs = total.div_ceil(per_epoch);
    let warmup = (cfg.warmup * total as f64).round() as usize;
    let base_lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling);
    let w = ctx.comm.size();
    if !cfg.batch_size.is_multiple_of(w) {
        return Err(Error::Config(format!(
            "--batch-size {} does not split over the {w} ranks: use a multiple of {w}",
            cfg.batch_size
        )));
    }
    let metrics = match ctx.is_main() {
        true => Metrics::open(out, start.is_some())?,
        false => Metrics::discard(),
    };
    let mut opt = Optimizer::new(cfg.optimizer, cfg.weight_decay, &model.store);
    let mut pos = match start {
        Some((pos, velocity)) => {
            opt.restore(&model.store, velocity);
            pos
        }
        None => Position::default(),
    };
    let elapsed_before = pos.elapsed_s;
    // The memory buffer lives on the model's device; the checkpoint gets it through `pos`.
    let mut queue = Queue::new(&stage.objective, model, std::mem::take(&mut pos.queued));
    let bar = match ctx.is_main() {
        true => progress(stage.name, total),
        false => ProgressBar::hidden(),
    };
    let mut step = pos.epoch * per_epoch + pos.batch;
    bar.set_position(step as u64);
    let mut final_loss = pos.record["mean_loss"].as_f64().unwrap_or(f64::NAN);
    let gpu = model.device().gpu().cloned();
    let mut run = Run {
        comm: ctx.comm.clone(),
        stage: stage.name,
        gpu: gpu.clone(),
        metrics,
        bar,
        tally: Tally::default(),
        workers: ctx
            .train
            .stream
            .as_ref()
            .map(|s| s.workers.current_num_threads()),
        hinted: false,
    };
    let mut saved_at: Option<Instant> = None;
    while pos.epoch < epochs {
        let epoch = pos.epoch;
        let mut loader = ctx.epoch_loader(
            stage.key,
            stage.images,
            cfg.batch_size,
            stage.views.clone(),
            (epoch, pos.batch),
        );
        // A step's loss comes back while the next step is queued: it is checked (finite, and
        // the device's errors) and logged one step late, and always before anything is saved.
        let mut pending: Option<Unsettled> = None;
        while step < total {
            let asked = Instant::now();
            let Some(batch) = loader.next() else {
                break;
            };
            let t0 = Instant::now();
            let feed = Feed {
                waited_s: t0.duration_since(asked).as_secs_f64(),
                made_in_s: batch.made_in_s,
            };
            let before = gpu.as_ref().map(Gpu::counters);
            let rows = batch.rows;
            let lr = lr_at(base_lr, step, warmup, total);

            // The step, then the loss's copy back is queued.
            let loss_value = train_step(
                ctx,
                model,
                (&mut stage.objective, &mut queue),
                &mut opt,
                batch,
                lr,
            );
            let loss = Later::read(&loss_value);
            drop(loss_value);

            // The previous step's loss: the step's one wait for the device, if any.
            if let Some(previous) = pending.take() {
                settle(previous, Some(t0), &mut run, &mut pos.loss_sum)?;
            }
            let counters = match (&gpu, before) {
                (Some(gpu), Some(before)) => Some(gpu.counters() - before),
                _ => None,
            };
            pending = Some(Unsettled {
                loss,
                step,
                epoch,
                lr,
                rows,
                t0,
                counters,
                feed,
            });
            run.bar.inc(1);
            pos.batch += 1;
            step += 1;
            let every = ctx.cfg.checkpoint_every;
            if every > 0 && step.is_multiple_of(every) && pos.batch < per_epoch {
                if let Some(last) = pending.take() {
                    settle(last, None, &mut run, &mut pos.loss_sum)?;
                }
                // The step's backward and update too must have run without a fault.
                check_device(gpu.as_ref(), rows, true)?;
                pos.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                pos.queued = queue.saved();
                ctx.save(out, stage.name, (model, &opt), &pos)?;
            }
        }
        if let Some(last) = pending.take() {
            settle(last, None, &mut run, &mut pos.loss_sum)?;
        }
        loader.check()?;

        // End of the epoch: the monitor, the record, a checkpoint.
        final_loss = pos.loss_sum / pos.batch.max(1) as f64;
        let mut record = match stage.monitor {
            Monitor::Knn => json!({"knn_top1": ctx.knn_top1(model, &ctx.norm)?}),
            Monitor::Top1 if epoch + 1 == epochs => {
                json!({"top1": ctx.test_top1(model, &ctx.norm)?})
            }
            Monitor::Validation if epoch + 1 == epochs => {
                json!({"val_top1": ctx.val_top1(model, &ctx.norm)?})
            }
            Monitor::Top1 | Monitor::Validation => json!({}),
        };
        check_device(gpu.as_ref(), cfg.batch_size, true)?;
        // Print the epochs that measured something (kNN, top-1; rank 0 alone); log them all.
        let measured = record.as_object().is_some_and(|o| !o.is_empty());
        pos.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        record["stage"] = json!(stage.name);
        record["epoch"] = json!(epoch + 1);
        record["mean_loss"] = json!(final_loss);
        record["elapsed_s"] = json!(pos.elapsed_s);
        // Files of a streamed dataset skipped so far (each was reported when first met).
        if let Some(stream) = &ctx.train.stream {
            record["bad_files"] = json!(stream.bad().len());
        }
        if measured && ctx.is_main() {
            run.bar.suspend(|| println!("{record}"));
        }
        run.metrics.log(record.clone())?;
        pos = Position {
            epoch: epoch + 1,
            batch: 0,
            loss_sum: 0.0,
            elapsed_s: pos.elapsed_s,
            record,
            queued: queue.saved(),
        };
        if epoch + 1 == epochs || saved_at.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            ctx.save(out, stage.name, (model, &opt), &pos)?;
            saved_at = Some(Instant::now());
        }
    }
    run.bar.finish_and_clear();
    if let Some(line) = run.tally.summary(stage.name) {
        println!("{line}");
    }
    Ok(Outcome {
        final_loss,
        wall_s: elapsed_before + started.elapsed().as_secs_f64(),
        record: pos.record,
    })
}

/// One step on `batch` at rate `lr`: forward, loss, backward (gradients averaged over the
/// ranks) and update; on a GPU recorded and run as one CUDA graph in the steady state
/// (device::cuda::graph). Returns the loss, on the model's device.
pub fn train_step(
    ctx: &Context,
    model: &mut Model,
    (objective, queue): (&mut Objective, &mut Queue),
    opt: &mut Optimizer,
    batch: Batch,
    lr: f64,
) -> Tensor {
    let graphs = model
        .device()
        .gpu()
        .cloned()
        .filter(|_| ctx.cfg.cuda_graphs);
    if let Some(gpu) = &graphs {
        gpu.begin_step();
    }
    let mut g = Graph::new(true);
    g.comm = ctx.comm.clone();
    let loss_var = loss(ctx, &mut g, model, objective, queue, batch);
    let grads = dist::backward(&mut g, loss_var, &*ctx.comm, dist::BUCKET_BYTES);
    opt.step(&mut model.store, &grads, lr);
    queue.follow(model);
    let loss_value = g.value(loss_var).clone();
    drop((g, grads));
    if let Some(gpu) = &graphs {
        gpu.end_step();
    }
    loss_value
}

/// What settling a step writes to: the stage's log, progress bar and counters.
struct Run {
    /// The ranks: the loss logged is their mean, the whole batch's.
    comm: Arc<dyn Comm>,
    stage: &'static str,
    gpu: Option<Gpu>,
    metrics: Metrics,
    bar: ProgressBar,
    tally: Tally,
    /// The loader's decode workers (a streamed dataset), for the hint when it is the bound.
    workers: Option<usize>,
    /// Whether that hint was given.
    hinted: bool,
}

/// A loss on its way back to the host: at once on the cpu, without waiting on a GPU.
enum Later {
    Now(f64),
    Gpu(Pending),
}

impl Later {
    fn read(loss: &Tensor) -> Later {
        match loss.storage() {
            Storage::Gpu(buf) => Later::Gpu(buf.gpu().download_later(buf)),
            _ => Later::Now(loss.item()),
        }
    }

    fn value(self) -> f64 {
        match self {
            Later::Now(v) => v,
            Later::Gpu(pending) => pending.wait()[0] as f64,
        }
    }
}

/// A step whose loss is not checked yet.
struct Unsettled {
    loss: Later,
    step: usize,
    epoch: usize,
    lr: f64,
    rows: usize,
    t0: Instant,
    counters: Option<Counters>,
    feed: Feed,
}

/// How the loader kept up with a step.
struct Feed {
    /// Seconds the step waited for its batch.
    waited_s: f64,
    /// Seconds the loader took to make it.
    made_in_s: f64,
}

/// Checks a step's loss (finite; and the device's errors, this step's or the next's, with their
/// kernel and shape) and logs it. `next` is when the next step started (its rate: rows over
/// the time between the two starts, what the device sustains once it is the bound); without
/// one, when the loss arrived.
fn settle(p: Unsettled, next: Option<Instant>, run: &mut Run, loss_sum: &mut f64) -> Result<()> {
    let mut loss = [p.loss.value()];
    run.comm.all_reduce_sum(&mut loss);
    let loss = loss[0] / run.comm.size() as f64;
    let next = next.unwrap_or_else(Instant::now);
    check_device(run.gpu.as_ref(), p.rows, false)?;
    if !loss.is_finite() {
        run.bar.abandon();
        return Err(Error::Train(format!(
            "{}: loss became {loss} at step {} (epoch {}); lower --lr? the last good checkpoint is kept",
            run.stage,
            p.step,
            p.epoch + 1
        )));
    }
    // All ranks' rows: the run's rate.
    let ips = (p.rows * run.comm.size()) as f64 / next.duration_since(p.t0).as_secs_f64();
    // The loader's rate: the rows it makes a second (every rank's loader makes its share).
    let loader_ips = (p.rows * run.comm.size()) as f64 / p.feed.made_in_s.max(1e-9);
    let mut record = json!({"stage": run.stage, "epoch": p.epoch + 1, "step": p.step,
        "loss": loss, "lr": p.lr, "images_per_s": ips, "loader_images_per_s": loader_ips,
        "loader_wait_s": p.feed.waited_s});
    if let Some(counters) = p.counters {
        record["device"] = json!(counters);
        run.tally.add(counters);
    }
    run.metrics.log(record)?;
    run.bar.set_message(format!(
        "loss {loss:.4} | {ips:.0} img/s | loader {loader_ips:.0} img/s"
    ));
    // The loader is the bound when steps wait for their batches: said once a run, after the
    // first steps (which wait while the loader fills its queue).
    let step_s = next.duration_since(p.t0).as_secs_f64() + p.feed.waited_s;
    if p.step >= 3 && p.feed.waited_s > 0.2 * step_s && !run.hinted {
        run.hinted = true;
        let workers = run
            .workers
            .map_or(String::new(), |n| format!(" on {n} workers"));
        run.bar.suspend(|| {
            eprintln!(
                "hint: the data loader is the bound: it makes {loader_ips:.0} images/s{workers}, \
                 and steps wait {:.0}% of their time for it (--workers, a faster disk, or fewer \
                 augmentations on the cpu: --augment-on device)",
                100.0 * p.feed.waited_s / step_s
            )
        });
    }
    *loss_sum += loss;
    Ok(())
}

/// A stage's device counters: the first step (which fills the allocator's cache) apart from
/// the steady state that follows.
#[derive(Default)]
struct Tally {
    first: Option<Counters>,
    rest: Counters,
    steps: usize,
}

impl Tally {
    fn add(&mut self, c: Counters) {
        if self.first.is_none() {
            self.first = Some(c);
            return;
        }
        self.rest += c;
        self.steps += 1;
    }

    /// One line: the steady state's mean per step, and the first step's allocations.
    fn summary(&self, stage: &str) -> Option<String> {
        let first = self.first?;
        if self.steps == 0 {
            return Some(format!(
                "{stage}: one step: {} kernel launches, {} host waits, {} driver allocations, \
                 {:.2} MB to the device",
                first.launches,
                first.host_syncs,
                first.driver_allocs,
                first.h2d_bytes as f64 / 1e6
            ));
        }
        let n = self.steps as f64;
        let r = &self.rest;
        Some(format!(
            "{stage}: per step after the first ({} steps): {:.0} kernel launches, {:.1} host \
             waits, {:.1} driver allocations, {:.2} MB to the device (the first step: {} driver \
             allocations)",
            self.steps,
            r.launches as f64 / n,
            r.host_syncs as f64 / n,
            r.driver_allocs as f64 / n,
            r.h2d_bytes as f64 / n / 1e6,
            first.driver_allocs
        ))
    }
}

/// The loss of one batch under `objective`, recorded on `g` (NT-Xent also moves the queue).
fn loss(
    ctx: &Context,
    g: &mut Graph,
    model: &mut Model,
    objective: &mut Objective,
    queue: &mut Queue,
    batch: Batch,
) -> Var {
    let images = ctx.images(batch.pixels, batch.rows);
    let x = g.input(images.clone());
    match objective {
        Objective::Contrastive { temperature, .. } => {
            let (_, projection) = model.forward(g, x, true);
            let z = ops::normalize::l2_normalize(g, projection);
            let keys = queue.keys(g, &images);
            match (queue.memory.size, keys) {
                (0, _) => ops::ntxent::ntxent(g, z, *temperature),
                (_, None) => ops::ntxent::ntxent_with_memory(g, z, &mut queue.memory, *temperature),
                (_, Some(keys)) => {
                    ops::ntxent::ntxent_with_keys(g, z, &mut queue.memory, &keys, *temperature)
                }
            }
        }
        Objective::Supervised { frozen_encoder } => {
            let logits = match frozen_encoder {
                true => model.forward_frozen_encoder(g, x),
                false => model.forward(g, x, true).1,
            };
            ops::loss::softmax_cross_entropy(g, logits, &batch.labels)
        }
        Objective::Distill {
            teacher,
            temperature,
            label_weight,
            labelled,
        } => {
            // The teacher sees the same images (shared, not copied), in inference mode.
            let mut tg = Graph::new(false);
            let tx = tg.input(images);
            let (_, teacher_logits) = teacher.forward(&mut tg, tx, false);
            let probs = ops::loss::softmax(tg.value(teacher_logits), *temperature);
            let labels: Vec<u32> = (batch.indices.iter().zip(&batch.labels))
                .map(|(i, &y)| match labelled.contains(i) {
                    true => y,
                    false => ops::loss::UNLABELLED,
                })
                .collect();
            let (_, logits) = model.forward(g, x, true);
            ops::loss::distillation(g, logits, &probs, *temperature, &labels, *label_weight)
        }
    }
}

/// The GPU's first error since the last check, after waiting for its queued work when `wait`
/// (else the caller has just waited, by copying a result back). Running out of memory gets a
/// suggested batch size: the rows of this batch scaled by the memory the device has over what
/// the step needed.
fn check_device(gpu: Option<&Gpu>, rows: usize, wait: bool) -> Result<()> {
    let Some(gpu) = gpu else {
        return Ok(());
    };
    let checked = match wait {
        true => gpu.check(),
        false => gpu.take_error(),
    };
    match checked {
        Ok(()) => Ok(()),
        Err(GpuError::OutOfMemory {
            bytes,
            in_use: held,
            free,
            ..
        }) => {
            // Halved: the failed request is only part of what the rest of the step needs.
            let fits = free.map_or(rows / 2, |f| rows * (f + held) / (held + bytes) / 2);
            Err(Error::Gpu(format!(
                "out of device memory on {}: {bytes} bytes requested with {held} in use and {} free; \
                 try a smaller --batch-size (about {} might fit)",
                gpu.name(),
                free.map_or("an unknown amount".into(), |f| format!("{f} bytes")),
                fits.max(2) / 2 * 2
            )))
        }
        Err(e) => Err(Error::Gpu(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::checkpoint::tests::small_spec;

    /// The momentum encoder starts as the trained network's copy, then after each step holds
    /// m·w_k + (1 − m)·w of its old weights w_k and the trained ones w.
    #[test]
    fn momentum_encoder_follows_the_trained_weights() {
        let m = 0.75;
        let mut model = Model::new(&small_spec(), 1).unwrap();
        let objective = Objective::Contrastive {
            temperature: 0.1,
            memory_size: 16,
            memory_momentum: m,
        };
        let mut queue = Queue::new(&objective, &model, Queued::default());
        let weights = |model: &Model| -> Vec<Vec<f32>> {
            (model.store.params.iter())
                .map(|p| p.value.to_f32_vec())
                .collect()
        };
        let start = weights(&model);
        assert_eq!(weights(&queue.key_encoder.as_ref().unwrap().0), start);
        // The trained network steps to other weights.
        model = Model::new(&small_spec(), 2).unwrap();
        queue.follow(&model);
        let (now, keys) = (
            weights(&model),
            weights(&queue.key_encoder.as_ref().unwrap().0),
        );
        for ((k, old), new) in keys
            .iter()
            .flatten()
            .zip(start.iter().flatten())
            .zip(now.iter().flatten())
        {
            let want = m * *old as f64 + (1.0 - m) * *new as f64;
            assert!(
                (*k as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{k} vs {want}"
            );
        }
    }
}
