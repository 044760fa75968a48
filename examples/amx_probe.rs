use simclr::device::cpu::{gemm, gemm_bf16};
use std::time::Instant;
fn main() {
    println!("amx: {}", gemm_bf16::uses_amx());
    for &(m, n, k) in &[(252usize, 16usize, 144usize), (252, 64, 576), (4096, 64, 576), (4096, 256, 2304), (576, 64, 256), (1024,1024,1024)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut c = vec![0f32; m * n];
        let reps = (2e9 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
        let t = |f: &dyn Fn(&mut [f32])| {
            let mut c = vec![0f32; m * n];
            f(&mut c);
            let s = Instant::now();
            for _ in 0..reps { f(&mut c); }
            s.elapsed().as_secs_f64() / reps as f64
        };
        let f32t = t(&|c| gemm::gemm(m, n, k, &a, k, 1, &b, n, 1, c, n, false));
        let amxt = t(&|c| gemm_bf16::gemm_amx(m, n, k, &a, k, 1, &b, n, 1, c, n, false));
        let amxtt = t(&|c| gemm_bf16::gemm_amx(m, n, k, &a, 1, m, &b, n, 1, c, n, false));
        let _ = &mut c;
        let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        println!("{m}x{n}x{k}: f32 {:.1} GF/s  amx {:.1} GF/s  amx(At) {:.1} GF/s", gf(f32t), gf(amxt), gf(amxtt));
    }
}
