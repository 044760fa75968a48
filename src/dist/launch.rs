//! `simclr launch`: starts the ranks of one machine the way torchrun does. Each is this binary
//! with the given arguments and the environment of a torchrun-style launch (`WORLD_SIZE`,
//! `RANK`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), from which the
//! ranks meet (`rendezvous`) and talk through NCCL. On several machines, one launch per machine
//! with the same `--nnodes`, `--master-addr` and `--master-port` and its own `--node-rank`.
//!
//! The launcher watches its ranks: when one fails it stops the others and exits with an error
//! naming it, so a job never hangs on a dead rank. Ranks end with their launcher too (the
//! kernel signals them when it dies), and carry a token of their job (`SIMCLR_JOB`), so that a
//! stray rank of an earlier job on the same port is turned away by the rendezvous.

use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// What `simclr launch` was asked for (its flags).
#[derive(clap::Args)]
pub struct Launch {
    /// Ranks (GPUs) on this machine
    #[arg(long)]
    pub nproc_per_node: usize,
    /// Machines in the job (one launch on each)
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's place among them, 0 to --nnodes - 1
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Address of the machine of node rank 0, where the ranks meet [default on one machine:
    /// 127.0.0.1; required on several]
    #[arg(long)]
    pub master_addr: Option<String>,
    /// Port of the meeting [default: a free one on one machine, 29500 on several]
    #[arg(long)]
    pub master_port: Option<u16>,
    /// The simclr command each rank runs, after --
    #[arg(last = true, required = true)]
    pub args: Vec<OsString>,
}

/// How long a stopped rank gets to end before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// Runs the ranks to their end: Ok when all succeed, else which rank failed and how (the
/// others stopped).
pub fn run(l: &Launch) -> Result<(), String> {
    if l.nproc_per_node == 0 || l.nnodes == 0 || l.node_rank >= l.nnodes {
        return Err(format!(
            "launch: --nproc-per-node {} --nnodes {} --node-rank {}: need at least one rank \
             per machine, one machine, and a node rank below --nnodes",
            l.nproc_per_node, l.nnodes, l.node_rank
        ));
    }
    let port = match (l.master_port, l.nnodes) {
        (Some(port), _) => port,
        (None, 1) => free_port()?,
        (None, _) => 29500,
    };
    let addr = match (&l.master_addr, l.nnodes) {
        (Some(addr), _) => addr.clone(),
        (None, 1) => "127.0.0.1".to_string(),
        (None, _) => {
            return Err(
                "launch: --nnodes above 1 needs --master-addr, the address of node rank 0".into(),
            )
        }
    };
    // The job's token: the same on every machine of the job (its meeting point), and new for
    // each job on one machine (a free port, this launcher's pid).
    let job = match l.nnodes {
        1 => format!("{addr}:{port}/{}", std::process::id()),
        _ => format!("{addr}:{port}"),
    };
    let world = l.nproc_per_node * l.nnodes;
    let first = l.node_rank * l.nproc_per_node;
    let exe = std::env::current_exe().map_err(|e| format!("launch: {e}"))?;
    println!(
        "launch: ranks {first}..{} of {world} on this machine, rank 0 at {addr}:{port}",
        first + l.nproc_per_node - 1,
    );
    let mut ranks: Vec<(usize, Child)> = Vec::new();
    for local in 0..l.nproc_per_node {
        let rank = first + local;
        let mut command = Command::new(&exe);
        // SAFETY: prctl only, in the child before exec: the rank gets SIGTERM when the
        // launcher dies (killed, its terminal gone), instead of running on.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .args(&l.args)
            .env("WORLD_SIZE", world.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", l.nproc_per_node.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", port.to_string())
            .env("SIMCLR_JOB", &job)
            .spawn();
        match child {
            Ok(child) => ranks.push((rank, child)),
            Err(e) => {
                stop(&mut ranks);
                return Err(format!("launch: starting rank {rank}: {e}"));
            }
        }
    }
    loop {
        let mut i = 0;
        while i < ranks.len() {
            match ranks[i].1.try_wait() {
                Ok(None) => i += 1,
                Ok(Some(status)) if status.success() => drop(ranks.remove(i)),
                done => {
                    let (rank, _) = ranks.remove(i);
                    stop(&mut ranks);
                    let how = match done {
                        Ok(Some(status)) => describe(status),
                        Err(e) => e.to_string(),
                        Ok(None) => unreachable!(),
                    };
                    return Err(format!(
                        "launch: rank {rank} {how}; the other ranks were stopped"
                    ));
                }
            }
        }
        if ranks.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the ranks still running: SIGTERM, then SIGKILL after `GRACE`.
fn stop(ranks: &mut [(usize, Child)]) {
    for (_, child) in ranks.iter() {
        // SAFETY: signals a child of ours, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + GRACE;
    for (_, child) in ranks.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (_, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended ({status})"),
    }
}

/// A TCP port free on this machine now, for rank 0 to listen on.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("launch: finding a free port: {e}"))
}
