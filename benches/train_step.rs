//! One training step (forward, loss, backward, LARS) of a ResNet-18 with the small-image
//! stem at batch 64 on 28×28×1 inputs, on the CPU: the figure BENCHMARKS.md compares with
//! PyTorch (scripts/bench_pytorch.py runs the same step). Two variants, as the paper's two
//! losses: NT-Xent over 32 positive pairs through the 3-layer projection head, and softmax
//! cross-entropy through a linear classifier.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use simclr::autograd::Graph;
use simclr::nn::model::{Model, ModelSpec};
use simclr::nn::resnet::Arch;
use simclr::ops;
use simclr::optim::{Optimizer, OptimizerKind};
use simclr::rng::Rng;
use simclr::tensor::Tensor;

const BATCH: usize = 64;

fn spec(head_layers: usize, num_classes: Option<usize>) -> ModelSpec {
    ModelSpec {
        arch: Arch {
            name: "resnet18".into(),
            width: 64,
            in_channels: 1,
            image_size: 28,
        },
        head_layers,
        proj_dim: 128,
        num_classes,
    }
}

fn step(model: &mut Model, opt: &mut Optimizer, x: &Tensor, labels: Option<&[u32]>) {
    let mut g = Graph::new(true);
    let input = g.input(x.clone());
    let (_, out) = model.forward(&mut g, input, true);
    let loss = match labels {
        Some(labels) => ops::loss::softmax_cross_entropy(&mut g, out, labels),
        None => {
            let z = ops::normalize::l2_normalize(&mut g, out);
            ops::loss::ntxent(&mut g, z, 0.1)
        }
    };
    g.backward(loss);
    let grads = g.param_grads();
    opt.step(&mut model.store, &grads, 0.3 * BATCH as f64 / 256.0);
}

fn bench(c: &mut Criterion) {
    simclr::device::cpu::keep_freed_memory();
    let mut rng = Rng::new(0);
    let values: Vec<f32> = (0..BATCH * 28 * 28).map(|_| rng.normal() as f32).collect();
    let x = Tensor::from_vec(&[BATCH, 28, 28, 1], values);
    let labels: Vec<u32> = (0..BATCH).map(|_| rng.below(10) as u32).collect();

    let mut group = c.benchmark_group("resnet18_step_b64_28x28x1_cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, spec, labels) in [
        ("ntxent", spec(3, None), None),
        ("xent", spec(0, Some(10)), Some(labels.as_slice())),
    ] {
        let mut model = Model::new(&spec, 0).unwrap();
        let mut opt = Optimizer::new(OptimizerKind::Lars, 1e-6);
        group.bench_function(name, |b| b.iter(|| step(&mut model, &mut opt, &x, labels)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
