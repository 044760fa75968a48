//! Batch norm (kernels/batchnorm.cu), training forward and backward, on the activation shapes
//! of ResNet-50 at batch 32 and 224 px: after the stem (112², 64 channels) and, per stage, the
//! block's inner width w and its output width 4w. Without the fused ReLU, which the cpu
//! reference lacks. Rate: the bytes of the full-tensor passes the two-pass algorithm needs —
//! forward reads x twice and writes y (3 tensors), backward reads x and dy twice and writes dx
//! (5 tensors). Without a GPU: the emulator and the cpu reference at batch 1 and 56 px.

mod common;

use common::Work;
use simclr::device::cpu::batchnorm::{self as cpu, BnStats};
use simclr::device::cuda::batchnorm as gpu;
use simclr::device::Device;
use simclr::dist::Solo;
use simclr::tensor::Tensor;

const EPS: f64 = 1e-5;

/// (name, map size as a divisor of the image size, channels).
fn shapes() -> Vec<(String, usize, usize)> {
    let mut shapes = vec![("stem".to_string(), 2, 64)];
    for stage in 1..=4 {
        let (w, div) = (64 << (stage - 1), 4 << (stage - 1));
        shapes.push((format!("s{stage}_inner"), div, w));
        shapes.push((format!("s{stage}_out"), div, 4 * w));
    }
    shapes
}

/// The batch statistics the forward saves for the backward: f64 vectors on the cpu, device
/// buffers on a GPU.
enum Stats {
    Cpu(BnStats),
    Gpu { mean: Tensor, invstd: Tensor },
}

/// y = BN(x) with γ, β. `set` holds x, dy, γ, β.
fn forward(device: &Device, rows: usize, c: usize, set: &[Tensor], y: &mut Tensor) -> Stats {
    let (x, gamma, beta) = (&set[0], &set[2], &set[3]);
    match device {
        Device::Cpu => Stats::Cpu(cpu::forward_train(
            x.as_slice::<f32>(),
            c,
            gamma.as_slice(),
            Some(beta.as_slice()),
            EPS,
            None,
            false,
            &Solo,
            y.as_mut_slice(),
        )),
        Device::Gpu(g) => {
            let (mut mean, mut invstd) = (Tensor::gpu_output(g, &[c]), Tensor::gpu_output(g, &[c]));
            gpu::forward_train(
                g,
                rows,
                c,
                x.buffer(),
                gamma.buffer(),
                Some(beta.buffer()),
                EPS as f32,
                None,
                false,
                y.buffer_mut(),
                mean.buffer_mut(),
                invstd.buffer_mut(),
                &Solo,
            );
            Stats::Gpu { mean, invstd }
        }
    }
}

/// dx (and dγ, dβ) given dy and the forward's statistics.
fn backward(
    device: &Device,
    rows: usize,
    c: usize,
    set: &[Tensor],
    stats: &Stats,
    dx: &mut Tensor,
) {
    let (x, dy, gamma) = (&set[0], &set[1], &set[2]);
    match (device, stats) {
        (Device::Cpu, Stats::Cpu(stats)) => {
            cpu::backward(
                x.as_slice::<f32>(),
                dy.as_slice(),
                None,
                c,
                gamma.as_slice(),
                stats,
                &Solo,
                dx.as_mut_slice(),
            );
        }
        (Device::Gpu(g), Stats::Gpu { mean, invstd }) => {
            let (mut dgamma, mut dbeta) =
                (Tensor::gpu_output(g, &[c]), Tensor::gpu_output(g, &[c]));
            gpu::backward(
                g,
                rows,
                c,
                x.buffer(),
                None,
                dy.buffer(),
                gamma.buffer(),
                mean.buffer(),
                invstd.buffer(),
                dx.buffer_mut(),
                dgamma.buffer_mut(),
                Some(dbeta.buffer_mut()),
                None,
                &Solo,
            );
        }
        _ => unreachable!("statistics from another device"),
    }
}

fn main() {
    let setup = common::setup("batchnorm", "batch 32, 224 px", "batch 1, 56 px");
    let (batch, image): (usize, usize) = if setup.full { (32, 224) } else { (1, 56) };
    let mut c = common::criterion(&setup);
    let mut seed = 0;
    for device in &setup.devices {
        for (name, div, ch) in shapes() {
            let hw = image.div_ceil(div);
            let rows = batch * hw * hw;
            let n = rows * ch;
            let case = format!("{name}_c{ch}_hw{hw}_n{batch}");
            seed += 1;
            let sets = common::input_sets(device, &[n, n, ch, ch], seed);
            let mut out = common::output(device, n);

            let bytes = Work::Bytes(3.0 * 4.0 * n as f64);
            common::time(&mut c, "bn_forward_train", &case, device, bytes, |i| {
                forward(device, rows, ch, &sets[i % sets.len()], &mut out);
            });

            // Each input copy's own statistics, as its forward left them.
            let stats: Vec<Stats> = sets
                .iter()
                .map(|set| forward(device, rows, ch, set, &mut out))
                .collect();
            let bytes = Work::Bytes(5.0 * 4.0 * n as f64);
            common::time(&mut c, "bn_backward", &case, device, bytes, |i| {
                let k = i % sets.len();
                backward(device, rows, ch, &sets[k], &stats[k], &mut out);
            });
        }
    }
    c.final_summary();
}
