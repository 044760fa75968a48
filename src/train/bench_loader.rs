//! `simclr bench-loader`: how fast the streaming loader turns a folder of JPEGs into SimCLR
//! batches, and how much memory it holds while doing so.
//!
//! One epoch of the folder goes through `data::loader::Loader` exactly as pretraining sends it
//! (stream on, two views per image): each batch's files are read and decoded (`folder::decode`:
//! centre square, bicubic resize to `--image-size`) on the stream's workers, then either
//! augmented there (`--augment-on cpu`: two standardised f32 views per image) or left to the
//! device (`--augment-on device`: the batch is the u8 images plus each view's parameters, so
//! the rate is decoding's alone). Nothing consumes the batches, so the epoch's wall time is the
//! loader's.
//!
//! When `--data` does not exist, a synthetic ImageNet-like folder is written there first
//! (`write_folder`): seeded, JPEG quality 90, sizes around ImageNet's typical 500×375 in both
//! orientations, smooth photo-like content (gradients, shapes, texture, mild noise) so that the
//! files weigh what ImageNet's do (~110 KB) and decode as slowly.

use std::fmt;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;

use crate::data::augment::{Augment, Normalize};
use crate::data::loader::{Loader, Views};
use crate::data::{load, Format, LoadOptions, MAX_IMAGE_SIZE};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Seed of the synthetic images, the epoch's order and its augmentations.
const SEED: u64 = 0xBE7C;
/// Class folders of a synthetic folder.
const CLASSES: usize = 10;
/// JPEG quality of a synthetic folder (ImageNet's files are mostly 90–96).
const QUALITY: u8 = 90;
/// Finished batches that may wait, as in training (`Context::loader`).
const PREFETCH: usize = 2;

/// `simclr bench-loader` flags.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchLoader {
    /// Image folder to stream; written first (synthetic, ImageNet-like) when it does not exist
    #[arg(long)]
    pub data: PathBuf,
    /// Images to write into a new folder, and to stream (at most the folder's)
    #[arg(long, default_value_t = 3000)]
    pub images: usize,
    /// Decode (and CPU augmentation) workers [default: all cores but one]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Images per batch (each gives two views)
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Side of the decoded images and of the views
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// cpu: the two views augmented by the workers; device: u8 images and view parameters
    /// only (decode alone), as for augmentation on the GPU
    #[arg(long, default_value = "cpu")]
    pub augment_on: String,
}

/// What one run measured: `Display` is the line the command prints.
pub struct Report {
    pub images: usize,
    pub image_size: usize,
    pub workers: usize,
    pub batch_size: usize,
    pub on_device: bool,
    /// Wall time of the epoch (from the first batch asked for to the last received).
    pub seconds: f64,
    /// CPU time the process spent in the epoch (user + system, all threads): images over it
    /// is the rate per core even when other programs share the cores.
    pub cpu_seconds: f64,
    /// Bytes of the files streamed.
    pub bytes: u64,
    /// Peak resident memory of the load and the epoch (VmHWM), in bytes; None off Linux.
    pub peak_rss: Option<u64>,
    /// The processor's name, from /proc/cpuinfo.
    pub cpu: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let rate = self.images as f64 / self.seconds;
        let what = match self.on_device {
            true => "u8 images + view parameters (augmentation left to the device)",
            false => "two views augmented on the cpu",
        };
        let peak = match self.peak_rss {
            Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
            None => "unknown".into(),
        };
        write!(
            f,
            "bench-loader: {} images at {} px, {what}, {} worker{}, batch {}: {rate:.1} images/s, \
             {:.1} images/s per worker, {:.1} images per CPU-second, {:.1} MB/s read, \
             peak RSS {peak}, {:.2} s; {}",
            self.images,
            self.image_size,
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            self.batch_size,
            rate / self.workers as f64,
            self.images as f64 / self.cpu_seconds,
            self.bytes as f64 / 1e6 / self.seconds,
            self.seconds,
            self.cpu
        )
    }
}

/// Runs the benchmark: writes the synthetic folder if `--data` does not exist (saying so on
/// stdout), then streams one epoch of it.
pub fn run(opts: &BenchLoader) -> Result<Report> {
    let on_device = match opts.augment_on.as_str() {
        "cpu" => false,
        "device" => true,
        other => {
            return Err(Error::Config(format!(
                "--augment-on {other}: expected cpu or device"
            )))
        }
    };
    let size = opts.image_size;
    if !(8..=MAX_IMAGE_SIZE).contains(&size) {
        return Err(Error::Config(format!(
            "--image-size {size}: must be between 8 and {MAX_IMAGE_SIZE}"
        )));
    }
    for (flag, v) in [("--images", opts.images), ("--batch-size", opts.batch_size)] {
        if v == 0 {
            return Err(Error::Config(format!("{flag} 0: must be at least 1")));
        }
    }
    if !opts.data.exists() {
        let t0 = Instant::now();
        let bytes = write_folder(&opts.data, opts.images)?;
        println!(
            "wrote {} synthetic JPEGs (quality {QUALITY}, mean {:.0} KB) to {} in {:.1} s",
            opts.images,
            bytes as f64 / opts.images as f64 / 1e3,
            opts.data.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    // The peak from here on: what a training run's loading and epoch would hold.
    reset_peak_rss();
    let data = load(
        &opts.data,
        &LoadOptions {
            format: Some(Format::Folder),
            image_size: Some(size),
            stream: Some(true),
            workers: opts.workers.unwrap_or(0),
            ..LoadOptions::default()
        },
    )?;
    let ds = Arc::new(data.train);
    let workers = ds
        .stream
        .as_ref()
        .map_or(1, |s| s.workers.current_num_threads());
    let mut order: Vec<usize> = (0..ds.n).collect();
    Rng::derive(SEED, &[ds.n as u64]).shuffle(&mut order);
    order.truncate(opts.images);
    let bytes = order
        .iter()
        .map(|&i| fs::metadata(&ds.paths[i]).map_or(0, |m| m.len()))
        .sum();
    // ImageNet's statistics: standardisation costs the same whatever the values.
    let norm = Normalize {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    };
    let views = Views::Two(Augment::simclr(size, 1.0));
    let (n, batch) = (order.len(), opts.batch_size);
    let (t0, cpu0) = (Instant::now(), cpu_time());
    let mut loader = Loader::new(
        ds, order, batch, false, views, norm, size, SEED, 0, PREFETCH, on_device,
    );
    // Each batch is dropped as soon as it arrives: the loader is all that is measured.
    let images: usize = (&mut loader).map(|b| b.rows / 2).sum();
    loader.check()?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = cpu_time() - cpu0;
    debug_assert_eq!(images, n);
    Ok(Report {
        images,
        image_size: size,
        workers,
        batch_size: batch,
        on_device,
        seconds,
        cpu_seconds,
        bytes,
        peak_rss: peak_rss(),
        cpu: cpu_name(),
    })
}

/// Writes `n` synthetic JPEGs into `dir`/train/class<k>/ (in parallel; into a temporary
/// sibling first, renamed at the end, so that an interrupted run leaves no partial folder to
/// be measured). Returns the bytes written.
pub fn write_folder(dir: &Path, n: usize) -> Result<u64> {
    let name = dir.file_name().map(|s| s.to_string_lossy().into_owned());
    let name = name.unwrap_or_else(|| "data".into());
    let partial = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    for k in 0..CLASSES {
        let class = partial.join("train").join(format!("class{k:02}"));
        fs::create_dir_all(&class).map_err(|e| Error::io(&class, e))?;
    }
    let written: Result<Vec<u64>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let jpeg = synthetic_jpeg(i)?;
            let path = partial
                .join("train")
                .join(format!("class{:02}", i % CLASSES))
                .join(format!("{i:06}.JPEG"));
            fs::write(&path, &jpeg).map_err(|e| Error::io(&path, e))?;
            Ok(jpeg.len() as u64)
        })
        .collect();
    let bytes = match written {
        Ok(sizes) => sizes.iter().sum(),
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
    Ok(bytes)
}

/// Synthetic image `i`, JPEG-encoded: ImageNet's typical size and photo-like content.
fn synthetic_jpeg(i: usize) -> Result<Vec<u8>> {
    let mut rng = Rng::derive(SEED, &[i as u64]);
    let (w, h) = image_size(&mut rng);
    let pixels = paint(w, h, &mut rng);
    let mut out = Cursor::new(Vec::new());
    JpegEncoder::new_with_quality(&mut out, QUALITY)
        .encode(&pixels, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Data(format!("synthetic image {i}: {e}")))?;
    Ok(out.into_inner())
}

/// Width and height: the longer side 500 for most (as ImageNet's), else 300..640; the shorter
/// 0.6..0.9 of it, at least 240; a quarter portrait.
fn image_size(rng: &mut Rng) -> (usize, usize) {
    let long = match rng.bernoulli(0.6) {
        true => 500,
        false => 300 + rng.below(341),
    };
    let short = ((long as f64 * rng.range(0.6, 0.9)) as usize).max(240);
    match rng.bernoulli(0.25) {
        true => (short, long),
        false => (long, short),
    }
}

/// A shape painted over the background: an ellipse or a rectangle with its own colour, a
/// shading gradient, its own grain (noise: smooth sky or busy fur), and sometimes stripes.
struct Shape {
    ellipse: bool,
    /// Centre and half-sizes, in pixels.
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    colour: [f32; 3],
    /// Brightness change per pixel across the shape (x, y).
    shade: (f32, f32),
    /// Stripes: amplitude, angular frequencies along x and y.
    stripes: (f32, f32, f32),
    /// Peak-to-peak amplitude of the luma noise (chroma noise: a third of it).
    grain: f32,
}

fn colour(rng: &mut Rng) -> [f32; 3] {
    [0; 3].map(|_| rng.range(20.0, 235.0) as f32)
}

/// h × w × 3 RGB pixels: a two-colour gradient with a slow light wave, 5 to 12 shapes, then
/// noise of the grain of whatever is on top (luma and chroma), clamped to u8.
fn paint(w: usize, h: usize, rng: &mut Rng) -> Vec<u8> {
    let (c0, c1) = (colour(rng), colour(rng));
    let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
    let (dx, dy) = (angle.cos(), angle.sin());
    let span = (w * w + h * h) as f32;
    let span = span.sqrt();
    let wave = (
        rng.range(10.0, 25.0) as f32,
        rng.range(0.005, 0.03) as f32,
        rng.range(0.005, 0.03) as f32,
    );
    let background_grain = rng.range(GRAIN.0, GRAIN.1 / 2.0) as f32;
    let shapes: Vec<Shape> = (0..5 + rng.below(8))
        .map(|_| Shape {
            ellipse: rng.bernoulli(0.5),
            cx: rng.range(0.0, w as f64) as f32,
            cy: rng.range(0.0, h as f64) as f32,
            rx: rng.range(20.0, w as f64 / 3.0) as f32,
            ry: rng.range(20.0, h as f64 / 3.0) as f32,
            colour: colour(rng),
            shade: (rng.range(-0.4, 0.4) as f32, rng.range(-0.4, 0.4) as f32),
            stripes: match rng.bernoulli(0.4) {
                true => (
                    rng.range(8.0, 25.0) as f32,
                    rng.range(-0.8, 0.8) as f32,
                    rng.range(-0.8, 0.8) as f32,
                ),
                false => (0.0, 0.0, 0.0),
            },
            grain: rng.range(GRAIN.0, GRAIN.1) as f32,
        })
        .collect();
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f32, y as f32);
            let t = ((xf * dx + yf * dy) / span + 0.5).clamp(0.0, 1.0);
            let light = wave.0 * (wave.1 * xf + wave.2 * yf).sin();
            let mut rgb: [f32; 3] =
                std::array::from_fn(|ch| c0[ch] + (c1[ch] - c0[ch]) * t + light);
            let mut grain = background_grain;
            // Later shapes cover earlier ones.
            for s in &shapes {
                let (u, v) = ((xf - s.cx) / s.rx, (yf - s.cy) / s.ry);
                let inside = match s.ellipse {
                    true => u * u + v * v <= 1.0,
                    false => u.abs() <= 1.0 && v.abs() <= 1.0,
                };
                if inside {
                    let shade = s.shade.0 * (xf - s.cx) + s.shade.1 * (yf - s.cy);
                    let stripe = s.stripes.0 * (s.stripes.1 * xf + s.stripes.2 * yf).sin();
                    rgb = s.colour.map(|v| v + shade + stripe);
                    grain = s.grain;
                }
            }
            let luma = grain * (rng.uniform() as f32 - 0.5);
            for (ch, v) in rgb.iter().enumerate() {
                let chroma = grain / 3.0 * (rng.uniform() as f32 - 0.5);
                px[(y * w + x) * 3 + ch] = (v + luma + chroma).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    px
}

/// Range of the grain (peak-to-peak luma noise) of the shapes; the background's is in the lower
/// half. Tuned so that the files weigh ~100 KB at quality 90, as ImageNet's do.
const GRAIN: (f64, f64) = (8.0, 96.0);

/// Resets the kernel's peak resident memory (VmHWM) to the current one (Linux 4.0+); a no-op
/// where that is not possible, and the peak then includes what came before.
fn reset_peak_rss() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory (VmHWM of /proc/self/status) in bytes.
fn peak_rss() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU seconds of the whole process so far.
fn cpu_time() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The processor's name ("model name" of /proc/cpuinfo), or "unknown processor".
fn cpu_name() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown processor".into(), |s| s.trim().to_string())
}
