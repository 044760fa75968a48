//! One whole training step (forward, loss, backward, LARS) of a network, on random images:
//! - ResNet-18 with the small-image stem at batch 64 on 28×28×1, on the cpu: the figure
//!   BENCHMARKS.md compares with PyTorch (scripts/bench_pytorch.py runs the same step);
//! - the default preset's pretraining step on the cpu, ResNet-8 of width 16 on 512 views
//!   (`scripts/bench_pytorch.py --arch resnet8 --batch 512` runs the same step);
//! - the same step on the GPU device: the real GPU, or else the emulator at batch 2;
//! - on a real GPU only, the SimCLR step of ResNet-50 at 224×224×3 on 512 views (256 images,
//!   two views each, as the paper's smallest batch; `scripts/bench_pytorch.py --device cuda`
//!   times the same step). The case names count views: `_b512_`.
//!
//! Two variants, as the paper's two losses: `ntxent`, the 3-layer projection head and NT-Xent
//! over B/2 positive pairs; `xent`, a linear classifier and softmax cross-entropy. On the GPU
//! devices each is timed launch by launch and, as `_graph`, recorded and replayed as a CUDA
//! graph as the trainer runs it (device::cuda::graph).

mod common;

use common::Work;
use criterion::Criterion;
use simclr::autograd::Graph;
use simclr::device::cpu::gemm_bf16;
use simclr::device::Device;
use simclr::nn::model::{Model, ModelSpec};
use simclr::nn::resnet::Arch;
use simclr::ops;
use simclr::optim::{Optimizer, OptimizerKind};
use simclr::rng::Rng;
use simclr::tensor::{DType, Tensor};

#[derive(Clone, Copy)]
enum Variant {
    Ntxent,
    Xent,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Ntxent => "ntxent",
            Variant::Xent => "xent",
        }
    }
}

/// A network, its input images and batch.
struct Case {
    arch: &'static str,
    width: usize,
    image: usize,
    channels: usize,
    batch: usize,
    variants: &'static [Variant],
}

fn spec(case: &Case, variant: Variant) -> ModelSpec {
    let (head_layers, num_classes) = match variant {
        Variant::Ntxent => (3, None),
        Variant::Xent => (0, Some(10)),
    };
    ModelSpec {
        arch: Arch {
            name: case.arch.into(),
            width: case.width,
            in_channels: case.channels,
            image_size: case.image,
            sk: false,
        },
        head_layers,
        proj_dim: 128,
        num_classes,
    }
}

fn step(model: &mut Model, opt: &mut Optimizer, x: &Tensor, labels: Option<&[u32]>) {
    let batch = x.shape[0];
    let mut g = Graph::new(true);
    let input = g.input(x.clone());
    let (_, out) = model.forward(&mut g, input, true);
    let loss = match labels {
        Some(labels) => ops::loss::softmax_cross_entropy(&mut g, out, labels),
        None => {
            let z = ops::normalize::l2_normalize(&mut g, out);
            ops::ntxent::ntxent(&mut g, z, 0.1)
        }
    };
    g.backward(loss);
    let grads = g.param_grads();
    opt.step(&mut model.store, &grads, 0.3 * batch as f64 / 256.0);
}

/// Times each variant's step of `case` on `device`, as `train_step/<arch>_<image>_b<batch>_<variant>`.
fn bench_step(c: &mut Criterion, device: &Device, case: &Case) {
    let mut rng = Rng::new(0);
    let shape = [case.batch, case.image, case.image, case.channels];
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.normal() as f32)
        .collect();
    let x = Tensor::from_vec(&shape, values).to_device(device);
    let labels: Vec<u32> = (0..case.batch).map(|_| rng.below(10) as u32).collect();
    // On the cpu, bf16 keeps f32 activations and takes bf16 products in every gemm, as
    // `--precision bf16` does there.
    let precisions = match device {
        Device::Cpu => vec![DType::F32, DType::BF16],
        Device::Gpu(_) => common::precisions(device),
    };
    for (&variant, &dtype) in case
        .variants
        .iter()
        .flat_map(|v| precisions.iter().map(move |p| (v, p)))
    {
        let products = matches!(device, Device::Cpu) && dtype == DType::BF16;
        gemm_bf16::set_products(products);
        // On a GPU, bf16 images run the network in bf16, as `--precision bf16` does.
        let x = if products {
            x.clone()
        } else {
            common::cast(&x, dtype)
        };
        let mut model = Model::new(&spec(case, variant), 0).unwrap();
        model.to_device(device);
        let mut opt = Optimizer::new(OptimizerKind::Lars, 1e-6, &model.store);
        let labels = match variant {
            Variant::Ntxent => None,
            Variant::Xent => Some(labels.as_slice()),
        };
        let name = format!(
            "{}_{}_{}x{}x{}_b{}_{}",
            dtype.name(),
            case.arch,
            case.image,
            case.image,
            case.channels,
            case.batch,
            variant.name()
        );
        let images = Work::Images(case.batch as f64);
        common::time(c, "train_step", &name, device, images, |_| {
            step(&mut model, &mut opt, &x, labels)
        });
        if let Device::Gpu(gpu) = device {
            let name = format!("{name}_graph");
            common::time(c, "train_step", &name, device, images, |_| {
                gpu.begin_step();
                step(&mut model, &mut opt, &x, labels);
                gpu.end_step();
            });
        }
    }
    gemm_bf16::set_products(false);
}

fn main() {
    let setup = common::setup(
        "train_step",
        "ResNet-18 28×28×1 batch 64 on the cpu and the GPU, ResNet-8 512 views on the cpu; ResNet-50 224 px, 512 views, on the GPU",
        "ResNet-18 28×28×1 at batch 64 and ResNet-8 at 512 views on the cpu, batch 2 on the emulator",
    );
    // The first device is the real GPU or, without one, the emulator.
    let gpu = &setup.devices[0];
    let both = &[Variant::Ntxent, Variant::Xent];
    let resnet18 = |batch| Case {
        arch: "resnet18",
        width: 64,
        image: 28,
        channels: 1,
        batch,
        variants: both,
    };
    let resnet8 = Case {
        arch: "resnet8",
        width: 16,
        image: 28,
        channels: 1,
        batch: 512,
        variants: &[Variant::Ntxent],
    };
    let mut cases = vec![
        (Device::Cpu, resnet18(64)),
        (Device::Cpu, resnet8),
        (gpu.clone(), resnet18(if setup.full { 64 } else { 2 })),
    ];
    if setup.full {
        let resnet50 = Case {
            arch: "resnet50",
            width: 64,
            image: 224,
            channels: 3,
            batch: 512,
            variants: &[Variant::Ntxent],
        };
        cases.push((gpu.clone(), resnet50));
    }
    let mut c = common::criterion(&setup);
    for (device, case) in &cases {
        bench_step(&mut c, device, case);
    }
    c.final_summary();
}
