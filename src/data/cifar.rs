//! Reader for the binary versions of CIFAR-10 and CIFAR-100 (www.cs.toronto.edu/~kriz/cifar.html).
//! A file is a sequence of records, one per 32×32 RGB image: the label byte (CIFAR-100: the
//! coarse label byte, then the fine label byte), then 3072 pixel bytes, the red plane, the
//! green plane, the blue plane, each row-major. CIFAR-10's train split is data_batch_1..5.bin
//! and its test split test_batch.bin; CIFAR-100's are train.bin and test.bin, of which we use
//! the 100 fine labels.

use std::path::{Path, PathBuf};

use super::{class_names, read_file, DataDir, Dataset};
use crate::error::{Error, Result};

pub const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const PIXELS: usize = 3 * PLANE;
/// The largest batch file accepted (the real ones are 30 MB and 150 MB).
const MAX_BYTES: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cifar {
    Ten,
    Hundred,
}

impl Cifar {
    fn name(self) -> &'static str {
        match self {
            Cifar::Ten => "CIFAR-10",
            Cifar::Hundred => "CIFAR-100",
        }
    }

    /// The folder the published archive extracts to.
    fn folder(self) -> &'static str {
        match self {
            Cifar::Ten => "cifar-10-batches-bin",
            Cifar::Hundred => "cifar-100-binary",
        }
    }

    fn train_files(self) -> Vec<String> {
        match self {
            Cifar::Ten => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Cifar::Hundred => vec!["train.bin".into()],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            Cifar::Ten => "test_batch.bin",
            Cifar::Hundred => "test.bin",
        }
    }

    fn names_file(self) -> &'static str {
        match self {
            Cifar::Ten => "batches.meta.txt",
            Cifar::Hundred => "fine_label_names.txt",
        }
    }

    /// Label bytes before the pixels of each record.
    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }

    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }
}

/// The directory holding the batch files: `dir`, or the archive's folder inside it.
fn root(dir: &Path, kind: Cifar) -> PathBuf {
    let inner = dir.join(kind.folder());
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

/// Whether `dir` holds any batch file of this kind.
pub fn found(dir: &Path, kind: Cifar) -> bool {
    let root = root(dir, kind);
    let mut files = kind.train_files();
    files.push(kind.test_file().to_string());
    files.iter().any(|f| root.join(f).is_file())
}

pub fn load(dir: &Path, kind: Cifar) -> Result<DataDir> {
    let root = root(dir, kind);
    let read_split = |files: &[String]| -> Result<Dataset> {
        let mut ds = Dataset {
            h: SIDE,
            w: SIDE,
            c: 3,
            num_classes: kind.num_classes(),
            ..Dataset::default()
        };
        for file in files {
            let path = root.join(file);
            if !path.is_file() {
                return Err(Error::Data(format!(
                    "{}: incomplete {} dataset, {file} is missing",
                    root.display(),
                    kind.name()
                )));
            }
            let (images, labels) =
                parse(&path, &read_file(&path, MAX_BYTES, "a CIFAR batch")?, kind)?;
            ds.images.extend(images);
            ds.labels.extend(labels);
        }
        ds.n = ds.labels.len();
        Ok(ds)
    };
    let train = read_split(&kind.train_files())?;
    let test = read_split(&[kind.test_file().to_string()])?;
    Ok(DataDir {
        format: match kind {
            Cifar::Ten => "cifar10",
            Cifar::Hundred => "cifar100",
        }
        .to_string(),
        train,
        test,
        class_names: class_names(&root.join(kind.names_file()), kind.num_classes()),
        skipped: Vec::new(),
    })
}

/// Parses one batch file: returns the images (HWC) and their labels (the fine ones for
/// CIFAR-100). `path` only names the file in errors.
pub fn parse(path: &Path, bytes: &[u8], kind: Cifar) -> Result<(Vec<u8>, Vec<u32>)> {
    let record = kind.record_len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(Error::Data(format!(
            "{}: {} bytes is not a whole number of {record}-byte {} records (truncated or not a {} batch)",
            path.display(),
            bytes.len(),
            kind.name(),
            kind.name()
        )));
    }
    let n = bytes.len() / record;
    let mut images = vec![0u8; n * PIXELS];
    let mut labels = Vec::with_capacity(n);
    for (i, (rec, out)) in bytes
        .chunks_exact(record)
        .zip(images.chunks_exact_mut(PIXELS))
        .enumerate()
    {
        // CIFAR-100's first byte is the coarse label (20 superclasses): checked, not used.
        if kind == Cifar::Hundred && rec[0] >= 20 {
            return Err(Error::Data(format!(
                "{}: image {i} has coarse label {}, expected below 20 (corrupt file?)",
                path.display(),
                rec[0]
            )));
        }
        let label = rec[kind.label_bytes() - 1];
        if label as usize >= kind.num_classes() {
            return Err(Error::Data(format!(
                "{}: image {i} has label {label}, expected below {} (corrupt file?)",
                path.display(),
                kind.num_classes()
            )));
        }
        labels.push(label as u32);
        let planes = &rec[kind.label_bytes()..];
        for p in 0..PLANE {
            for ch in 0..3 {
                out[p * 3 + ch] = planes[ch * PLANE + p];
            }
        }
    }
    Ok((images, labels))
}
