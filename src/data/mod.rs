//! Datasets, label subsets, SimCLR augmentations and a background batch loader.

pub mod augment;
pub mod idx;
pub mod loader;
pub mod subset;

use std::path::Path;

use crate::error::{Error, Result};

/// Images as u8, HWC per image, images contiguous: images[i*h*w*c ..].
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub num_classes: usize,
}

impl Dataset {
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.h * self.w * self.c;
        &self.images[i * size..(i + 1) * size]
    }
}

/// The train and test splits of one dataset directory.
pub struct DataDir {
    /// The on-disk format that was found ("idx").
    pub format: String,
    pub train: Dataset,
    pub test: Dataset,
}

/// Detects the format from the files present and loads train and test splits.
pub fn load_dir(path: &Path) -> Result<DataDir> {
    if !path.is_dir() {
        return Err(Error::Data(format!(
            "data directory {} does not exist",
            path.display()
        )));
    }
    let Some((mut train, mut test)) = idx::load_dir(path)? else {
        return Err(Error::Data(format!(
            "{}: no supported dataset found (expected IDX files {}[.gz], {}[.gz], {}[.gz], {}[.gz])",
            path.display(),
            idx::TRAIN_IMAGES,
            idx::TRAIN_LABELS,
            idx::TEST_IMAGES,
            idx::TEST_LABELS
        )));
    };
    if (train.h, train.w, train.c) != (test.h, test.w, test.c) {
        return Err(Error::Data(format!(
            "{}: train images are {}x{}x{} but test images are {}x{}x{}",
            path.display(),
            train.h,
            train.w,
            train.c,
            test.h,
            test.w,
            test.c
        )));
    }
    // Both splits must agree on the number of classes, so it is taken over both.
    let max_label = train.labels.iter().chain(&test.labels).max().copied();
    let num_classes = max_label.map_or(0, |m| m as usize + 1);
    train.num_classes = num_classes;
    test.num_classes = num_classes;
    Ok(DataDir {
        format: "idx".to_string(),
        train,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_directories() {
        let err = load_dir(Path::new("/nonexistent/simclr-data"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "data directory /nonexistent/simclr-data does not exist"
        );
        let dir = std::env::temp_dir().join(format!("simclr-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let msg = load_dir(&dir).err().unwrap().to_string();
        assert!(msg.contains("no supported dataset found"), "{msg}");
        assert!(!msg.contains('\n'));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loads_fashion_mnist() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        if !dir.join("train-labels-idx1-ubyte.gz").exists() {
            eprintln!("skipping: no Fashion-MNIST in {}", dir.display());
            return;
        }
        let d = load_dir(&dir).unwrap();
        assert_eq!(d.format, "idx");
        assert_eq!((d.train.n, d.test.n), (60000, 10000));
        assert_eq!((d.train.h, d.train.w, d.train.c), (28, 28, 1));
        assert_eq!((d.train.num_classes, d.test.num_classes), (10, 10));
        assert_eq!(d.train.images.len(), 60000 * 784);
        assert_eq!(d.train.image(59999).len(), 784);
        // Fashion-MNIST is balanced: 6000 train images per class.
        let mut counts = [0usize; 10];
        for &l in &d.train.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [6000; 10]);
    }
}
