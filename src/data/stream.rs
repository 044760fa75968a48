//! Image folders too large to hold decoded (ImageNet: 1.28M images, ~190 GB at 224 px) are
//! streamed: the listing is all that is kept, and the loader decodes each batch's files as it
//! builds the batch, on its pool of workers (`loader`), so memory is bounded by the prefetch
//! depth whatever the dataset's size. A file decodes exactly as the in-memory path decodes it
//! (`folder::decode`), so a streamed folder gives the same batches.
//!
//! A file that cannot be read or decoded never stops an epoch: it is reported once with its
//! path and why, and the image after it in the dataset that decodes takes its place (the same
//! one every time: batches stay reproducible and resumable). Past `BAD_LIMIT` of the dataset
//! the loader stops with an error: a dataset that bad is more likely a wrong path or format.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::folder;
use crate::error::{Error, Result};

/// The fraction of a dataset's files that may be bad before the loader gives up (at least 10
/// files).
const BAD_LIMIT: f64 = 0.01;

/// `--stream auto` streams an image folder whose decoded images would take more than this.
pub const AUTO_ABOVE_BYTES: usize = 4 << 30;

/// Where a streamed dataset's encoded images are.
#[derive(Debug)]
pub enum Source {
    /// A file each (an image folder), named by `Streamed::names`.
    Files,
    /// Spans of packed shards (`shards`): (shard, offset, length) of each image's bytes.
    Shards(Vec<(Arc<Shard>, u64, u64)>),
}

/// A packed shard, opened by its first read and kept open by the readers that share it: one
/// open per shard rather than one per image (an open is a round trip on a network filesystem).
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    file: Mutex<Option<Arc<File>>>,
}

impl Shard {
    pub fn new(path: PathBuf) -> Shard {
        Shard {
            path,
            file: Mutex::new(None),
        }
    }

    /// `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = {
            let mut file = self.file.lock().unwrap();
            if file.is_none() {
                *file = Some(Arc::new(File::open(&self.path)?));
            }
            file.clone().unwrap()
        };
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }
}

/// A streamed dataset's images: each one's encoded bytes are read and decoded on demand.
#[derive(Debug)]
pub struct Streamed {
    pub source: Source,
    /// Each image's name in messages: its file (a folder), or its shard and member.
    pub names: Vec<PathBuf>,
    /// Side of the decoded square images.
    pub size: usize,
    /// The loader's decode workers (shared by a dataset's splits).
    pub workers: Arc<rayon::ThreadPool>,
    /// The bad files found so far: index → why.
    bad: Mutex<BTreeMap<usize, String>>,
}

/// A pool of `n` decode workers (0: all cores but one, at least one).
pub fn workers(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let n = if n == 0 {
        cores.saturating_sub(1).max(1)
    } else {
        n
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("decode-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Config(format!("--workers {n}: {e}")))
}

impl Streamed {
    pub fn new(
        source: Source,
        names: Vec<PathBuf>,
        size: usize,
        workers: Arc<rayon::ThreadPool>,
    ) -> Streamed {
        Streamed {
            source,
            names,
            size,
            workers,
            bad: Mutex::new(BTreeMap::new()),
        }
    }

    /// Image `i` decoded to size × size × 3, or why it cannot be.
    pub fn decode(&self, i: usize) -> Result<Vec<u8>> {
        let name = &self.names[i];
        self.bytes(i)
            .and_then(|bytes| folder::decode(name, &bytes, self.size))
    }

    /// Image `i`'s encoded bytes.
    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        match &self.source {
            Source::Files => folder::read_image(&self.names[i]),
            Source::Shards(at) => {
                let (shard, offset, len) = &at[i];
                (shard.read(*offset, *len)).map_err(|e| Error::io(&self.names[i], e))
            }
        }
    }

    /// Image `i`, or when it is bad the first image after it (cyclically) that decodes: (the
    /// index used, its pixels). A bad file is reported the first time it is met. Fails when
    /// more than `BAD_LIMIT` of the files are bad.
    pub fn image_or_next(&self, i: usize) -> Result<(usize, Vec<u8>)> {
        let n = self.names.len();
        for k in (i..n).chain(0..i) {
            if self.bad.lock().unwrap().contains_key(&k) {
                continue;
            }
            match self.decode(k) {
                Ok(pixels) => return Ok((k, pixels)),
                Err(e) => self.note_bad(k, e.to_string())?,
            }
        }
        Err(Error::Data("none of the images could be decoded".into()))
    }

    fn note_bad(&self, i: usize, why: String) -> Result<()> {
        let mut bad = self.bad.lock().unwrap();
        if bad.insert(i, why.clone()).is_none() {
            eprintln!("warning: skipping {why}");
        }
        let limit = (BAD_LIMIT * self.names.len() as f64).max(10.0);
        if bad.len() as f64 > limit {
            return Err(Error::Data(format!(
                "{} of {} image files could not be decoded (more than {}%): the first is {}",
                bad.len(),
                self.names.len(),
                BAD_LIMIT * 100.0,
                bad.values().next().unwrap()
            )));
        }
        Ok(())
    }

    /// The bad files found so far, with why.
    pub fn bad(&self) -> Vec<(PathBuf, String)> {
        let bad = self.bad.lock().unwrap();
        bad.iter()
            .map(|(&i, why)| (self.names[i].clone(), why.clone()))
            .collect()
    }
}
