//! Convolution kernels (kernels/conv.cu in f32, kernels/conv_tc.cu in bf16: the precisions of
//! `common::precisions`, bf16 alone on a real GPU) on the convolutions of ResNet-50 (v1.5: the stride
//! sits on the 3×3) as the SimCLR step runs them: 512 views (256 images) at 224 px. The 7×7/2
//! stem, each stage's 1×1 reduce, 3×3 and 1×1 expand, and the stride-2 3×3 and 1×1 shortcut
//! that open stages 2–4 (every distinct shape of the network); each as forward, input gradient
//! and weight gradient. Rate: 2·N·P·Q·K·R·S·C FLOPs, the same for all three passes.
//! `scripts/bench_pytorch.py --device cuda` times the same shapes through cuDNN. Without a GPU:
//! the emulator and the cpu reference at batch 1 and 56 px, then the cpu on the convolutions of
//! its own two steps (ResNet-18 at batch 64, ResNet-8 on 512 views, 28 px) in f32 and with bf16
//! products, which `scripts/bench_pytorch.py --convs` times through PyTorch.

mod common;

use common::Work;
use criterion::Criterion;
use simclr::device::cpu::conv::{self as cpu, ConvShape};
use simclr::device::cpu::gemm_bf16;
use simclr::device::cuda::conv as gpu;
use simclr::device::Device;
use simclr::tensor::{DType, Tensor};

/// One convolution of the network; its input map is (image size / `div`) square.
struct Layer {
    name: String,
    c: usize,
    k: usize,
    r: usize,
    stride: usize,
    div: usize,
}

fn layer(name: String, c: usize, k: usize, r: usize, stride: usize, div: usize) -> Layer {
    Layer {
        name,
        c,
        k,
        r,
        stride,
        div,
    }
}

/// The stem, then per stage (width w, input map image/div): reduce 4w→w (the 1×1 of every block
/// after the first), 3×3 w→w, expand w→4w; stages 2–4 open with a 3×3/2 and a 1×1/2 shortcut
/// 2w→4w on the previous stage's map.
fn layers() -> Vec<Layer> {
    let mut layers = vec![layer("stem_7x7s2".into(), 3, 64, 7, 2, 1)];
    for stage in 1..=4 {
        let (w, div) = (64 << (stage - 1), 4 << (stage - 1));
        let name = |what: &str| format!("s{stage}_{what}");
        layers.push(layer(name("1x1_reduce"), 4 * w, w, 1, 1, div));
        layers.push(layer(name("3x3"), w, w, 3, 1, div));
        layers.push(layer(name("1x1_expand"), w, 4 * w, 1, 1, div));
        if stage > 1 {
            layers.push(layer(name("3x3s2"), w, w, 3, 2, div / 2));
            layers.push(layer(name("1x1s2_shortcut"), 2 * w, 4 * w, 1, 2, div / 2));
        }
    }
    layers
}

#[derive(Clone, Copy)]
enum Pass {
    Forward,
    BackwardInput,
    BackwardWeight,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "conv_forward",
            Pass::BackwardInput => "conv_backward_input",
            Pass::BackwardWeight => "conv_backward_weight",
        }
    }

    /// Lengths of the two inputs and of the output: forward x, w → y; input gradient
    /// dy, w → dx; weight gradient x, dy → dw.
    fn lens(self, s: &ConvShape) -> (usize, usize, usize) {
        let (x, w) = (s.n * s.h * s.w * s.c, s.k * s.r * s.s * s.c);
        let y = s.n * s.out_h() * s.out_w() * s.k;
        match self {
            Pass::Forward => (x, w, y),
            Pass::BackwardInput => (y, w, x),
            Pass::BackwardWeight => (x, y, w),
        }
    }
}

/// One pass on `device`: inputs `a`, `b` and output `out` as `Pass::lens` orders them.
fn run(device: &Device, pass: Pass, s: &ConvShape, a: &Tensor, b: &Tensor, out: &mut Tensor) {
    match device {
        Device::Cpu => {
            let (a, b, out) = (a.as_slice::<f32>(), b.as_slice::<f32>(), out.as_mut_slice());
            match pass {
                Pass::Forward => cpu::conv2d_forward(s, a, b, out),
                Pass::BackwardInput => cpu::conv2d_backward_input(s, a, b, out),
                Pass::BackwardWeight => cpu::conv2d_backward_weight(s, a, b, out),
            }
        }
        Device::Gpu(g) => {
            let (a, b, out) = (a.buffer(), b.buffer(), out.buffer_mut());
            match pass {
                Pass::Forward => gpu::forward(g, s, a, b, out),
                Pass::BackwardInput => gpu::backward_input(g, s, a, b, out),
                Pass::BackwardWeight => gpu::backward_weight(g, s, a, b, out),
            }
        }
    }
}

/// Times the three passes of shape `s` in `dtype` on `device` as case `case`.
fn time_passes(
    c: &mut Criterion,
    device: &Device,
    s: &ConvShape,
    dtype: DType,
    case: &str,
    seed: &mut u64,
) {
    let flops = 2.0 * (s.n * s.out_h() * s.out_w() * s.k * s.r * s.s * s.c) as f64;
    for pass in [Pass::Forward, Pass::BackwardInput, Pass::BackwardWeight] {
        let (a_len, b_len, out_len) = pass.lens(s);
        *seed += 1;
        let sets: Vec<Vec<Tensor>> = common::input_sets(device, &[a_len, b_len], *seed)
            .iter()
            .map(|set| set.iter().map(|t| common::cast(t, dtype)).collect())
            .collect();
        // The weight gradient is f32 in both precisions (the master weights').
        let out_dtype = match pass {
            Pass::BackwardWeight => DType::F32,
            _ => dtype,
        };
        let mut out = common::output_as(device, out_len, out_dtype);
        common::time(c, pass.name(), case, device, Work::Flops(flops), |i| {
            let set = &sets[i % sets.len()];
            run(device, pass, s, &set[0], &set[1], &mut out)
        });
    }
}

/// The convolutions of the cpu's two steps (benches/train_step.rs) on 28×28×1 images, as
/// (name, shape): the small-image stem (3×3/1 from one channel), then per stage (width w·2^i)
/// its first block's 3×3 (stride 2 after the first stage) and 1×1/2 projection, and the 3×3
/// w→w that every other conv of the stage repeats. ResNet-18: width 64, 4 stages; the default
/// preset's ResNet-8: width 16, 3 stages.
fn small_image_convs(batch: usize, width: usize, stages: usize) -> Vec<(String, ConvShape)> {
    let shape = |h: usize, c: usize, k: usize, r: usize, stride: usize| ConvShape {
        n: batch,
        h,
        w: h,
        c,
        k,
        r,
        s: r,
        stride,
        pad: r / 2,
    };
    let mut convs = vec![("stem_3x3".to_string(), shape(28, 1, width, 3, 1))];
    let (mut h, mut c) = (28, width);
    for stage in 1..=stages {
        let k = width << (stage - 1);
        if stage > 1 {
            convs.push((format!("s{stage}_3x3s2"), shape(h, c, k, 3, 2)));
            convs.push((format!("s{stage}_1x1s2_shortcut"), shape(h, c, k, 1, 2)));
            h = h.div_ceil(2);
        }
        convs.push((format!("s{stage}_3x3"), shape(h, k, k, 3, 1)));
        c = k;
    }
    convs
}

fn main() {
    let setup = common::setup("conv", "batch 512, 224 px", "batch 1, 56 px");
    let (batch, image): (usize, usize) = if setup.full { (512, 224) } else { (1, 56) };
    let mut c = common::criterion(&setup);
    let mut seed = 0;
    for device in &setup.devices {
        for l in layers() {
            let hw = image.div_ceil(l.div);
            let s = ConvShape {
                n: batch,
                h: hw,
                w: hw,
                c: l.c,
                k: l.k,
                r: l.r,
                s: l.r,
                stride: l.stride,
                pad: l.r / 2,
            };
            for dtype in common::precisions(device) {
                let prec = dtype.name();
                let case = format!("{prec}_{}_c{}_k{}_hw{hw}_n{batch}", l.name, l.c, l.k);
                time_passes(&mut c, device, &s, dtype, &case, &mut seed);
            }
        }
    }
    // Where the cpu is timed, also the convolutions of its own two steps at their batches, in
    // f32 and with bf16 products (`--precision bf16`: AMX tiles where the processor has them).
    // `scripts/bench_pytorch.py --convs` times the same convolutions through PyTorch.
    if setup.devices.iter().any(|d| matches!(d, Device::Cpu)) {
        for (arch, batch, width, stages) in [("resnet18", 64, 64, 4), ("resnet8", 512, 16, 3)] {
            for (name, s) in small_image_convs(batch, width, stages) {
                for bf16 in [false, true] {
                    gemm_bf16::set_products(bf16);
                    let prec = if bf16 { "bf16" } else { "f32" };
                    let (c_in, k, hw) = (s.c, s.k, s.h);
                    let case = format!("{prec}_{arch}_{name}_c{c_in}_k{k}_hw{hw}_n{batch}");
                    time_passes(&mut c, &Device::Cpu, &s, DType::F32, &case, &mut seed);
                }
                gemm_bf16::set_products(false);
            }
        }
    }
    c.final_summary();
}
