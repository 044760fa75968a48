//! `Comm` over MPI (the `mpi` crate over the system's OpenMPI or MPICH): ranks started by
//! `mpirun`/`srun`, which give each process its rank. The CPU and emulator ranks' transport, and
//! how the tests check the distributed maths without GPUs.

use super::Comm;
use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use std::sync::Mutex;

/// MPI's world of this process (`new`); MPI itself is finalised by `finalize`.
pub struct Mpi {
    world: SimpleCommunicator,
}

/// MPI's environment, kept until the job ends well (`finalize`). A rank that ends with an
/// error exits without finalising, and mpirun then ends the other ranks: MPI_Finalize is
/// collective, and on an error path it would wait for ranks stuck in a collective.
static UNIVERSE: Mutex<Option<Kept>> = Mutex::new(None);

struct Kept(#[allow(dead_code)] mpi::environment::Universe);

// SAFETY: held only to be dropped (finalised) once, by the trainer's thread.
unsafe impl Send for Kept {}

/// Finalises MPI, after the rank's last collective: the end of a job that went well.
pub fn finalize() {
    drop(UNIVERSE.lock().unwrap().take());
}

// SAFETY: MPI is initialised with the single-thread level, and the trainer makes every call
// from its one thread; the handles are plain integers/pointers MPI owns.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    /// MPI's world of this process, or why there is none (MPI already initialised).
    pub fn new() -> Result<Mpi, String> {
        let universe = mpi::initialize().ok_or("MPI was initialised already")?;
        let world = universe.world();
        *UNIVERSE.lock().unwrap() = Some(Kept(universe));
        Ok(Mpi { world })
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, x: &mut [f64]) {
        let send = x.to_vec();
        self.world
            .all_reduce_into(&send[..], x, SystemOperation::sum());
    }

    fn all_gather_bytes(&self, x: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() * self.size()];
        self.world.all_gather_into(x, &mut out[..]);
        out
    }

    fn reduce_scatter_sum(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len() / self.size()];
        self.world
            .reduce_scatter_block_into(x, &mut out[..], SystemOperation::sum());
        out
    }
}
