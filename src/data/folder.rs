//! Reader for folders of JPEG and PNG images, in torchvision's ImageFolder layout:
//!
//! ```text
//! DIR/train/<class>/*.jpg|jpeg|png    one sub-folder per class (sorted names = classes 0..)
//! DIR/val/<class>/... or DIR/test/... the test split, with class folders named as train's
//! DIR/unlabelled/*.jpg (or unlabeled/) optional, extra images for pretraining/distillation
//! ```
//!
//! or, without train/, DIR itself as the training set: class folders (no test split), or
//! images only (all unlabelled, for pretraining). Only the files directly inside a class
//! folder are images; other extensions are ignored, hidden entries too.
//!
//! Images are decoded by zune-jpeg (JPEG) or the `image` crate (PNG; the file's content
//! decides the format, not its name), converted to RGB, and stored as the central square of
//! the image resized bicubically to size × size (aspect ratio kept, the longer side's edges
//! cut; the evaluation crop then takes its central 87.5% as the official code does). A file that cannot be decoded is
//! reported on stderr with its path and left out, and the count is given at the end.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{ImageReader, Limits};
use rayon::prelude::*;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::resize::{resize_u8, Filter, Rect};
use super::{
    histogram, read_file, reserve, stream, DataDir, DataInfo, Dataset, Format, SplitInfo,
    UNLABELLED,
};
use crate::error::{Error, Result};

/// Side of the stored images when `--image-size` is not given (ImageNet's).
pub const DEFAULT_SIZE: usize = 224;
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
const TEST_FOLDERS: [&str; 2] = ["val", "test"];
const UNLABELLED_FOLDERS: [&str; 2] = ["unlabelled", "unlabeled"];
/// Files larger than this are not read (ImageNet's largest JPEG is 15 MB).
const MAX_FILE_BYTES: u64 = 256 << 20;
/// Images with a larger side are refused before their pixels are allocated.
const MAX_SIDE: u32 = 16384;

/// The image files of one split, with their labels (UNLABELLED for unlabelled images).
#[derive(Default)]
pub(crate) struct Listing {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<u32>,
}

/// A dataset folder, listed but not decoded.
pub(crate) struct Layout {
    pub class_names: Vec<String>,
    /// The labelled training images, then the unlabelled ones.
    pub train: Listing,
    pub test: Option<Listing>,
}

/// Whether `dir` looks like an image folder: it has a train/ folder, or images in it or in
/// its sub-folders.
pub fn found(dir: &Path) -> bool {
    dir.join("train").is_dir()
        || has_images(dir)
        || entries(dir).is_ok_and(|e| e.iter().any(|p| p.is_dir() && has_images(p)))
}

fn has_images(dir: &Path) -> bool {
    images_in(dir).is_ok_and(|v| !v.is_empty())
}

/// The visible entries of a directory, sorted.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
}

/// The image files directly in `dir`, sorted.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(entries(dir)?.into_iter().filter(|p| is_image(p)).collect())
}

fn first_dir(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_dir())
}

/// Lists a split folder. With `classes` (a test split), its class folders must be among
/// them; without, the class folders define the classes, and a folder of images only is
/// unlabelled. Returns the class names and the listing.
fn list_split(dir: &Path, classes: Option<&[String]>) -> Result<(Vec<String>, Listing)> {
    let all = entries(dir)?;
    let folders: Vec<&PathBuf> = all.iter().filter(|p| p.is_dir()).collect();
    let loose: Vec<&PathBuf> = all.iter().filter(|p| is_image(p)).collect();
    if folders.is_empty() {
        if classes.is_some() {
            return Err(Error::Data(format!(
                "{}: no class folders; the test split needs one sub-folder per class, as train/ has",
                dir.display()
            )));
        }
        let paths: Vec<PathBuf> = loose.into_iter().cloned().collect();
        let labels = vec![UNLABELLED; paths.len()];
        return Ok((Vec::new(), Listing { paths, labels }));
    }
    if let Some(image) = loose.first() {
        return Err(Error::Data(format!(
            "{}: images ({}) beside class folders; move them into a class folder, or into an \
             unlabelled/ folder next to train/",
            dir.display(),
            image.display()
        )));
    }
    let names: Vec<String> = folders
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut listing = Listing::default();
    for (k, (folder, name)) in folders.iter().zip(&names).enumerate() {
        let label = match classes {
            None => k,
            Some(known) => known.iter().position(|k| k == name).ok_or_else(|| {
                Error::Data(format!(
                    "{}: class {name} is not one of the training set's classes",
                    folder.display()
                ))
            })?,
        };
        let paths = images_in(folder)?;
        listing
            .labels
            .extend(std::iter::repeat_n(label as u32, paths.len()));
        listing.paths.extend(paths);
    }
    Ok((classes.map_or(names, <[String]>::to_vec), listing))
}

/// The test split's folder (val/ or test/), if there is one.
pub(crate) fn test_dir(dir: &Path) -> Option<PathBuf> {
    first_dir(dir, &TEST_FOLDERS)
}

pub(crate) fn layout(dir: &Path, with_unlabelled: bool) -> Result<Layout> {
    let train_dir = dir.join("train");
    let (class_names, train, test) = if train_dir.is_dir() {
        let (classes, mut train) = list_split(&train_dir, None)?;
        if let Some(extra) = first_dir(dir, &UNLABELLED_FOLDERS).filter(|_| with_unlabelled) {
            let paths = images_in(&extra)?;
            train
                .labels
                .extend(std::iter::repeat_n(UNLABELLED, paths.len()));
            train.paths.extend(paths);
        }
        let test = match first_dir(dir, &TEST_FOLDERS) {
            Some(t) if classes.is_empty() => {
                return Err(Error::Data(format!(
                    "{}: a test split, but {} has no class folders",
                    t.display(),
                    train_dir.display()
                )))
            }
            Some(t) => Some(list_split(&t, Some(&classes))?.1),
            None => None,
        };
        (classes, train, test)
    } else {
        let (classes, train) = list_split(dir, None)?;
        (classes, train, None)
    };
    if train.paths.is_empty() {
        return Err(Error::Data(format!(
            "{}: no JPEG or PNG training images found",
            dir.display()
        )));
    }
    Ok(Layout {
        class_names,
        train,
        test,
    })
}

/// Lists the folder and decodes its images up front, or (`stream`: Some(true), or None and
/// more than `stream::AUTO_ABOVE_BYTES` decoded) leaves them to be decoded batch by batch on
/// `workers` decode workers.
pub fn load(
    dir: &Path,
    size: usize,
    with_unlabelled: bool,
    (stream, workers): (Option<bool>, usize),
) -> Result<DataDir> {
    let layout = layout(dir, with_unlabelled)?;
    let num_classes = layout.class_names.len();
    let images = layout.train.paths.len() + layout.test.as_ref().map_or(0, |t| t.paths.len());
    if stream.unwrap_or(images * size * size * 3 > stream::AUTO_ABOVE_BYTES) {
        let pool = stream::workers(workers)?;
        let streamed = |listing: Listing| Dataset {
            n: listing.paths.len(),
            labels: listing.labels,
            stream: Some(Arc::new(stream::Streamed::new(
                stream::Source::Files,
                listing.paths.clone(),
                size,
                pool.clone(),
            ))),
            paths: listing.paths,
            h: size,
            w: size,
            c: 3,
            num_classes,
            ..Dataset::default()
        };
        eprintln!(
            "streaming {images} images of {}: decoded batch by batch on {} workers",
            dir.display(),
            pool.current_num_threads()
        );
        return Ok(DataDir {
            format: Format::Folder.to_string(),
            train: streamed(layout.train),
            test: streamed(layout.test.unwrap_or_default()),
            class_names: layout.class_names,
            skipped: Vec::new(),
        });
    }
    let mut skipped = Vec::new();
    let train = decode_all(dir, layout.train, size, num_classes, &mut skipped)?;
    if train.n == 0 {
        return Err(Error::Data(format!(
            "{}: none of the {} training images could be decoded",
            dir.display(),
            skipped.len()
        )));
    }
    let test = match layout.test {
        Some(listing) => decode_all(dir, listing, size, num_classes, &mut skipped)?,
        None => Dataset {
            h: size,
            w: size,
            c: 3,
            num_classes,
            ..Dataset::default()
        },
    };
    if !skipped.is_empty() {
        eprintln!(
            "warning: {}: skipped {} images that could not be decoded (listed above)",
            dir.display(),
            skipped.len()
        );
    }
    Ok(DataDir {
        format: Format::Folder.to_string(),
        train,
        test,
        class_names: layout.class_names,
        skipped,
    })
}

/// An image file's bytes (at most `MAX_FILE_BYTES`).
pub fn read_image(path: &Path) -> Result<Vec<u8>> {
    read_file(path, MAX_FILE_BYTES, "an image file")
}

/// Decodes every image of a listing in parallel (each into its place), then closes the gaps
/// the undecodable ones left; their paths go to `skipped`.
fn decode_all(
    dir: &Path,
    listing: Listing,
    size: usize,
    num_classes: usize,
    skipped: &mut Vec<PathBuf>,
) -> Result<Dataset> {
    let per = size * size * 3;
    let n = listing.paths.len();
    eprintln!(
        "decoding {n} images of {} to {size}x{size}x3 ({} MiB)",
        dir.display(),
        (n * per) >> 20
    );
    let mut images = Vec::new();
    reserve(&mut images, n * per, dir)?;
    images.resize(n * per, 0);
    let ok: Vec<bool> = images
        .par_chunks_mut(per)
        .zip(&listing.paths)
        .map(
            |(out, path)| match read_image(path).and_then(|b| decode(path, &b, size)) {
                Ok(pixels) => {
                    out.copy_from_slice(&pixels);
                    true
                }
                Err(e) => {
                    eprintln!("warning: skipping {e}");
                    false
                }
            },
        )
        .collect();
    let mut ds = Dataset {
        h: size,
        w: size,
        c: 3,
        num_classes,
        ..Dataset::default()
    };
    for (i, (path, label)) in listing.paths.into_iter().zip(listing.labels).enumerate() {
        if !ok[i] {
            skipped.push(path);
            continue;
        }
        images.copy_within(i * per..(i + 1) * per, ds.n * per);
        ds.paths.push(path);
        ds.labels.push(label);
        ds.n += 1;
    }
    images.truncate(ds.n * per);
    ds.images = images;
    Ok(ds)
}

/// Decodes one JPEG or PNG file's bytes into a size × size × 3 u8 image: the central square,
/// resized bicubically. `path` only names the file in errors.
pub fn decode(path: &Path, bytes: &[u8], size: usize) -> Result<Vec<u8>> {
    let bad = |why: String| {
        Error::Data(format!(
            "{}: not a readable JPEG or PNG image ({})",
            path.display(),
            why.replace('\n', " ")
        ))
    };
    let (pixels, w, h) = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes).map_err(bad)?
    } else {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| bad(e.to_string()))?.into_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        (img.into_raw(), w, h)
    };
    if w == 0 || h == 0 {
        return Err(bad("no pixels".into()));
    }
    let rect = Rect::center_square(h, w, 1.0);
    Ok(resize_u8(&pixels, w, 3, rect, size, Filter::Bicubic))
}

/// A JPEG's RGB pixels and width and height, from zune-jpeg: the decoder the `image` crate
/// calls too, asked directly for RGB (grey replicated, CMYK converted, as `image`'s
/// `into_rgb8` does), without `image`'s copy of the file and second header parse (about 20%
/// faster on ImageNet-like files).
fn decode_jpeg(bytes: &[u8]) -> std::result::Result<(Vec<u8>, usize, usize), String> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(false)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions().ok_or("no frame header")?;
    if pixels.len() != w * h * 3 {
        return Err(format!("{} bytes decoded for {w}x{h} RGB", pixels.len()));
    }
    Ok((pixels, w, h))
}

/// `data::describe` for an image folder: lists the splits and reads each file's header.
pub fn describe(dir: &Path, size: usize, with_unlabelled: bool) -> Result<DataInfo> {
    let layout = layout(dir, with_unlabelled)?;
    let num_classes = layout.class_names.len();
    let mut unreadable = Vec::new();
    let mut splits = Vec::new();
    let train_labelled = layout
        .train
        .labels
        .iter()
        .filter(|&&l| l != UNLABELLED)
        .count();
    let (labelled, extra) = split_at(layout.train, train_labelled);
    let named = [
        ("train", Some(labelled)),
        ("unlabelled", Some(extra)),
        ("test", layout.test),
    ];
    for (name, listing) in named {
        let Some(listing) = listing else { continue };
        if listing.paths.is_empty() && name != "train" {
            continue;
        }
        let dims: Vec<Option<[usize; 2]>> = listing
            .paths
            .par_iter()
            .map(|p| {
                let (w, h) = ImageReader::open(p)
                    .ok()?
                    .with_guessed_format()
                    .ok()?
                    .into_dimensions()
                    .ok()?;
                Some([h as usize, w as usize])
            })
            .collect();
        let mut labels = Vec::new();
        let (mut min, mut max) = ([usize::MAX; 2], [0; 2]);
        for ((path, label), d) in listing.paths.into_iter().zip(listing.labels).zip(dims) {
            let Some(d) = d else {
                unreadable.push(path);
                continue;
            };
            labels.push(label);
            // Ordered by area, so that min and max are sizes that occur.
            if d[0] * d[1] < min[0] * min[1] || min[0] == usize::MAX {
                min = d;
            }
            if d[0] * d[1] > max[0] * max[1] {
                max = d;
            }
        }
        splits.push(SplitInfo {
            name: name.to_string(),
            images: labels.len(),
            height: size,
            width: size,
            channels: 3,
            histogram: if name == "unlabelled" {
                Vec::new()
            } else {
                histogram(&labels, num_classes)
            },
            file_sizes: (!labels.is_empty()).then_some([min, max]),
        });
    }
    Ok(DataInfo {
        path: dir.to_path_buf(),
        format: Format::Folder,
        num_classes,
        class_names: layout.class_names,
        splits,
        unreadable,
    })
}

/// The first `k` entries of a listing, and the rest.
fn split_at(mut listing: Listing, k: usize) -> (Listing, Listing) {
    let rest = Listing {
        paths: listing.paths.split_off(k),
        labels: listing.labels.split_off(k),
    };
    (listing, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `image`'s own decode, which `decode_jpeg` replaces, as RGB.
    fn by_image(bytes: &[u8]) -> (Vec<u8>, usize, usize) {
        let img = image::load_from_memory(bytes).unwrap().into_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        (img.into_raw(), w, h)
    }

    #[test]
    fn jpeg_decodes_as_image_does() {
        let mut rng = Rng::new(7);
        for case in 0..12 {
            let (w, h) = (1 + rng.below(70) as u32, 1 + rng.below(70) as u32);
            let grey = case % 3 == 0;
            let mut bytes = Cursor::new(Vec::new());
            let img = if grey {
                let px = (0..w * h).map(|_| rng.below(256) as u8).collect();
                image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, px).unwrap())
            } else {
                let px = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
                image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, px).unwrap())
            };
            img.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
            let bytes = bytes.into_inner();
            assert_eq!(
                decode_jpeg(&bytes).unwrap(),
                by_image(&bytes),
                "case {case}: {w}x{h}, grey {grey}"
            );
        }
        let err = decode_jpeg(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16]).unwrap_err();
        assert!(!err.is_empty());
    }
}
