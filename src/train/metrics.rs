//! Run bookkeeping: the output directory, metrics.jsonl, and progress bars.

use crate::error::{Error, Result};
use crate::train::checkpoint::write_atomic;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Creates (or, with `force`, reuses) an output directory; refuses to write into an
/// existing non-empty one otherwise, so that no earlier run is overwritten by accident.
pub fn prepare_out_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(Error::Config(format!(
                "--out {}: exists and is not a directory",
                dir.display()
            )));
        }
        let non_empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some();
        if non_empty && !force {
            return Err(Error::Config(format!(
                "--out {}: directory exists and is not empty (pass --force to write into it)",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// `runs/<UTC timestamp>`, the default output directory.
pub fn default_out_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from(format!(
        "runs/{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Appends one JSON object per line to `<dir>/metrics.jsonl`.
pub struct Metrics {
    /// None: records are dropped (a data-parallel rank other than 0).
    file: Option<File>,
    path: PathBuf,
}

impl Metrics {
    /// A new metrics.jsonl, or (`append`, a resumed run) the existing one continued after
    /// its last complete line (a run killed mid-write leaves half a line; the steps after the
    /// checkpoint are logged again, and readers keep the later record).
    pub fn open(dir: &Path, append: bool) -> Result<Metrics> {
        let path = dir.join("metrics.jsonl");
        if append {
            if let Ok(text) = std::fs::read(&path) {
                let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if complete < text.len() {
                    write_atomic(&path, &text[..complete])?;
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Metrics {
            file: Some(file),
            path,
        })
    }

    /// Metrics that go nowhere: the ranks other than 0 of a data-parallel run.
    pub fn discard() -> Metrics {
        Metrics {
            file: None,
            path: PathBuf::new(),
        }
    }

    pub fn log(&mut self, record: Value) -> Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        writeln!(file, "{record}").map_err(|e| Error::io(&self.path, e))
    }
}

/// A progress bar for `steps` steps of a stage (drawn only on a terminal).
pub fn progress(stage: &str, steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_string());
    bar
}
