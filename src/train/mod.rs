//! The three SimCLRv2 stages (plus the supervised baseline and evaluation), run on a
//! `Context`: the resolved config, the loaded data and the labelled subset.

pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod export;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod stages;
pub mod trainer;

use crate::data::augment::Normalize;
use crate::data::subset;
use crate::data::Dataset;
use crate::device::Device;
use crate::error::Result;
use crate::rng::Rng;
use config::Config;
use std::sync::Arc;

pub struct Context {
    pub cfg: Config,
    pub device: Device,
    pub format: String,
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
    /// Training images in use (all, or a seeded subset with --train-images).
    pub train_indices: Vec<usize>,
    pub test_indices: Vec<usize>,
    /// The labelled subset (indices into the training set).
    pub labelled: Vec<usize>,
    /// The kNN monitor's memory bank (indices into the training set).
    pub knn_bank: Vec<usize>,
    pub norm: Normalize,
}

impl Context {
    pub fn new(cfg: Config) -> Result<Context> {
        cfg.validate()?;
        let (device, why) = Device::select(&cfg.device)?;
        println!("{why}");
        let opts = crate::data::LoadOptions {
            format: cfg.format,
            image_size: cfg.image_size,
            skip_unlabelled: false,
        };
        let data = crate::data::load(&cfg.data, &opts)?;
        let mut train_indices: Vec<usize> = (0..data.train.n).collect();
        if let Some(n) = cfg.train_images {
            Rng::derive(cfg.seed, &[0x5EED]).shuffle(&mut train_indices);
            train_indices.truncate(n);
            train_indices.sort_unstable();
        }
        let test_indices: Vec<usize> =
            (0..data.test.n.min(cfg.test_images.unwrap_or(usize::MAX))).collect();
        let labelled = subset::labelled(
            &data.train,
            &train_indices,
            &cfg.label_spec()?,
            cfg.labels_file.as_deref(),
            cfg.seed,
        )?;
        // The kNN monitor votes with labels: its bank holds labelled images only.
        let mut knn_bank: Vec<usize> = train_indices
            .iter()
            .copied()
            .filter(|&i| data.train.labels[i] != crate::data::UNLABELLED)
            .collect();
        Rng::derive(cfg.seed, &[0xB4A7]).shuffle(&mut knn_bank);
        knn_bank.truncate(cfg.knn_bank);
        let norm = Normalize::from_dataset(&data.train);
        println!(
            "data: {} ({}), {} train / {} test images of {}x{}x{}, {} classes",
            cfg.data.display(),
            data.format,
            train_indices.len(),
            test_indices.len(),
            data.train.h,
            data.train.w,
            data.train.c,
            data.train.num_classes
        );
        Ok(Context {
            cfg,
            device,
            format: data.format,
            train: Arc::new(data.train),
            test: Arc::new(data.test),
            train_indices,
            test_indices,
            labelled,
            knn_bank,
            norm,
        })
    }

    /// Fraction of the labelled training images in use that form the labelled subset (the
    /// nominal fraction when one was asked for; the actual one for a count or a file).
    pub fn label_fraction(&self) -> f64 {
        let labelled_in_use = self
            .train_indices
            .iter()
            .filter(|&&i| self.train.labels[i] != crate::data::UNLABELLED)
            .count();
        match (&self.cfg.labels_file, self.cfg.label_spec()) {
            (None, Ok(spec)) => spec.fraction_of(labelled_in_use, self.labelled.len()),
            _ => self.labelled.len() as f64 / labelled_in_use.max(1) as f64,
        }
    }
}
