//! `simclr launch` and the torchrun-style start of ranks, on a machine without GPUs: the
//! launcher's environment reaches every rank, its exit says how the ranks ended, a failing rank
//! stops the others, and ranks that cannot talk (CPU ranks have no transport in a torchrun-style
//! launch) say so in one line. The rendezvous itself is tested in `dist::rendezvous`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The binary under test: cargo's, or SIMCLR_BIN where the tests run from the GPU bundle.
fn bin() -> String {
    std::env::var("SIMCLR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_simclr").to_string())
}

fn simclr(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn every_rank_runs_the_command_and_the_launch_succeeds_when_all_do() {
    let out = simclr(&["launch", "--nproc-per-node", "3", "--", "--version"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("launch: ranks 0..2 of 3 on this machine"),
        "{all}"
    );
    assert_eq!(
        all.matches("simclr ").count(),
        3,
        "three ranks answered:\n{all}"
    );
}

#[test]
fn cpu_ranks_of_a_torchrun_launch_say_they_need_mpi_and_the_launch_fails() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let t0 = Instant::now();
    let out = simclr(&[
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "pretrain",
        "--data",
        data,
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--train-images",
        "24",
    ]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("by a torchrun-style launch, whose ranks talk through NCCL")
            && all.contains("mpirun -n 2"),
        "{all}"
    );
    // The rank's own line names it; the launcher's names the rank that ended the job.
    assert!(all.contains("error: rank "), "{all}");
    assert!(
        all.contains("error: launch: rank ")
            && all.contains("exited with status 1; the other ranks were stopped"),
        "{all}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_bad_launch_is_refused_in_one_line() {
    let out = simclr(&["launch", "--nproc-per-node", "0", "--", "info"]);
    let all = text(&out);
    assert!(!out.status.success());
    assert!(all.contains("need at least one rank per machine"), "{all}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "{all}"
    );
    let out = simclr(&["launch", "--nproc-per-node", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("required") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_torchrun_environment_without_its_address_is_refused_in_one_line() {
    let out = Command::new(bin())
        .args(["pretrain", "--device", "cpu", "--preset", "tiny"])
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .env("LOCAL_RANK", "1")
        .env_remove("MASTER_ADDR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("error: rank 1: WORLD_SIZE=2 is set but MASTER_ADDR is not"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Pretraining losses of a run's metrics.jsonl.
fn losses(out: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect()
}

/// On a GPU (the GPU suite): one rank through the whole torchrun path (launch, rendezvous,
/// NCCL, the collectives of every step) pretrains as one plain process. Elsewhere the same
/// launch on the emulator is refused in one line: NCCL needs a GPU.
#[test]
fn one_nccl_rank_pretrains_as_one_process() {
    let cuda = std::env::var("SIMCLR_TEST_DEVICES").as_deref() == Ok("cuda");
    let device = if cuda { "cuda" } else { "emu" };
    let dir = std::env::temp_dir().join(format!("simclr-launch-{}", std::process::id()));
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let args = |out: &str| {
        let out = dir.join(out).to_str().unwrap().to_string();
        let flags = [
            "pretrain", "--data", data, "--device", device, "--preset", "tiny",
        ];
        let mut args: Vec<String> = flags.map(String::from).to_vec();
        args.extend(
            [
                "--train-images",
                "48",
                "--batch-size",
                "12",
                "--epochs",
                "1",
            ]
            .map(String::from),
        );
        args.extend(["--precision", "f32", "--out", &out].map(String::from));
        args
    };
    let launched = args("launched");
    let mut launch = vec!["launch", "--nproc-per-node", "1", "--"];
    launch.extend(launched.iter().map(String::as_str));
    let out = simclr(&launch);
    let all = text(&out);
    if !cuda {
        assert!(!out.status.success());
        assert!(
            all.contains("whose ranks talk through NCCL on GPUs"),
            "{all}"
        );
        return;
    }
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("NCCL 2.") && all.contains("rank 0 of 1"),
        "{all}"
    );
    let plain = args("plain");
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    let one = simclr(&plain);
    assert!(one.status.success(), "{}", text(&one));
    let (got, want) = (losses(&dir.join("launched")), losses(&dir.join("plain")));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs(),
            "step {i}: NCCL rank {g}, one process {w}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
