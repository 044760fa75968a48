//! The one training loop every stage uses: epochs of batches from a background loader, a
//! graph per step (forward, loss, backward), an optimiser step with the warmup+cosine rate,
//! a metrics line per step, a progress bar, and an epoch-end hook (evaluation, checkpoint).

use crate::autograd::{Graph, Var};
use crate::data::loader::{Batch, Loader};
use crate::error::{Error, Result};
use crate::nn::model::Model;
use crate::optim::schedule::{lr_at, scaled_lr};
use crate::optim::Optimizer;
use crate::train::config::StageConfig;
use crate::train::metrics::{progress, Metrics};
use serde_json::{json, Value};
use std::time::Instant;

pub struct Outcome {
    /// Mean loss over the last epoch.
    pub final_loss: f64,
    pub wall_s: f64,
}

/// What a stage plugs into the loop.
pub struct Stage<'a> {
    pub name: &'static str,
    pub cfg: &'a StageConfig,
    pub batches_per_epoch: usize,
    /// The loader of an epoch (0-based).
    pub loader: &'a mut dyn FnMut(usize) -> Loader,
    /// Builds the loss of one batch on the graph.
    pub loss: &'a mut dyn FnMut(&mut Graph, &mut Model, &Batch) -> Var,
    /// Runs after each epoch (1-based count); returns extra metrics to log and print.
    pub end_epoch: &'a mut dyn FnMut(&mut Model, usize) -> Result<Value>,
}

pub fn run(model: &mut Model, stage: Stage, metrics: &mut Metrics) -> Result<Outcome> {
    let start = Instant::now();
    let cfg = stage.cfg;
    let total = cfg.epochs * stage.batches_per_epoch;
    let warmup = (cfg.warmup * total as f64).round() as usize;
    let base_lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling);
    let mut opt = Optimizer::new(cfg.optimizer, cfg.weight_decay, &model.store);
    let bar = progress(stage.name, total);
    let mut step = 0;
    let mut final_loss = f64::NAN;
    for epoch in 0..cfg.epochs {
        let (mut loss_sum, mut batches) = (0.0, 0);
        for batch in (stage.loader)(epoch) {
            let t0 = Instant::now();
            let lr = lr_at(base_lr, step, warmup, total);
            let mut g = Graph::new(true);
            let loss_var = (stage.loss)(&mut g, model, &batch);
            // A failed launch or allocation on a GPU surfaces here, with its kernel and shape.
            model.device().check()?;
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
            loss_sum += loss;
            batches += 1;
            step += 1;
        }
        final_loss = loss_sum / batches.max(1) as f64;
        let mut record = (stage.end_epoch)(model, epoch + 1)?;
        model.device().check()?;
        // Print the epochs that measured something (kNN, top-1); log them all.
        let measured = record.as_object().is_some_and(|o| !o.is_empty());
        record["stage"] = json!(stage.name);
        record["epoch"] = json!(epoch + 1);
        record["mean_loss"] = json!(final_loss);
        record["elapsed_s"] = json!(start.elapsed().as_secs_f64());
        if measured {
            bar.suspend(|| println!("{record}"));
        }
        metrics.log(record)?;
    }
    bar.finish_and_clear();
    Ok(Outcome {
        final_loss,
        wall_s: start.elapsed().as_secs_f64(),
    })
}
