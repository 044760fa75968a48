//! Reader for the IDX format of MNIST and Fashion-MNIST: a big-endian magic number
//! (0x00000803 for u8 images of rank 3, 0x00000801 for u8 labels of rank 1), one big-endian
//! u32 per dimension, then the raw bytes. Each file may be gzip-compressed (`.gz`).

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{read_file, DataDir, Dataset};
use crate::error::{Error, Result};

pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
const NAMES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
/// No IDX file we accept is larger than this once decompressed (MNIST train is 47 MB), so a
/// corrupt or hostile gzip stream cannot make us allocate without bound.
const MAX_BYTES: u64 = 1 << 30;

/// Whether any of the four IDX files is in `dir`.
pub fn found(dir: &Path) -> bool {
    NAMES.iter().any(|name| find(dir, name).is_some())
}

/// Loads the train and test splits from `dir`. The number of classes is taken over both
/// splits, so that they agree.
pub fn load(dir: &Path) -> Result<DataDir> {
    let mut paths = Vec::new();
    for name in NAMES {
        paths.push(find(dir, name).ok_or_else(|| {
            Error::Data(format!(
                "{}: incomplete IDX dataset, {name}[.gz] is missing",
                dir.display()
            ))
        })?);
    }
    let mut train = load_split(&paths[0], &paths[1])?;
    let mut test = load_split(&paths[2], &paths[3])?;
    let max_label = train.labels.iter().chain(&test.labels).max().copied();
    let num_classes = max_label.map_or(0, |m| m as usize + 1);
    train.num_classes = num_classes;
    test.num_classes = num_classes;
    Ok(DataDir {
        format: "idx".to_string(),
        train,
        test,
        class_names: Vec::new(),
        skipped: Vec::new(),
    })
}

/// The raw file if present, else the gzipped one.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    [raw, gz].into_iter().find(|p| p.is_file())
}

/// Loads one split from an image file and a label file.
fn load_split(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
    let read = |p: &Path| unpack(p, read_file(p, MAX_BYTES, "an IDX file")?);
    let (images, n, h, w) = parse_images(images_path, read(images_path)?)?;
    let labels = parse_labels(labels_path, read(labels_path)?)?;
    if labels.len() != n {
        return Err(Error::Data(format!(
            "{}: {} labels but {} has {} images",
            labels_path.display(),
            labels.len(),
            images_path.display(),
            n
        )));
    }
    Ok(Dataset {
        images,
        labels,
        n,
        h,
        w,
        c: 1,
        ..Dataset::default()
    })
}

/// The bytes of an IDX file as read from `path`: decompressed if its name ends in `.gz`,
/// never more than MAX_BYTES.
pub fn unpack(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if path.extension().is_none_or(|e| e != "gz") {
        return Ok(raw);
    }
    let mut bytes = Vec::new();
    // Read at most one byte past the cap, so that exceeding it is detectable.
    GzDecoder::new(&raw[..])
        .take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Data(format!("{}: corrupt gzip data ({e})", path.display())))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(Error::Data(format!(
            "{}: larger than {} MiB, not an IDX file of a supported dataset",
            path.display(),
            MAX_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// Checks the magic number and returns the big-endian dimensions that follow it (as many as
/// the magic's last byte says).
fn header(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<Vec<usize>> {
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    if bytes.len() < 4 {
        return Err(Error::Data(format!(
            "{}: truncated, {} bytes is too short for an IDX header",
            path.display(),
            bytes.len()
        )));
    }
    if word(0) != magic {
        return Err(Error::Data(format!(
            "{}: not an IDX {what} file (magic 0x{:08x}, expected 0x{magic:08x})",
            path.display(),
            word(0)
        )));
    }
    let rank = (magic & 0xff) as usize;
    if bytes.len() < 4 + 4 * rank {
        return Err(Error::Data(format!(
            "{}: truncated, {} bytes is too short for an IDX header",
            path.display(),
            bytes.len()
        )));
    }
    Ok((1..=rank).map(|i| word(i) as usize).collect())
}

/// Checks that the data after the header holds exactly the product of `dims` bytes (computed
/// without overflow, so a corrupt header is caught before anything is allocated from it) and
/// drops the header in place.
fn body(path: &Path, mut bytes: Vec<u8>, dims: &[usize]) -> Result<Vec<u8>> {
    let header_len = 4 + 4 * dims.len();
    let have = bytes.len() - header_len;
    let need = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let shape = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    if need != Some(have) {
        let need = need.map_or("more than usize::MAX".to_string(), |n| n.to_string());
        return Err(Error::Data(format!(
            "{}: header claims {} = {need} bytes of data but the file has {have} (truncated or corrupt)",
            path.display(),
            shape.join("x"),
        )));
    }
    if have == 0 {
        return Err(Error::Data(format!(
            "{}: empty, header shape is {}",
            path.display(),
            shape.join("x")
        )));
    }
    bytes.drain(..header_len);
    Ok(bytes)
}

/// Parses an IDX image file: returns (pixels, n, h, w).
pub fn parse_images(path: &Path, bytes: Vec<u8>) -> Result<(Vec<u8>, usize, usize, usize)> {
    let dims = header(path, &bytes, IMAGES_MAGIC, "image")?;
    let pixels = body(path, bytes, &dims)?;
    Ok((pixels, dims[0], dims[1], dims[2]))
}

/// Parses an IDX label file.
pub fn parse_labels(path: &Path, bytes: Vec<u8>) -> Result<Vec<u32>> {
    let dims = header(path, &bytes, LABELS_MAGIC, "label")?;
    Ok(body(path, bytes, &dims)?
        .into_iter()
        .map(u32::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("simclr-idx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn err_of<T>(r: Result<T>) -> String {
        let msg = r.err().expect("expected an error").to_string();
        assert!(!msg.contains('\n'), "multi-line error: {msg}");
        msg
    }

    #[test]
    fn parses_valid_files() {
        let p = Path::new("x");
        let bytes = idx(
            IMAGES_MAGIC,
            &[2, 2, 3],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        );
        let (px, n, h, w) = parse_images(p, bytes).unwrap();
        assert_eq!((n, h, w), (2, 2, 3));
        assert_eq!(px, (0..12).collect::<Vec<u8>>());
        let labels = parse_labels(p, idx(LABELS_MAGIC, &[3], &[7, 0, 255])).unwrap();
        assert_eq!(labels, vec![7, 0, 255]);
    }

    #[test]
    fn rejects_bad_headers() {
        let p = Path::new("f.idx");
        let msg = err_of(parse_images(p, idx(LABELS_MAGIC, &[1], &[0])));
        assert!(
            msg.starts_with("f.idx: not an IDX image file (magic 0x00000801"),
            "{msg}"
        );
        assert!(err_of(parse_labels(p, vec![0, 0])).contains("truncated"));
        assert!(err_of(parse_images(p, idx(IMAGES_MAGIC, &[1, 2], &[]))).contains("truncated"));
        // Dims claiming more data than present (and a product that overflows on 32 bits).
        let big = idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[0; 10]);
        let msg = err_of(parse_images(p, big));
        assert!(
            msg.contains("header claims") && msg.contains("has 10"),
            "{msg}"
        );
        let short = idx(IMAGES_MAGIC, &[2, 2, 2], &[0; 7]);
        assert!(err_of(parse_images(p, short)).contains("= 8 bytes of data but the file has 7"));
        assert!(err_of(parse_labels(p, idx(LABELS_MAGIC, &[0], &[]))).contains("empty"));
    }

    #[test]
    fn loads_directory_and_reports_file_problems() {
        let dir = temp_dir("ok");
        let images = idx(IMAGES_MAGIC, &[3, 2, 2], &[9; 12]);
        let labels = idx(LABELS_MAGIC, &[3], &[0, 4, 1]);
        std::fs::write(dir.join(TRAIN_IMAGES), &images).unwrap();
        std::fs::write(dir.join(format!("{TRAIN_LABELS}.gz")), gzip(&labels)).unwrap();
        let msg = err_of(load(&dir));
        assert!(
            msg.contains("t10k-images-idx3-ubyte[.gz] is missing"),
            "{msg}"
        );
        std::fs::write(dir.join(format!("{TEST_IMAGES}.gz")), gzip(&images)).unwrap();
        std::fs::write(dir.join(TEST_LABELS), &labels).unwrap();
        let DataDir { train, test, .. } = load(&dir).unwrap();
        assert_eq!(
            (train.n, train.h, train.w, train.c, train.num_classes),
            (3, 2, 2, 1, 5)
        );
        assert_eq!(test.labels, vec![0, 4, 1]);

        // Label count that does not match the images.
        std::fs::write(dir.join(TEST_LABELS), idx(LABELS_MAGIC, &[2], &[0, 1])).unwrap();
        let msg = err_of(load(&dir));
        assert!(
            msg.contains("2 labels but") && msg.contains("has 3 images"),
            "{msg}"
        );

        // Corrupt and truncated gzip streams.
        let gz_path = dir.join(format!("{TEST_IMAGES}.gz"));
        let mut gz = gzip(&images);
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        gz[mid + 1] ^= 0xff;
        std::fs::write(&gz_path, &gz).unwrap();
        let read = |p: &Path| unpack(p, std::fs::read(p).unwrap());
        let msg = err_of(read(&gz_path));
        assert!(
            msg.contains("t10k-images-idx3-ubyte.gz: corrupt gzip data"),
            "{msg}"
        );
        let gz = gzip(&images);
        std::fs::write(&gz_path, &gz[..gz.len() - 10]).unwrap();
        assert!(err_of(read(&gz_path)).contains("corrupt gzip data"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_directory_is_not_idx() {
        let dir = temp_dir("empty");
        assert!(!found(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
