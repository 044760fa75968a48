//! Whole training steps on the GPU device (the emulator here; the real GPU too when present)
//! against the cpu device: the loss, every parameter gradient and the updated parameters must
//! agree, in f32 and in bf16 mixed precision. Also the device-memory promises: no driver
//! allocation after the first step, NT-Xent's extra memory O(N·d), and bf16 halving the tape.

mod common;

use simclr::autograd::Graph;
use simclr::backend;
use simclr::device::cuda::{ntxent, Gpu};
use simclr::device::Device;
use simclr::nn::model::{Model, ModelSpec};
use simclr::nn::resnet::Arch;
use simclr::ops;
use simclr::optim::{Optimizer, OptimizerKind};
use simclr::tensor::{DType, Tensor};

struct Case {
    spec: ModelSpec,
    batch: usize,
    /// Labels for a classifier (cross-entropy); None: NT-Xent through the projection head.
    labels: Option<Vec<u32>>,
    optimizer: OptimizerKind,
}

fn cases() -> Vec<Case> {
    let arch = |width, in_channels, image_size| Arch {
        name: "resnet8".into(),
        width,
        in_channels,
        image_size,
        sk: false,
    };
    vec![
        // Pretraining: small-image stem, 3-layer head, NT-Xent over 3 pairs, LARS.
        Case {
            spec: ModelSpec {
                arch: arch(8, 1, 12),
                head_layers: 3,
                proj_dim: 16,
                num_classes: None,
            },
            batch: 6,
            labels: None,
            optimizer: OptimizerKind::Lars,
        },
        // Fine-tuning: ImageNet stem (7×7/2 conv, max pool), classifier, SGD.
        Case {
            spec: ModelSpec {
                arch: arch(4, 3, 64),
                head_layers: 1,
                proj_dim: 8,
                num_classes: Some(5),
            },
            batch: 2,
            labels: Some(vec![3, 1]),
            optimizer: OptimizerKind::Sgd,
        },
    ]
}

/// The images on `device` as `precision` (bf16 makes the encoder run in bf16).
fn images(shape: &[usize], x: &[f32], device: &Device, precision: DType) -> Tensor {
    let x = Tensor::from_vec(shape, x.to_vec()).to_device(device);
    backend::of(&x).cast(&x, precision)
}

/// One step on `device` with the encoder in `precision`: returns the loss, the gradients (in
/// store order) and the parameters after the optimiser's update, all read back to the host.
fn step(
    case: &Case,
    device: &Device,
    precision: DType,
    x: &[f32],
) -> (f64, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut model = Model::new(&case.spec, 11).unwrap();
    model.to_device(device);
    let a = &case.spec.arch;
    let shape = [case.batch, a.image_size, a.image_size, a.in_channels];
    let mut g = Graph::new(true);
    let input = g.input(images(&shape, x, device, precision));
    let (_, out) = model.forward(&mut g, input, true);
    let loss = match &case.labels {
        Some(labels) => ops::loss::softmax_cross_entropy(&mut g, out, labels),
        None => {
            let z = ops::normalize::l2_normalize(&mut g, out);
            ops::ntxent::ntxent(&mut g, z, 0.1)
        }
    };
    g.backward(loss);
    let loss = g.value(loss).item();
    let grads = g.param_grads();
    let mut opt = Optimizer::new(case.optimizer, 1e-4, &model.store);
    opt.step(&mut model.store, &grads, 0.5);
    device.check().unwrap();
    let grads = grads.iter().map(|(_, t)| t.to_f32_vec()).collect();
    let params = model
        .store
        .params
        .iter()
        .map(|p| p.value.to_f32_vec())
        .collect();
    (loss, grads, params)
}

#[test]
fn training_step_matches_cpu() {
    for case in cases() {
        let a = &case.spec.arch;
        let x = common::random(case.batch * a.image_size * a.image_size * a.in_channels, 5);
        let (loss, grads, params) = step(&case, &Device::Cpu, DType::F32, &x);
        let names: Vec<String> = {
            let m = Model::new(&case.spec, 11).unwrap();
            m.store.params.iter().map(|p| p.name.clone()).collect()
        };
        for (name, gpu) in common::gpus() {
            let (gloss, ggrads, gparams) = step(&case, &Device::Gpu(gpu), DType::F32, &x);
            assert!(
                (gloss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
                "{name}: loss {gloss} vs cpu {loss}"
            );
            assert_eq!(ggrads.len(), grads.len());
            for (i, (got, want)) in ggrads.iter().zip(&grads).enumerate() {
                let err = common::rel_l2(got, want);
                assert!(err < 1e-4, "{name}: gradient {i} off by {err:.2e}");
            }
            for ((got, want), pname) in gparams.iter().zip(&params).zip(&names) {
                let err = common::rel_l2(got, want);
                assert!(
                    err < 1e-5,
                    "{name}: {pname} after the update off by {err:.2e}"
                );
            }
        }
    }
}

/// The bf16 step (bf16 activations and activation gradients, f32 weights, BN statistics and
/// losses) against the f32 cpu step on the same inputs: the loss within 1%, and all gradients
/// together, and all parameter updates (after − before) together, within 15% relative L2
/// (cosine similarity above 0.99). bf16 rounds every stored activation by up to 2^-9; this
/// NT-Xent step at τ = 0.1 over 6 views is sensitive to that: perturbing only its images by
/// 0.4% moves the f32 gradients by 2.6%, and the bf16 step measures 8.5% (updates 10.5%; the
/// classifier step 0.8%), against ~1e-6 for the f32 step on the GPU.
#[test]
fn bf16_training_step_matches_f32_cpu() {
    for case in cases() {
        let a = &case.spec.arch;
        let x = common::random(case.batch * a.image_size * a.image_size * a.in_channels, 5);
        let (loss, grads, params) = step(&case, &Device::Cpu, DType::F32, &x);
        let before: Vec<f32> = Model::new(&case.spec, 11)
            .unwrap()
            .store
            .params
            .iter()
            .flat_map(|p| p.value.to_f32_vec())
            .collect();
        let update = |after: &[Vec<f32>]| -> Vec<f32> {
            after
                .concat()
                .iter()
                .zip(&before)
                .map(|(a, b)| a - b)
                .collect()
        };
        for (name, gpu) in common::gpus() {
            let (gloss, ggrads, gparams) = step(&case, &Device::Gpu(gpu), DType::BF16, &x);
            assert!(
                (gloss - loss).abs() <= 1e-2 * loss.abs(),
                "{name}: bf16 loss {gloss} vs cpu f32 {loss}"
            );
            let grad_err = common::rel_l2(&ggrads.concat(), &grads.concat());
            let update_err = common::rel_l2(&update(&gparams), &update(&params));
            // Printed for the GPU suite's log and BENCHMARKS.md.
            println!(
                "{name}, {} step: bf16 loss {gloss:.5} vs f32 {loss:.5}, gradients off by \
                 {grad_err:.2e}, updates by {update_err:.2e}",
                if case.labels.is_some() {
                    "classifier"
                } else {
                    "NT-Xent"
                }
            );
            assert!(
                grad_err < 0.15,
                "{name}: bf16 gradients off by {grad_err:.2e}"
            );
            assert!(
                update_err < 0.15,
                "{name}: bf16 updates off by {update_err:.2e}"
            );
        }
    }
}

#[test]
fn no_driver_allocation_after_the_first_step() {
    for (name, gpu) in common::gpus_one_schedule() {
        driver_allocations_settle(&name, gpu);
    }
}

fn driver_allocations_settle(name: &str, gpu: Gpu) {
    let case = &cases()[0];
    let a = &case.spec.arch;
    let x = common::random(case.batch * a.image_size * a.image_size * a.in_channels, 6);
    let device = Device::Gpu(gpu.clone());
    let mut model = Model::new(&case.spec, 3).unwrap();
    model.to_device(&device);
    let mut opt = Optimizer::new(OptimizerKind::Lars, 1e-6, &model.store);
    let shape = [case.batch, a.image_size, a.image_size, a.in_channels];
    let mut driver_allocs = Vec::new();
    for _ in 0..3 {
        let mut g = Graph::new(true);
        let input = g.input(Tensor::from_vec(&shape, x.clone()).to_device(&device));
        let (_, out) = model.forward(&mut g, input, true);
        let z = ops::normalize::l2_normalize(&mut g, out);
        let loss = ops::ntxent::ntxent(&mut g, z, 0.1);
        g.backward(loss);
        let grads = g.param_grads();
        opt.step(&mut model.store, &grads, 0.1);
        device.check().unwrap();
        drop((g, grads));
        driver_allocs.push(gpu.memory().driver_allocs);
    }
    // The first step fills the cache; from then on nothing new is asked of the driver.
    assert_eq!(
        driver_allocs[0], driver_allocs[2],
        "{name}: driver allocations after each step: {driver_allocs:?}"
    );
}

/// NT-Xent's extra device memory, beyond its inputs and outputs, is O(N): the log-sum-exp of
/// each row. At the size, 2N = 8192 and d = 128, the 2N×2N similarity matrix alone
/// would be 256 MiB; the kernel's peak must stay within a small multiple of 2N floats (plus
/// allocator granules). About 10 s on the emulator.
#[test]
fn ntxent_memory_is_linear() {
    for (name, gpu) in common::gpus_one_schedule() {
        ntxent_extra_memory(&name, gpu);
    }
}

fn ntxent_extra_memory(name: &str, gpu: Gpu) {
    let (rows, d) = (8192, 128);
    let mut z = common::random(rows * d, 9);
    for row in z.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let z = gpu.upload(&z);
    let mut loss = gpu.alloc_f32(1);
    let mut grad = gpu.alloc_f32(rows * d);
    let before = gpu.memory().in_use;
    gpu.reset_peak_memory();
    ntxent::ntxent(&gpu, rows, d, &z, 0.1, &mut loss, &mut grad);
    gpu.check().unwrap();
    let extra = gpu.memory().peak - before;
    let similarity_matrix = rows * rows * 4;
    assert!(
        extra <= 16 * rows * 4 + 4096,
        "{name}: NT-Xent used {extra} extra bytes at 2N = {rows}, d = {d} (the similarity matrix would be {similarity_matrix})"
    );
    assert!(gpu.download::<f32>(&loss)[0].is_finite());
}

/// bf16 halves the tape: one ResNet-50 step (a quarter of the standard width: 16 base
/// channels; 4 views of 64×64, NT-Xent through the 3-layer head, LARS) on the emulator in f32 and in bf16, measuring the device memory the forward pass
/// leaves for the backward (in use after the loss minus in use before: the saved activations)
/// and the step's high-water mark above the resident model. Printed for BENCHMARKS.md; the
/// bf16 tape must be at most 60% of the f32 one (bf16 activations are half the bytes; BN's
/// statistics, the head and the loss stay f32).
#[test]
fn bf16_halves_the_tape() {
    let (name, gpu) = common::gpus_one_schedule().remove(0);
    let spec = ModelSpec {
        arch: Arch {
            name: "resnet50".into(),
            width: 16,
            in_channels: 3,
            image_size: 64,
            sk: false,
        },
        head_layers: 3,
        proj_dim: 128,
        num_classes: None,
    };
    let shape = [4, 64, 64, 3];
    let x = common::random(shape.iter().product(), 8);
    let device = Device::Gpu(gpu.clone());
    let mut tape = Vec::new();
    for precision in [DType::F32, DType::BF16] {
        let mut model = Model::new(&spec, 1).unwrap();
        model.to_device(&device);
        let mut opt = Optimizer::new(OptimizerKind::Lars, 1e-6, &model.store);
        device.check().unwrap();
        let resident = gpu.memory().in_use;
        gpu.reset_peak_memory();
        let mut g = Graph::new(true);
        let input = g.input(images(&shape, &x, &device, precision));
        let (_, out) = model.forward(&mut g, input, true);
        let z = ops::normalize::l2_normalize(&mut g, out);
        let loss = ops::ntxent::ntxent(&mut g, z, 0.1);
        let saved = gpu.memory().in_use - resident;
        g.backward(loss);
        let grads = g.param_grads();
        opt.step(&mut model.store, &grads, 0.1);
        device.check().unwrap();
        let peak = gpu.memory().peak - resident;
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "{name}: ResNet-50 (width 16) step, 4 views of 64x64, {precision:?}: tape {:.1} MiB, \
             high-water {:.1} MiB above the resident model ({:.1} MiB)",
            mib(saved),
            mib(peak),
            mib(resident)
        );
        tape.push(saved);
    }
    assert!(
        tape[1] * 10 <= tape[0] * 6,
        "{name}: bf16 tape {} bytes vs f32 {}",
        tape[1],
        tape[0]
    );
}
