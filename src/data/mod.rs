//! Datasets, label subsets, SimCLR augmentations and a background batch loader.
//!
//! Every format is read into the same in-memory shape, a `Dataset` of u8 HWC images of one
//! size, so that nothing above this module depends on where the images came from:
//!
//! | `--format` | files (in the directory or its usual sub-folder)                          |
//! |------------|----------------------------------------------------------------------------|
//! | `idx`      | train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-… (each raw or .gz) |
//! | `cifar10`  | data_batch_1..5.bin, test_batch.bin (cifar-10-batches-bin/)                 |
//! | `cifar100` | train.bin, test.bin (cifar-100-binary/); the fine labels                    |
//! | `stl10`    | train_X/y.bin, test_X/y.bin, unlabeled_X.bin (stl10_binary/)                |
//! | `folder`   | train/<class>/*.jpg|png, val/ or test/ alike, unlabelled/*.jpg|png; or one  |
//! |            | folder of class folders (no test split), or of images (all unlabelled)      |
//!
//! Unlabelled images (STL-10's 100k split, an image folder's unlabelled/) are appended to
//! the training set after the labelled ones with the label `UNLABELLED`: pretraining and
//! distillation use every training image, label subsets and the kNN monitor only labelled
//! ones.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod resize;
pub mod shards;
pub mod stl10;
pub mod stream;
pub mod subset;

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use resize::{resize_u8, Filter, Rect};

/// The label of a training image without one; the same value as `ops::loss::UNLABELLED`,
/// so that batch labels can go to the distillation loss as they are.
pub const UNLABELLED: u32 = u32::MAX;

/// Images as u8, HWC per image, images contiguous: images[i*h*w*c ..].
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub images: Vec<u8>,
    /// One per image: a class below num_classes, or UNLABELLED.
    pub labels: Vec<u32>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub num_classes: usize,
    /// The file of each image (image folders); empty when the images come from one file.
    pub paths: Vec<PathBuf>,
    /// Decoded on demand from `paths` rather than held in `images` (`stream`).
    pub stream: Option<Arc<stream::Streamed>>,
}

/// A batch's images as `Dataset::fetch` gives them: the indices used and their pixels.
pub type Fetched<'a> = (Vec<usize>, Vec<Cow<'a, [u8]>>);

/// How many images of a streamed dataset its per-channel statistics are computed from.
const STATS_SAMPLE: usize = 2048;

impl Dataset {
    /// Image `i` of an in-memory dataset (a streamed one's go through `fetch`).
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(
            self.stream.is_none(),
            "a streamed dataset's images are fetched"
        );
        let size = self.h * self.w * self.c;
        &self.images[i * size..(i + 1) * size]
    }

    /// The images `chunk` of a batch: (the indices used, their pixels). In memory, those
    /// images; streamed, decoded in parallel, with a bad file's replacement in its place.
    pub fn fetch(&self, chunk: &[usize]) -> Result<Fetched<'_>> {
        let Some(stream) = &self.stream else {
            let images = chunk
                .iter()
                .map(|&i| Cow::Borrowed(self.image(i)))
                .collect();
            return Ok((chunk.to_vec(), images));
        };
        let got: Vec<(usize, Vec<u8>)> = chunk
            .par_iter()
            .map(|&i| stream.image_or_next(i))
            .collect::<Result<_>>()?;
        Ok(got.into_iter().map(|(i, px)| (i, Cow::Owned(px))).unzip())
    }

    /// The images to compute per-channel statistics from: all of an in-memory dataset; of a
    /// streamed one, a seeded sample of `STATS_SAMPLE`, decoded (on its workers).
    pub fn statistics_sample(&self) -> Result<Cow<'_, Dataset>> {
        let Some(stream) = &self.stream else {
            return Ok(Cow::Borrowed(self));
        };
        let mut order: Vec<usize> = (0..self.n).collect();
        crate::rng::Rng::derive(0x57A7, &[self.n as u64]).shuffle(&mut order);
        order.truncate(STATS_SAMPLE);
        let (_, images) = stream.workers.install(|| self.fetch(&order))?;
        Ok(Cow::Owned(Dataset {
            images: images.concat(),
            n: order.len(),
            h: self.h,
            w: self.w,
            c: self.c,
            ..Dataset::default()
        }))
    }

    /// Images per class (unlabelled images are not counted).
    pub fn histogram(&self) -> Vec<usize> {
        histogram(&self.labels, self.num_classes)
    }

    /// Indices of the images with a label.
    pub fn labelled(&self) -> Vec<usize> {
        (0..self.n)
            .filter(|&i| self.labels[i] != UNLABELLED)
            .collect()
    }
}

fn histogram(labels: &[u32], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for &l in labels {
        if let Some(count) = counts.get_mut(l as usize) {
            *count += 1;
        }
    }
    counts
}

/// The splits of one dataset directory.
pub struct DataDir {
    /// The format that was read, as `--format` names it.
    pub format: String,
    /// The labelled training images, then the unlabelled ones (label UNLABELLED).
    pub train: Dataset,
    /// Empty (n = 0) for an image folder without a test split.
    pub test: Dataset,
    /// Class names when the dataset has them (folders, CIFAR and STL-10 meta files).
    pub class_names: Vec<String>,
    /// Image files that could not be decoded and were left out (each reported on stderr).
    pub skipped: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Idx,
    Cifar10,
    Cifar100,
    Stl10,
    Folder,
    Shards,
}

impl Format {
    const ALL: [Format; 6] = [
        Format::Idx,
        Format::Cifar10,
        Format::Cifar100,
        Format::Stl10,
        Format::Folder,
        Format::Shards,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Idx => "idx",
            Format::Cifar10 => "cifar10",
            Format::Cifar100 => "cifar100",
            Format::Stl10 => "stl10",
            Format::Folder => "folder",
            Format::Shards => "shards",
        }
    }

    /// Whether `dir` holds files of this format.
    fn found(self, dir: &Path) -> bool {
        match self {
            Format::Idx => idx::found(dir),
            Format::Cifar10 => cifar::found(dir, cifar::Cifar::Ten),
            Format::Cifar100 => cifar::found(dir, cifar::Cifar::Hundred),
            Format::Stl10 => stl10::found(dir),
            Format::Folder => folder::found(dir),
            Format::Shards => shards::found(dir),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "--format {s}: unknown format (expected idx, cifar10, cifar100, stl10, folder or shards)"
                ))
            })
    }
}

/// How a dataset directory is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// None: detected from the files present.
    pub format: Option<Format>,
    /// Side of the square images stored. None: the format's own size, and
    /// `folder::DEFAULT_SIZE` for image folders; otherwise every format is resized to it.
    pub image_size: Option<usize>,
    /// Leave the unlabelled split out (stages that use only labelled images).
    pub skip_unlabelled: bool,
    /// Image folders: decode on demand (true), up front into memory (false), or on demand
    /// when the decoded images would take more than `stream::AUTO_ABOVE_BYTES` (None).
    pub stream: Option<bool>,
    /// Decode workers of a streamed dataset (0: all cores but one).
    pub workers: usize,
}

/// `--stream auto|on|off` as `LoadOptions::stream`.
pub fn parse_stream(flag: &str) -> Result<Option<bool>> {
    match flag {
        "auto" => Ok(None),
        "on" => Ok(Some(true)),
        "off" => Ok(Some(false)),
        other => Err(Error::Config(format!(
            "--stream {other}: expected auto, on or off"
        ))),
    }
}

/// Largest `--image-size` accepted (a 1024² RGB image is 3 MiB in memory).
pub const MAX_IMAGE_SIZE: usize = 1024;

/// The format of the dataset in `dir`: the one whose files are present. Exactly one must be.
pub fn detect(dir: &Path) -> Result<Format> {
    check_dir(dir)?;
    let found: Vec<Format> = Format::ALL.into_iter().filter(|f| f.found(dir)).collect();
    match found[..] {
        [format] => Ok(format),
        [] => Err(Error::Data(format!(
            "{}: no supported dataset found (expected IDX files {}[.gz] etc., CIFAR-10/100 or \
             STL-10 binary files, or an image folder of JPEG/PNG files)",
            dir.display(),
            idx::TRAIN_IMAGES
        ))),
        _ => {
            let names: Vec<&str> = found.iter().map(|f| f.name()).collect();
            Err(Error::Data(format!(
                "{}: files of several formats ({}); choose one with --format",
                dir.display(),
                names.join(", ")
            )))
        }
    }
}

fn check_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else if dir.exists() {
        Err(Error::Data(format!(
            "data directory {} is not a directory",
            dir.display()
        )))
    } else {
        Err(Error::Data(format!(
            "data directory {} does not exist",
            dir.display()
        )))
    }
}

fn check_image_size(size: Option<usize>) -> Result<()> {
    match size {
        Some(s) if !(8..=MAX_IMAGE_SIZE).contains(&s) => Err(Error::Config(format!(
            "--image-size {s}: must be between 8 and {MAX_IMAGE_SIZE}"
        ))),
        _ => Ok(()),
    }
}

/// Loads the train and test splits of the dataset in `dir`.
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<DataDir> {
    check_dir(dir)?;
    check_image_size(opts.image_size)?;
    let format = match opts.format {
        Some(f) => f,
        None => detect(dir)?,
    };
    let with_unlabelled = !opts.skip_unlabelled;
    let mut data = match format {
        Format::Idx => idx::load(dir)?,
        Format::Cifar10 => cifar::load(dir, cifar::Cifar::Ten)?,
        Format::Cifar100 => cifar::load(dir, cifar::Cifar::Hundred)?,
        Format::Stl10 => stl10::load(dir, with_unlabelled)?,
        Format::Folder => folder::load(
            dir,
            opts.image_size.unwrap_or(folder::DEFAULT_SIZE),
            with_unlabelled,
            (opts.stream, opts.workers),
        )?,
        Format::Shards => shards::load(
            dir,
            opts.image_size.unwrap_or(folder::DEFAULT_SIZE),
            with_unlabelled,
            opts.workers,
        )?,
    };
    if let Some(size) = opts.image_size {
        resize_dataset(&mut data.train, size);
        resize_dataset(&mut data.test, size);
    }
    let (train, test) = (&data.train, &data.test);
    if test.n > 0 && (train.h, train.w, train.c) != (test.h, test.w, test.c) {
        return Err(Error::Data(format!(
            "{}: train images are {}x{}x{} but test images are {}x{}x{}",
            dir.display(),
            train.h,
            train.w,
            train.c,
            test.h,
            test.w,
            test.c
        )));
    }
    Ok(data)
}

/// Resizes every image of `ds` to size × size (bicubic, the central square of non-square
/// images), unless it has that size already.
fn resize_dataset(ds: &mut Dataset, size: usize) {
    if (ds.h, ds.w) == (size, size) || ds.n == 0 {
        return;
    }
    let (h, w, c) = (ds.h, ds.w, ds.c);
    let mut images = vec![0u8; ds.n * size * size * c];
    images
        .par_chunks_mut(size * size * c)
        .enumerate()
        .for_each(|(i, out)| {
            let rect = Rect::center_square(h, w, 1.0);
            out.copy_from_slice(&resize_u8(ds.image(i), w, c, rect, size, Filter::Bicubic));
        });
    ds.images = images;
    (ds.h, ds.w) = (size, size);
}

/// Reads a whole file of at most `max` bytes; a longer one is an error naming `what` it
/// should have been, found from its length before anything is allocated.
pub(crate) fn read_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    read_into(path, max, what, &mut bytes)?;
    Ok(bytes)
}

/// `read_file`, appending to `buf`; returns the number of bytes read.
pub(crate) fn read_into(path: &Path, max: u64, what: &str, buf: &mut Vec<u8>) -> Result<usize> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Data(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let len = meta.len();
    if len > max {
        return Err(Error::Data(format!(
            "{}: {len} bytes, more than the {} MiB {what} may have",
            path.display(),
            max >> 20
        )));
    }
    reserve(buf, len as usize, path)?;
    let start = buf.len();
    // Read at most one byte past the cap, in case the file grew since its length was read.
    file.take(max + 1)
        .read_to_end(buf)
        .map_err(|e| Error::io(path, e))?;
    if (buf.len() - start) as u64 > max {
        return Err(Error::Data(format!(
            "{}: more than the {} MiB {what} may have",
            path.display(),
            max >> 20
        )));
    }
    Ok(buf.len() - start)
}

/// Reserves `more` bytes in `buf`, or says how much memory the dataset needed.
fn reserve(buf: &mut Vec<u8>, more: usize, what: &Path) -> Result<()> {
    buf.try_reserve_exact(more).map_err(|_| {
        Error::Data(format!(
            "{}: cannot allocate {} MiB of memory for the images",
            what.display(),
            more >> 20
        ))
    })
}

/// The first `want` lines of a names file (batches.meta.txt, class_names.txt, ...), or none
/// when it is missing or has another number of names: names are only for display.
fn class_names(path: &Path, want: usize) -> Vec<String> {
    let Ok(bytes) = read_file(path, 1 << 20, "class names file") else {
        return Vec::new();
    };
    let names: Vec<String> = String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() == want {
        names
    } else {
        Vec::new()
    }
}

/// What `simclr data` prints: the format, the splits and each class's image count.
#[derive(Clone, Debug, Serialize)]
pub struct DataInfo {
    pub path: PathBuf,
    pub format: Format,
    pub num_classes: usize,
    /// Empty when the dataset carries no names.
    pub class_names: Vec<String>,
    pub splits: Vec<SplitInfo>,
    /// Files that cannot be read as images; loading skips them.
    pub unreadable: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SplitInfo {
    /// train, test or unlabelled.
    pub name: String,
    pub images: usize,
    /// The size the images are used at (image folders: after resizing).
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// Images per class; empty for the unlabelled split.
    pub histogram: Vec<usize>,
    /// Image folders: the smallest and the largest [height, width] among the files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_sizes: Option<[[usize; 2]; 2]>,
}

/// Describes the dataset in `dir`. Binary formats are read whole; image folders are listed
/// and only each file's header is read (decoding them all would take as long as loading).
pub fn describe(dir: &Path, opts: &LoadOptions) -> Result<DataInfo> {
    check_dir(dir)?;
    check_image_size(opts.image_size)?;
    let format = match opts.format {
        Some(f) => f,
        None => detect(dir)?,
    };
    if format == Format::Folder {
        let size = opts.image_size.unwrap_or(folder::DEFAULT_SIZE);
        return folder::describe(dir, size, !opts.skip_unlabelled);
    }
    let data = load(
        dir,
        &LoadOptions {
            format: Some(format),
            ..opts.clone()
        },
    )?;
    let split = |name: &str, ds: &Dataset, n: usize, histogram: Vec<usize>| SplitInfo {
        name: name.to_string(),
        images: n,
        height: ds.h,
        width: ds.w,
        channels: ds.c,
        histogram,
        file_sizes: None,
    };
    let labelled = data.train.labelled().len();
    let mut splits = vec![split(
        "train",
        &data.train,
        labelled,
        data.train.histogram(),
    )];
    if labelled < data.train.n {
        splits.push(split(
            "unlabelled",
            &data.train,
            data.train.n - labelled,
            Vec::new(),
        ));
    }
    splits.push(split(
        "test",
        &data.test,
        data.test.n,
        data.test.histogram(),
    ));
    Ok(DataInfo {
        path: dir.to_path_buf(),
        format,
        num_classes: data.train.num_classes,
        class_names: data.class_names,
        splits,
        unreadable: data.skipped,
    })
}

/// `DataInfo` as text: a table of the splits, then one line per class.
pub fn render(info: &DataInfo) -> String {
    let mut s = format!(
        "{} ({}), {} classes\n{:<12} {:>9}  size\n",
        info.path.display(),
        info.format,
        info.num_classes,
        "split",
        "images"
    );
    for sp in &info.splits {
        s += &format!(
            "{:<12} {:>9}  {}x{}x{}",
            sp.name, sp.images, sp.height, sp.width, sp.channels
        );
        if let Some([[h0, w0], [h1, w1]]) = sp.file_sizes {
            s += &format!(" (files from {h0}x{w0} to {h1}x{w1})");
        }
        s += "\n";
    }
    let labelled: Vec<&SplitInfo> = info
        .splits
        .iter()
        .filter(|s| !s.histogram.is_empty())
        .collect();
    if info.num_classes > 0 && !labelled.is_empty() {
        s += &format!("{:<24}", "class");
        for sp in &labelled {
            s += &format!(" {:>9}", sp.name);
        }
        s += "\n";
        for k in 0..info.num_classes {
            let name = match info.class_names.get(k) {
                Some(n) => format!("{k} {n}"),
                None => k.to_string(),
            };
            s += &format!("{name:<24}");
            for sp in &labelled {
                s += &format!(" {:>9}", sp.histogram[k]);
            }
            s += "\n";
        }
    }
    if let Some(first) = info.unreadable.first() {
        s += &format!(
            "{} unreadable files, skipped when loading (first: {})\n",
            info.unreadable.len(),
            first.display()
        );
    }
    s
}
