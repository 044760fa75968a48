//! Shared by the benches: which devices to time at which sizes, random inputs, timing through
//! criterion with the GPU synchronised, and the one `rate | ...` line per case that
//! scripts/gpu_suite.sh collects into its table.
#![allow(dead_code)] // each bench uses its own subset

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use rayon::prelude::*;
use simclr::backend;
use simclr::device::cuda::{Gpu, Schedule};
use simclr::device::Device;
use simclr::tensor::{DType, Tensor};
use std::time::{Duration, Instant};

/// Criterion samples per case. Fixed (the group setting wins over `--sample-size`) because the
/// rate line takes the median of exactly the last SAMPLES timings, which are criterion's
/// measurement samples: criterion calls the routine for its warm-up first.
const SAMPLES: usize = 10;

/// On a real GPU each case rotates through copies of its inputs spanning at least this many
/// bytes, so every iteration reads inputs that the previous ones left out of the L2 cache
/// (50 MB on an H100, 60 MB on an H200): rates are then those of fresh data.
const ROTATE_BYTES: usize = 256 << 20;
const MAX_COPIES: usize = 16;

/// The devices a bench times and whether at full sizes.
pub struct Setup {
    /// The real GPU alone; without one, the emulator and the cpu reference.
    pub devices: Vec<Device>,
    /// Full sizes on a real GPU; reduced ones otherwise, so that `cargo bench` ends in minutes
    /// on two cores (the emulator runs about 4 GFLOP/s).
    pub full: bool,
}

/// Picks the devices and prints one line saying which, and at which sizes.
pub fn setup(bench: &str, full_sizes: &str, reduced_sizes: &str) -> Setup {
    // The cpu ops allocate every output: keep freed memory rather than fault fresh pages in.
    simclr::device::cpu::keep_freed_memory();
    match Gpu::cuda(0) {
        Ok(gpu) => {
            println!(
                "{bench}: timing {} at full sizes ({full_sizes})",
                gpu.name()
            );
            Setup {
                devices: vec![Device::Gpu(gpu)],
                full: true,
            }
        }
        Err(e) => {
            println!(
                "{bench}: no GPU ({e}); timing the emulator and the cpu reference at reduced \
                 sizes ({reduced_sizes})"
            );
            Setup {
                devices: vec![Device::Gpu(Gpu::emu(Schedule::Rr)), Device::Cpu],
                full: false,
            }
        }
    }
}

/// Criterion with short default times, overridable with `--warm-up-time` and
/// `--measurement-time`: the GPU suite times about a hundred cases of milliseconds each (a
/// second is hundreds of runs), and at the reduced sizes the rates are only indicative. No
/// plots: they would cost more time than the measurements.
pub fn criterion(setup: &Setup) -> Criterion {
    let (warm_up, measure) = if setup.full { (0.5, 1.0) } else { (0.2, 0.5) };
    Criterion::default()
        .warm_up_time(Duration::from_secs_f64(warm_up))
        .measurement_time(Duration::from_secs_f64(measure))
        .without_plots()
        .configure_from_args()
}

/// Short device label for criterion ids: cuda, emu or cpu.
pub fn label(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Gpu(gpu) if gpu.is_emulated() => "emu",
        Device::Gpu(_) => "cuda",
    }
}

fn is_real_gpu(device: &Device) -> bool {
    label(device) == "cuda"
}

/// Uniform values in [-1, 1), seeded (never zeros, as in the tests). Drawn in parallel, in
/// chunks seeded from `seed` and the chunk's index: the full-size inputs run to gigabytes.
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 20;
    let mut values = vec![0.0f32; len];
    values
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = simclr::rng::Rng::new(seed.wrapping_mul(1 << 32) + i as u64);
            chunk
                .iter_mut()
                .for_each(|v| *v = rng.range(-1.0, 1.0) as f32);
        });
    values
}

/// `values` as a tensor on `device`.
pub fn tensor(device: &Device, values: Vec<f32>) -> Tensor {
    Tensor::from_vec(&[values.len()], values).to_device(device)
}

/// An output tensor of `len` values on `device` (zeros on the cpu, poisoned on the emulator).
/// The precisions a bench times on `device`: f32 on the cpu; f32 and bf16 on the emulator; on
/// a real GPU bf16 alone, its default (the f32 kernels are the reference path, and the GPU
/// suite's minutes are few).
pub fn precisions(device: &Device) -> Vec<DType> {
    match device {
        Device::Cpu => vec![DType::F32],
        Device::Gpu(_) if is_real_gpu(device) => vec![DType::BF16],
        Device::Gpu(_) => vec![DType::F32, DType::BF16],
    }
}

/// `t` as `dtype` on its device (itself when it already is).
pub fn cast(t: &Tensor, dtype: DType) -> Tensor {
    backend::of(t).cast(t, dtype)
}

/// An uninitialised output of `len` values of `dtype` on `device`.
pub fn output_as(device: &Device, len: usize, dtype: DType) -> Tensor {
    cast(&output(device, len), dtype)
}

pub fn output(device: &Device, len: usize) -> Tensor {
    match device {
        Device::Cpu => Tensor::from_vec(&[len], vec![0.0f32; len]),
        Device::Gpu(gpu) => Tensor::gpu_output(gpu, &[len]),
    }
}

/// How many copies of a case's inputs (`bytes` per copy) to rotate through: see ROTATE_BYTES.
/// One copy on the emulator and the cpu, where the rates are only indicative.
pub fn copies(device: &Device, bytes: usize) -> usize {
    if is_real_gpu(device) {
        ROTATE_BYTES.div_ceil(bytes.max(1)).clamp(1, MAX_COPIES)
    } else {
        1
    }
}

/// Sets of fresh random inputs, one tensor of each length per set, as many sets as `copies`
/// asks for.
pub fn input_sets(device: &Device, lens: &[usize], seed: u64) -> Vec<Vec<Tensor>> {
    let bytes = 4 * lens.iter().sum::<usize>();
    let mut seed = seed * 1000;
    let mut sets = Vec::new();
    for _ in 0..copies(device, bytes) {
        let mut set = Vec::new();
        for &len in lens {
            seed += 1;
            set.push(tensor(device, random(len, seed)));
        }
        sets.push(set);
    }
    sets
}

/// What one iteration does, for the rate: floating-point operations, bytes moved to or from
/// memory, or images through a training step.
#[derive(Clone, Copy)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
    Images(f64),
}

impl Work {
    /// Criterion's throughput: FLOPs show as elements/s (Gelem/s reads GFLOP/s).
    fn throughput(&self) -> Throughput {
        match *self {
            Work::Flops(n) | Work::Images(n) => Throughput::Elements(n as u64),
            Work::Bytes(n) => Throughput::BytesDecimal(n as u64),
        }
    }

    fn rate(&self, seconds: f64) -> String {
        match *self {
            Work::Flops(n) if n / seconds >= 1e12 => {
                format!("{} TFLOP/s", digits(n / seconds / 1e12))
            }
            Work::Flops(n) => format!("{} GFLOP/s", digits(n / seconds / 1e9)),
            Work::Bytes(n) => format!("{} GB/s", digits(n / seconds / 1e9)),
            Work::Images(n) => format!("{} images/s", digits(n / seconds)),
        }
    }
}

/// `v` with three or four significant digits.
fn digits(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

/// The GPU's first error since the last check, as text.
fn gpu_check(device: &Device) -> Result<(), String> {
    device.check().map_err(|e| e.to_string())
}

/// Times `run` as criterion case `bench/case/<device label>` and prints its rate line:
///     rate | bench | case | device | median ms | rate
/// `run(i)` performs iteration number i (use it to pick the input copy). On a GPU a sample is
/// timed with CUDA events around its launches, then its sticky error is checked; a sample is
/// at least one iteration.
pub fn time(
    c: &mut Criterion,
    bench: &str,
    case: &str,
    device: &Device,
    work: Work,
    mut run: impl FnMut(usize),
) {
    let mut group = c.benchmark_group(bench);
    group
        .sample_size(SAMPLES)
        .sampling_mode(SamplingMode::Flat)
        .throughput(work.throughput());
    // Seconds per iteration of every call criterion makes, warm-up ones first.
    let mut per_iteration: Vec<f64> = Vec::new();
    let mut next = 0;
    group.bench_function(BenchmarkId::new(case, label(device)), |b| {
        b.iter_custom(|iters| {
            let mut work = || {
                for _ in 0..iters {
                    run(next);
                    next += 1;
                }
            };
            let seconds = match device {
                Device::Gpu(gpu) => gpu
                    .time_ms(&mut work)
                    .map(|ms| ms / 1e3)
                    .map_err(|e| e.to_string()),
                Device::Cpu => {
                    let start = Instant::now();
                    work();
                    Ok(start.elapsed().as_secs_f64())
                }
            };
            let seconds = seconds.and_then(|s| gpu_check(device).map(|()| s));
            let seconds =
                seconds.unwrap_or_else(|e| panic!("{bench}/{case} on {}: {e}", device.name()));
            per_iteration.push(seconds / iters as f64);
            Duration::from_secs_f64(seconds)
        })
    });
    group.finish();
    // Nothing ran when a command-line filter skipped this case.
    if per_iteration.is_empty() {
        return;
    }
    let first = per_iteration.len().saturating_sub(SAMPLES);
    let median = median(&mut per_iteration[first..]);
    println!(
        "rate | {bench} | {case} | {} | {:.3} ms | {}",
        device.name(),
        median * 1e3,
        work.rate(median)
    );
}

/// The median, averaging the two middle values of an even count (as criterion does).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
