//! Command-line tests: every bad input ends in one line on stderr and a non-zero exit,
//! without a panic and without touching existing files; the tiny pipeline runs end to end
//! and is reproducible. Each test writes the small synthetic IDX dataset it needs.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The tiny preset on all of a synthetic 100 train / 40 test image dataset.
const TINY: &[&str] = &[
    "--preset",
    "tiny",
    "--train-images",
    "100",
    "--test-images",
    "40",
];

/// A per-test temporary directory, removed when the test ends.
struct Tmp(PathBuf);

impl Tmp {
    fn new(test: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("simclr-cli-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }

    /// `<tmp>/<name>` as a command-line argument.
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }

    /// A synthetic dataset of 100 train / 40 test images in `<tmp>/<name>`.
    fn data(&self, name: &str) -> String {
        std::fs::create_dir_all(self.0.join(name)).unwrap();
        for (prefix, n) in [("train", 100), ("t10k", 40)] {
            self.write(&format!("{name}/{prefix}-images-idx3-ubyte"), images(n));
            self.write(&format!("{name}/{prefix}-labels-idx1-ubyte"), labels(n));
        }
        self.path(name)
    }

    /// `fails_with` with `--out <tmp>/out` appended; nothing may be written into it.
    fn fails(&self, args: &[&str], needle: &str) -> String {
        let out = self.path("out");
        let line = fails_with(&[args, &["--out", &out]].concat(), needle);
        let written = std::fs::read_dir(&out).map_or(0, |d| d.count());
        assert_eq!(written, 0, "{args:?} failed but wrote into {out}");
        line
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary under test: cargo's, or SIMCLR_BIN where the tests run from a bundle on another
/// machine (scripts/gpu_suite.sh).
fn bin() -> String {
    std::env::var("SIMCLR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_simclr").to_string())
}

fn simclr(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// `command` with the tiny settings and `extra` flags.
fn tiny<'a>(command: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    [command, TINY, extra].concat()
}

/// Runs the binary and checks that it fails cleanly: a non-zero exit, exactly one line on
/// stderr, which contains `needle` (case-insensitively), and no panic. Returns that line.
fn fails_with(args: &[&str], needle: &str) -> String {
    let out = simclr(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    let context = format!("simclr {}\nstderr:\n{stderr}", args.join(" "));
    assert!(!out.status.success(), "exit 0 for bad input: {context}");
    assert!(!stderr.contains("panicked"), "panic: {context}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {context}");
    let found = stderr.to_lowercase().contains(&needle.to_lowercase());
    assert!(found, "does not mention {needle:?}: {context}");
    stderr
}

/// An IDX file: big-endian magic and dimensions, then the bytes.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend(data);
    v
}

/// n 28x28 images with deterministic pixels that depend a little on the label i % 10.
fn images(n: u32) -> Vec<u8> {
    let pixel = |i: u32, p: u32| ((p * 7 + i * 13 + (i % 10) * (p / 28) * 9) % 256) as u8;
    let pixels: Vec<u8> = (0..n * 784).map(|k| pixel(k / 784, k % 784)).collect();
    idx(0x0803, &[n, 28, 28], &pixels)
}

/// n labels 0, 1, ..., 9, 0, 1, ...
fn labels(n: u32) -> Vec<u8> {
    idx(
        0x0801,
        &[n],
        &(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>(),
    )
}

#[test]
fn missing_data_dir() {
    let t = Tmp::new("missing_data_dir");
    t.fails(
        &tiny(&["pretrain", "--data", "/nonexistent"], &[]),
        "/nonexistent",
    );
}

#[test]
fn directory_without_a_dataset() {
    let t = Tmp::new("no_dataset");
    std::fs::create_dir_all(t.0.join("notes")).unwrap();
    t.write("notes/readme.txt", "not a dataset\n");
    let notes = t.path("notes");
    let args = tiny(&["pretrain", "--data", &notes], &[]);
    t.fails(&args, "no supported dataset");
}

#[test]
fn incomplete_dataset() {
    let t = Tmp::new("incomplete");
    let data = t.data("data");
    std::fs::remove_file(t.0.join("data/t10k-labels-idx1-ubyte")).unwrap();
    t.fails(
        &tiny(&["pretrain", "--data", &data], &[]),
        "t10k-labels-idx1-ubyte",
    );
}

#[test]
fn truncated_or_corrupt_idx_file() {
    let t = Tmp::new("truncated");
    let data = t.data("data");
    let args = tiny(&["pretrain", "--data", &data], &[]);
    let file = "data/train-images-idx3-ubyte";
    let bytes = images(100);
    t.write(file, &bytes[..bytes.len() - 100]);
    let line = t.fails(&args, file);
    assert!(line.contains("truncated"), "{line}");
    // Shorter than the header itself.
    t.write(file, &bytes[..6]);
    t.fails(&args, file);
    // A header claiming 4 billion images must not make it allocate them.
    t.write(file, idx(0x0803, &[u32::MAX, 28, 28], &bytes[16..]));
    t.fails(&args, file);
    // A label file where the images should be: wrong magic.
    t.write(file, labels(100));
    t.fails(&args, "magic");
}

#[test]
fn corrupt_gzip_file() {
    let t = Tmp::new("corrupt_gz");
    let data = t.data("data");
    std::fs::remove_file(t.0.join("data/train-images-idx3-ubyte")).unwrap();
    let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 251) as u8).collect();
    t.write("data/train-images-idx3-ubyte.gz", garbage);
    let args = tiny(&["pretrain", "--data", &data], &[]);
    let line = t.fails(&args, "train-images-idx3-ubyte.gz");
    assert!(line.contains("gzip"), "{line}");
}

#[test]
fn image_label_count_mismatch() {
    let t = Tmp::new("count_mismatch");
    let data = t.data("data");
    t.write("data/train-labels-idx1-ubyte", labels(99));
    let args = tiny(&["pretrain", "--data", &data], &[]);
    let line = t.fails(&args, "train-labels-idx1-ubyte");
    assert!(line.contains("99") && line.contains("100"), "{line}");
}

#[test]
fn bad_labels() {
    let t = Tmp::new("bad_labels");
    let data = t.data("data");
    for labels in ["0", "150%", "1.5", "abc", ""] {
        let args = tiny(&["pretrain", "--data", &data], &["--labels", labels]);
        t.fails(&args, &format!("--labels {labels}"));
    }
    // More labels per class than the 10 images of each class: refused by the stages that
    // train on labels (pretraining uses none: `pretraining_ignores_the_labelled_subset`).
    let args = tiny(&["finetune", "--data", &data], &["--labels", "11"]);
    t.fails(&args, "--labels 11");
}

/// `eval --linear` refuses the settings every other command refuses.
#[test]
fn linear_evaluation_checks_its_settings() {
    let t = Tmp::new("linear_settings");
    let data = t.data("data");
    let pre = t.path("pre");
    let run = simclr(&tiny(&["pretrain", "--data", &data, "--out", &pre], &[]));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for (flag, value, needle) in [
        ("--lr", "0", "learning rate must be positive"),
        ("--batch-size", "1", "batch size 1"),
        ("--epochs", "0", "epochs"),
    ] {
        let args = [
            "eval", "--linear", "--ckpt", &pre, "--data", &data, flag, value,
        ];
        t.fails(&tiny(&args, &[]), needle);
    }
}

/// Pretraining uses no labels: a labelled subset that cannot be drawn (a class with fewer
/// images than --labels asks for) does not stop it, nor its kNN monitor.
#[test]
fn pretraining_ignores_the_labelled_subset() {
    let t = Tmp::new("pretrain_labels");
    let data = t.data("data");
    let out = t.path("out");
    let args = tiny(
        &["pretrain", "--data", &data, "--out", &out],
        &["--labels", "11"],
    );
    let run = simclr(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "pretrain failed:\n{stderr}");
    assert!(t.0.join("out/checkpoint.safetensors").is_file());
}

#[test]
fn bad_config_values() {
    let t = Tmp::new("bad_config");
    let data = t.data("data");
    for (flag, value, needle) in [
        ("--batch-size", "1", "batch size 1"),
        ("--epochs", "0", "epochs"),
        ("--temperature", "0", "--temperature"),
        (
            "--weight-decay",
            "-1",
            "weight decay must be zero or positive",
        ),
        (
            "--weight-decay",
            "inf",
            "weight decay must be zero or positive",
        ),
        (
            "--color-strength",
            "NaN",
            "--color-strength must be in [0, 2.5]",
        ),
        ("--lr", "-0.1", "learning rate must be positive"),
        ("--arch", "resnet7", "resnet7"),
        ("--device", "tpu", "tpu"),
        ("--device", "cuda:x", "cuda:x"),
        ("--device", "emu:fast", "schedule"),
        ("--precision", "fp8", "--precision fp8"),
        ("--augment-on", "gpu", "--augment-on gpu"),
        (
            "--memory-size",
            "100",
            "--memory-size 100 is not a multiple of the 128 views",
        ),
        (
            "--memory-momentum",
            "1",
            "--memory-momentum must be in [0, 1)",
        ),
        (
            "--memory-momentum",
            "0.9",
            "--memory-momentum needs a memory buffer",
        ),
    ] {
        t.fails(
            &tiny(&["pretrain", "--data", &data], &[flag, value]),
            needle,
        );
    }
    let args = ["pretrain", "--data", &data, "--preset", "huge"];
    t.fails(&args, "--preset huge");
    let args = [
        "pretrain",
        "--data",
        &data,
        "--device",
        "cpu",
        "--augment-on",
        "device",
    ];
    t.fails(&args, "--augment-on device needs a GPU");
}

/// `--device cuda` where there is no usable GPU (no nvcc at build time, or no driver) says why
/// in one line; `auto` falls back to the cpu and says so.
#[test]
fn cuda_without_a_gpu() {
    if let Ok(gpu) = simclr::device::cuda::Gpu::cuda(0) {
        eprintln!("skipping: {} is present", gpu.name());
        return;
    }
    let t = Tmp::new("no_gpu");
    let data = t.data("data");
    for device in ["cuda", "cuda:1"] {
        t.fails(
            &tiny(&["pretrain", "--data", &data], &["--device", device]),
            "cuda",
        );
    }
    let out = t.path("auto");
    let args = tiny(
        &["pretrain", "--data", &data, "--out", &out],
        &["--device", "auto"],
    );
    let run = simclr(&args);
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success() && stdout.contains("device: cpu (auto: "),
        "{stdout}"
    );
}

#[test]
fn bad_flags() {
    let t = Tmp::new("bad_flags");
    let data = t.data("data");
    let pretrain = ["pretrain", "--data", &data];
    t.fails(&tiny(&pretrain, &["--epochs", "x"]), "--epochs");
    t.fails(&tiny(&pretrain, &["--no-such-flag"]), "--no-such-flag");
    t.fails(&tiny(&pretrain, &["--optimizer", "adam"]), "adam");
    t.fails(
        &tiny(&pretrain, &["--cuda-graphs", "maybe"]),
        "--cuda-graphs",
    );
    t.fails(&["retrain", "--data", &data], "retrain");
    t.fails(&["distill", "--data", &data], "--teacher");
    fails_with(&[], "subcommand");
}

/// `--budget` takes a duration or `off`, is pipeline's alone, and does not mix with explicit
/// stage lengths; learning-rate lists must be numbers.
#[test]
fn bad_budgets_and_learning_rates() {
    let t = Tmp::new("bad_budget");
    let data = t.data("data");
    let pipeline = ["pipeline", "--data", &data];
    for budget in ["15", "15x", "1h30", "0s", "5d", "1.5h"] {
        let line = t.fails(&tiny(&pipeline, &["--budget", budget]), "--budget");
        assert!(
            line.contains("15m") || line.contains("above zero"),
            "{line}"
        );
    }
    for length in [
        "--epochs",
        "--baseline-epochs",
        "--finetune-epochs",
        "--distill-epochs",
    ] {
        let args = tiny(&pipeline, &["--budget", "10m", length, "2"]);
        t.fails(&args, "give one or the other");
    }
    let pretrain = ["pretrain", "--data", &data];
    t.fails(
        &tiny(&pretrain, &["--budget", "10m"]),
        "--budget is pipeline's",
    );
    for flag in ["--baseline-lr", "--finetune-lr"] {
        t.fails(&tiny(&pipeline, &[flag, "0.1,fast"]), flag);
        t.fails(&tiny(&pipeline, &[flag, "0.1,-0.2"]), "must be positive");
    }
    // Too short a budget for the stages' steps and evaluations, said after measuring them.
    let args = tiny(&pipeline, &["--budget", "1s", "--device", "cpu"]);
    t.fails(&args, "too short");
}

#[test]
fn existing_out_dir_is_not_overwritten() {
    let t = Tmp::new("existing_out");
    let data = t.data("data");
    std::fs::create_dir_all(t.0.join("run")).unwrap();
    t.write("run/keep.txt", "earlier run\n");
    let kept = || std::fs::read_to_string(t.0.join("run/keep.txt")).unwrap();
    let out = t.path("run");
    fails_with(
        &tiny(&["pretrain", "--data", &data, "--out", &out], &[]),
        "--force",
    );
    assert_eq!(kept(), "earlier run\n");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // An --out that is a file.
    let file = t.path("run/keep.txt");
    let args = tiny(&["pretrain", "--data", &data, "--out", &file], &[]);
    fails_with(&args, "not a directory");
    assert_eq!(kept(), "earlier run\n");
}

#[test]
fn finetune_from_a_file_that_is_not_a_checkpoint() {
    let t = Tmp::new("not_a_checkpoint");
    let data = t.data("data");
    let random: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 256) as u8).collect();
    t.write("random.safetensors", random);
    t.write("empty.safetensors", b"");
    // A valid safetensors file without our metadata.
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let foreign = [&(header.len() as u64).to_le_bytes()[..], header, &[0; 4]].concat();
    t.write("foreign.safetensors", foreign);
    for name in ["random", "empty", "missing", "foreign"] {
        let from = t.path(&format!("{name}.safetensors"));
        t.fails(
            &tiny(&["finetune", "--from", &from, "--data", &data], &[]),
            &from,
        );
        t.fails(
            &tiny(&["eval", "--ckpt", &from, "--data", &data], &[]),
            &from,
        );
    }
}

#[test]
fn checkpoint_of_the_wrong_kind() {
    let t = Tmp::new("wrong_kind");
    let data = t.data("data");
    let pre = t.path("pre");
    let out = simclr(&tiny(&["pretrain", "--data", &data, "--out", &pre], &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpt = t.path("pre/checkpoint.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    // Another architecture than the checkpoint's resnet8.
    let args = tiny(
        &["finetune", "--from", &ckpt, "--data", &data],
        &["--arch", "resnet18"],
    );
    let line = t.fails(&args, &ckpt);
    assert!(line.contains("resnet8"), "{line}");
    // A pretrained checkpoint has no classifier to distill from (file or run directory).
    for teacher in [&ckpt, &pre] {
        let args = tiny(&["distill", "--teacher", teacher, "--data", &data], &[]);
        t.fails(&args, "classifier");
    }
    // Images of another size than the checkpoint's 28x28.
    let data14 = t.data("data14");
    for (prefix, n) in [("train", 100), ("t10k", 40)] {
        let small = idx(0x0803, &[n, 14, 14], &vec![7; n as usize * 196]);
        t.write(&format!("data14/{prefix}-images-idx3-ubyte"), small);
    }
    let args = tiny(&["finetune", "--from", &ckpt, "--data", &data14], &[]);
    t.fails(&args, "28x28");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "checkpoint changed");
}

/// Runs the tiny pipeline on `device` in `precision` (f32 or bf16), checks the run directory
/// and returns report.json.
fn tiny_pipeline(t: &Tmp, data: &str, out_name: &str, device: &str, precision: &str) -> Value {
    let out = t.path(out_name);
    let args = tiny(
        &["pipeline", "--data", data, "--out", &out],
        &[
            "--labels",
            "2",
            "--device",
            device,
            "--precision",
            precision,
        ],
    );
    let run = simclr(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "pipeline failed:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report = std::fs::read_to_string(t.0.join(out_name).join("report.json")).unwrap();
    let report = serde_json::from_str(&report).unwrap();
    for stage in STAGES {
        for file in ["checkpoint.safetensors", "checkpoint.json", "metrics.jsonl"] {
            let path = stage_dir(&t.0.join(out_name), &report, stage).join(file);
            assert!(path.is_file(), "{} is missing", path.display());
        }
    }
    report
}

const STAGES: [&str; 4] = ["baseline", "pretrain", "finetune", "distill"];

/// Where a pipeline's `stage` wrote its checkpoint (the chosen run's, after a learning-rate
/// search), from its report.
fn stage_dir(run: &Path, report: &Value, stage: &str) -> PathBuf {
    let dir = report[stage]["checkpoint"].as_str();
    run.join(dir.unwrap_or_else(|| panic!("no {stage} checkpoint in {report}")))
}

/// Every run of a pipeline's `stage`: one per learning rate of its search, or its one.
fn run_dirs(run: &Path, report: &Value, stage: &str) -> Vec<PathBuf> {
    match report[stage]["lr_search"]["grid"].as_array() {
        Some(grid) => (grid.iter())
            .map(|lr| run.join(stage).join(format!("lr-{}", lr.as_f64().unwrap())))
            .collect(),
        None => vec![stage_dir(run, report, stage)],
    }
}

#[test]
fn tiny_pipeline_runs_and_is_reproducible() {
    let t = Tmp::new("pipeline");
    let data = t.data("data");
    let r = tiny_pipeline(&t, &data, "a", "cpu", "f32");
    let fields: &[(&str, &[&str])] = &[
        (
            "",
            &["dataset", "device", "label_fraction", "labelled_examples"],
        ),
        ("", &["seed", "total_wall_s"]),
        ("baseline", &["arch", "params", "top1", "wall_s"]),
        (
            "pretrain",
            &[
                "arch",
                "params",
                "epochs",
                "final_loss",
                "knn_top1",
                "wall_s",
            ],
        ),
        ("finetune", &["top1", "wall_s"]),
        (
            "distill",
            &["student_arch", "student_params", "top1", "wall_s"],
        ),
    ];
    for &(stage, keys) in fields {
        let object = if stage.is_empty() { &r } else { &r[stage] };
        for &key in keys {
            assert!(!object[key].is_null(), "{stage}.{key} missing in {r}");
        }
    }
    assert!(r["dataset"].is_string() && r["device"].is_string(), "{r}");
    let isa = r["cpu_kernels"].as_str().unwrap_or_default();
    assert!(["avx512", "avx2", "portable"].contains(&isa), "{r}");
    assert_eq!(r["labelled_examples"], 20, "{r}");
    let results = |r: &Value| -> Vec<f64> {
        let at = |stage: &str, key: &str| r[stage][key].as_f64().unwrap();
        vec![
            at("baseline", "top1"),
            at("pretrain", "knn_top1"),
            at("finetune", "top1"),
            at("distill", "top1"),
            at("pretrain", "final_loss"),
        ]
    };
    let first = results(&r);
    for top1 in &first[..4] {
        assert!((0.0..=1.0).contains(top1), "top-1 {top1} in {r}");
    }
    assert!(first[4].is_finite(), "final loss in {r}");
    let again = tiny_pipeline(&t, &data, "b", "cpu", "f32");
    assert_eq!(first, results(&again), "same seed, different results");
}

/// The step losses of every run of every stage of a run, from its metrics.jsonl files.
fn step_losses(t: &Tmp, out_name: &str, report: &Value) -> Vec<f64> {
    let mut losses = Vec::new();
    let dirs = STAGES.map(|stage| run_dirs(&t.0.join(out_name), report, stage));
    for dir in dirs.iter().flatten() {
        let path = dir.join("metrics.jsonl");
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            if let Some(loss) = record["loss"].as_f64() {
                losses.push(loss);
            }
        }
    }
    losses
}

/// The GPU device under test: the emulator, or the real GPU under SIMCLR_TEST_DEVICES=cuda
/// (scripts/gpu_suite.sh).
fn gpu_device() -> &'static str {
    match std::env::var("SIMCLR_TEST_DEVICES").as_deref() {
        Ok("cuda") => "cuda",
        _ => "emu",
    }
}

/// The whole flow on the CUDA kernels in f32 matches the cpu run step by step.
#[test]
fn tiny_pipeline_on_the_gpu_device_matches_cpu() {
    let gpu = gpu_device();
    let t = Tmp::new("pipeline_gpu");
    let data = t.data("data");
    let run = tiny_pipeline(&t, &data, gpu, gpu, "f32");
    assert!(run["device"].as_str().unwrap().starts_with(gpu), "{run}");
    let cpu = tiny_pipeline(&t, &data, "cpu", "cpu", "f32");
    let (got, want) = (step_losses(&t, gpu, &run), step_losses(&t, "cpu", &cpu));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-3 * w.abs().max(1.0),
            "step {i}: {gpu} loss {g}, cpu loss {w}"
        );
    }
    // The device counters of every step (exact on the emulator and a GPU): after a stage's
    // first step, which fills the allocator's cache, no driver allocation, and at most one host
    // wait (the uploads go through page-locked memory without waiting, and the loss comes back
    // a step late: on a GPU the host waits only if it runs that far ahead of the device).
    for stage in STAGES {
        let path = run_dirs(&t.0.join(gpu), &run, stage)[0].join("metrics.jsonl");
        let steps: Vec<Value> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["step"].is_u64())
            .collect();
        for (i, r) in steps.iter().enumerate() {
            let count = |key: &str| r["device"][key].as_u64().unwrap_or_else(|| panic!("{r}"));
            assert!(
                count("launches") > 0 && count("h2d_bytes") > 0,
                "{stage}: {r}"
            );
            assert!(count("host_syncs") <= 1, "{stage}: {r}");
            if i > 0 {
                assert_eq!(count("driver_allocs"), 0, "{stage}: {r}");
            }
        }
    }
    // Printed for the GPU suite's log: how close the two runs came.
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max);
    println!(
        "{} steps, largest relative loss difference {gpu} vs cpu {worst:.2e}",
        got.len()
    );
}

/// The per-step records of a metrics.jsonl file: (loss, device counters).
fn step_records(metrics: &Path) -> Vec<(f64, Value)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["step"].is_u64())
        .map(|r| (r["loss"].as_f64().unwrap(), r["device"].clone()))
        .collect()
}

/// Pretraining on the GPU device with the views augmented on the device from u8 images and the
/// steady-state steps replayed as CUDA graphs: every step's loss is the one of the same run
/// augmented on the cpu and launched kernel by kernel, up to float rounding (the views are the
/// same draws); steps from the fourth on are graph launches, none waits for the device, and
/// each ships no more bytes to the device than its views would take as u8.
#[test]
fn device_augmentation_and_graphs_match_cpu_augmentation_launch_by_launch() {
    let gpu = gpu_device();
    let t = Tmp::new("augment_graphs");
    let data = t.data("data");
    let run = |name: &str, augment_on: &str, graphs: &str| {
        let out = t.path(name);
        let args = tiny(
            &["pretrain", "--data", &data, "--out", &out],
            &[
                "--device",
                gpu,
                "--precision",
                "f32",
                "--batch-size",
                "10",
                "--epochs",
                "1",
                "--augment-on",
                augment_on,
                "--cuda-graphs",
                graphs,
            ],
        );
        let done = simclr(&args);
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(done.status.success(), "{name}:\n{stderr}");
        step_records(&t.0.join(name).join("metrics.jsonl"))
    };
    let device = run("device", "device", "on");
    let cpu = run("cpu", "cpu", "off");
    assert_eq!(device.len(), 10);
    assert_eq!(device.len(), cpu.len());
    // 10 images of 28x28x1 a step, two views each, as u8.
    let u8_views = 2 * 10 * 28 * 28;
    for (i, ((got, counters), (want, _))) in device.iter().zip(&cpu).enumerate() {
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1.0),
            "step {i}: loss {got} augmented on the device, {want} on the cpu"
        );
        let count = |key: &str| counters[key].as_u64().unwrap();
        assert_eq!(count("graphs"), (i >= 3) as u64, "step {i}: {counters}");
        assert!(count("host_syncs") <= 1, "step {i}: {counters}");
        assert!(count("h2d_bytes") <= u8_views, "step {i}: {counters}");
        if i > 0 {
            assert_eq!(count("driver_allocs"), 0, "step {i}: {counters}");
        }
    }
}

/// The whole flow in bf16 mixed precision on the GPU device ends pretraining within 2% of the
/// same run in f32 (the final loss of report.json), and every stage's result is a valid top-1.
#[test]
fn tiny_pipeline_in_bf16_ends_within_2_percent_of_f32() {
    bf16_pipeline_ends_within_2_percent_of_f32(gpu_device());
}

/// The same on the cpu, where bf16 means f32 activations and bf16 products in every gemm (on
/// AMX tiles where the processor has them), which report.json names.
#[test]
fn tiny_pipeline_with_bf16_products_on_the_cpu_ends_within_2_percent_of_f32() {
    let (bf16, f32) = bf16_pipeline_ends_within_2_percent_of_f32("cpu");
    let products = |r: &Value| r["cpu_products"].as_str().unwrap().to_string();
    assert!(products(&bf16).starts_with("bf16 products"), "{bf16}");
    assert_eq!(products(&f32), "f32 products", "{f32}");
}

/// The tiny pipeline on `device` in bf16 and in f32: the final pretraining losses agree within
/// 2%, and every stage's result is a valid top-1. Returns the two reports.
fn bf16_pipeline_ends_within_2_percent_of_f32(device: &str) -> (Value, Value) {
    let t = Tmp::new(&format!("pipeline_bf16_{device}"));
    let data = t.data("data");
    let bf16 = tiny_pipeline(&t, &data, "bf16", device, "bf16");
    let f32 = tiny_pipeline(&t, &data, "f32", device, "f32");
    let loss = |r: &Value| r["pretrain"]["final_loss"].as_f64().unwrap();
    let (got, want) = (loss(&bf16), loss(&f32));
    println!("tiny pipeline on {device}: final pretraining loss bf16 {got}, f32 {want}");
    assert!(
        (got - want).abs() <= 0.02 * want.abs(),
        "bf16 final loss {got} vs f32 {want}"
    );
    for stage in ["baseline", "finetune", "distill"] {
        let top1 = bf16[stage]["top1"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&top1),
            "{stage} top-1 {top1} in {bf16}"
        );
    }
    (bf16, f32)
}

/// A loss that stops being finite ends the run in one line naming the stage's step, on the cpu
/// and on the GPU device (where the loss is checked one step late), and saves nothing.
#[test]
fn non_finite_loss_stops_the_run_and_names_the_step() {
    let t = Tmp::new("nan");
    let data = t.data("data");
    for device in ["cpu", gpu_device()] {
        let out = t.path(device);
        let args = [
            "pretrain",
            "--data",
            &data,
            "--out",
            &out,
            "--preset",
            "tiny",
            "--batch-size",
            "16",
            "--lr",
            "1e30",
            "--device",
            device,
        ];
        fails_with(&args, "loss became NaN at step 1 (epoch 1)");
        let saved = t.0.join(device).join("checkpoint.safetensors");
        assert!(!saved.exists(), "{device}: a checkpoint was saved");
    }
}

/// Runs the binary with `args` and kills it with SIGKILL once `reached()`, which must happen
/// before the run ends.
fn kill_once(args: &[&str], reached: impl Fn() -> bool) {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !reached() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A pretraining run killed with SIGKILL and resumed with --resume ends with bit-identical
/// weights to an uninterrupted run with the same seed.
#[test]
fn killed_run_resumes_bit_identically() {
    resumes_bit_identically("resume", &[]);
}

/// The same with NT-Xent's memory buffer, which the checkpoints carry (two batches' views), and
/// with its momentum encoder, whose weights they carry too.
#[test]
fn killed_run_with_a_memory_buffer_resumes_bit_identically() {
    resumes_bit_identically("resume-memory", &["--memory-size", "64"]);
    resumes_bit_identically(
        "resume-momentum",
        &["--memory-size", "64", "--memory-momentum", "0.9"],
    );
}

fn resumes_bit_identically(name: &str, extra: &[&str]) {
    let t = Tmp::new(name);
    let data = t.data("data");
    let flags = [
        &[
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--checkpoint-every",
            "1",
            "--device",
            "cpu",
        ],
        extra,
    ]
    .concat();
    let (whole, killed) = (t.path("whole"), t.path("killed"));
    let run = simclr(&tiny(
        &["pretrain", "--data", &data, "--out", &whole],
        &flags,
    ));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Kill the second run once it is well into its second epoch (6 steps per epoch).
    let args = tiny(&["pretrain", "--data", &data, "--out", &killed], &flags);
    let metrics = t.0.join("killed/metrics.jsonl");
    let steps = || {
        std::fs::read_to_string(&metrics)
            .map(|s| s.lines().filter(|l| l.contains("\"step\"")).count())
            .unwrap_or(0)
    };
    kill_once(&args, || steps() >= 8);

    let resumed = simclr(&[args.as_slice(), &["--resume"]].concat());
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(stdout.contains("resuming from epoch 1"), "{stdout}");
    let load = |dir: &str| simclr::train::checkpoint::load_training(Path::new(dir)).unwrap();
    let (a, b) = (load(&whole), load(&killed));
    for (p, q) in a.model.store.params.iter().zip(&b.model.store.params) {
        assert_eq!(
            p.value.to_f32_vec(),
            q.value.to_f32_vec(),
            "{} differs",
            p.name
        );
    }
    let memory = |r: &simclr::train::checkpoint::Resume| {
        let q = &r.queued;
        let keys = q.key_encoder.iter().flatten().map(|w| w.to_f32_vec());
        (
            q.rows.as_ref().map(|m| m.to_f32_vec()),
            keys.collect::<Vec<_>>(),
        )
    };
    assert_eq!(memory(&a), memory(&b), "the memory buffers differ");
    assert_eq!(memory(&a).0.is_some(), !extra.is_empty());
    let momentum = extra.contains(&"--memory-momentum");
    assert_eq!(
        memory(&a).1.len(),
        momentum as usize * a.model.store.params.len()
    );
    // Other settings than the run's are refused, its own length too, as is --resume without
    // --out.
    let other = [args.as_slice(), &["--resume", "--lr", "0.5"]].concat();
    fails_with(&other, "--resume");
    let longer = [&flags[..1], &["3"], &flags[2..], &["--resume"]].concat();
    fails_with(
        &tiny(&["pretrain", "--data", &data, "--out", &killed], &longer),
        "--resume",
    );
    fails_with(
        &tiny(&["pretrain", "--data", &data], &["--resume"]),
        "--out",
    );
}

/// The momentum encoder fills the memory buffer. At a momentum of almost 0 it is the trained
/// network itself, so every step's loss is that without one; at 0.9 the first two steps are
/// still the same (the memory then holds rows the two networks made from the same weights) and
/// the later ones part. On the emulated GPU the same run follows the cpu's to 1e-4. (At the
/// preset's learning rate this 16-image run turns f32 rounding, 4e-7 in a batch-norm variance
/// computed either way, into 0.3% of the loss by step 5; at 0.02 the runs stay within 1e-6.)
#[test]
fn momentum_encoder_fills_the_memory_buffer() {
    let t = Tmp::new("momentum");
    let data = t.data("data");
    let losses = |name: &str, extra: &[&str]| -> Vec<f64> {
        let out = t.path(name);
        let flags = [
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--memory-size",
            "64",
            "--lr",
            "0.02",
        ];
        let args = tiny(&["pretrain", "--data", &data, "--out", &out], &flags);
        let run = simclr(&[args.as_slice(), extra].concat());
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let text = std::fs::read_to_string(t.0.join(name).join("metrics.jsonl")).unwrap();
        (text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()))
        .filter_map(|r| r["step"].is_u64().then(|| r["loss"].as_f64().unwrap()))
        .collect()
    };
    let plain = losses("plain", &["--device", "cpu"]);
    let almost_0 = losses("almost0", &["--device", "cpu", "--memory-momentum", "1e-9"]);
    let m = losses("m", &["--device", "cpu", "--memory-momentum", "0.9"]);
    let emu = losses("emu", &["--device", "emu", "--memory-momentum", "0.9"]);
    assert!(plain.len() >= 4, "{plain:?}");
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs();
    for (step, ((&p, &a), (&m, &e))) in plain
        .iter()
        .zip(&almost_0)
        .zip(m.iter().zip(&emu))
        .enumerate()
    {
        assert!(
            close(a, p, 1e-5),
            "step {step}: momentum 1e-9 {a}, none {p}"
        );
        assert_eq!(
            close(m, p, 1e-5),
            step < 2,
            "step {step}: momentum 0.9 {m}, none {p}"
        );
        assert!(close(e, m, 1e-4), "step {step}: emu {e}, cpu {m}");
    }
}

/// A budgeted pipeline sets every stage's steps from its measured speed and records the plan,
/// the learning rates tried on the validation split and the choice. Killed during pretraining
/// and resumed, it keeps that plan (as re-planned after the baseline) instead of measuring
/// again, and every run of every stage runs exactly its planned steps (so its schedule ends
/// where the plan put the end).
#[test]
fn budgeted_pipeline_keeps_its_plan_when_resumed() {
    let t = Tmp::new("budget");
    let data = t.data("data");
    let out = t.path("run");
    let args = tiny(
        &["pipeline", "--data", &data, "--out", &out],
        &["--labels", "2", "--budget", "30s", "--device", "cpu"],
    );
    let run = t.0.join("run");
    let steps_logged = |dir: &Path| -> Vec<u64> {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
        (text.lines())
            .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64())
            .collect()
    };
    kill_once(&args, || steps_logged(&run.join("pretrain")).len() >= 3);
    let planned = std::fs::read(run.join("budget.json")).unwrap();

    let resumed = simclr(&[args.as_slice(), &["--resume"]].concat());
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stdout.contains("not measured again"), "{stdout}");
    assert_eq!(std::fs::read(run.join("budget.json")).unwrap(), planned);
    let plan: Value = serde_json::from_slice(&planned).unwrap();
    // Re-planned once, after the baseline; the resumed run re-plans no more.
    let revisions = plan["revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 1, "{plan}");
    assert_eq!(revisions[0]["after"], "baseline");
    let report = std::fs::read_to_string(run.join("report.json")).unwrap();
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["config"]["plan"], plan);
    for stage in STAGES {
        let steps = plan[stage]["steps"].as_u64().unwrap();
        assert!(steps >= 1, "{stage}: {plan}");
        assert_eq!(report["config"][stage]["steps"], steps, "{stage}");
        for dir in run_dirs(&run, &report, stage) {
            // The resumed pretraining logs again the steps after its last checkpoint.
            let mut logged = steps_logged(&dir);
            logged.sort_unstable();
            logged.dedup();
            assert_eq!(logged, (0..steps).collect::<Vec<_>>(), "{}", dir.display());
        }
    }
    // The learning rates: each of the preset's grid scored on the 60 validation images, and
    // the best kept (the first of equals).
    for stage in ["baseline", "finetune"] {
        let search = &report[stage]["lr_search"];
        let grid = search["grid"].as_array().unwrap();
        assert_eq!(
            search["grid"], report["config"][stage]["lr_grid"],
            "{stage}"
        );
        assert_eq!(search["val_images"], 60, "{stage}");
        let scores: Vec<f64> = (search["val_top1"].as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), grid.len(), "{search}");
        assert!(scores.iter().all(|v| (0.0..=1.0).contains(v)), "{search}");
        let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        assert_eq!(search["chosen"], grid[best], "{search}");
        assert_eq!(report[stage]["lr"], grid[best], "{stage}");
        let dir = format!("{stage}/lr-{}", grid[best].as_f64().unwrap());
        assert_eq!(report[stage]["checkpoint"], dir.as_str());
    }
}

/// Running out of device memory (an emulated GPU of 4 MiB) stops with one line giving the
/// request, the free memory and a smaller batch size to try.
#[test]
fn out_of_device_memory() {
    let t = Tmp::new("oom");
    let data = t.data("data");
    let out = t.path("out");
    let args = tiny(
        &["pretrain", "--data", &data, "--out", &out],
        &["--device", "emu"],
    );
    let run = Command::new(bin())
        .args(&args)
        .env("SIMCLR_EMU_MEMORY_MB", "4")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).trim_end().to_string();
    assert!(!run.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for needle in [
        "out of device memory",
        "bytes requested",
        "free",
        "--batch-size",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
}

/// Linear evaluation trains a classifier on the frozen encoder: the encoder's weights and BN
/// statistics in its checkpoint are the pretrained ones, bit for bit.
#[test]
fn linear_evaluation_keeps_the_encoder_frozen() {
    let t = Tmp::new("linear");
    let data = t.data("data");
    let (pre, lin) = (t.path("pre"), t.path("lin"));
    let run = simclr(&tiny(&["pretrain", "--data", &data, "--out", &pre], &[]));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let args = tiny(
        &[
            "eval", "--linear", "--ckpt", &pre, "--data", &data, "--out", &lin,
        ],
        &["--epochs", "3"],
    );
    let run = simclr(&args);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("linear evaluation: test top-1"), "{stdout}");
    let load = |dir: &str| {
        simclr::train::checkpoint::load(std::path::Path::new(dir))
            .unwrap()
            .0
    };
    let (pretrained, linear) = (load(&pre), load(&lin));
    let mut trained = 0;
    for p in &linear.store.params {
        let before = pretrained
            .store
            .find(&p.name)
            .map(|i| pretrained.store.value(i));
        match before {
            Some(before) => assert_eq!(
                before.to_f32_vec(),
                p.value.to_f32_vec(),
                "{} moved",
                p.name
            ),
            None => {
                assert!(p.name.starts_with("classifier."), "{}", p.name);
                // Zero-initialised, so any non-zero value was learned.
                assert!(
                    p.value.to_f32_vec().iter().any(|&v| v != 0.0),
                    "{} untrained",
                    p.name
                );
                trained += 1;
            }
        }
    }
    assert_eq!(trained, 2, "classifier weight and bias");
}

/// `simclr info --json` gives the paper's encoder sizes (±2% of its table) and the head and
/// feature width, instantly (nothing is allocated).
#[test]
fn info_gives_the_papers_parameter_counts() {
    for (arch, width, sk, millions) in [
        ("resnet50", "1x", false, 24.0),
        ("resnet50", "1x", true, 35.0),
        ("resnet50", "2x", true, 140.0),
        ("resnet152", "3x", true, 795.0),
    ] {
        let mut args = vec!["info", "--arch", arch, "--width", width, "--json"];
        if sk {
            args.push("--sk");
        }
        let run = simclr(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let info: Value = serde_json::from_slice(&run.stdout).unwrap();
        let encoder = info["encoder_params"].as_f64().unwrap() / 1e6;
        // The table rounds to whole millions: ±2% around it, widened by that rounding.
        assert!(
            (encoder - millions).abs() <= 0.02 * millions + 0.5,
            "{arch} {width} sk={sk}: {encoder}M vs {millions}M"
        );
        assert!(info["head_params"].as_u64().unwrap() > 0, "{info}");
        assert!(info["feature_dim"].as_u64().unwrap() >= 2048, "{info}");
    }
    fails_with(&["info", "--arch", "resnet51"], "resnet51");
    fails_with(&["info", "--width", "2y"], "2y");
}
