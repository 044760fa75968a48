//! Property tests of the dataset parsers over random, truncated and bit-flipped bytes: each
//! must return a result or a one-line error, never panic, and never allocate from a size
//! field it has not checked against the bytes present (a header claiming huge sizes must fail
//! fast, which these tests would notice as a crash or a hang). A few hundred cases per
//! parser, seeded, so a failure reproduces.

use simclr::data::cifar::{self, Cifar};
use simclr::data::{folder, idx, stl10};
use simclr::rng::Rng;
use std::io::Cursor;
use std::path::Path;

const CASES: u64 = 300;

/// Random bytes of a random length up to `max`.
fn noise(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.below(max + 1);
    (0..n).map(|_| rng.below(256) as u8).collect()
}

/// `valid` truncated at a random length, or with a few random bytes changed.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    if rng.bernoulli(0.5) {
        valid[..rng.below(valid.len())].to_vec()
    } else {
        let mut v = valid.to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(v.len());
            v[i] = rng.below(256) as u8;
        }
        v
    }
}

/// Checks that an error is one line; returns whether the result was Ok.
fn ok_or_one_line<T>(r: simclr::error::Result<T>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.is_empty(), "bad error: {msg:?}");
            false
        }
    }
}

fn idx_file(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

#[test]
fn idx_parsers() {
    let p = Path::new("f");
    let valid_images = idx_file(0x803, &[3, 4, 5], &[7; 60]);
    let valid_labels = idx_file(0x801, &[6], &[1, 2, 3, 4, 5, 6]);
    assert!(idx::parse_images(p, valid_images.clone()).is_ok());
    let mut rng = Rng::new(1);
    for case in 0..CASES {
        // Random bytes behind a valid magic, so that the dimensions are random too.
        let mut header = idx_file(0x803, &[], &[]);
        header.extend(noise(&mut rng, 40));
        ok_or_one_line(idx::parse_images(p, header));
        ok_or_one_line(idx::parse_labels(p, noise(&mut rng, 20)));
        let images = mutate(&mut rng, &valid_images);
        if images.len() < valid_images.len() {
            assert!(
                !ok_or_one_line(idx::parse_images(p, images)),
                "case {case}: truncated accepted"
            );
        } else {
            ok_or_one_line(idx::parse_images(p, images));
        }
        ok_or_one_line(idx::parse_labels(p, mutate(&mut rng, &valid_labels)));
    }
    // Dimensions whose product is far beyond the data (and beyond usize on 32 bits).
    for dims in [[u32::MAX; 3], [1 << 20, 1 << 20, 1 << 20], [0, 5, 5]] {
        assert!(!ok_or_one_line(idx::parse_images(
            p,
            idx_file(0x803, &dims, &[0; 8])
        )));
    }
}

#[test]
fn gzip_streams() {
    use std::io::Write;
    let gz = Path::new("f.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&idx_file(0x801, &[100], &[3; 100])).unwrap();
    let valid = e.finish().unwrap();
    assert!(idx::unpack(gz, valid.clone()).is_ok());
    let mut rng = Rng::new(2);
    for _ in 0..CASES {
        ok_or_one_line(idx::unpack(gz, noise(&mut rng, 200)));
        if let Ok(bytes) = idx::unpack(gz, mutate(&mut rng, &valid)) {
            ok_or_one_line(idx::parse_labels(gz, bytes));
        }
    }
}

#[test]
fn cifar_batches() {
    let p = Path::new("batch.bin");
    let mut rng = Rng::new(3);
    for kind in [Cifar::Ten, Cifar::Hundred] {
        let record = kind.record_len();
        let mut valid: Vec<u8> = (0..2 * record).map(|i| (i % 7) as u8).collect();
        valid[record] = 1; // a valid label for both kinds
        assert!(cifar::parse(p, &valid, kind).is_ok());
        for case in 0..CASES {
            let bytes = noise(&mut rng, 3 * record);
            let whole = !bytes.is_empty() && bytes.len().is_multiple_of(record);
            if ok_or_one_line(cifar::parse(p, &bytes, kind)) {
                assert!(whole, "case {case}: {} bytes accepted", bytes.len());
            }
            let bytes = mutate(&mut rng, &valid);
            let truncated = bytes.len() < valid.len();
            assert!(!(ok_or_one_line(cifar::parse(p, &bytes, kind)) && truncated));
        }
    }
}

#[test]
fn stl10_files() {
    let p = Path::new("x.bin");
    let mut rng = Rng::new(4);
    for _ in 0..CASES {
        let labels = noise(&mut rng, 30);
        let valid = !labels.is_empty() && labels.iter().all(|l| (1..=10).contains(l));
        assert_eq!(ok_or_one_line(stl10::parse_labels(p, &labels)), valid);
        // Image files: only whole images are accepted (lengths around the image size).
        let n = stl10::PIXELS * rng.below(3) + rng.below(3) * rng.below(stl10::PIXELS);
        let mut bytes = vec![9u8; n];
        let whole = n > 0 && n.is_multiple_of(stl10::PIXELS);
        assert_eq!(ok_or_one_line(stl10::to_hwc(p, &mut bytes)), whole);
    }
}

fn encode(format: image::ImageFormat, w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let px: Vec<u8> = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::from_raw(w, h, px)
        .unwrap()
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

#[test]
fn image_files() {
    let p = Path::new("img");
    let png = encode(image::ImageFormat::Png, 20, 13, 1);
    let jpeg = encode(image::ImageFormat::Jpeg, 20, 13, 2);
    for valid in [&png, &jpeg] {
        assert_eq!(folder::decode(p, valid, 8).unwrap().len(), 8 * 8 * 3);
    }
    let mut rng = Rng::new(5);
    for _ in 0..CASES {
        ok_or_one_line(folder::decode(p, &noise(&mut rng, 300), 8));
        // Noise behind a real signature reaches the decoders' inner code.
        let mut sig = if rng.bernoulli(0.5) {
            png[..16].to_vec()
        } else {
            jpeg[..4].to_vec()
        };
        sig.extend(noise(&mut rng, 300));
        ok_or_one_line(folder::decode(p, &sig, 8));
        for valid in [&png, &jpeg] {
            if let Ok(px) = folder::decode(p, &mutate(&mut rng, valid), 8) {
                assert_eq!(px.len(), 8 * 8 * 3);
            }
        }
    }
}

/// A PNG whose header claims 100000 x 100000 pixels (30 GB): refused before decoding.
#[test]
fn image_with_a_huge_header_is_refused() {
    let mut png = encode(image::ImageFormat::Png, 4, 4, 3);
    // IHDR data (width, height, ...) starts at byte 16; its CRC covers type + data.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let msg = folder::decode(Path::new("huge.png"), &png, 8)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.starts_with("huge.png: not a readable JPEG or PNG image ("),
        "{msg}"
    );
}

/// The checkpoint reader: random bytes, and a real checkpoint (with optimiser state)
/// truncated or with bytes changed — including its safetensors header and the JSON metadata
/// inside it, whose model spec decides what gets allocated.
#[test]
fn checkpoint_files() {
    use simclr::nn::model::{Model, ModelSpec};
    use simclr::nn::resnet::Arch;
    use simclr::train::checkpoint::{self, Meta};
    let spec = ModelSpec {
        arch: Arch {
            name: "resnet8".into(),
            width: 4,
            in_channels: 1,
            image_size: 12,
            sk: false,
        },
        head_layers: 1,
        proj_dim: 8,
        num_classes: Some(3),
    };
    let dir = std::env::temp_dir().join(format!("simclr-fuzz-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = Model::new(&spec, 1).unwrap();
    let config = simclr::train::config::Config::preset("tiny").unwrap();
    checkpoint::save(
        &dir,
        &model,
        None,
        &Default::default(),
        &Meta::new("finetune", 1, &spec, &config),
    )
    .unwrap();
    let valid = std::fs::read(dir.join(checkpoint::FILE)).unwrap();
    let path = dir.join("fuzzed.safetensors");
    let mut rng = Rng::new(17);
    let mut loaded = 0;
    for case in 0..CASES {
        let bytes = if case % 3 == 0 {
            noise(&mut rng, 4096)
        } else {
            mutate(&mut rng, &valid)
        };
        std::fs::write(&path, &bytes).unwrap();
        loaded += ok_or_one_line(checkpoint::load(&path)) as usize;
    }
    // Changes inside tensor values still load; everything else is refused cleanly.
    assert!(loaded < CASES as usize, "every fuzzed checkpoint loaded");
    std::fs::remove_dir_all(&dir).unwrap();
}
