//! Data parallelism: W processes (ranks) each take their shard of the global batch and agree
//! through collectives, so that together they compute what one process would on the whole
//! batch (docs/ARCHITECTURE.md, "Data parallelism"):
//! - batch norm is global: the per-channel sums of the forward and the backward are summed over
//!   the ranks before use (`ops::batchnorm`, `device::cpu::batchnorm`);
//! - NT-Xent scores each rank's rows against every rank's views (`ops::ntxent`): the forward
//!   gathers the projections, the backward sums each column's gradient over the ranks;
//! - parameter gradients are averaged over the ranks before the update (`average_gradients`).
//!
//! `Comm` is what those need of a transport. `Solo` is the one-process world, where every
//! collective is the identity; `mpi::Mpi` (feature `mpi`) runs it over MPI.

#[cfg(feature = "mpi")]
pub mod mpi;

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
    fn all_gather(&self, x: &[f32]) -> Vec<f32>;
    /// `x` holds size() blocks of equal length; rank r gets block r summed over the ranks.
    fn reduce_scatter_sum(&self, x: &[f32]) -> Vec<f32>;

    /// `all_gather` of a device buffer of f32 values, into a new one. This default goes
    /// through the host, a wait for the device: MPI standing in for a transport that works in
    /// device memory, such as NCCL.
    fn all_gather_device(&self, gpu: &Gpu, x: &Buffer) -> Buffer {
        gpu.upload(&self.all_gather(&gpu.download_f32(x)))
    }
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
    fn all_gather(&self, x: &[f32]) -> Vec<f32> {
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

/// This process's rank as the MPI launcher set it, before (or without) MPI itself: errors name
/// it, so that one line says which rank of a job failed.
pub fn launcher_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// This process's world: MPI's when an MPI launcher started it, else one process.
pub fn from_env() -> Result<Arc<dyn Comm>, String> {
    if !under_mpi() {
        return Ok(solo());
    }
    #[cfg(feature = "mpi")]
    return mpi::Mpi::new().map(|m| Arc::new(m) as Arc<dyn Comm>);
    #[cfg(not(feature = "mpi"))]
    Err(
        "started by an MPI launcher, but this simclr was built without MPI: \
         cargo build --release --features mpi"
            .into(),
    )
}

/// Whether every rank holds the same `text` (a run's settings), by gathering their hashes.
pub fn all_agree(comm: &dyn Comm, text: &str) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let bits = h.finish();
    // Two f32 carrying the hash's halves bit for bit.
    let mine = [
        f32::from_bits(bits as u32),
        f32::from_bits((bits >> 32) as u32),
    ];
    let all = comm.all_gather(&mine);
    all.chunks(2)
        .all(|c| c[0].to_bits() == mine[0].to_bits() && c[1].to_bits() == mine[1].to_bits())
}

/// Replaces each gradient by its mean over the ranks, in one collective for all of them (the
/// gradients concatenated into one buffer). CPU tensors; a no-op in a world of one.
pub fn average_gradients(comm: &dyn Comm, grads: &mut [(usize, Tensor)]) {
    if comm.size() == 1 {
        return;
    }
    let mut all: Vec<f64> = Vec::new();
    for (_, g) in grads.iter() {
        all.extend(g.to_f32_vec().iter().map(|&v| v as f64));
    }
    comm.all_reduce_sum(&mut all);
    let w = comm.size() as f64;
    let mut at = 0;
    for (_, g) in grads.iter_mut() {
        let n = g.numel();
        let mean: Vec<f32> = all[at..at + n].iter().map(|&v| (v / w) as f32).collect();
        *g = Tensor::from_vec(&g.shape, mean).to_device(&g.device());
        at += n;
    }
}
