//! Square GEMMs (kernels/gemm.cu) of 4096: the f32 tiled SGEMM (C = A·B) and the bf16 tensor-core
//! GEMM through mma.sync m16n8k16 (C = A·Bᵀ, f32 accumulation; inputs converted to bf16 once,
//! outside the timing). Rate: 2·m·n·k FLOPs. Without a GPU: the emulator and the cpu reference
//! at 256; the cpu's bf16 case is its `gemm_bf16` on f32 operands (AMX tiles where present).

mod common;

use common::Work;
use simclr::device::cpu::gemm as cpu;
use simclr::device::cpu::gemm_bf16 as bf16;
use simclr::device::cuda::{elementwise, gemm as gpu, Buffer, Elem};
use simclr::device::Device;

fn main() {
    let setup = common::setup("gemm", "4096 × 4096 × 4096", "256 × 256 × 256");
    let n = if setup.full { 4096 } else { 256 };
    let mut c = common::criterion(&setup);
    let flops = Work::Flops(2.0 * (n * n * n) as f64);
    for device in &setup.devices {
        // f32: A [n,n] · B [n,n], row-major.
        let sets = common::input_sets(device, &[n * n, n * n], 1);
        let mut out = common::output(device, n * n);
        common::time(
            &mut c,
            "gemm",
            &format!("f32_{n}x{n}x{n}"),
            device,
            flops,
            |i| {
                let (a, b) = (&sets[i % sets.len()][0], &sets[i % sets.len()][1]);
                match device {
                    Device::Cpu => {
                        let (a, b) = (a.as_slice::<f32>(), b.as_slice::<f32>());
                        cpu::gemm(n, n, n, a, n, 1, b, n, 1, out.as_mut_slice(), n, false)
                    }
                    Device::Gpu(g) => gpu::gemm(
                        g,
                        n,
                        n,
                        n,
                        a.buffer(),
                        false,
                        b.buffer(),
                        false,
                        out.buffer_mut(),
                        false,
                    ),
                }
            },
        );

        // bf16 on the cpu: the same f32 operands, rounded to bf16 as they are packed (AMX
        // tiles where the processor has them, else the rounding reference).
        if let Device::Cpu = device {
            common::time(
                &mut c,
                "gemm",
                &format!("bf16_{n}x{n}x{n}"),
                device,
                flops,
                |i| {
                    let (a, b) = (&sets[i % sets.len()][0], &sets[i % sets.len()][1]);
                    let (a, b) = (a.as_slice::<f32>(), b.as_slice::<f32>());
                    bf16::gemm_bf16(n, n, n, a, n, 1, b, n, 1, out.as_mut_slice(), n, false)
                },
            );
        }

        // bf16 on a GPU: A [n,n] · Bᵀ with B stored [n,n], both converted once.
        let Device::Gpu(g) = device else { continue };
        let bf16 = |t: &simclr::tensor::Tensor| -> Buffer {
            let mut y = g.alloc(n * n, Elem::Bf16);
            elementwise::cast(g, t.buffer(), &mut y);
            y
        };
        let sets: Vec<[Buffer; 2]> = common::input_sets(device, &[n * n, n * n], 2)
            .iter()
            .map(|set| [bf16(&set[0]), bf16(&set[1])])
            .collect();
        common::time(
            &mut c,
            "gemm",
            &format!("bf16_{n}x{n}x{n}"),
            device,
            flops,
            |i| {
                let [a, b] = &sets[i % sets.len()];
                gpu::gemm_bf16(g, n, n, n, a, b, out.buffer_mut())
            },
        );
    }
    c.final_summary();
}
