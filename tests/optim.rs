//! The multi-tensor optimiser kernels against cpu::optim (and the trust ratio of the CPU
//! backend), on every device under test: every tensor of a step updated in one call.

mod common;

use simclr::device::cpu::optim as cpu;
use simclr::device::cuda::optim::{self, Param};
use simclr::device::cuda::{Buffer, Gpu};

/// Checks the device for errors, then compares `got` with `want`.
fn expect(gpu: &Gpu, what: &str, got: &Buffer, want: &[f32], tolerance: f64) {
    gpu.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = common::rel_l2(&gpu.download(got), want);
    assert!(err < tolerance, "{what}: rel L2 error {err}");
}

/// Tensor lengths: a scalar, a BN vector, a conv kernel under one chunk, and one of many chunks
/// (4096 values each) with a ragged last one.
const LENS: [usize; 4] = [1, 67, 3 * 3 * 13 * 5, 300_001];

/// One tensor of a step, on the host: value, gradient, velocity and its settings.
#[derive(Clone)]
struct Host {
    w: Vec<f32>,
    g: Vec<f32>,
    v: Vec<f32>,
    wd: f64,
    adapt: bool,
}

/// For every length: adapted with weight decay, adapted with zero weights (trust 1), and not
/// adapted (BN parameters, biases: no weight decay either).
fn tensors(seed: u64, wd: f64) -> Vec<Host> {
    let mut out = Vec::new();
    for (i, &n) in LENS.iter().enumerate() {
        for (adapt, zero_w) in [(true, false), (true, true), (false, false)] {
            let s = seed + 10 * i as u64 + 3 * zero_w as u64 + adapt as u64;
            let mut w = common::random(n, s);
            if zero_w {
                w.fill(0.0);
            }
            let (g, v) = (common::random(n, s + 100), common::random(n, s + 200));
            let wd = if adapt { wd } else { 0.0 };
            out.push(Host { w, g, v, wd, adapt });
        }
    }
    out
}

/// Runs `step` twice on `host`'s tensors uploaded to `gpu`; returns the (w, v) buffers.
fn on_gpu(gpu: &Gpu, host: &[Host], step: impl Fn(&mut [Param])) -> Vec<(Buffer, Buffer)> {
    let mut bufs: Vec<(Buffer, Buffer, Buffer)> = host
        .iter()
        .map(|t| (gpu.upload(&t.w), gpu.upload(&t.g), gpu.upload(&t.v)))
        .collect();
    for _ in 0..2 {
        let mut params: Vec<Param> = bufs
            .iter_mut()
            .zip(host)
            .map(|((w, g, v), t)| Param {
                w,
                g,
                v,
                weight_decay: t.wd as f32,
                adapt: t.adapt,
            })
            .collect();
        step(&mut params);
    }
    bufs.into_iter().map(|(w, _, v)| (w, v)).collect()
}

#[test]
fn lars_matches_cpu() {
    let (lr, momentum, wd, eta) = (0.7, 0.9, 1e-4, 0.001);
    let host = tensors(0, wd);
    // Two steps on the CPU, so that the velocity carries over.
    let mut want = host.clone();
    for _ in 0..2 {
        for t in &mut want {
            // The trust ratio as the CPU backend computes it.
            let trust = match t.adapt {
                true => cpu::lars_trust(&t.w, &t.g, t.wd, eta),
                false => 1.0,
            };
            cpu::lars_update(&mut t.w, &t.g, &mut t.v, lr * trust, momentum, t.wd);
        }
    }
    for (name, gpu) in common::gpus() {
        let lars =
            |p: &mut [Param]| optim::lars_step(&gpu, p, lr as f32, momentum as f32, eta as f32);
        let before = gpu.launches();
        let got = on_gpu(&gpu, &host, lars);
        // Every tensor of a step in three launches, however many tensors there are.
        assert_eq!(
            gpu.launches() - before,
            2 * 3,
            "{name}: launches for two LARS steps"
        );
        for (i, ((w, v), t)) in got.iter().zip(&want).enumerate() {
            let case = format!("{name}, tensor {i} (n {}, adapt {})", t.w.len(), t.adapt);
            expect(&gpu, &format!("lars w, {case}"), w, &t.w, 1e-5);
            expect(&gpu, &format!("lars v, {case}"), v, &t.v, 1e-5);
        }
        // The norms are fixed trees: the same bits on a second run.
        let again = on_gpu(&gpu, &host, lars);
        for (i, ((w, _), (w2, _))) in got.iter().zip(&again).enumerate() {
            assert_eq!(
                gpu.download::<u32>(w),
                gpu.download::<u32>(w2),
                "lars, {name}, tensor {i}: not reproducible"
            );
        }
    }
}

#[test]
fn sgd_matches_cpu() {
    let (lr, momentum, wd) = (0.05, 0.9, 1e-3);
    for nesterov in [true, false] {
        let host = tensors(100, wd);
        let mut want = host.clone();
        for _ in 0..2 {
            for t in &mut want {
                cpu::sgd_update(&mut t.w, &t.g, &mut t.v, lr, momentum, t.wd, nesterov);
            }
        }
        for (name, gpu) in common::gpus() {
            let sgd =
                |p: &mut [Param]| optim::sgd_step(&gpu, p, lr as f32, momentum as f32, nesterov);
            let before = gpu.launches();
            let got = on_gpu(&gpu, &host, sgd);
            assert_eq!(
                gpu.launches() - before,
                2,
                "{name}: launches for two SGD steps"
            );
            for (i, ((w, v), t)) in got.iter().zip(&want).enumerate() {
                let case = format!("{name}, tensor {i} (n {}), nesterov {nesterov}", t.w.len());
                expect(&gpu, &format!("sgd w, {case}"), w, &t.w, 1e-5);
                expect(&gpu, &format!("sgd v, {case}"), v, &t.v, 1e-5);
            }
        }
    }
}
