//! `simclr bench-loader`: writes a synthetic ImageNet-like folder when --data does not exist,
//! streams one epoch of it and prints one line with its figures; on an existing folder it only
//! streams. Bad input ends in one line on stderr. No timing is checked, only that each figure
//! is there.

mod common;

use common::Tmp;
use std::path::Path;
use std::process::{Command, Output};

fn simclr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// Runs `simclr bench-loader` with `args`, which must succeed; returns its stdout lines.
fn bench(args: &[&str]) -> Vec<String> {
    let out = simclr(&[&["bench-loader"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The number just before `unit` in `line` (the figures are "<number> <unit>").
fn figure(line: &str, unit: &str) -> f64 {
    let at = line
        .find(unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {line}"));
    let number = line[..at].trim_end().rsplit(' ').next().unwrap();
    number
        .parse()
        .unwrap_or_else(|_| panic!("{number:?} before {unit:?}"))
}

/// The measured line: every figure present, positive and finite.
fn check_line(line: &str, head: &str) {
    assert!(line.starts_with(head), "{line}");
    for unit in [
        "images/s,",
        "images/s per worker",
        "images per CPU-second",
        "MB/s read",
        "MiB, ",
    ] {
        let v = figure(line, unit);
        assert!(v.is_finite() && v > 0.0, "{unit}: {v} in {line}");
    }
    let cpu = line.rsplit("; ").next().unwrap();
    assert!(
        !cpu.is_empty() && !cpu.contains("images"),
        "processor: {line}"
    );
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for class in std::fs::read_dir(dir.join("train")).unwrap() {
        for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
            found.push(f.unwrap().path());
        }
    }
    found
}

#[test]
fn writes_a_synthetic_folder_then_streams_it() {
    let t = Tmp::new("bench-loader");
    let dir = t.0.join("imagenet-like");
    let data = dir.to_str().unwrap();
    let small = ["--image-size", "32", "--batch-size", "8", "--workers", "2"];
    let lines = bench(&[&["--data", data, "--images", "40"], &small[..]].concat());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("wrote 40 synthetic JPEGs (quality 90"),
        "{lines:?}"
    );
    let head =
        "bench-loader: 40 images at 32 px, two views augmented on the cpu, 2 workers, batch 8:";
    check_line(&lines[1], head);
    // 40 JPEGs in 10 class folders, of ImageNet-like sizes, and nothing else left behind.
    let written = files(&dir);
    assert_eq!(written.len(), 40);
    for path in &written {
        let (w, h) = image::image_dimensions(path).unwrap();
        assert!(
            (240..=640).contains(&w.min(h)) && w.max(h) <= 640,
            "{w}x{h}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&t.0).unwrap().count(),
        1,
        "a partial folder left"
    );
    // An existing folder is only streamed (all of it when --images asks for more).
    let lines = bench(&[&["--data", data, "--augment-on", "device"], &small[..]].concat());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let head = "bench-loader: 40 images at 32 px, u8 images + view parameters";
    check_line(&lines[0], head);
    assert_eq!(files(&dir).len(), 40);
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let t = Tmp::new("bench-loader-bad");
    let missing = t.0.join("new");
    let missing = missing.to_str().unwrap();
    let file = t.write("a-file", "not a folder");
    for (args, needle) in [
        (
            vec!["--data", missing, "--augment-on", "gpu"],
            "--augment-on gpu",
        ),
        (vec!["--data", missing, "--images", "0"], "--images 0"),
        (
            vec!["--data", missing, "--batch-size", "0"],
            "--batch-size 0",
        ),
        (
            vec!["--data", missing, "--image-size", "4"],
            "--image-size 4",
        ),
        (vec!["--data", file.to_str().unwrap()], "not a directory"),
        (vec!["--images", "3"], "--data"),
    ] {
        let out = simclr(&[&["bench-loader"], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        assert!(!out.status.success(), "{args:?}: exit 0");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(&t.0).unwrap().count(), 1, "only a-file");
}
