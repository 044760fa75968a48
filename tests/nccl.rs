//! NCCL loads at run time from where users have it, without a GPU: the `nvidia-nccl-cu13`
//! wheel (`.ci/run` installs it into target/nvcc-venv) holds only `libnccl.so.2`, which
//! cudarc's loader does not ask for, so `nccl::load` restarts this process once with a link
//! to it on the library path. One test in this binary: the restart re-runs it.
//!
//! On a GPU (the GPU suite sets SIMCLR_TEST_DEVICES=cuda) NCCL is found where the machine has
//! it, and every collective of `Nccl` runs on the device at world size 1.

use simclr::device::cuda::{Elem, Gpu};
use simclr::dist::nccl::{self, Nccl};
use simclr::dist::Comm;
use simclr::tensor::Tensor;
use std::path::PathBuf;

/// The wheel's library under target/nvcc-venv, if installed.
fn wheel() -> Option<PathBuf> {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/target/nvcc-venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|python| {
            python
                .path()
                .join("site-packages/nvidia/nccl/lib/libnccl.so.2")
        })
        .find(|path| path.is_file())
}

#[test]
fn nccl_loads_from_the_wheel_and_makes_an_id_and_a_missing_library_is_one_line() {
    std::env::set_var("SIMCLR_NCCL", "/no/such/libnccl.so.2");
    assert_eq!(
        nccl::load().unwrap_err(),
        "SIMCLR_NCCL=/no/such/libnccl.so.2: no such file"
    );
    if std::env::var("SIMCLR_TEST_DEVICES").as_deref() == Ok("cuda") {
        std::env::remove_var("SIMCLR_NCCL");
        println!("{}", nccl::load().unwrap());
        return collectives_at_world_size_one();
    }
    let Some(lib) = wheel() else {
        eprintln!(
            "skipped: no nvidia-nccl-cu13 wheel under target/nvcc-venv (.ci/run installs it)"
        );
        return;
    };
    std::env::set_var("SIMCLR_NCCL", &lib);
    let version = nccl::load().unwrap();
    assert!(
        version.starts_with("NCCL 2.") && version.ends_with(&format!("from {}", lib.display())),
        "{version}"
    );
    // The id rank 0 hands out: 128 bytes, not all zero, new each time.
    let (a, b) = (nccl::unique_id().unwrap(), nccl::unique_id().unwrap());
    assert_eq!(a.len(), 128);
    assert!(a.iter().any(|&x| x != 0) && a != b);
}

/// Each collective at world size 1 on the GPU, where each is the identity (the average of one
/// rank's gradient is itself): NCCL's calls, types and streams, as the trainer makes them.
fn collectives_at_world_size_one() {
    let gpu = Gpu::cuda(0).unwrap();
    let comm = Nccl::new(&gpu, 0, 1, &nccl::unique_id().unwrap(), Box::new(())).unwrap();
    let x: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut sums = vec![1.5f64, -2.25];
    comm.all_reduce_sum(&mut sums);
    assert_eq!(sums, [1.5, -2.25]);
    assert_eq!(comm.all_gather(&x), x);
    assert_eq!(comm.reduce_scatter_sum(&x), x);
    let half = gpu.upload_as(&x, Elem::Bf16);
    let gathered = comm.all_gather_device(&gpu, &half);
    assert_eq!(gathered.elem(), Elem::Bf16);
    assert_eq!(gpu.download::<u16>(&gathered), gpu.download::<u16>(&half));
    let mut summed = gpu.upload(&x);
    comm.all_reduce_device(&gpu, &mut summed);
    assert_eq!(gpu.download_f32(&summed), x);
    let mut grads = vec![Tensor::from_gpu(&[x.len()], gpu.upload(&x))];
    comm.average(&mut grads);
    comm.join();
    assert_eq!(grads[0].to_f32_vec(), x);
    gpu.check().unwrap();
}
