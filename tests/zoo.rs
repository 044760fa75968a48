//! The model zoo: parameter counts against torchvision and the SimCLRv2 paper, parameter names,
//! and every architecture's forward pass (and an SK ResNet-D's training step) on the GPU device
//! against the cpu device.
//!
//! Sizes: the emulator runs a few GFLOP/s and the cpu reference is not much faster, so the
//! forward checks run every depth, plain and SK, at width 8 (at 224 px and 32 px, 2 images),
//! and the real 1× width only where a pass costs a few seconds (ResNet-18 and ResNet-50+SK at
//! 32 px). What can go wrong between devices is the layer sequence, the strides, the stems,
//! the SK convs and the pooled shortcuts, the same at any width; the kernels themselves are
//! tested at full size in their own tests. The 224-px inputs exercise the ImageNet and
//! ResNet-D stems, the 32-px inputs the small-image stem.

mod common;

use simclr::autograd::Graph;
use simclr::device::Device;
use simclr::nn::info::info;
use simclr::nn::model::{param_shapes, Model, ModelSpec};
use simclr::nn::resnet::Arch;
use simclr::ops;
use simclr::rng::Rng;
use simclr::tensor::{DType, Tensor};
use std::time::Instant;

fn arch(name: &str, width: usize, sk: bool, image_size: usize) -> Arch {
    Arch {
        name: name.into(),
        width,
        in_channels: 3,
        image_size,
        sk,
    }
}

/// Encoder parameters (BN γ and β included, running statistics not), at 224 px.
fn encoder_params(name: &str, width: usize, sk: bool) -> usize {
    info(&arch(name, width, sk, 224)).unwrap().encoder_params
}

#[test]
fn plain_resnets_have_torchvision_counts() {
    // sum(p.numel() for p in torchvision.models.resnetN().parameters()) minus the fc layer.
    for (name, want) in [
        ("resnet18", 11_176_512),
        ("resnet34", 21_284_672),
        ("resnet50", 23_508_032),
        ("resnet101", 42_500_160),
        ("resnet152", 58_143_808),
    ] {
        assert_eq!(encoder_params(name, 64, false), want, "{name}");
    }
}

#[test]
fn counts_match_the_simclr_v2_table() {
    // SimCLRv2 (arXiv:2006.10029) Table 1, encoder parameters in millions. The table rounds
    // to whole millions (23.5M shows as 24M), so the ±2% tolerance is applied to the
    // unrounded range [table − 0.5M, table + 0.5M).
    for (name, width, sk, table) in [
        ("resnet50", 64, false, 24.0),
        ("resnet50", 64, true, 35.0),
        ("resnet50", 128, true, 140.0),
        ("resnet152", 192, true, 795.0),
    ] {
        let got = encoder_params(name, width, sk) as f64 / 1e6;
        let (lo, hi) = ((table - 0.5) * 0.98, (table + 0.5) * 1.02);
        assert!(
            (lo..hi).contains(&got),
            "{name} width {width} sk {sk}: {got:.2}M parameters, the table says {table}M"
        );
    }
}

#[test]
fn info_is_instant_and_allocates_nothing() {
    let start = Instant::now();
    let i = info(&arch("resnet152", 192, true, 224)).unwrap();
    assert!(start.elapsed().as_secs_f64() < 1.0, "{:?}", start.elapsed());
    assert_eq!(i.feature_dim, 6144);
    // Head: two 6144² dense layers with BN (γ, β), then 6144→128 with BN γ only.
    assert_eq!(
        i.head_params,
        2 * (6144 * 6144 + 2 * 6144) + 6144 * 128 + 128
    );
    let json = serde_json::to_value(&i).unwrap();
    for key in ["encoder_params", "head_params", "feature_dim"] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert!(i.to_string().contains("resnet152 3×+SK"), "{i}");
}

#[test]
fn shape_pass_equals_the_allocated_model() {
    for a in [
        arch("resnet50", 8, true, 224),
        arch("resnet18", 8, false, 32),
    ] {
        let spec = ModelSpec {
            arch: a,
            head_layers: 3,
            proj_dim: 16,
            num_classes: Some(5),
        };
        let shapes = param_shapes(&spec).unwrap();
        let model = Model::new(&spec, 1).unwrap();
        assert_eq!(shapes.params.len(), model.store.params.len());
        for (s, p) in shapes.params.iter().zip(&model.store.params) {
            assert_eq!(
                (&s.name, &s.shape, s.kind),
                (&p.name, &p.value.shape, p.kind)
            );
        }
        assert_eq!(shapes.count(""), model.num_params());
    }
}

#[test]
fn parameter_names() {
    let names = |a: Arch| -> Vec<String> {
        let spec = ModelSpec {
            arch: a,
            head_layers: 0,
            proj_dim: 1,
            num_classes: None,
        };
        let shapes = param_shapes(&spec).unwrap().params;
        shapes
            .into_iter()
            .map(|p| format!("{} {:?}", p.name, p.shape))
            .collect()
    };
    // The plain networks keep the names of earlier versions (checkpoint keys).
    let plain = names(arch("resnet50", 64, false, 224));
    for want in [
        "encoder.stem.conv.weight [64, 7, 7, 3]",
        "encoder.stem.bn.gamma [64]",
        "encoder.stage1.0.shortcut.conv.weight [256, 1, 1, 64]",
        "encoder.stage2.0.b.conv.weight [128, 3, 3, 128]",
        "encoder.stage4.2.c.bn.running_var [2048]",
    ] {
        assert!(plain.iter().any(|n| n == want), "{want} missing");
    }
    // SK ResNet-D: the deep stem, the two-stream conv and its mixing layers.
    let sk = names(arch("resnet50", 64, true, 224));
    for want in [
        "encoder.stem.0.conv.weight [32, 3, 3, 3]",
        "encoder.stem.1.conv.weight [32, 3, 3, 32]",
        "encoder.stem.2.conv.weight [64, 3, 3, 32]",
        "encoder.stage1.0.b.conv.weight [128, 3, 3, 64]",
        "encoder.stage1.0.b.bn.gamma [128]",
        "encoder.stage1.0.b.sk_reduce.conv.weight [32, 1, 1, 64]",
        "encoder.stage1.0.b.sk_reduce.bn.beta [32]",
        "encoder.stage1.0.b.sk_expand.conv.weight [128, 1, 1, 32]",
        "encoder.stage4.0.b.sk_reduce.conv.weight [32, 1, 1, 512]",
        "encoder.stage2.0.shortcut.conv.weight [512, 1, 1, 256]",
    ] {
        assert!(sk.iter().any(|n| n == want), "{want} missing");
    }
    // At 32 px the stem is the single 3×3 conv, SK or not.
    let small = names(arch("resnet50", 64, true, 32));
    assert!(small.contains(&"encoder.stem.conv.weight [64, 3, 3, 3]".to_string()));
}

#[test]
fn bad_arch_is_a_clear_error() {
    let spec = |a| ModelSpec {
        arch: a,
        head_layers: 3,
        proj_dim: 128,
        num_classes: None,
    };
    for (a, needle) in [
        (arch("resnet200", 64, false, 224), "resnet200"),
        (arch("resnet50", 1, true, 224), "width 1"),
        (arch("resnet50", 0, false, 224), "width 0"),
    ] {
        let err = Model::new(&spec(a.clone()), 0).err().unwrap().to_string();
        assert!(err.contains(needle), "{err}");
        assert!(info(&a).is_err());
    }
}

/// A checkpoint written before `sk` existed reads as sk = false.
#[test]
fn arch_without_sk_field_loads() {
    let a: Arch =
        serde_json::from_str(r#"{"name":"resnet18","width":64,"in_channels":3,"image_size":224}"#)
            .unwrap();
    assert!(!a.sk);
}

/// The emulator under one schedule (the kernels' own tests run all four; whole networks under
/// each would only multiply the time), and the real GPU when present.
fn gpu_devices() -> Vec<(String, Device)> {
    common::gpus_one_schedule()
        .into_iter()
        .map(|(name, gpu)| (name, Device::Gpu(gpu)))
        .collect()
}

/// A model with every BN γ and β drawn at random, so that no residual branch starts as the
/// identity and every layer shows in the output and the gradients. The last BN of each block
/// (γ = 0 at initialisation) gets a small γ: with γ ~ 1 there, the gradients of a deep
/// batch-normalised network explode with depth, and f32 itself (cpu against f64) is then off
/// by up to 10% — a comparison between devices would measure that chaos, not the kernels.
fn random_model(spec: &ModelSpec) -> Model {
    let mut model = Model::new(spec, 11).unwrap();
    let mut rng = Rng::new(12);
    for p in &mut model.store.params {
        let (lo, hi) = if p.name.ends_with(".gamma") && p.value.to_f32_vec()[0] == 0.0 {
            (0.1, 0.3)
        } else if p.name.ends_with(".gamma") {
            (0.8, 1.2)
        } else if p.name.ends_with(".beta") {
            (-0.2, 0.2)
        } else {
            continue;
        };
        let v: Vec<f32> = (0..p.value.numel())
            .map(|_| rng.range(lo, hi) as f32)
            .collect();
        p.value = Tensor::from_vec(&p.value.shape, v);
    }
    model
}

/// `n` random images that differ in their global statistics (image i scaled by 0.5 + 0.3·i and
/// shifted per channel). Two images of the same noise would have nearly equal global means,
/// and batch norm over the SK conv's pooled [N, 1, 1, C] features (statistics over N images
/// only) would then amplify f32 rounding by orders of magnitude.
fn images(n: usize, size: usize, seed: u64) -> Vec<f32> {
    let mut x = common::random(n * size * size * 3, seed);
    for (i, v) in x.iter_mut().enumerate() {
        let (image, c) = ((i / (size * size * 3)) as f32, (i % 3) as f32);
        *v = *v * (0.5 + 0.3 * image) + 0.3 * (c - 1.0) * (image - 1.5);
    }
    x
}

/// Encoder features of a 2-image batch, in training mode (batch statistics) or evaluation
/// mode (running statistics). Without the projection head: its batch norms over 2 samples map
/// every dimension to about ±γ, and only rounding-sensitive near-ties differ from that.
fn features(spec: &ModelSpec, device: &Device, x: &[f32], train: bool, dtype: DType) -> Vec<f32> {
    let mut model = random_model(spec);
    for p in &mut model.store.params {
        p.value = p.value.to_dtype(dtype);
    }
    model.to_device(device);
    let s = spec.arch.image_size;
    let batch = Tensor::from_vec(&[2, s, s, 3], x.to_vec()).to_dtype(dtype);
    let mut g = Graph::new(false);
    let input = g.input(batch.to_device(device));
    let (features, _) = model.forward(&mut g, input, train);
    device.check().unwrap();
    g.value(features).to_f32_vec()
}

/// Each case's features on the GPU device against the cpu's, in both modes: equal within 1e-4
/// (rel L2). In training mode, an SK network's batch norm over the 2 images' pooled features
/// can make f32 itself that far from the exact result (two near-equal values per channel); so
/// there a larger difference is accepted when the GPU device is as close to the exact (f64,
/// cpu) features as the cpu's f32 features are.
fn check_forward(cases: &[(&str, usize, bool)], image_size: usize) {
    let x = images(2, image_size, 5);
    for &(name, width, sk) in cases {
        let spec = ModelSpec {
            arch: arch(name, width, sk, image_size),
            head_layers: 0,
            proj_dim: 1,
            num_classes: None,
        };
        // The 1× cases (seconds each on the emulator) in training mode only.
        let modes: &[bool] = if width >= 64 { &[true] } else { &[false, true] };
        for &train in modes {
            let case = format!("{name} width {width} sk {sk} at {image_size} px, train {train}");
            let start = Instant::now();
            let want = features(&spec, &Device::Cpu, &x, train, DType::F32);
            let cpu_s = start.elapsed().as_secs_f64();
            assert_eq!(want.len(), 2 * spec.arch.feature_dim());
            for (device_name, device) in gpu_devices() {
                let start = Instant::now();
                let got = features(&spec, &device, &x, train, DType::F32);
                let gpu_s = start.elapsed().as_secs_f64();
                let err = common::rel_l2(&got, &want);
                eprintln!(
                    "{case}: cpu {cpu_s:.2} s, {device_name} {gpu_s:.2} s, rel err {err:.1e}"
                );
                if err < 1e-4 {
                    continue;
                }
                assert!(train, "{device_name}: {case} off by {err:.2e}");
                let exact = features(&spec, &Device::Cpu, &x, train, DType::F64);
                let (gpu_err, cpu_err) =
                    (common::rel_l2(&got, &exact), common::rel_l2(&want, &exact));
                assert!(
                    gpu_err <= 4.0 * cpu_err,
                    "{device_name}: {case} off by {err:.2e} from the cpu, by {gpu_err:.2e} from \
                     f64 (the cpu by {cpu_err:.2e})"
                );
            }
        }
    }
}

/// Every depth, plain and SK, at 32 px (the small-image stem), width 8; and the real 1× width
/// for ResNet-18 and ResNet-50+SK.
#[test]
fn forward_32px_matches_cpu() {
    check_forward(
        &[
            ("resnet8", 8, false),
            ("resnet8", 8, true),
            ("resnet18", 8, false),
            ("resnet18", 64, false),
            ("resnet18", 8, true),
            ("resnet34", 8, false),
            ("resnet34", 8, true),
            ("resnet50", 8, false),
            ("resnet50", 8, true),
            ("resnet50", 64, true),
            ("resnet101", 8, false),
            ("resnet101", 8, true),
            ("resnet152", 8, false),
            ("resnet152", 8, true),
        ],
        32,
    );
}

/// Every depth, plain and SK, at 224 px (the 7×7 stem and the ResNet-D stem), width 8.
#[test]
fn forward_224px_matches_cpu() {
    check_forward(
        &[
            ("resnet8", 8, false),
            ("resnet8", 8, true),
            ("resnet18", 8, false),
            ("resnet18", 8, true),
            ("resnet34", 8, false),
            ("resnet34", 8, true),
            ("resnet50", 8, false),
            ("resnet50", 8, true),
            ("resnet101", 8, false),
            ("resnet101", 8, true),
            ("resnet152", 8, false),
            ("resnet152", 8, true),
        ],
        224,
    );
}

/// A network for pretraining: `arch` and the 3-layer projection head to `proj_dim`.
fn pretraining_spec(arch: Arch, proj_dim: usize) -> ModelSpec {
    ModelSpec {
        arch,
        head_layers: 3,
        proj_dim,
        num_classes: None,
    }
}

/// The tape of a pretraining step on `batch` (two views of its images): encoder, head,
/// L2 normalisation and NT-Xent at τ = 0.1, on the batch's device. Returns it and the loss.
fn pretraining_tape(model: &mut Model, batch: Tensor) -> (Graph, simclr::autograd::Var) {
    let mut g = Graph::new(true);
    let input = g.input(batch);
    let (_, out) = model.forward(&mut g, input, true);
    let z = ops::normalize::l2_normalize(&mut g, out);
    let loss = ops::ntxent::ntxent(&mut g, z, 0.1);
    (g, loss)
}

/// One pretraining step of an SK ResNet-D (ResNet-50, width 8, 64 px so that the deep stem
/// runs): NT-Xent over 4 pairs through the 3-layer head. The loss must equal the cpu's, and
/// every parameter gradient must be as close to the exact (f64, cpu) gradient as the cpu's
/// f32 gradient is, or within 1e-4 of it. Not simply "equal to the cpu's within 1e-4": the
/// gradient of the SK mixing layers passes through batch norm over the N pooled images (8
/// values per channel), and there f32 itself, on the cpu, is off by up to 1e-3.
#[test]
fn sk_training_step_matches_cpu() {
    let spec = pretraining_spec(arch("resnet50", 8, true, 64), 16);
    let x = images(8, 64, 6);
    let step = |device: &Device, dtype: DType| -> (f64, Vec<(usize, Vec<f32>)>) {
        let mut model = random_model(&spec);
        for p in &mut model.store.params {
            p.value = p.value.to_dtype(dtype);
        }
        model.to_device(device);
        let batch = Tensor::from_vec(&[8, 64, 64, 3], x.clone()).to_dtype(dtype);
        let (mut g, loss) = pretraining_tape(&mut model, batch.to_device(device));
        g.backward(loss);
        let loss = g.value(loss).item();
        let grads = g.param_grads();
        device.check().unwrap();
        let grads = grads.iter().map(|(id, t)| (*id, t.to_f32_vec())).collect();
        (loss, grads)
    };
    let (_, exact) = step(&Device::Cpu, DType::F64);
    let (loss, cpu) = step(&Device::Cpu, DType::F32);
    let names: Vec<String> = param_shapes(&spec)
        .unwrap()
        .params
        .into_iter()
        .map(|p| p.name)
        .collect();
    for (device_name, device) in gpu_devices() {
        let (gloss, gpu) = step(&device, DType::F32);
        assert!(
            (gloss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
            "{device_name}: loss {gloss} vs cpu {loss}"
        );
        assert_eq!(gpu.len(), cpu.len());
        for (((id, got), (_, want)), (_, exact)) in gpu.iter().zip(&cpu).zip(&exact) {
            let (err, cpu_err) = (common::rel_l2(got, exact), common::rel_l2(want, exact));
            assert!(
                err <= (4.0 * cpu_err).max(1e-4),
                "{device_name}: gradient of {} off by {err:.2e} (the cpu's by {cpu_err:.2e})",
                names[*id]
            );
        }
    }
}

/// The backward hands each parameter's gradient out once, as soon as it is final (data
/// parallelism starts averaging it then): snapshots taken at hand-off equal the gradients of
/// the whole backward, for a network whose blocks add a skip path to their output (SK: a
/// parameter's gradient accumulates over several nodes).
#[test]
fn gradients_handed_out_during_the_backward_are_final() {
    let spec = pretraining_spec(arch("resnet8", 4, true, 16), 8);
    let x = Tensor::from_vec(&[4, 16, 16, 3], images(4, 16, 9));
    let mut model = random_model(&spec);
    let graph = |model: &mut Model| pretraining_tape(model, x.clone());
    let (mut g, loss) = graph(&mut model);
    g.backward(loss);
    let want: std::collections::BTreeMap<usize, Vec<f32>> = g
        .param_grads()
        .into_iter()
        .map(|(id, t)| (id, t.to_f32_vec()))
        .collect();
    let (mut g, loss) = graph(&mut model);
    let mut got = std::collections::BTreeMap::new();
    let mut order = Vec::new();
    g.backward_with(loss, &mut |id, t| {
        order.push(id);
        assert!(
            got.insert(id, t.to_f32_vec()).is_none(),
            "parameter {id} handed out twice"
        );
    });
    assert_eq!(got, want);
    // Handed out as the backward goes: the head's last layer first, the stem last.
    assert!(order.first() > order.last(), "{order:?}");
}
