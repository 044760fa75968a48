//! Data parallelism: W processes (ranks) each take their shard of the global batch and agree
//! through collectives, so that together they compute what one process would on the whole
//! batch (docs/ARCHITECTURE.md, "Data parallelism"):
//! - batch norm is global: the per-channel sums of the forward and the backward are summed over
//!   the ranks before use (`ops::batchnorm`, `device::cpu::batchnorm`);
//! - NT-Xent scores each rank's rows against every rank's views (`ops::ntxent`): the forward
//!   gathers the projections, the backward sums each column's gradient over the ranks;
//! - parameter gradients are averaged over the ranks before the update, in buckets as the
//!   backward finishes them (`backward`).
//!
//! `Comm` is what those need of a transport. `Solo` is the one-process world, where every
//! collective is the identity; `nccl::Nccl` runs it on GPUs; `mpi::Mpi` (feature `mpi`) runs
//! it over MPI, the CPU and emulator ranks' transport.
//!
//! How the ranks start (`from_env`): a torchrun-style launch (`simclr launch`, torchrun: the
//! `rendezvous`) or `mpirun`/Slurm (MPI's environment).

pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod nccl;
pub mod rendezvous;

use crate::autograd::{Graph, Var};
use crate::device::cuda::{Buffer, Gpu};
use crate::tensor::Tensor;
use std::sync::Arc;

/// The collectives of data parallelism, over the ranks 0..size().
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Every rank's `x` summed element-wise, in place on every rank.
    fn all_reduce_sum(&self, x: &mut [f64]);
    /// Every rank's `x` (all of one length), rank-major: rank r's at [r·len, (r+1)·len).
    fn all_gather_bytes(&self, x: &[u8]) -> Vec<u8>;
    /// `x` holds size() blocks of equal length; rank r gets block r summed over the ranks.
    fn reduce_scatter_sum(&self, x: &[f32]) -> Vec<f32>;

    /// `all_gather_bytes` of f32 values.
    fn all_gather(&self, x: &[f32]) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.all_gather_bytes(bytemuck::cast_slice(x)))
    }

    /// `all_gather_bytes` of a device buffer (any element type), into a new one of its type.
    /// This default goes through the host, a wait for the device: MPI standing in for a
    /// transport that works in device memory, such as NCCL.
    fn all_gather_device(&self, gpu: &Gpu, x: &Buffer) -> Buffer {
        let all = self.all_gather_bytes(&gpu.download::<u8>(x));
        gpu.upload(&all).with_elem(x.elem())
    }

    /// Every rank's f32 buffer `x` summed element-wise, in place. Through the host by default.
    fn all_reduce_device(&self, gpu: &Gpu, x: &mut Buffer) {
        let mut sum: Vec<f64> = gpu.download_f32(x).iter().map(|&v| v as f64).collect();
        self.all_reduce_sum(&mut sum);
        let sum: Vec<f32> = sum.iter().map(|&v| v as f32).collect();
        *x = gpu.upload(&sum);
    }

    /// Starts replacing each of `grads` (one bucket of parameter gradients) by its mean over
    /// the ranks; they are averaged once `join` returns. This default does it at once, in one
    /// collective for the bucket (the gradients concatenated, through the host).
    fn average(&self, grads: &mut [Tensor]) {
        let mut all: Vec<f64> = Vec::new();
        for g in grads.iter() {
            all.extend(g.to_f32_vec().iter().map(|&v| v as f64));
        }
        self.all_reduce_sum(&mut all);
        let w = self.size() as f64;
        let mut at = 0;
        for g in grads.iter_mut() {
            let n = g.numel();
            let mean: Vec<f32> = all[at..at + n].iter().map(|&v| (v / w) as f32).collect();
            *g = Tensor::from_vec(&g.shape, mean).to_device(&g.device());
            at += n;
        }
    }

    /// Waits (on the device, where there is one) for the buckets `average` started.
    fn join(&self) {}
}

/// One process: the collectives of a world of one.
pub struct Solo;

impl Comm for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _x: &mut [f64]) {}
    fn all_gather_bytes(&self, x: &[u8]) -> Vec<u8> {
        x.to_vec()
    }
    fn reduce_scatter_sum(&self, x: &[f32]) -> Vec<f32> {
        x.to_vec()
    }
}

/// The one-process world, the default of every graph.
pub fn solo() -> Arc<dyn Comm> {
    Arc::new(Solo)
}

/// Whether `mpirun` (OpenMPI, MPICH's hydra) or Slurm's PMI started this process as a rank.
fn under_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// The first of the environment variables `names` that holds a number.
fn env_number(names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// This process's rank as its launcher set it, before (or without) MPI or NCCL: errors name
/// it, so that one line says which rank of a job failed.
pub fn launcher_rank() -> Option<usize> {
    env_number(&["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"])
}

/// How many ranks the launcher started, read from its environment alone (before, or without,
/// MPI or NCCL): 1 in a process no launcher started.
pub fn launched_world() -> usize {
    env_number(&["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]).unwrap_or(1)
}

/// Which GPU of its machine this rank takes (`--device cuda`): its rank on the machine, as
/// torchrun, OpenMPI, MPICH or Slurm set it; 0 in one process.
pub fn local_rank() -> usize {
    env_number(&[
        "LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ])
    .unwrap_or(0)
}

/// This process's world on `device`:
/// - `mpirun` or Slurm: MPI, and NCCL on a GPU (its id handed out through MPI);
/// - a torchrun-style launch (`WORLD_SIZE` set, even to 1): NCCL on the GPU, the ranks met
///   through the TCP `rendezvous`; CPU and emulator ranks have no transport there;
/// - else one process.
///
/// NCCL is found first (`nccl::load` may restart the process). Rank 0 prints NCCL's version.
pub fn from_env(device: &crate::device::Device) -> Result<Arc<dyn Comm>, String> {
    let gpu = device.gpu().filter(|gpu| !gpu.is_emulated());
    // MPI's variables first: cluster wrappers often export WORLD_SIZE to mpirun's ranks too.
    if let Some(t) = rendezvous::Torchrun::from_env()?.filter(|_| !under_mpi()) {
        let Some(gpu) = gpu else {
            return Err(format!(
                "started as rank {} of {} by a torchrun-style launch, whose ranks talk through \
                 NCCL on GPUs (--device cuda); ranks on the CPU or the emulator talk through \
                 MPI: mpirun -n {} simclr ... (built with --features mpi)",
                t.rank, t.world, t.world
            ));
        };
        let version = nccl::load()?;
        let (id, links) = rendezvous::join(&t, nccl::unique_id, rendezvous::timeout()?)?;
        links.keep(move |lost| stop_when_lost(t.rank, lost));
        if t.rank == 0 {
            println!("{version}, rank 0 of {} at {}", t.world, t.master);
        }
        let nccl = nccl::Nccl::new(gpu, t.rank, t.world, &id, Box::new(()))?;
        return Ok(Arc::new(nccl));
    }
    if !under_mpi() {
        return Ok(solo());
    }
    #[cfg(feature = "mpi")]
    {
        let version = gpu.map(|_| nccl::load()).transpose()?;
        let world = mpi::Mpi::new()?;
        let (Some(gpu), Some(version)) = (gpu, version) else {
            return Ok(Arc::new(world));
        };
        // Rank 0's id, to every rank.
        let mine = match world.rank() {
            0 => nccl::unique_id()?,
            _ => vec![0; 128],
        };
        let id = world.all_gather_bytes(&mine)[..128].to_vec();
        let (rank, size) = (world.rank(), world.size());
        if rank == 0 {
            println!("{version}, ranks started by MPI");
        }
        Ok(Arc::new(nccl::Nccl::new(
            gpu,
            rank,
            size,
            &id,
            Box::new(world),
        )?))
    }
    #[cfg(not(feature = "mpi"))]
    Err(
        "started by an MPI launcher, but this simclr was built without MPI: \
         cargo build --release --features mpi"
            .into(),
    )
}

/// The end of a job that went well, the trainer's last act: the other ranks are told this one
/// finished (`rendezvous::finished`), and MPI is finalised. A rank that fails exits without
/// either, which is how the others (or mpirun) learn of it.
pub fn finished() {
    rendezvous::finished();
    #[cfg(feature = "mpi")]
    mpi::finalize();
}

/// Ends this rank, from the watchdog's thread, when rank `lost` ended without finishing: a
/// collective would wait for it forever.
fn stop_when_lost(me: usize, lost: usize) {
    eprintln!("error: rank {me}: rank {lost} ended before the job finished (its link closed)");
    // SAFETY: ends the process at once; the main thread may be blocked inside NCCL, whose
    // exit handlers could wait for it.
    unsafe { libc::_exit(1) }
}

/// A 64-bit hash of `x`, the same in every process of one build (fixed keys): what ranks
/// compare (settings, job tokens) and what names a file (NCCL's link folder).
fn hash64(x: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// Whether every rank holds the same `text` (a run's settings), by gathering their hashes.
pub fn all_agree(comm: &dyn Comm, text: &str) -> bool {
    let bits = hash64(text);
    // Two f32 carrying the hash's halves bit for bit.
    let mine = [
        f32::from_bits(bits as u32),
        f32::from_bits((bits >> 32) as u32),
    ];
    let all = comm.all_gather(&mine);
    all.chunks(2)
        .all(|c| c[0].to_bits() == mine[0].to_bits() && c[1].to_bits() == mine[1].to_bits())
}

/// Gradients go to the collectives in buckets of about this many bytes (PyTorch DDP's default):
/// large enough to run at the link's bandwidth, small enough to start while the backward runs.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Backpropagates from `loss` and returns the parameter gradients averaged over the ranks
/// (by parameter index, in the order the backward finished them). Each gradient joins a
/// bucket once final; a bucket of `bucket_bytes` (`BUCKET_BYTES`) is averaged at once, so that on a GPU its collective runs
/// on its own stream while the rest of the backward does (`nccl`), and `join` waits for the
/// last one. In a world of one, the plain backward.
pub fn backward(
    g: &mut Graph,
    loss: Var,
    comm: &dyn Comm,
    bucket_bytes: usize,
) -> Vec<(usize, Tensor)> {
    let mut done: Vec<(usize, Tensor)> = Vec::new();
    if comm.size() == 1 {
        g.backward_with(loss, &mut |id, grad| done.push((id, grad)));
        return done;
    }
    let (mut ids, mut bucket, mut bytes) = (Vec::new(), Vec::new(), 0);
    g.backward_with(loss, &mut |id, grad| {
        bytes += grad.numel() * 4; // f32 (bf16 gradients count double: buckets only shrink)
        ids.push(id);
        bucket.push(grad);
        if bytes >= bucket_bytes {
            comm.average(&mut bucket);
            done.extend(ids.drain(..).zip(bucket.drain(..)));
            bytes = 0;
        }
    });
    if !bucket.is_empty() {
        comm.average(&mut bucket);
        done.extend(ids.into_iter().zip(bucket));
    }
    comm.join();
    done
}
