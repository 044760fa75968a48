//! Dataset formats end to end: each test writes small files in a format's published layout
//! from known images (a round trip), loads them through format detection, and checks the
//! pixels, labels and splits; then corrupts them and checks for one-line errors. Also
//! `describe`, `--image-size`, label subsets from a file, and unlabelled images.

mod common;

use common::Tmp;
use simclr::data::subset::{self, LabelSpec};
use simclr::data::{
    self, describe, load, render, DataDir, Dataset, Format, LoadOptions, UNLABELLED,
};
use simclr::error::Error;
use simclr::rng::Rng;
use std::io::Cursor;
use std::path::Path;

fn auto(dir: &Path) -> simclr::error::Result<DataDir> {
    load(dir, &LoadOptions::default())
}

/// The error's message, which must be one line.
fn err<T>(r: simclr::error::Result<T>) -> String {
    let msg = r.err().expect("expected an error").to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    msg
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(256) as u8).collect()
}

/// `n` random HWC images of side `side` with `c` channels, and labels below `classes`.
fn images(n: usize, side: usize, c: usize, classes: u32, seed: u64) -> (Vec<u8>, Vec<u32>) {
    let mut rng = Rng::new(seed ^ 77);
    let labels = (0..n).map(|_| rng.below(classes as usize) as u32).collect();
    (random_bytes(n * side * side * c, seed), labels)
}

// ---------------------------------------------------------------------------------------
// IDX

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn missing_and_empty_directories() {
    let msg = err(auto(Path::new("/nonexistent/simclr-data")));
    assert_eq!(
        msg,
        "data directory /nonexistent/simclr-data does not exist"
    );
    let t = Tmp::new("empty");
    assert!(err(auto(&t.0)).contains("no supported dataset found"));
    t.write("notes/readme.txt", "not a dataset\n");
    assert!(err(auto(&t.0)).contains("no supported dataset found"));
    assert!(err(describe(&t.0, &LoadOptions::default())).contains("no supported dataset found"));
}

#[test]
fn idx_round_trip_raw_and_gzip() {
    let t = Tmp::new("idx");
    let (train_px, train_y) = images(5, 6, 1, 4, 1);
    let (test_px, test_y) = images(3, 6, 1, 4, 2);
    let bytes = |y: &[u32]| y.iter().map(|&l| l as u8).collect::<Vec<u8>>();
    t.write(
        "train-images-idx3-ubyte.gz",
        gzip(&idx(0x803, &[5, 6, 6], &train_px)),
    );
    t.write(
        "train-labels-idx1-ubyte",
        idx(0x801, &[5], &bytes(&train_y)),
    );
    t.write("t10k-images-idx3-ubyte", idx(0x803, &[3, 6, 6], &test_px));
    t.write(
        "t10k-labels-idx1-ubyte.gz",
        gzip(&idx(0x801, &[3], &bytes(&test_y))),
    );
    assert_eq!(data::detect(&t.0).unwrap(), Format::Idx);
    let d = auto(&t.0).unwrap();
    assert_eq!(d.format, "idx");
    assert_eq!((d.train.n, d.train.h, d.train.w, d.train.c), (5, 6, 6, 1));
    assert_eq!(
        (d.train.images, d.train.labels),
        (train_px, train_y.clone())
    );
    assert_eq!((d.test.images, d.test.labels), (test_px, test_y.clone()));
    let classes = *train_y.iter().chain(&test_y).max().unwrap() as usize + 1;
    assert_eq!(
        (d.train.num_classes, d.test.num_classes),
        (classes, classes)
    );
    assert!(d.train.paths.is_empty());
    // Test images of another size than the train ones.
    t.write("t10k-images-idx3-ubyte", idx(0x803, &[3, 5, 5], &[0; 75]));
    assert!(err(auto(&t.0)).contains("train images are 6x6x1 but test images are 5x5x1"));
}

#[test]
fn loads_bundled_fashion_mnist() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    if !dir.join("train-labels-idx1-ubyte.gz").exists() {
        eprintln!("skipping: no Fashion-MNIST in {}", dir.display());
        return;
    }
    let d = data::load(&dir, &data::LoadOptions::default()).unwrap();
    assert_eq!(d.format, "idx");
    assert_eq!((d.train.n, d.test.n), (60000, 10000));
    assert_eq!((d.train.h, d.train.w, d.train.c), (28, 28, 1));
    assert_eq!((d.train.num_classes, d.test.num_classes), (10, 10));
    assert_eq!(d.train.images.len(), 60000 * 784);
    // Fashion-MNIST is balanced: 6000 train images per class.
    assert_eq!(d.train.histogram(), vec![6000; 10]);
    let text = render(&describe(&dir, &LoadOptions::default()).unwrap());
    assert!(text.contains("train            60000  28x28x1"), "{text}");
}

// ---------------------------------------------------------------------------------------
// CIFAR

/// HWC images as CIFAR records: label byte(s), then the R, G and B planes.
fn cifar_records(px: &[u8], labels: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        out.extend(label);
        let img = &px[i * 3072..(i + 1) * 3072];
        for ch in 0..3 {
            out.extend((0..1024).map(|p| img[p * 3 + ch]));
        }
    }
    out
}

#[test]
fn cifar10_round_trip_in_the_archive_folder() {
    let t = Tmp::new("cifar10");
    let root = "cifar-10-batches-bin";
    let mut all_px = Vec::new();
    let mut all_y = Vec::new();
    for b in 1..=5 {
        let (px, y) = images(2, 32, 3, 10, b);
        let recs: Vec<Vec<u8>> = y.iter().map(|&l| vec![l as u8]).collect();
        t.write(
            &format!("{root}/data_batch_{b}.bin"),
            cifar_records(&px, &recs),
        );
        all_px.extend(px);
        all_y.extend(y);
    }
    let (test_px, test_y) = images(3, 32, 3, 10, 9);
    let recs: Vec<Vec<u8>> = test_y.iter().map(|&l| vec![l as u8]).collect();
    let test_file = t.write(
        &format!("{root}/test_batch.bin"),
        cifar_records(&test_px, &recs),
    );
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    t.write(&format!("{root}/batches.meta.txt"), names);

    assert_eq!(data::detect(&t.0).unwrap(), Format::Cifar10);
    let d = auto(&t.0).unwrap();
    assert_eq!(d.format, "cifar10");
    assert_eq!(
        (
            d.train.n,
            d.train.h,
            d.train.w,
            d.train.c,
            d.train.num_classes
        ),
        (10, 32, 32, 3, 10)
    );
    assert_eq!((&d.train.images, &d.train.labels), (&all_px, &all_y));
    assert_eq!((&d.test.images, &d.test.labels), (&test_px, &test_y));
    assert_eq!(d.class_names[9], "truck");

    let info = describe(&t.0, &LoadOptions::default()).unwrap();
    assert_eq!(
        info.splits.iter().map(|s| s.images).collect::<Vec<_>>(),
        vec![10, 3]
    );
    assert_eq!(info.splits[0].histogram, d.train.histogram());
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["format"], "cifar10");
    assert_eq!(json["splits"][1]["name"], "test");
    assert!(render(&info).contains("9 truck"));

    // --image-size resizes every split (here down to 16, bicubic).
    let opts = LoadOptions {
        image_size: Some(16),
        ..LoadOptions::default()
    };
    let small = load(&t.0, &opts).unwrap();
    assert_eq!(
        (small.train.h, small.test.w, small.test.images.len()),
        (16, 16, 3 * 16 * 16 * 3)
    );

    // Corrupt: a truncated batch, an impossible label, a missing batch.
    let good = std::fs::read(&test_file).unwrap();
    std::fs::write(&test_file, &good[..good.len() - 1]).unwrap();
    let msg = err(auto(&t.0));
    assert!(
        msg.contains(
            "test_batch.bin: 9218 bytes is not a whole number of 3073-byte CIFAR-10 records"
        ),
        "{msg}"
    );
    let mut bad = good.clone();
    bad[3073] = 10;
    std::fs::write(&test_file, &bad).unwrap();
    assert!(err(auto(&t.0)).contains("test_batch.bin: image 1 has label 10, expected below 10"));
    std::fs::remove_file(&test_file).unwrap();
    assert!(err(auto(&t.0)).contains("incomplete CIFAR-10 dataset, test_batch.bin is missing"));
}

#[test]
fn cifar100_uses_the_fine_labels() {
    let t = Tmp::new("cifar100");
    let (px, fine) = images(4, 32, 3, 100, 3);
    let recs: Vec<Vec<u8>> = fine.iter().map(|&l| vec![(l / 5) as u8, l as u8]).collect();
    t.write("train.bin", cifar_records(&px, &recs));
    let test = t.write("test.bin", cifar_records(&px[..3072], &recs[..1]));
    assert_eq!(data::detect(&t.0).unwrap(), Format::Cifar100);
    let d = auto(&t.0).unwrap();
    assert_eq!(
        (d.format.as_str(), d.train.num_classes, d.test.n),
        ("cifar100", 100, 1)
    );
    assert_eq!((d.train.images, d.train.labels), (px.clone(), fine));
    assert!(d.class_names.is_empty());
    std::fs::write(&test, cifar_records(&px[..3072], &[vec![20, 0]])).unwrap();
    assert!(err(auto(&t.0)).contains("test.bin: image 0 has coarse label 20, expected below 20"));
    // A CIFAR-10 reading of CIFAR-100 files is refused by the forced format's file list.
    let opts = LoadOptions {
        format: Some(Format::Cifar10),
        ..LoadOptions::default()
    };
    assert!(err(load(&t.0, &opts)).contains("data_batch_1.bin is missing"));
}

// ---------------------------------------------------------------------------------------
// STL-10

/// HWC 96x96x3 images as STL-10 stores them: per image three column-major planes.
fn stl_images(px: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for img in px.chunks(96 * 96 * 3) {
        for ch in 0..3 {
            for x in 0..96 {
                for y in 0..96 {
                    out.push(img[(y * 96 + x) * 3 + ch]);
                }
            }
        }
    }
    out
}

#[test]
fn stl10_round_trip_with_the_unlabelled_split() {
    let t = Tmp::new("stl10");
    let (train_px, train_y) = images(3, 96, 3, 10, 4);
    let (test_px, test_y) = images(2, 96, 3, 10, 5);
    let (unl_px, _) = images(4, 96, 3, 10, 6);
    let one_based = |y: &[u32]| y.iter().map(|&l| l as u8 + 1).collect::<Vec<u8>>();
    let root = "stl10_binary";
    t.write(&format!("{root}/train_X.bin"), stl_images(&train_px));
    t.write(&format!("{root}/train_y.bin"), one_based(&train_y));
    t.write(&format!("{root}/test_X.bin"), stl_images(&test_px));
    let test_y_file = t.write(&format!("{root}/test_y.bin"), one_based(&test_y));
    t.write(&format!("{root}/unlabeled_X.bin"), stl_images(&unl_px));
    assert_eq!(data::detect(&t.0).unwrap(), Format::Stl10);

    let d = auto(&t.0).unwrap();
    assert_eq!(
        (d.format.as_str(), d.train.n, d.train.h, d.train.num_classes),
        ("stl10", 7, 96, 10)
    );
    assert_eq!(&d.train.images[..train_px.len()], &train_px[..]);
    assert_eq!(&d.train.images[train_px.len()..], &unl_px[..]);
    assert_eq!(&d.train.labels[..3], &train_y[..]);
    assert_eq!(&d.train.labels[3..], &[UNLABELLED; 4]);
    assert_eq!(d.train.labelled(), vec![0, 1, 2]);
    assert_eq!((d.test.images, d.test.labels), (test_px, test_y));

    // Label subsets and the histogram never count the unlabelled images.
    let all: Vec<usize> = (0..7).collect();
    let chosen = subset::labelled(&d.train, &all, &LabelSpec::All, None, 0).unwrap();
    assert_eq!(chosen, vec![0, 1, 2]);
    assert_eq!(d.train.histogram().iter().sum::<usize>(), 3);

    let info = describe(&t.0, &LoadOptions::default()).unwrap();
    let names: Vec<(&str, usize)> = info
        .splits
        .iter()
        .map(|s| (s.name.as_str(), s.images))
        .collect();
    assert_eq!(names, vec![("train", 3), ("unlabelled", 4), ("test", 2)]);

    let labelled_only = LoadOptions {
        skip_unlabelled: true,
        ..LoadOptions::default()
    };
    assert_eq!(load(&t.0, &labelled_only).unwrap().train.n, 3);

    // Labels outside 1..10, and label and image files that disagree.
    std::fs::write(&test_y_file, [1, 11]).unwrap();
    assert!(err(auto(&t.0)).contains("test_y.bin: image 1 has label 11, expected 1 to 10"));
    std::fs::write(&test_y_file, [1, 2, 3]).unwrap();
    let msg = err(auto(&t.0));
    assert!(
        msg.contains("test_X.bin: 55296 bytes, but") && msg.contains("has 3 labels"),
        "{msg}"
    );
    std::fs::write(&test_y_file, [1, 2]).unwrap();
    std::fs::write(t.0.join(root).join("unlabeled_X.bin"), [0; 1000]).unwrap();
    assert!(err(auto(&t.0))
        .contains("unlabeled_X.bin: 1000 bytes is not a whole number of 27648-byte STL-10 images"));
    std::fs::remove_file(t.0.join(root).join("train_y.bin")).unwrap();
    assert!(err(auto(&t.0)).contains("incomplete STL-10 dataset, train_y.bin is missing"));
}

// ---------------------------------------------------------------------------------------
// Image folders

fn png(px: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::from_raw(w, h, px.to_vec())
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn jpeg(px: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::from_raw(w, h, px.to_vec())
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// A smooth image (JPEG keeps it close), different per seed.
fn smooth(side: usize, seed: u64) -> Vec<u8> {
    (0..side * side * 3)
        .map(|i| {
            let (y, x, ch) = (i / 3 / side, i / 3 % side, i % 3);
            (40 + (y * 3 + x * 2 + ch * 30 + seed as usize * 20) % 170) as u8
        })
        .collect()
}

#[test]
fn folder_round_trip_png_exact_jpeg_close() {
    let t = Tmp::new("folder");
    let mut expect: Vec<(String, Vec<u8>, u32)> = Vec::new();
    for (k, class) in ["cat", "dog"].iter().enumerate() {
        for i in 0..3u64 {
            let px = random_bytes(16 * 16 * 3, i + 10 * k as u64);
            let name = format!("{class}_{i}.png");
            t.write(&format!("train/{class}/{name}"), png(&px, 16, 16));
            expect.push((name, px, k as u32));
        }
    }
    let cat = smooth(16, 1);
    t.write("val/cat/a.JPEG", jpeg(&cat, 16, 16));
    t.write("train/dog/notes.txt", "ignored");
    t.write("train/.hidden/x.png", png(&cat, 16, 16));
    assert_eq!(data::detect(&t.0).unwrap(), Format::Folder);

    let opts = LoadOptions {
        image_size: Some(16),
        ..LoadOptions::default()
    };
    let d = load(&t.0, &opts).unwrap();
    assert_eq!(
        (d.format.as_str(), d.train.n, d.train.h, d.train.c),
        ("folder", 6, 16, 3)
    );
    assert_eq!(d.class_names, vec!["cat", "dog"]);
    for (i, (name, px, label)) in expect.iter().enumerate() {
        assert_eq!(
            d.train.paths[i].file_name().unwrap().to_str().unwrap(),
            name
        );
        assert_eq!(d.train.image(i), &px[..], "{name}");
        assert_eq!(d.train.labels[i], *label);
    }
    assert_eq!(
        (d.test.n, d.test.labels.clone(), d.test.num_classes),
        (1, vec![0], 2)
    );
    let mean_err = d
        .test
        .image(0)
        .iter()
        .zip(&cat)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .sum::<f64>()
        / cat.len() as f64;
    assert!(mean_err < 4.0, "JPEG mean error {mean_err}");

    // The default size is 224; a non-square image keeps its central square.
    let d = auto(&t.0).unwrap();
    assert_eq!((d.train.h, d.train.w), (224, 224));
    let wide: Vec<u8> = (0..8 * 24 * 3)
        .map(|i| {
            if (8..16).contains(&(i / 3 % 24)) {
                200
            } else {
                10
            }
        })
        .collect();
    t.write("train/cat/wide.png", png(&wide, 24, 8));
    let d = load(
        &t.0,
        &LoadOptions {
            image_size: Some(8),
            ..opts.clone()
        },
    )
    .unwrap();
    let i = d
        .train
        .paths
        .iter()
        .position(|p| p.ends_with("wide.png"))
        .unwrap();
    assert!(d.train.image(i).iter().all(|&v| v == 200));

    let info = describe(&t.0, &opts).unwrap();
    assert_eq!(info.splits[0].histogram, vec![4, 3]);
    assert_eq!(info.splits[0].file_sizes, Some([[8, 24], [16, 16]]));
    assert_eq!(info.splits[1].name, "test");
    assert!(render(&info).contains("files from 8x24 to 16x16"));
}

#[test]
fn folder_skips_undecodable_images_and_reports_them() {
    let t = Tmp::new("corrupt");
    let good = png(&smooth(12, 2), 12, 12);
    t.write("train/a/good.png", &good);
    t.write("train/a/garbage.jpg", random_bytes(500, 1));
    t.write("train/b/truncated.png", &good[..good.len() / 2]);
    t.write("train/b/good.png", &good);
    t.write("train/b/empty.jpeg", b"");
    let d = load(
        &t.0,
        &LoadOptions {
            image_size: Some(12),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!((d.train.n, d.train.labels.clone()), (2, vec![0, 1]));
    let skipped: Vec<&str> = d
        .skipped
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(skipped, vec!["garbage.jpg", "empty.jpeg", "truncated.png"]);
    assert_eq!(d.train.image(0), d.train.image(1));
    let info = describe(&t.0, &LoadOptions::default()).unwrap();
    assert_eq!(info.splits[0].images, 3); // the truncated PNG's header is still readable
    assert_eq!(info.unreadable.len(), 2);

    // Nothing decodable at all.
    let t = Tmp::new("all-corrupt");
    t.write("train/a/x.png", random_bytes(100, 2));
    assert!(err(auto(&t.0)).contains("none of the 1 training images could be decoded"));
}

#[test]
fn folder_layouts_unlabelled_and_errors() {
    let img = png(&smooth(8, 3), 8, 8);
    // A folder of images only: all unlabelled, no test split.
    let t = Tmp::new("flat");
    t.write("a.png", &img);
    t.write("b.jpg", jpeg(&smooth(8, 4), 8, 8));
    let d = auto(&t.0).unwrap();
    assert_eq!((d.train.n, d.train.num_classes, d.test.n), (2, 0, 0));
    assert!(d.train.labels.iter().all(|&l| l == UNLABELLED));
    // A folder of class folders: labelled, no test split.
    let t = Tmp::new("classes");
    t.write("x/1.png", &img);
    t.write("y/1.png", &img);
    let d = auto(&t.0).unwrap();
    assert_eq!((d.train.labels.clone(), d.test.n), (vec![0, 1], 0));
    // train/ + test/ + unlabelled/: the unlabelled images come after the labelled ones.
    let t = Tmp::new("split");
    t.write("train/x/1.png", &img);
    t.write("train/y/2.png", &img);
    t.write("test/y/3.png", &img);
    t.write("unlabeled/4.png", &img);
    t.write("unlabeled/5.png", &img);
    let d = auto(&t.0).unwrap();
    assert_eq!(d.train.labels, vec![0, 1, UNLABELLED, UNLABELLED]);
    assert_eq!(d.test.labels, vec![1]);
    let no_unl = LoadOptions {
        skip_unlabelled: true,
        ..LoadOptions::default()
    };
    assert_eq!(load(&t.0, &no_unl).unwrap().train.n, 2);
    let info = describe(&t.0, &LoadOptions::default()).unwrap();
    let names: Vec<&str> = info.splits.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["train", "unlabelled", "test"]);
    // A test class the training set lacks; images beside class folders; a flat test split.
    t.write("test/z/1.png", &img);
    assert!(err(auto(&t.0)).contains("class z is not one of the training set's classes"));
    std::fs::remove_dir_all(t.0.join("test")).unwrap();
    t.write("train/loose.png", &img);
    assert!(
        err(auto(&t.0)).contains("images (") && err(auto(&t.0)).contains("beside class folders")
    );
    std::fs::remove_file(t.0.join("train/loose.png")).unwrap();
    t.write("test/1.png", &img);
    assert!(err(auto(&t.0)).contains("no class folders; the test split needs one"));
    // Bad --image-size values.
    for size in [0, 4, 5000] {
        let opts = LoadOptions {
            image_size: Some(size),
            ..LoadOptions::default()
        };
        assert!(matches!(load(&t.0, &opts), Err(Error::Config(_))));
    }
}

#[test]
fn detection_and_forced_formats() {
    assert_eq!("stl10".parse::<Format>().unwrap(), Format::Stl10);
    assert_eq!(Format::Cifar100.to_string(), "cifar100");
    let msg = err("imagenet".parse::<Format>());
    assert_eq!(
        msg,
        "--format imagenet: unknown format (expected idx, cifar10, cifar100, stl10, folder or shards)"
    );
    // IDX files and an image folder side by side: ambiguous unless forced.
    let t = Tmp::new("ambiguous");
    t.write("train-images-idx3-ubyte", idx(0x803, &[1, 2, 2], &[0; 4]));
    t.write("train-labels-idx1-ubyte", idx(0x801, &[1], &[0]));
    t.write("t10k-images-idx3-ubyte", idx(0x803, &[1, 2, 2], &[0; 4]));
    t.write("t10k-labels-idx1-ubyte", idx(0x801, &[1], &[0]));
    t.write("train/a/1.png", png(&smooth(8, 1), 8, 8));
    let msg = err(auto(&t.0));
    assert!(
        msg.contains("files of several formats (idx, folder); choose one with --format"),
        "{msg}"
    );
    let idx_only = LoadOptions {
        format: Some(Format::Idx),
        ..LoadOptions::default()
    };
    assert_eq!(load(&t.0, &idx_only).unwrap().train.h, 2);
    let folder = LoadOptions {
        format: Some(Format::Folder),
        image_size: Some(8),
        ..LoadOptions::default()
    };
    assert_eq!(load(&t.0, &folder).unwrap().train.h, 8);
    // A forced format whose files are absent.
    let stl = LoadOptions {
        format: Some(Format::Stl10),
        ..LoadOptions::default()
    };
    assert!(err(load(&t.0, &stl)).contains("incomplete STL-10 dataset, train_X.bin is missing"));
}

// ---------------------------------------------------------------------------------------
// Label subsets

#[test]
fn labels_file_selects_named_images() {
    let t = Tmp::new("labels-file");
    let img = png(&smooth(8, 5), 8, 8);
    for name in ["n01_1.JPEG", "n01_2.JPEG", "n02_1.JPEG", "n02_2.JPEG"] {
        t.write(&format!("train/{}/{name}", &name[..3]), &img);
    }
    let d = auto(&t.0).unwrap();
    let all: Vec<usize> = (0..4).collect();
    let file = t.write(
        "1percent.txt",
        "n01_2.JPEG\n\n  n02/n02_1.JPEG  \nn01_2.JPEG\n",
    );
    let chosen = subset::labelled(&d.train, &all, &LabelSpec::PerClass(1), Some(&file), 0).unwrap();
    assert_eq!(chosen, vec![1, 2]);
    // Only the images in use can be named.
    let msg = err(subset::from_file(&file, &d.train, &[0, 2, 3]));
    assert!(
        msg.ends_with("line 1: n01_2.JPEG is not among the training images in use"),
        "{msg}"
    );
    std::fs::write(&file, "\n\n").unwrap();
    assert!(err(subset::from_file(&file, &d.train, &all)).ends_with("names no images"));
    // Images without file names.
    let (px, labels) = images(4, 2, 1, 2, 1);
    let no_names = Dataset {
        images: px,
        labels,
        n: 4,
        h: 2,
        w: 2,
        c: 1,
        num_classes: 2,
        ..Dataset::default()
    };
    assert!(err(subset::from_file(&file, &no_names, &all)).contains("have no file names"));
    assert!(err(subset::from_file(
        Path::new("/nonexistent/l.txt"),
        &d.train,
        &all
    ))
    .contains("/nonexistent/l.txt"));
}

#[test]
fn unlabelled_marker_is_the_loss_one() {
    assert_eq!(UNLABELLED, simclr::ops::loss::UNLABELLED);
}
