//! PyTorch interop: the exported names and shapes against the key lists torchvision itself
//! wrote (tests/fixtures/torchvision_keys, from scripts/export_keys.py), the values moved to
//! the right places (KRSC → OIHW, γ/β → weight/bias, the fine-tuned `fc` Sequential), the
//! one-line refusals, and `predict`'s JSON lines. Runs without PyTorch; the numerical check
//! against PyTorch itself is scripts/check_export.py.

mod common;

use common::Tmp;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::{json, Value};
use simclr::data::augment::Normalize;
use simclr::device::Device;
use simclr::nn::model::{Model, ModelSpec};
use simclr::rng::Rng;
use simclr::tensor::Tensor;
use simclr::train::checkpoint::{self, Meta};
use simclr::train::config::Config;
use simclr::train::eval::argmax;
use simclr::train::export::{export_torchvision, predict, torchvision_keys, Key};
use std::path::{Path, PathBuf};

/// A model spec from JSON, so that fields the architecture gains later take their defaults.
fn spec(
    arch: &str,
    width: usize,
    channels: usize,
    size: usize,
    head: usize,
    k: Option<usize>,
) -> ModelSpec {
    serde_json::from_value(json!({
        "arch": {"name": arch, "width": width, "in_channels": channels, "image_size": size},
        "head_layers": head,
        "proj_dim": 8,
        "num_classes": k,
    }))
    .unwrap()
}

/// A model whose every tensor holds distinct seeded values (running variances positive).
fn random_model(spec: &ModelSpec) -> Model {
    let mut model = Model::new(spec, 1).unwrap();
    let mut rng = Rng::new(2);
    for p in &mut model.store.params {
        let var = p.name.ends_with("running_var");
        let v: Vec<f32> = (0..p.value.numel())
            .map(|_| {
                let x = rng.range(-1.0, 1.0) as f32;
                if var {
                    x.abs() + 0.5
                } else {
                    x
                }
            })
            .collect();
        p.value = Tensor::from_vec(&p.value.shape, v);
    }
    model
}

/// Saves `model` as a finetune checkpoint in `dir`; returns the checkpoint file.
fn save(dir: &Path, model: &Model) -> PathBuf {
    save_normalized(dir, model, None)
}

/// `save`, with the input standardisation the checkpoint records.
fn save_normalized(dir: &Path, model: &Model, normalize: Option<Normalize>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let meta = Meta {
        normalize,
        ..Meta::new("finetune", 1, &model.spec, &Config::preset("tiny").unwrap())
    };
    checkpoint::save(dir, model, None, &Default::default(), &meta).unwrap();
    dir.join(checkpoint::FILE)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The key list `tests/fixtures/torchvision_keys/<name>.txt` ("name dtype shape" lines).
fn fixture(name: &str) -> Vec<Key> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/torchvision_keys/{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let shape = match f[2] {
                "-" => vec![],
                s => s.split(',').map(|d| d.parse().unwrap()).collect(),
            };
            let dtype = if f[1] == "I64" { "I64" } else { "F32" };
            Key {
                name: f[0].to_string(),
                dtype,
                shape,
            }
        })
        .collect()
}

/// The keys exported for `spec` are exactly those of the fixture `name`.
fn same_keys(spec: &ModelSpec, name: &str) {
    let mut ours = torchvision_keys(spec).unwrap();
    let mut theirs = fixture(name);
    ours.sort_by(|a, b| a.name.cmp(&b.name));
    theirs.sort_by(|a, b| a.name.cmp(&b.name));
    let missing: Vec<&str> = theirs
        .iter()
        .filter(|k| !ours.iter().any(|o| o.name == k.name))
        .map(|k| k.name.as_str())
        .collect();
    let extra: Vec<&str> = ours
        .iter()
        .filter(|k| !theirs.iter().any(|t| t.name == k.name))
        .map(|k| k.name.as_str())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(ours, theirs, "{name}: dtypes or shapes differ");
}

#[test]
fn keys_match_torchvision() {
    for depth in [18, 34, 50, 101, 152] {
        // torchvision's default: ImageNet, 1000 classes on the encoder (a distilled student).
        let arch = format!("resnet{depth}");
        same_keys(&spec(&arch, 64, 3, 224, 0, Some(1000)), &arch);
    }
}

/// Widths and SK, which torchvision lacks: the names and shapes of the PyTorch module that
/// scripts/check_export.py builds from torchvision's blocks (ResNet-D basic blocks, and a
/// 2x-wide SK bottleneck network).
#[test]
fn keys_match_the_sk_module() {
    for (arch, width, name) in [
        ("resnet18", 64, "resnet18_sk"),
        ("resnet50", 128, "resnet50_2x_sk"),
    ] {
        let mut s = spec(arch, width, 3, 224, 0, Some(1000));
        s.arch.sk = true;
        same_keys(&s, name);
    }
}

/// Exports `model` through a checkpoint; returns the exported file's bytes.
fn export(t: &Tmp, model: &Model) -> Vec<u8> {
    let ckpt = save(&t.0.join("run"), model);
    let out = t.0.join("model.safetensors");
    let summary = export_torchvision(&ckpt, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(summary.tensors, st.len());
    bytes
}

#[test]
fn fine_tuned_values_land_in_place() {
    let t = Tmp::new("fine_tuned");
    // Fine-tuned: encoder + head layer 1 + classifier; RGB, 64 px, a non-standard width.
    let model = random_model(&spec("resnet18", 4, 3, 64, 1, Some(5)));
    let bytes = export(&t, &model);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ours = |name: &str| {
        let i = model.store.find(name).unwrap();
        (
            model.store.value(i).to_f32_vec(),
            model.store.value(i).shape.clone(),
        )
    };
    let theirs = |name: &str| {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{name}");
        (f32s(v.data()), v.shape().to_vec())
    };

    // Conv kernels, element by element: ours [o, kh, kw, i], theirs [o, i, kh, kw].
    for (from, to) in [
        ("encoder.stem.conv.weight", "conv1.weight"),
        ("encoder.stage2.0.b.conv.weight", "layer2.0.conv2.weight"),
        (
            "encoder.stage3.0.shortcut.conv.weight",
            "layer3.0.downsample.0.weight",
        ),
    ] {
        let (w, s) = ours(from);
        let (e, es) = theirs(to);
        assert_eq!(es, [s[0], s[3], s[1], s[2]], "{to}");
        let (o, kh, kw, ci) = (s[0], s[1], s[2], s[3]);
        for a in 0..o {
            for c in 0..ci {
                for y in 0..kh {
                    for x in 0..kw {
                        assert_eq!(
                            e[((a * ci + c) * kh + y) * kw + x],
                            w[((a * kh + y) * kw + x) * ci + c],
                            "{to}[{a},{c},{y},{x}]"
                        );
                    }
                }
            }
        }
    }
    // Vectors and dense weights are copied as they are.
    for (from, to) in [
        ("encoder.stem.bn.gamma", "bn1.weight"),
        ("encoder.stem.bn.beta", "bn1.bias"),
        (
            "encoder.stage1.1.a.bn.running_mean",
            "layer1.1.bn1.running_mean",
        ),
        (
            "encoder.stage4.1.b.bn.running_var",
            "layer4.1.bn2.running_var",
        ),
        (
            "encoder.stage2.0.shortcut.bn.gamma",
            "layer2.0.downsample.1.weight",
        ),
        ("head.0.dense.weight", "fc.0.weight"),
        ("head.0.bn.gamma", "fc.1.weight"),
        ("head.0.bn.beta", "fc.1.bias"),
        ("head.0.bn.running_var", "fc.1.running_var"),
        ("classifier.weight", "fc.3.weight"),
        ("classifier.bias", "fc.3.bias"),
    ] {
        assert_eq!(ours(from), theirs(to), "{from} -> {to}");
    }
    let counter = st.tensor("layer1.0.bn2.num_batches_tracked").unwrap();
    assert_eq!((counter.dtype(), counter.shape()), (Dtype::I64, &[][..]));
    assert_eq!(counter.data(), 0i64.to_le_bytes());
    // Every tensor is accounted for: the encoder's 20 BNs and head layer 1's each bring a
    // counter; nothing of the projection head beyond layer 1 is there.
    let store_tensors = model.store.params.len();
    assert_eq!(st.len(), store_tensors + 21);
    assert!(st.names().iter().all(|n| !n.starts_with("head")));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let info = header.metadata().as_ref().unwrap();
    assert_eq!(info["format"], "pt");
    let summary: Value = serde_json::from_str(&info["simclr_export"]).unwrap();
    assert_eq!(
        (summary["fc"].as_str(), summary["width"].as_u64()),
        (Some("head"), Some(4))
    );
}

#[test]
fn pretrained_and_distilled_layouts() {
    let t = Tmp::new("layouts");
    // Pretrained: the 3-layer projection head stays behind, no fc.
    let bytes = export(&t, &random_model(&spec("resnet18", 4, 3, 64, 3, None)));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert!(st
        .names()
        .iter()
        .all(|n| !n.starts_with("fc") && !n.starts_with("head")));
    assert!(st.tensor("layer4.1.bn2.weight").is_ok());
    // Distilled student: the classifier on the encoder is torchvision's fc.
    let model = random_model(&spec("resnet50", 4, 3, 64, 0, Some(7)));
    let bytes = export(&t, &model);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let fc = st.tensor("fc.weight").unwrap();
    assert_eq!(fc.shape(), [7, 4 * 8 * 4]);
    let i = model.store.find("classifier.weight").unwrap();
    assert_eq!(f32s(fc.data()), model.store.value(i).to_f32_vec());
    assert!(st.tensor("layer4.2.conv3.weight").is_ok());
}

/// `result` is an error of one line that mentions `needle`.
fn one_line<T: std::fmt::Debug>(result: simclr::error::Result<T>, needle: &str) {
    let msg = result.unwrap_err().to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
}

#[test]
fn refusals_are_one_line() {
    let t = Tmp::new("refusals");
    let out = t.0.join("model.safetensors");
    one_line(
        export_torchvision(&t.0.join("nothing.safetensors"), &out),
        "nothing.safetensors",
    );
    let corrupt = t.0.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": [1, 2").unwrap();
    one_line(
        export_torchvision(&corrupt, &out),
        "not a simclr checkpoint",
    );
    for (name, s, needle) in [
        (
            "resnet8",
            spec("resnet8", 4, 3, 64, 0, Some(3)),
            "resnet8 has no torchvision",
        ),
        (
            "small",
            spec("resnet18", 4, 3, 32, 0, Some(3)),
            "small-image stem",
        ),
        ("gray", spec("resnet18", 4, 1, 64, 0, Some(3)), "1-channel"),
    ] {
        let ckpt = save(&t.0.join(name), &Model::new(&s, 0).unwrap());
        one_line(export_torchvision(&ckpt, &out), needle);
    }
    assert!(!out.exists(), "a refused export wrote {}", out.display());
}

/// An IDX file: big-endian magic and dimensions, then the bytes.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend(data);
    v
}

/// An IDX dataset of `n` 12×12 gray images per split, labels i % 3.
fn dataset(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(3);
    for prefix in ["train", "t10k"] {
        let pixels: Vec<u8> = (0..n * 144).map(|_| rng.below(256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx(0x0803, &[n, 12, 12], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx(0x0801, &[n], &labels),
        )
        .unwrap();
    }
}

/// predict's lines: (index, logits, class).
fn read_predictions(path: &Path) -> Vec<(u64, Vec<f32>, u64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let logits = v["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (
                v["index"].as_u64().unwrap(),
                logits,
                v["class"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn predict_writes_a_line_per_image() {
    let t = Tmp::new("predict");
    let data = t.0.join("data");
    dataset(&data, 11);
    let ckpt = save(
        &t.0.join("run"),
        &random_model(&spec("resnet8", 4, 1, 12, 1, Some(3))),
    );
    let out = t.0.join("predictions.jsonl");
    assert_eq!(predict(&ckpt, &data, None, &Device::Cpu, &out).unwrap(), 11);
    let lines = read_predictions(&out);
    assert_eq!(lines.len(), 11);
    for (i, (index, logits, class)) in lines.iter().enumerate() {
        assert_eq!(*index, i as u64, "dataset order");
        assert_eq!(logits.len(), 3);
        assert_eq!(*class, argmax(logits) as u64);
    }
    // Not all one class: the logits do depend on the image.
    assert!(lines.iter().any(|l| l.1 != lines[0].1));

    // The same on the emulated GPU.
    let (emu, _) = Device::select("emu").unwrap();
    let out_emu = t.0.join("emu.jsonl");
    assert_eq!(predict(&ckpt, &data, None, &emu, &out_emu).unwrap(), 11);
    for ((_, a, ca), (_, b, cb)) in lines.iter().zip(read_predictions(&out_emu)) {
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "cpu and emu logits differ by {err}");
        assert_eq!(*ca, cb);
    }
}

/// An IDX dataset of `n` 12×12 gray images per split, pixels drawn with `seed` from [lo, 256),
/// except the first test image, the same for every seed and lo.
fn dataset_around_one_image(dir: &Path, n: u32, seed: u64, lo: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(seed);
    for prefix in ["train", "t10k"] {
        let mut pixels: Vec<u8> = (0..n * 144)
            .map(|_| (lo + rng.below(256 - lo)) as u8)
            .collect();
        if prefix == "t10k" {
            let mut first = Rng::new(77);
            pixels[..144]
                .iter_mut()
                .for_each(|p| *p = first.below(256) as u8);
        }
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        let images = idx(0x0803, &[n, 12, 12], &pixels);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let labels = idx(0x0801, &[n], &labels);
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// predict standardises with the statistics stored in the checkpoint (those of the model's
/// training data), not with those of the data it is given: the same image gets the same
/// logits whatever other images sit beside it. The export carries them for torchvision users.
#[test]
fn predict_and_export_use_the_stored_normalisation() {
    let t = Tmp::new("predict_norm");
    let stored = |c| Normalize {
        mean: vec![0.3; c],
        std: vec![0.2; c],
    };
    let model = random_model(&spec("resnet8", 4, 1, 12, 1, Some(3)));
    let ckpt = save_normalized(&t.0.join("run"), &model, Some(stored(1)));
    // Two datasets whose statistics differ (dark and bright images) around one shared image.
    let mut first_logits = Vec::new();
    for (name, seed, lo) in [("dark", 1, 0), ("bright", 2, 200)] {
        let data = t.0.join(name);
        dataset_around_one_image(&data, 9, seed, lo);
        let out = t.0.join(format!("{name}.jsonl"));
        assert_eq!(predict(&ckpt, &data, None, &Device::Cpu, &out).unwrap(), 9);
        first_logits.push(read_predictions(&out)[0].1.clone());
    }
    assert_eq!(
        first_logits[0], first_logits[1],
        "the same image, other logits"
    );

    let model = random_model(&spec("resnet18", 4, 3, 64, 1, Some(5)));
    let ckpt = save_normalized(&t.0.join("rgb"), &model, Some(stored(3)));
    let out = t.0.join("export.safetensors");
    export_torchvision(&ckpt, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let summary: Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["simclr_export"]).unwrap();
    let want = json!({"mean": [0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2]});
    assert_eq!(summary["normalize"], want, "{summary}");
}

#[test]
fn predict_refusals() {
    let t = Tmp::new("predict_refusals");
    let data = t.0.join("data");
    dataset(&data, 4);
    let out = t.0.join("predictions.jsonl");
    let pretrained = save(
        &t.0.join("pre"),
        &Model::new(&spec("resnet8", 4, 1, 12, 3, None), 0).unwrap(),
    );
    one_line(
        predict(&pretrained, &data, None, &Device::Cpu, &out),
        "no classifier",
    );
    let rgb = save(
        &t.0.join("rgb"),
        &Model::new(&spec("resnet8", 4, 3, 12, 1, Some(3)), 0).unwrap(),
    );
    one_line(predict(&rgb, &data, None, &Device::Cpu, &out), "3-channel");
    one_line(
        predict(&rgb, &t.0.join("none"), None, &Device::Cpu, &out),
        "none",
    );
    one_line(
        predict(&t.0.join("missing"), &data, None, &Device::Cpu, &out),
        "missing",
    );
    assert!(!out.exists());
}

#[test]
fn predict_names_the_files_of_an_image_folder() {
    let t = Tmp::new("predict_folder");
    let data = t.0.join("folder");
    let mut rng = Rng::new(4);
    for split in ["train", "test"] {
        for class in ["cat", "dog"] {
            std::fs::create_dir_all(data.join(split).join(class)).unwrap();
            for i in 0..2 {
                let pixels: Vec<u8> = (0..12 * 12 * 3).map(|_| rng.below(256) as u8).collect();
                let img = image::RgbImage::from_raw(12, 12, pixels).unwrap();
                img.save(data.join(format!("{split}/{class}/{i}.png")))
                    .unwrap();
            }
        }
    }
    let ckpt = save(
        &t.0.join("run"),
        &random_model(&spec("resnet8", 4, 3, 12, 1, Some(2))),
    );
    let out = t.0.join("predictions.jsonl");
    assert_eq!(predict(&ckpt, &data, None, &Device::Cpu, &out).unwrap(), 4);
    let paths: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want: Vec<String> = ["cat/0", "cat/1", "dog/0", "dog/1"]
        .iter()
        .map(|f| data.join(format!("test/{f}.png")).display().to_string())
        .collect();
    assert_eq!(
        paths, want,
        "the test split's files, in the dataset's order"
    );
}
