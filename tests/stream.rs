//! Streamed image folders (`--stream on`): the loader decodes each batch's files itself, and
//! must give the batches of the in-memory path bit for bit; a resumed epoch's remaining
//! batches; and bad files (corrupt, truncated, empty, not an image) skipped, reported by path
//! and replaced, up to a limit past which the loader stops with one line.

mod common;

use common::Tmp;
use simclr::data::augment::{Augment, Normalize};
use simclr::data::loader::{Batch, Loader, Pixels, Views};
use simclr::data::{load, shards, subset, DataDir, LoadOptions};
use std::io::Cursor;
use std::sync::Arc;

/// A JPEG of `w`×`h` with smooth content that differs per seed.
fn jpeg(w: usize, h: usize, seed: usize) -> Vec<u8> {
    let px: Vec<u8> = (0..w * h * 3)
        .map(|i| {
            let (y, x, ch) = (i / 3 / w, i / 3 % w, i % 3);
            (30 + (y * 5 + x * 3 + ch * 40 + seed * 17) % 190) as u8
        })
        .collect();
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::from_raw(w as u32, h as u32, px)
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// A folder of 3 classes × `per_class` JPEGs of various sizes and aspect ratios.
fn folder(t: &Tmp, per_class: usize) {
    for class in 0..3 {
        for k in 0..per_class {
            let seed = class * 100 + k;
            let (w, h) = (20 + seed % 13, 16 + seed % 11);
            t.write(
                &format!("train/c{class}/c{class}_{k:03}.jpg"),
                jpeg(w, h, seed),
            );
        }
    }
}

fn open(t: &Tmp, stream: bool) -> DataDir {
    let opts = LoadOptions {
        image_size: Some(16),
        stream: Some(stream),
        workers: 2,
        ..LoadOptions::default()
    };
    load(&t.0, &opts).unwrap()
}

/// The batches of one epoch over `order`: two augmented views of each image.
fn epoch(d: &DataDir, order: Vec<usize>, raw: bool) -> Vec<Batch> {
    let norm = Normalize {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let views = Views::Two(Augment::simclr(16, 1.0));
    let ds = Arc::new(d.train.clone());
    let mut loader = Loader::new(ds, order, 5, true, views, norm, 16, 7, 1, 2, raw);
    let batches: Vec<Batch> = (&mut loader).collect();
    loader.check().unwrap();
    batches
}

fn pixels(b: &Batch) -> Vec<u8> {
    match &b.pixels {
        Pixels::Ready(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Pixels::Raw { images, .. } => images.clone(),
    }
}

fn same(a: &[Batch], b: &[Batch]) {
    assert_eq!(a.len(), b.len());
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        assert_eq!(a.indices, b.indices, "batch {i}: rows");
        assert_eq!(a.labels, b.labels, "batch {i}: labels");
        assert!(pixels(a) == pixels(b), "batch {i}: pixels differ");
    }
}

#[test]
fn streamed_batches_equal_the_in_memory_ones_and_a_resumed_epoch_continues_them() {
    let t = Tmp::new("stream-equal");
    folder(&t, 7);
    let (memory, streamed) = (open(&t, false), open(&t, true));
    assert!(memory.train.stream.is_none() && streamed.train.stream.is_some());
    assert!(streamed.train.images.is_empty(), "nothing decoded up front");
    assert_eq!(memory.train.labels, streamed.train.labels);
    let order: Vec<usize> = (0..21).rev().collect();
    for raw in [false, true] {
        let want = epoch(&memory, order.clone(), raw);
        let got = epoch(&streamed, order.clone(), raw);
        assert_eq!(want.len(), 4);
        same(&got, &want);
        // Resumed after 2 batches: the rest of the epoch, as it was.
        same(&epoch(&streamed, order[10..].to_vec(), raw), &want[2..]);
    }
    // The statistics of a streamed folder: from a decoded sample (here all of it, shuffled).
    let sample = streamed.train.statistics_sample().unwrap();
    let (got, want) = (
        Normalize::from_dataset(&sample),
        Normalize::from_dataset(&memory.train),
    );
    for (g, w) in got
        .mean
        .iter()
        .chain(&got.std)
        .zip(want.mean.iter().chain(&want.std))
    {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn bad_files_are_skipped_reported_and_replaced_by_the_next_image() {
    let t = Tmp::new("stream-bad");
    folder(&t, 4);
    let good = jpeg(20, 16, 1);
    t.write("train/c0/z900-empty.jpg", b"");
    t.write("train/c1/z900-truncated.jpg", &good[..good.len() / 3]);
    t.write("train/c2/z900-text.png", b"not an image at all");
    let d = open(&t, true);
    assert_eq!(d.train.n, 15, "listed, not decoded");
    let batches = epoch(&d, (0..15).collect(), false);
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b.rows == 10), "every batch full");
    // Each bad image's rows hold the next image instead: 4 (c0's empty file) → 5, 9 → 10;
    // 14, the last, wraps around to 0.
    let used: Vec<usize> = batches
        .iter()
        .flat_map(|b| b.indices[..5].to_vec())
        .collect();
    let want: Vec<usize> = (0..15)
        .map(|i| match i {
            4 => 5,
            9 => 10,
            14 => 0,
            i => i,
        })
        .collect();
    assert_eq!(used, want);
    let stream = d.train.stream.as_ref().unwrap();
    let bad: Vec<String> = stream
        .bad()
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        bad,
        ["z900-empty.jpg", "z900-truncated.jpg", "z900-text.png"]
    );
    assert!(stream
        .bad()
        .iter()
        .all(|(p, why)| why.contains(&*p.to_string_lossy())));
}

#[test]
fn too_many_bad_files_stop_the_loader_with_one_line() {
    let t = Tmp::new("stream-too-bad");
    folder(&t, 1);
    for k in 0..12 {
        t.write(&format!("train/c1/bad{k:02}.jpg"), b"garbage");
    }
    let d = open(&t, true);
    let ds = Arc::new(d.train.clone());
    let views = Views::One(Augment::simclr(16, 1.0));
    let norm = Normalize {
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    let mut loader = Loader::new(
        ds,
        (0..15).collect(),
        15,
        false,
        views,
        norm,
        16,
        1,
        0,
        1,
        false,
    );
    assert_eq!((&mut loader).count(), 0);
    let e = loader.check().unwrap_err().to_string();
    assert!(
        e.contains("of 15 image files could not be decoded (more than 1%)") && !e.contains('\n'),
        "{e}"
    );
}

/// `simclr pack` writes the folder as WebDataset shards that read back as the same dataset:
/// labels, file paths (which a labels file matches), and bit for bit the same batches.
#[test]
fn packed_shards_read_back_as_the_folder() {
    let t = Tmp::new("stream-pack");
    folder(&t, 7);
    t.write("unlabelled/u0.jpg", jpeg(24, 18, 900));
    t.write("unlabelled/u1.jpg", jpeg(18, 24, 901));
    let out = t.0.join("packed");
    // Shards of about 2 KB: several of them, an image's members never split across two.
    let packed = shards::pack(&t.0, &out, 2048).unwrap();
    assert_eq!(packed.images, 23);
    assert!(packed.shards > 3, "{} shards", packed.shards);
    let (folder, packed) = (
        open(&t, true),
        load(
            &out,
            &LoadOptions {
                image_size: Some(16),
                workers: 2,
                ..LoadOptions::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(packed.format, "shards");
    assert_eq!(packed.class_names, folder.class_names);
    assert_eq!(packed.train.labels, folder.train.labels);
    let relative: Vec<String> = folder
        .train
        .paths
        .iter()
        .map(|p| {
            let p = p.strip_prefix(&t.0).unwrap();
            let p = p.strip_prefix("train").unwrap_or(p);
            p.to_string_lossy().into_owned()
        })
        .collect();
    let stored: Vec<String> = packed
        .train
        .paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(stored, relative);
    let order: Vec<usize> = (0..23).rev().collect();
    same(
        &epoch(&packed, order.clone(), false),
        &epoch(&folder, order, false),
    );
    // A labels file names images of the shards as it names the folder's.
    t.write("labels.txt", "c1/c1_003.jpg\nc2_000.jpg\n");
    let file = t.0.join("labels.txt");
    let all: Vec<usize> = (0..23).collect();
    let chosen = subset::from_file(&file, &packed.train, &all).unwrap();
    assert_eq!(
        chosen,
        subset::from_file(&file, &folder.train, &all).unwrap()
    );
    assert_eq!(chosen.len(), 2);
    // The WebDataset convention: an image's fields share its key.
    let first = std::fs::File::open(out.join("train-000000.tar")).unwrap();
    let names: Vec<String> = tar::Archive::new(first)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[..3], ["000000.jpg", "000000.cls", "000000.path"]);
    // Without the unlabelled images, the shards keep the folder's labelled ones.
    let labelled = |dir: &std::path::Path| {
        let opts = LoadOptions {
            image_size: Some(16),
            skip_unlabelled: true,
            stream: Some(true),
            ..LoadOptions::default()
        };
        let d = load(dir, &opts).unwrap();
        (
            d.train.labels.clone(),
            epoch(&d, (0..d.train.n).collect(), false),
        )
    };
    let ((packed_labels, packed), (folder_labels, folder)) = (labelled(&out), labelled(&t.0));
    assert!(packed_labels.len() < 23 && packed_labels == folder_labels);
    same(&packed, &folder);
}

/// The commands end to end: `simclr pack`, `simclr data` on the shards (headers only), and a
/// pretraining epoch streamed from them, whose log has the loader's rate beside the engine's.
#[test]
fn pack_data_and_pretrain_from_the_command_line() {
    let t = Tmp::new("stream-cli");
    folder(&t, 8);
    let bin = env!("CARGO_BIN_EXE_simclr");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}:\n{text}");
        text
    };
    let path = |name: &str| t.0.join(name).to_string_lossy().into_owned();
    let (data, shards, out) = (path(""), path("shards"), path("run"));
    let text = run(&["pack", "--data", &data, &shards, "--shard-mb", "1"]);
    assert!(text.contains("packed 24 images into 1 shards"), "{text}");
    let text = run(&["data", "--data", &shards, "--json"]);
    assert!(
        text.contains("\"format\": \"shards\"") || text.contains("\"format\":\"shards\""),
        "{text}"
    );
    let text = run(&[
        "pretrain",
        "--data",
        &shards,
        "--out",
        &out,
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--workers",
        "2",
    ]);
    assert!(text.contains("streaming 24 images"), "{text}");
    let log = std::fs::read_to_string(t.0.join("run/metrics.jsonl")).unwrap();
    let step: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!(
        step["loader_images_per_s"].as_f64().unwrap() > 0.0,
        "{step}"
    );
    assert!(step["loader_wait_s"].as_f64().is_some(), "{step}");
}
