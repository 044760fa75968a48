//! A background batch producer, so that decoding and augmentation overlap with training.
//! One thread walks the epoch's index order and builds each batch (images augmented in
//! parallel with rayon), handing batches over through a bounded channel. With augmentation on
//! the device, a batch is the u8 images and each row's drawn view instead, for the GPU to
//! carry out (the same views, so the same pixels up to float rounding).
//!
//! A streamed dataset (`stream`) is decoded here too, each batch's files once (both views come
//! from one decode), on the dataset's own pool of workers: memory holds the batches in the
//! channel and the one being built, whatever the dataset's size. A loader that cannot go on
//! (too many bad files) ends early; `check` says why.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rayon::prelude::*;

use super::augment::{render, Augment, Frame, Normalize, ViewParams};
use super::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// How each image of a batch becomes rows of the batch.
#[derive(Clone)]
pub enum Views {
    /// SimCLR pretraining: each image twice; rows 0..B are the first view of the B images,
    /// rows B..2B the second view, in the same order.
    Two(Augment),
    /// One augmented view per image (supervised fine-tuning, distillation).
    One(Augment),
    /// Evaluation: resized or copied, no randomness.
    Center,
}

/// A batch's images, ready or still to be augmented.
pub enum Pixels {
    /// rows × out_size × out_size × c, NHWC, standardised.
    Ready(Vec<f32>),
    /// For the device: the batch's distinct images (u8, HWC each, in the order of the rows'
    /// first view) and each row's view of one of them.
    Raw {
        images: Vec<u8>,
        views: Vec<ViewParams>,
        frame: Frame,
    },
}

pub struct Batch {
    pub pixels: Pixels,
    /// The label of each row (with two views, each label appears twice).
    pub labels: Vec<u32>,
    /// The dataset index of each row.
    pub indices: Vec<usize>,
    pub rows: usize,
    /// Seconds the loader took to make the batch (read, decode, augment): its images over
    /// this is the rate the loader sustains.
    pub made_in_s: f64,
}

/// The batches of one epoch, produced ahead of time on a background thread.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    producer: Option<JoinHandle<()>>,
    num_batches: usize,
    /// Why the producer stopped before the epoch's end.
    error: Arc<Mutex<Option<String>>>,
}

impl Loader {
    /// `indices` is the epoch's order (already shuffled by the caller). Image i of view v is
    /// augmented with Rng::derive(seed, &[epoch, i, v]), so batches do not depend on thread
    /// scheduling. `prefetch` (at least 1) is how many finished batches may wait in the channel.
    /// `raw`: leave the views to the device (`Pixels::Raw`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ds: Arc<Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        drop_last: bool,
        views: Views,
        norm: Normalize,
        out_size: usize,
        seed: u64,
        epoch: u64,
        prefetch: usize,
        raw: bool,
    ) -> Loader {
        assert!(batch_size > 0, "batch size must be positive");
        if let Views::Two(aug) | Views::One(aug) = &views {
            assert_eq!(
                aug.out_size, out_size,
                "augmentation and loader output sizes differ"
            );
        }
        let num_batches = if drop_last {
            indices.len() / batch_size
        } else {
            indices.len().div_ceil(batch_size)
        };
        let (tx, rx) = sync_channel(prefetch.max(1));
        let error = Arc::new(Mutex::new(None));
        let failed = error.clone();
        let producer = std::thread::spawn(move || {
            for chunk in indices.chunks(batch_size).take(num_batches) {
                let key = (seed, epoch);
                let t0 = Instant::now();
                let make = || match raw {
                    true => raw_batch(&ds, chunk, &views, out_size, key),
                    false => make_batch(&ds, chunk, &views, &norm, out_size, key),
                };
                let made = match &ds.stream {
                    Some(stream) => stream.workers.install(make),
                    None => make(),
                };
                let batch = match made {
                    Ok(batch) => Batch {
                        made_in_s: t0.elapsed().as_secs_f64(),
                        ..batch
                    },
                    Err(e) => {
                        *failed.lock().unwrap() = Some(e.to_string());
                        return;
                    }
                };
                // A send error means the Loader was dropped: stop quietly.
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        Loader {
            rx: Some(rx),
            producer: Some(producer),
            num_batches,
            error,
        }
    }

    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Why the loader ended before the epoch's end, if it did (call it after the last batch).
    pub fn check(&self) -> Result<()> {
        match self.error.lock().unwrap().clone() {
            Some(why) => Err(Error::Data(why)),
            None => Ok(()),
        }
    }
}

impl Views {
    fn count(&self) -> usize {
        match self {
            Views::Two(_) => 2,
            _ => 1,
        }
    }

    /// The view of row r of a batch of `chunk`: view r / B of image chunk[r % B], drawn with
    /// Rng::derive(seed, &[epoch, image, view]); the evaluation view has no randomness.
    fn draw(
        &self,
        ds: &Dataset,
        chunk: &[usize],
        r: usize,
        out_size: usize,
        (seed, epoch): (u64, u64),
    ) -> ViewParams {
        let i = chunk[r % chunk.len()];
        let view = (r / chunk.len()) as u64;
        match self {
            Views::Two(aug) | Views::One(aug) => {
                let mut rng = Rng::derive(seed, &[epoch, i as u64, view]);
                aug.sample(ds.h, ds.w, ds.c, &mut rng)
            }
            Views::Center => ViewParams::center(ds.h, ds.w, out_size),
        }
    }

    fn frame(&self, out_size: usize) -> Frame {
        match self {
            Views::Two(aug) | Views::One(aug) => aug.frame(),
            Views::Center => Frame::center(out_size),
        }
    }
}

/// The rows' dataset indices and labels.
fn rows_of(ds: &Dataset, chunk: &[usize], n_views: usize) -> (Vec<usize>, Vec<u32>) {
    let indices: Vec<usize> = (0..chunk.len() * n_views)
        .map(|r| chunk[r % chunk.len()])
        .collect();
    let labels = indices.iter().map(|&i| ds.labels[i]).collect();
    (indices, labels)
}

fn make_batch(
    ds: &Dataset,
    chunk: &[usize],
    views: &Views,
    norm: &Normalize,
    out_size: usize,
    key: (u64, u64),
) -> Result<Batch> {
    let (chunk, images) = ds.fetch(chunk)?;
    let chunk = &chunk[..];
    let (indices, labels) = rows_of(ds, chunk, views.count());
    let rows = indices.len();
    let row_len = out_size * out_size * ds.c;
    let frame = views.frame(out_size);
    let mut x = vec![0f32; rows * row_len];
    x.par_chunks_mut(row_len).enumerate().for_each(|(r, out)| {
        let view = views.draw(ds, chunk, r, out_size, key);
        render(
            &images[r % chunk.len()],
            ds.h,
            ds.w,
            ds.c,
            &view,
            &frame,
            norm,
            out,
        );
    });
    Ok(Batch {
        pixels: Pixels::Ready(x),
        labels,
        indices,
        rows,
        made_in_s: 0.0,
    })
}

/// A batch left to the device: the chunk's images once each, and every row's view.
fn raw_batch(
    ds: &Dataset,
    chunk: &[usize],
    views: &Views,
    out_size: usize,
    key: (u64, u64),
) -> Result<Batch> {
    let (chunk, images) = ds.fetch(chunk)?;
    let chunk = &chunk[..];
    let (indices, labels) = rows_of(ds, chunk, views.count());
    let rows = indices.len();
    let params = (0..rows)
        .map(|r| ViewParams {
            image: (r % chunk.len()) as u32,
            ..views.draw(ds, chunk, r, out_size, key)
        })
        .collect();
    let images = images.concat();
    Ok(Batch {
        pixels: Pixels::Raw {
            images,
            views: params,
            frame: views.frame(out_size),
        },
        labels,
        indices,
        rows,
        made_in_s: 0.0,
    })
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if let Ok(batch) = self.rx.as_ref()?.recv() {
            return Some(batch);
        }
        // The producer has finished, or panicked: pass its panic on rather than end early.
        self.rx = None;
        if let Some(Err(panic)) = self.producer.take().map(JoinHandle::join) {
            std::panic::resume_unwind(panic);
        }
        None
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the receiver first makes the producer's next send fail, so join cannot hang.
        self.rx = None;
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::center;

    fn ready(b: &Batch) -> &[f32] {
        match &b.pixels {
            Pixels::Ready(x) => x,
            Pixels::Raw { .. } => panic!("a raw batch"),
        }
    }

    fn dataset(n: usize, h: usize, w: usize, c: usize) -> Arc<Dataset> {
        let mut rng = Rng::new(5);
        Arc::new(Dataset {
            images: (0..n * h * w * c).map(|_| rng.below(256) as u8).collect(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            n,
            h,
            w,
            c,
            num_classes: 3,
            ..Dataset::default()
        })
    }

    fn identity(c: usize) -> Normalize {
        Normalize {
            mean: vec![0.0; c],
            std: vec![1.0; c],
        }
    }

    fn two_view_loader(ds: &Arc<Dataset>, epoch: u64) -> Loader {
        let order: Vec<usize> = (0..ds.n).rev().collect();
        let views = Views::Two(Augment::simclr(8, 1.0));
        Loader::new(
            ds.clone(),
            order,
            4,
            false,
            views,
            identity(3),
            8,
            42,
            epoch,
            2,
            false,
        )
    }

    #[test]
    fn same_seed_same_batches_other_epoch_other_augmentation() {
        let ds = dataset(10, 12, 12, 3);
        let a: Vec<Batch> = two_view_loader(&ds, 0).collect();
        let b: Vec<Batch> = two_view_loader(&ds, 0).collect();
        let c: Vec<Batch> = two_view_loader(&ds, 1).collect();
        assert_eq!(a.len(), 3);
        for ((a, b), c) in a.iter().zip(&b).zip(&c) {
            assert_eq!(ready(a), ready(b));
            assert_eq!(a.indices, c.indices);
            assert_ne!(ready(a), ready(c));
        }
    }

    #[test]
    fn two_views_layout() {
        let ds = dataset(10, 12, 12, 3);
        let mut loader = two_view_loader(&ds, 0);
        assert_eq!(loader.num_batches(), 3);
        let first = loader.next().unwrap();
        assert_eq!(first.rows, 8);
        assert_eq!(first.indices, vec![9, 8, 7, 6, 9, 8, 7, 6]);
        assert_eq!(first.labels, vec![0, 2, 1, 0, 0, 2, 1, 0]);
        assert_eq!(ready(&first).len(), 8 * 8 * 8 * 3);
        // Each row is the image's own augmentation, whatever thread built it.
        let row = 8 * 8 * 3;
        let aug = Augment::simclr(8, 1.0);
        let mut expect = vec![0f32; row];
        for r in 0..8 {
            let (i, view) = (first.indices[r], (r / 4) as u64);
            let mut rng = Rng::derive(42, &[0, i as u64, view]);
            aug.apply(ds.image(i), 12, 12, 3, &identity(3), &mut rng, &mut expect);
            assert_eq!(&ready(&first)[r * row..(r + 1) * row], &expect[..]);
        }
        assert_ne!(&ready(&first)[..row], &ready(&first)[4 * row..5 * row]);
        let last = loader.nth(1).unwrap();
        assert_eq!((last.rows, last.indices.clone()), (4, vec![1, 0, 1, 0]));
        assert!(loader.next().is_none());
        assert!(loader.next().is_none());
    }

    #[test]
    fn center_and_one_view() {
        let ds = dataset(7, 6, 6, 1);
        let norm = Normalize {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let batches: Vec<Batch> = Loader::new(
            ds.clone(),
            (0..7).collect(),
            3,
            true,
            Views::Center,
            norm.clone(),
            6,
            1,
            0,
            1,
            false,
        )
        .collect();
        assert_eq!(batches.len(), 2);
        let mut expect = vec![0f32; 36];
        for b in &batches {
            assert_eq!(b.rows, 3);
            for (r, &i) in b.indices.iter().enumerate() {
                center(ds.image(i), 6, 6, 1, 6, &norm, &mut expect);
                assert_eq!(&ready(b)[r * 36..(r + 1) * 36], &expect[..]);
            }
        }
        let one = Views::One(Augment::simclr(4, 0.5));
        let b = Loader::new(ds, (0..7).collect(), 5, false, one, norm, 4, 1, 0, 1, false)
            .next()
            .unwrap();
        assert_eq!(
            (b.rows, ready(&b).len(), b.indices),
            (5, 5 * 16, vec![0, 1, 2, 3, 4])
        );
    }

    #[test]
    fn dropping_early_does_not_hang() {
        let ds = dataset(64, 12, 12, 3);
        let views = Views::Two(Augment::simclr(8, 1.0));
        let mut loader = Loader::new(
            ds,
            (0..64).collect(),
            2,
            false,
            views,
            identity(3),
            8,
            0,
            0,
            1,
            false,
        );
        assert!(loader.next().is_some());
        drop(loader);
    }

    #[test]
    fn raw_batches_carry_the_views_of_ready_ones() {
        let ds = dataset(10, 12, 12, 3);
        let views = Views::Two(Augment::simclr(8, 1.0));
        let load = |raw| {
            let order = (0..10).rev().collect();
            let views = views.clone();
            Loader::new(
                ds.clone(),
                order,
                4,
                true,
                views,
                identity(3),
                8,
                42,
                0,
                1,
                raw,
            )
        };
        for (ready_batch, raw) in load(false).zip(load(true)) {
            let Pixels::Raw {
                images,
                views,
                frame,
            } = &raw.pixels
            else {
                panic!("a ready batch");
            };
            assert_eq!(
                (raw.rows, &raw.indices),
                (ready_batch.rows, &ready_batch.indices)
            );
            // The chunk's images once each, in row order; row r views image r % 4.
            let size = 12 * 12 * 3;
            assert_eq!(images.len(), 4 * size);
            let mut out = vec![0f32; 8 * 8 * 3];
            for (r, view) in views.iter().enumerate() {
                assert_eq!(view.image as usize, r % 4);
                let img = &images[r % 4 * size..(r % 4 + 1) * size];
                assert_eq!(img, ds.image(raw.indices[r]));
                render(img, 12, 12, 3, view, frame, &identity(3), &mut out);
                assert_eq!(
                    &ready(&ready_batch)[r * out.len()..(r + 1) * out.len()],
                    &out[..]
                );
            }
        }
    }
}
