//! Reader for the binary version of STL-10 (cs.stanford.edu/~acoates/stl10): 96×96 RGB
//! images, 10 classes, 5000 labelled training images, 8000 test images and 100000
//! unlabelled ones for unsupervised learning. `*_X.bin` holds the images one after another,
//! each as three planes (red, green, blue) stored column-major (the value at row y, column x
//! of a plane is at x·96 + y); `*_y.bin` one label byte per image, 1 to 10.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{class_names, read_file, read_into, DataDir, Dataset, UNLABELLED};
use crate::error::{Error, Result};

pub const SIDE: usize = 96;
const PLANE: usize = SIDE * SIDE;
pub const PIXELS: usize = 3 * PLANE;
pub const NUM_CLASSES: usize = 10;
/// The largest image file accepted (unlabeled_X.bin is 2.6 GiB).
const MAX_BYTES: u64 = 8 << 30;
const FILES: [&str; 5] = [
    "train_X.bin",
    "train_y.bin",
    "test_X.bin",
    "test_y.bin",
    "unlabeled_X.bin",
];

/// The directory holding the files: `dir`, or the archive's stl10_binary/ inside it.
fn root(dir: &Path) -> PathBuf {
    let inner = dir.join("stl10_binary");
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

pub fn found(dir: &Path) -> bool {
    let root = root(dir);
    FILES.iter().any(|f| root.join(f).is_file())
}

/// Loads train and test, and appends the unlabelled images to train when asked to and
/// unlabeled_X.bin is present.
pub fn load(dir: &Path, with_unlabelled: bool) -> Result<DataDir> {
    let root = root(dir);
    for f in &FILES[..4] {
        if !root.join(f).is_file() {
            return Err(Error::Data(format!(
                "{}: incomplete STL-10 dataset, {f} is missing",
                root.display()
            )));
        }
    }
    let mut train = load_split(&root, "train")?;
    let test = load_split(&root, "test")?;
    let unlabelled = root.join(FILES[4]);
    if with_unlabelled && unlabelled.is_file() {
        // Read straight after the labelled images: the file is large, so no second copy.
        let start = train.images.len();
        read_into(
            &unlabelled,
            MAX_BYTES,
            "an STL-10 image file",
            &mut train.images,
        )?;
        let n = to_hwc(&unlabelled, &mut train.images[start..])?;
        train.labels.extend(std::iter::repeat_n(UNLABELLED, n));
        train.n += n;
    }
    Ok(DataDir {
        format: "stl10".to_string(),
        train,
        test,
        class_names: class_names(&root.join("class_names.txt"), NUM_CLASSES),
        skipped: Vec::new(),
    })
}

/// `split`_X.bin and `split`_y.bin; their sizes are checked against each other before the
/// images are read.
fn load_split(root: &Path, split: &str) -> Result<Dataset> {
    let x_path = root.join(format!("{split}_X.bin"));
    let y_path = root.join(format!("{split}_y.bin"));
    let labels = parse_labels(
        &y_path,
        &read_file(&y_path, MAX_BYTES / PIXELS as u64, "an STL-10 label file")?,
    )?;
    let x_len = std::fs::metadata(&x_path)
        .map_err(|e| Error::io(&x_path, e))?
        .len();
    if x_len != (labels.len() * PIXELS) as u64 {
        return Err(Error::Data(format!(
            "{}: {x_len} bytes, but {} has {} labels, i.e. {} bytes of images (truncated or corrupt)",
            x_path.display(),
            y_path.display(),
            labels.len(),
            labels.len() * PIXELS
        )));
    }
    let mut images = read_file(&x_path, MAX_BYTES, "an STL-10 image file")?;
    let n = to_hwc(&x_path, &mut images)?;
    if n != labels.len() {
        return Err(Error::Data(format!(
            "{}: changed while being read",
            x_path.display()
        )));
    }
    Ok(Dataset {
        images,
        labels,
        n,
        h: SIDE,
        w: SIDE,
        c: 3,
        num_classes: NUM_CLASSES,
        ..Dataset::default()
    })
}

/// Parses a label file: labels 1..10 become classes 0..9.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u32>> {
    if bytes.is_empty() {
        return Err(Error::Data(format!("{}: empty label file", path.display())));
    }
    bytes
        .iter()
        .enumerate()
        .map(|(i, &l)| match l {
            1..=10 => Ok(l as u32 - 1),
            _ => Err(Error::Data(format!(
                "{}: image {i} has label {l}, expected 1 to 10 (corrupt file?)",
                path.display()
            ))),
        })
        .collect()
}

/// Rearranges the images of an image file from column-major planes to HWC, in place;
/// returns their number.
pub fn to_hwc(path: &Path, bytes: &mut [u8]) -> Result<usize> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(PIXELS) {
        return Err(Error::Data(format!(
            "{}: {} bytes is not a whole number of {PIXELS}-byte STL-10 images (truncated?)",
            path.display(),
            bytes.len()
        )));
    }
    bytes.par_chunks_mut(PIXELS).for_each_init(
        || vec![0u8; PIXELS],
        |planes, img| {
            planes.copy_from_slice(img);
            for y in 0..SIDE {
                for x in 0..SIDE {
                    for ch in 0..3 {
                        img[(y * SIDE + x) * 3 + ch] = planes[ch * PLANE + x * SIDE + y];
                    }
                }
            }
        },
    );
    Ok(bytes.len() / PIXELS)
}
