//! Packed shards: an image folder written as tar files in the WebDataset convention, so that a
//! network filesystem serves a few large files instead of a million small ones:
//!
//! ```text
//! DIR/classes.txt              the class names, one a line, in label order
//! DIR/train-000000.tar, ...    the training images (labelled, then unlabelled)
//! DIR/test-000000.tar, ...     the test split, when the folder has one
//! ```
//!
//! Each image is three members with one key: `NNNNNN.jpg` (or `.png`: the file's bytes as they
//! were), `NNNNNN.cls` (its label, in decimal; none for an unlabelled image) and
//! `NNNNNN.path` (its path in the folder, which `--labels-file` matches). WebDataset readers
//! see samples with the fields jpg, cls and path. `simclr pack` writes them (`pack`); the
//! loader reads them streamed, each image's bytes read at their offset in its shard.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::folder::{self, Listing};
use super::stream::{self, Shard, Source, Streamed};
use super::{DataDir, Dataset, Format, UNLABELLED};
use crate::error::{Error, Result};

/// The first shard of the training split: its presence makes a directory packed shards.
const FIRST: &str = "train-000000.tar";
const CLASSES: &str = "classes.txt";

/// Whether `dir` holds packed shards.
pub fn found(dir: &Path) -> bool {
    dir.join(FIRST).is_file()
}

/// What `pack` wrote.
pub struct Packed {
    pub images: usize,
    pub shards: usize,
    pub bytes: u64,
}

/// Writes the image folder `src` as shards of about `shard_bytes` into `out` (created; each
/// shard written under a temporary name and renamed when complete).
pub fn pack(src: &Path, out: &Path, shard_bytes: u64) -> Result<Packed> {
    let layout = folder::layout(src, true)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut packed = Packed {
        images: 0,
        shards: 0,
        bytes: 0,
    };
    let splits = [("train", Some(layout.train)), ("test", layout.test)];
    for (split, listing) in splits {
        let Some(listing) = listing else { continue };
        let base = match split {
            "train" if src.join("train").is_dir() => src.join("train"),
            "test" => folder::test_dir(src).unwrap_or_else(|| src.to_path_buf()),
            _ => src.to_path_buf(),
        };
        write_split(out, split, &listing, src, &base, shard_bytes, &mut packed)?;
    }
    let names = layout.class_names.join("\n") + "\n";
    crate::train::checkpoint::write_atomic(&out.join(CLASSES), names.as_bytes())?;
    Ok(packed)
}

/// One split's shards. A member's path is relative to the split's folder (`base`), or to
/// `root` for images outside it (the unlabelled folder).
fn write_split(
    out: &Path,
    split: &str,
    listing: &Listing,
    root: &Path,
    base: &Path,
    shard_bytes: u64,
    packed: &mut Packed,
) -> Result<()> {
    let mut shard: Option<(PathBuf, tar::Builder<BufWriter<File>>, u64)> = None;
    let mut count = 0;
    for (key, (path, &label)) in listing.paths.iter().zip(&listing.labels).enumerate() {
        if shard.as_ref().is_none_or(|s| s.2 >= shard_bytes) {
            if let Some(done) = shard.take() {
                packed.bytes += done.2;
                finish(done)?;
            }
            let name = out.join(format!("{split}-{count:06}.tar"));
            let tmp = name.with_extension("tar.tmp");
            let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            shard = Some((name, tar::Builder::new(BufWriter::new(file)), 0));
            count += 1;
        }
        let (name, builder, written) = shard.as_mut().unwrap();
        let bytes = folder::read_image(path)?;
        let ext = match path.extension().map(|e| e.to_string_lossy().to_lowercase()) {
            Some(e) if e == "png" => "png",
            _ => "jpg",
        };
        let relative = path
            .strip_prefix(base)
            .or_else(|_| path.strip_prefix(root))
            .unwrap_or(path);
        let mut members = vec![(format!("{key:06}.{ext}"), bytes)];
        if label != UNLABELLED {
            members.push((format!("{key:06}.cls"), label.to_string().into_bytes()));
        }
        let relative = relative.to_string_lossy().into_owned().into_bytes();
        members.push((format!("{key:06}.path"), relative));
        for (member, data) in members {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, &member, &data[..])
                .map_err(|e| Error::io(&*name, e))?;
            *written += 512 + (data.len() as u64).next_multiple_of(512);
        }
        packed.images += 1;
    }
    if let Some(done) = shard {
        packed.bytes += done.2;
        finish(done)?;
    }
    packed.shards += count;
    Ok(())
}

fn finish((name, builder, _): (PathBuf, tar::Builder<BufWriter<File>>, u64)) -> Result<()> {
    let tmp = name.with_extension("tar.tmp");
    let file = builder
        .into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &name).map_err(|e| Error::io(&name, e))
}

/// The shards of `dir`, streamed: only their headers are read here (each image's offset and
/// length); images are decoded to `size` on `workers` decode workers as batches need them.
pub fn load(dir: &Path, size: usize, with_unlabelled: bool, workers: usize) -> Result<DataDir> {
    let classes =
        std::fs::read_to_string(dir.join(CLASSES)).map_err(|e| Error::io(dir.join(CLASSES), e))?;
    let class_names: Vec<String> = classes.lines().map(str::to_string).collect();
    let pool = stream::workers(workers)?;
    let mut splits = Vec::new();
    let mut shards = 0;
    for split in ["train", "test"] {
        let mut images = Images::default();
        for k in 0.. {
            let path = dir.join(format!("{split}-{k:06}.tar"));
            if !path.is_file() {
                break;
            }
            images.scan(&path)?;
            shards += 1;
        }
        if split == "train" && !with_unlabelled {
            images.keep_labelled();
        }
        splits.push(Dataset {
            n: images.labels.len(),
            labels: images.labels,
            stream: Some(Arc::new(Streamed::new(
                Source::Shards(images.at),
                images.names,
                size,
                pool.clone(),
            ))),
            paths: images.paths,
            h: size,
            w: size,
            c: 3,
            num_classes: class_names.len(),
            ..Dataset::default()
        });
    }
    room_for(shards).map_err(|why| Error::Data(format!("{}: {why}", dir.display())))?;
    let test = splits.pop().unwrap();
    let train = splits.pop().unwrap();
    eprintln!(
        "streaming {} images from the shards of {}: decoded batch by batch on {} workers",
        train.n + test.n,
        dir.display(),
        pool.current_num_threads()
    );
    Ok(DataDir {
        format: Format::Shards.to_string(),
        train,
        test,
        class_names,
        skipped: Vec::new(),
    })
}

/// Keeps the items of `v` whose flag in `keep` is set.
fn retain_where<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut k = keep.iter();
    v.retain(|_| *k.next().unwrap());
}

/// Makes room for `shards` more open files (a shard stays open once read): raises the soft
/// limit on open files towards the hard one when needed, or says why it cannot.
fn room_for(shards: usize) -> std::result::Result<(), String> {
    // The process's other files: its run directory, sockets, the GPU driver's and NCCL's.
    let need = shards as u64 + 256;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= need {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: need,
        ..limit
    };
    if need <= limit.rlim_max && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(());
    }
    Err(format!(
        "{shards} shards need {need} open files, more than the limit of {} (pack with a larger \
         --shard-mb, or raise `ulimit -n`)",
        limit.rlim_max
    ))
}

/// A split's images as the shards' headers list them.
#[derive(Default)]
struct Images {
    /// (shard, offset, length) of each image's bytes.
    at: Vec<(Arc<Shard>, u64, u64)>,
    labels: Vec<u32>,
    /// Each image's path in the packed folder (`.path`).
    paths: Vec<PathBuf>,
    /// Each image's name in messages: its shard and member.
    names: Vec<PathBuf>,
}

impl Images {
    /// Adds the images of one shard: its members in order, grouped by key.
    fn scan(&mut self, shard: &Path) -> Result<()> {
        let bad = |why: String| Error::Data(format!("{}: {why}", shard.display()));
        let file = File::open(shard).map_err(|e| Error::io(shard, e))?;
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| bad(e.to_string()))?;
        let shared = Arc::new(Shard::new(shard.to_path_buf()));
        let mut key = String::new();
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let name = entry
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let (stem, field) = name.split_once('.').unwrap_or((&name, ""));
            if stem != key {
                key = stem.to_string();
                self.at.push((shared.clone(), 0, 0));
                self.labels.push(UNLABELLED);
                self.paths.push(PathBuf::new());
                self.names.push(shard.join(&name));
            }
            let last = self.at.len() - 1;
            match field {
                "jpg" | "jpeg" | "png" => {
                    self.at[last] = (shared.clone(), entry.raw_file_position(), entry.size());
                    self.names[last] = shard.join(&name);
                }
                "cls" | "path" => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut entry, &mut text)
                        .map_err(|e| bad(format!("{name}: {e}")))?;
                    match field {
                        "cls" => {
                            self.labels[last] = text.trim().parse().map_err(|_| {
                                bad(format!("{name}: a label, not {:?}", text.trim()))
                            })?
                        }
                        _ => self.paths[last] = PathBuf::from(text),
                    }
                }
                _ => {} // other fields (WebDataset allows any) are not ours
            }
        }
        Ok(())
    }

    /// Leaves the unlabelled images out (the stages that use labelled ones only).
    fn keep_labelled(&mut self) {
        let keep: Vec<bool> = self.labels.iter().map(|&l| l != UNLABELLED).collect();
        retain_where(&mut self.at, &keep);
        retain_where(&mut self.paths, &keep);
        retain_where(&mut self.names, &keep);
        retain_where(&mut self.labels, &keep);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn too_many_shards_for_the_open_file_limit_are_refused() {
        assert_eq!(super::room_for(3), Ok(()));
        let err = super::room_for(1 << 40).unwrap_err();
        assert!(err.contains("--shard-mb"), "{err}");
    }
}
