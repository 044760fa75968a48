//! The one training loop every stage uses: epochs of batches from a background loader, a
//! graph per step (forward, loss, backward), an optimiser step with the warmup+cosine rate,
//! a metrics line per step, a progress bar, and an epoch-end hook (evaluation, checkpoint).

use crate::autograd::{Graph, Var};
use crate::data::loader::{Batch, Loader};
use crate::device::cuda::GpuError;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::model::Model;
use crate::optim::schedule::{lr_at, scaled_lr};
use crate::optim::Optimizer;
use crate::tensor::Tensor;
use crate::train::config::StageConfig;
use crate::train::metrics::{progress, Metrics};
use serde_json::{json, Value};
use std::time::Instant;

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
}

/// What a stage plugs into the loop.
pub struct Stage<'a> {
    pub name: &'static str,
    pub cfg: &'a StageConfig,
    pub batches_per_epoch: usize,
    /// The loader of an epoch (0-based), without its first `skip` batches.
    pub loader: &'a mut dyn FnMut(usize, usize) -> Loader,
    /// Builds the loss of one batch on the graph.
    pub loss: &'a mut dyn FnMut(&mut Graph, &mut Model, &Batch) -> Var,
    /// Runs after each epoch (1-based count); returns extra metrics to log and print.
    pub end_epoch: &'a mut dyn FnMut(&mut Model, usize) -> Result<Value>,
    /// Writes a checkpoint (model, optimiser, position): every `checkpoint_every` steps
    /// (0 = never) and at the end of every epoch.
    pub save: &'a mut dyn FnMut(&Model, &Optimizer, &Position) -> Result<()>,
    pub checkpoint_every: usize,
    /// Where to start, with the optimiser state saved there (a resumed run).
    pub start: Option<(Position, Vec<(usize, Tensor)>)>,
}

pub fn run(model: &mut Model, stage: Stage, metrics: &mut Metrics) -> Result<Outcome> {
    let start = Instant::now();
    let cfg = stage.cfg;
    let per_epoch = stage.batches_per_epoch;
    let total = cfg.epochs * per_epoch;
    let warmup = (cfg.warmup * total as f64).round() as usize;
    let base_lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling);
    let mut opt = Optimizer::new(cfg.optimizer, cfg.weight_decay, &model.store);
    let mut pos = match stage.start {
        Some((pos, velocity)) => {
            opt.restore(&model.store, velocity);
            pos
        }
        None => Position::default(),
    };
    let elapsed_before = pos.elapsed_s;
    let bar = progress(stage.name, total);
    let mut step = pos.epoch * per_epoch + pos.batch;
    bar.set_position(step as u64);
    let mut final_loss = pos.record["mean_loss"].as_f64().unwrap_or(f64::NAN);
    while pos.epoch < cfg.epochs {
        let epoch = pos.epoch;
        for batch in (stage.loader)(epoch, pos.batch) {
            let t0 = Instant::now();
            let lr = lr_at(base_lr, step, warmup, total);
            let mut g = Graph::new(true);
            let loss_var = (stage.loss)(&mut g, model, &batch);
            // A failed launch or allocation on a GPU surfaces here, with its kernel and shape.
            check_device(model, batch.rows)?;
            let loss = g.value(loss_var).item();
            if !loss.is_finite() {
                bar.abandon();
                return Err(Error::Train(format!(
                    "{}: loss became {loss} at step {step} (epoch {}); lower --lr? the last good checkpoint is kept",
                    stage.name,
                    epoch + 1
                )));
            }
            g.backward(loss_var);
            let grads = g.param_grads();
            opt.step(&mut model.store, &grads, lr);
            // Images per second of the engine alone: the loader works in the background.
            let ips = batch.rows as f64 / t0.elapsed().as_secs_f64();
            metrics.log(
                json!({"stage": stage.name, "epoch": epoch + 1, "step": step,
                "loss": loss, "lr": lr, "images_per_s": ips}),
            )?;
            bar.set_message(format!("loss {loss:.4} | {ips:.0} img/s"));
            bar.inc(1);
            pos.loss_sum += loss;
            pos.batch += 1;
            step += 1;
            if stage.checkpoint_every > 0
                && step.is_multiple_of(stage.checkpoint_every)
                && pos.batch < per_epoch
            {
                pos.elapsed_s = elapsed_before + start.elapsed().as_secs_f64();
                (stage.save)(model, &opt, &pos)?;
            }
        }
        final_loss = pos.loss_sum / pos.batch.max(1) as f64;
        let mut record = (stage.end_epoch)(model, epoch + 1)?;
        check_device(model, cfg.batch_size)?;
        // Print the epochs that measured something (kNN, top-1); log them all.
        let measured = record.as_object().is_some_and(|o| !o.is_empty());
        pos.elapsed_s = elapsed_before + start.elapsed().as_secs_f64();
        record["stage"] = json!(stage.name);
        record["epoch"] = json!(epoch + 1);
        record["mean_loss"] = json!(final_loss);
        record["elapsed_s"] = json!(pos.elapsed_s);
        if measured {
            bar.suspend(|| println!("{record}"));
        }
        metrics.log(record.clone())?;
        pos = Position {
            epoch: epoch + 1,
            batch: 0,
            loss_sum: 0.0,
            elapsed_s: pos.elapsed_s,
            record,
        };
        (stage.save)(model, &opt, &pos)?;
    }
    bar.finish_and_clear();
    Ok(Outcome {
        final_loss,
        wall_s: elapsed_before + start.elapsed().as_secs_f64(),
        record: pos.record,
    })
}

/// The GPU's first error since the last check. Running out of memory gets a suggested batch
/// size: the rows of this batch scaled by the memory the device has over what the step needed.
fn check_device(model: &Model, rows: usize) -> Result<()> {
    let Device::Gpu(gpu) = model.device() else {
        return Ok(());
    };
    match gpu.check() {
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
