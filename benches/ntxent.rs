//! The fused NT-Xent loss and gradient (kernels/ntxent.cu) at 2N = 8192 rows of d = 128, the
//! SimCLR batch of 4096 pairs. Rate: 6·(2N)²·d FLOPs, what the unfused computation does — the
//! similarities z·zᵀ forward (2·(2N)²·d) and the two products of the backward, G·z and Gᵀ·z —
//! counted the same for PyTorch (scripts/bench_pytorch.py), so the rates compare; the kernel's
//! recomputation of the similarities in its gradient pass is not counted. Without a GPU: the
//! emulator and the cpu reference (which materialises the 2N×2N matrix) at 2N = 256. On the GPU
//! devices it also prints the kernel's extra device memory: `peak | ntxent | case | device | B`.

mod common;

use common::Work;
use simclr::device::cpu::ntxent as cpu;
use simclr::device::cuda::ntxent as gpu;
use simclr::device::Device;

const D: usize = 128;
const TEMPERATURE: f32 = 0.1;

/// `rows` random unit rows of width D, as the L2 normalisation before the loss leaves them.
fn unit_rows(rows: usize, seed: u64) -> Vec<f32> {
    let mut z = common::random(rows * D, seed);
    for row in z.chunks_mut(D) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    z
}

fn main() {
    let setup = common::setup("ntxent", "2N = 8192, d = 128", "2N = 256, d = 128");
    let rows = if setup.full { 8192 } else { 256 };
    let mut c = common::criterion(&setup);
    let flops = Work::Flops(6.0 * (rows * rows * D) as f64);
    for (device, dtype) in setup
        .devices
        .iter()
        .flat_map(|d| common::precisions(d).into_iter().map(move |p| (d, p)))
    {
        let case = format!("{}_r{rows}_d{D}", dtype.name());
        let copies = common::copies(device, rows * D * 4) as u64;
        let zs: Vec<_> = (0..copies)
            .map(|seed| common::cast(&common::tensor(device, unit_rows(rows, seed)), dtype))
            .collect();
        let mut loss = common::output(device, 1);
        let mut grad = common::output_as(device, rows * D, dtype);
        let mut run = |i: usize| {
            let z = &zs[i % zs.len()];
            match device {
                Device::Cpu => {
                    std::hint::black_box(cpu::ntxent(
                        z.as_slice::<f32>(),
                        &[],
                        D,
                        TEMPERATURE as f64,
                    ));
                }
                Device::Gpu(g) => gpu::ntxent(
                    g,
                    rows,
                    D,
                    z.buffer(),
                    TEMPERATURE,
                    loss.buffer_mut(),
                    grad.buffer_mut(),
                ),
            }
        };
        common::time(&mut c, "ntxent", &case, device, flops, &mut run);
        // Device memory beyond the inputs and outputs (the 2N×2N similarities would take
        // (2N)²·4 bytes); the GPU's allocator keeps the high-water mark.
        if let Device::Gpu(g) = device {
            let before = g.memory().in_use;
            g.reset_peak_memory();
            run(0);
            let extra = g.memory().peak - before;
            println!("peak | ntxent | {case} | {} | {extra} B", device.name());
        }
    }
    c.final_summary();
}
