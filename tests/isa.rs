//! The CPU's instruction-set dispatch (device/cpu/isa.rs): every gemm microkernel this processor
//! runs against an f64 reference on odd sizes, and `SIMCLR_CPU_ISA` forcing the choice, in this
//! test binary and in whole runs of `simclr`. An instruction set the processor lacks is skipped
//! with a line saying so.

mod common;

use simclr::device::cpu::gemm::{gemm, gemm_with, kernel_f32, Kernel};
use simclr::device::cpu::isa::{self, Isa};
use std::process::{Command, Output};

/// C (m×n, row stride ldc) = A·B (+ C0 if accumulate) in f64, through the given strides.
#[allow(clippy::too_many_arguments)]
fn reference(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    c0: &[f32],
    ldc: usize,
    accumulate: bool,
) -> Vec<f32> {
    let mut c = c0.to_vec();
    for i in 0..m {
        for j in 0..n {
            let mut sum = if accumulate {
                c0[i * ldc + j] as f64
            } else {
                0.0
            };
            for p in 0..k {
                sum += a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64;
            }
            c[i * ldc + j] = sum as f32;
        }
    }
    c
}

/// Runs `kernel` (None: whatever `gemm` picks) on every combination of odd sizes, A and B
/// row-major or transposed with padded strides, and accumulate on and off. The sizes are not
/// multiples of any tile; 1001 rows are more than the largest gemm whose B is read in place,
/// and 300 is deeper than one slab.
fn check_gemm(kernel: Option<Kernel<f32>>, what: &str) {
    let mut case = 0;
    for m in [1, 13, 29, 1001] {
        for n in [1, 17, 33, 70] {
            for k in [1, 5, 300] {
                for variant in 0..8 {
                    case += 1;
                    let (trans_a, trans_b, accumulate) =
                        (variant & 1 == 1, variant & 2 == 2, variant >= 4);
                    // Row-major A is m×k with row stride k+3; transposed, k×m with stride m+2.
                    let (a_strides, a_len) = if trans_a {
                        ((1, m + 2), k * (m + 2))
                    } else {
                        ((k + 3, 1), m * (k + 3))
                    };
                    let (b_strides, b_len) = if trans_b {
                        ((1, k + 1), n * (k + 1))
                    } else {
                        ((n + 4, 1), k * (n + 4))
                    };
                    let ldc = n + 5;
                    let a = common::random(a_len, 3 * case);
                    let b = common::random(b_len, 3 * case + 1);
                    let c0 = common::random(m * ldc, 3 * case + 2);
                    let want = reference(
                        (m, n, k),
                        &a,
                        a_strides,
                        &b,
                        b_strides,
                        &c0,
                        ldc,
                        accumulate,
                    );
                    let mut c = c0.clone();
                    let (a_rs, a_cs) = a_strides;
                    let (b_rs, b_cs) = b_strides;
                    match kernel {
                        Some(kernel) => gemm_with(
                            kernel, m, n, k, &a, a_rs, a_cs, &b, b_rs, b_cs, &mut c, ldc,
                            accumulate,
                        ),
                        None => gemm(
                            m, n, k, &a, a_rs, a_cs, &b, b_rs, b_cs, &mut c, ldc, accumulate,
                        ),
                    }
                    // The whole of C, the padding between rows included (it must be untouched).
                    let err = common::rel_l2(&c, &want);
                    assert!(
                        err < 1e-5,
                        "{what}: m={m} n={n} k={k} trans_a={trans_a} trans_b={trans_b} \
                         accumulate={accumulate}: rel err {err}"
                    );
                    for i in 0..m {
                        let pad = i * ldc + n..(i + 1) * ldc;
                        assert_eq!(
                            c[pad.clone()],
                            c0[pad],
                            "{what}: padding of row {i} written"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_supported_microkernel_matches_the_reference() {
    for isa in Isa::ALL {
        if isa.is_supported() {
            // Its kernels for narrow (at most 16 columns) and wider gemms.
            for n in [16, 17] {
                check_gemm(Some(kernel_f32(isa, n)), isa.name());
            }
            println!("{}: gemm matches the reference", isa.name());
        } else {
            println!("{}: skipped, this processor lacks it", isa.name());
        }
    }
}

/// The instruction set this process selected (from SIMCLR_CPU_ISA when set), through `gemm`.
/// The next test runs it again in a child process with each instruction set forced.
#[test]
fn gemm_runs_the_selected_isa() {
    let isa = isa::selected().expect("SIMCLR_CPU_ISA");
    println!("selected isa: {}", isa.name());
    check_gemm(None, isa.name());
}

#[test]
fn forcing_an_isa_selects_it() {
    for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "gemm_runs_the_selected_isa", "--nocapture"])
            .env(isa::ENV, isa.name())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout}{}",
            isa.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("selected isa: {}\n", isa.name())),
            "{}: {stdout}",
            isa.name()
        );
    }
}

/// `simclr pretrain` on the tiny preset (100 bundled training images) with SIMCLR_CPU_ISA set.
fn pretrain(isa: &str, out: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args(["pretrain", "--preset", "tiny", "--train-images", "100"])
        .args(["--test-images", "40", "--device", "cpu", "--force", "--out"])
        .arg(out)
        .env(isa::ENV, isa)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// The final loss a run printed ("pretrain: final loss 6.0265, ...").
fn final_loss(out: &Output) -> f64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pretrain: final loss "))
        .unwrap_or_else(|| panic!("no final loss in: {stdout}"));
    line.split(',').next().unwrap().parse().unwrap()
}

/// Each instruction set trains the same run to the same loss, up to float rounding; the portable
/// one is the run without any x86 kernel.
#[test]
fn a_run_forced_to_each_isa_trains_the_same() {
    let tmp = common::Tmp::new("isa-runs");
    let mut losses = Vec::new();
    for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
        let out = pretrain(isa.name(), &tmp.0.join(isa.name()));
        assert!(
            out.status.success(),
            "{}: {}",
            isa.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        losses.push((isa.name(), final_loss(&out)));
    }
    let (first, loss) = losses[0];
    for &(name, l) in &losses[1..] {
        assert!(
            (l - loss).abs() < 1e-3 * loss.abs(),
            "final loss {l} with {name}, {loss} with {first}"
        );
    }
}

/// An unknown value, or one the processor lacks, ends the run in one line naming it.
#[test]
fn a_bad_isa_is_a_one_line_error() {
    let tmp = common::Tmp::new("isa-bad");
    let lacking: Vec<_> = Isa::ALL.into_iter().filter(|i| !i.is_supported()).collect();
    if lacking.is_empty() {
        println!("every instruction set is supported here: only the unknown value is checked");
    }
    let cases = std::iter::once(("sse9", "unknown instruction set")).chain(
        lacking
            .iter()
            .map(|i| (i.name(), "this processor lacks it")),
    );
    for (value, why) in cases {
        let out = pretrain(value, &tmp.0.join("out"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}: the run succeeded");
        assert_eq!(stderr.lines().count(), 1, "{value}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: SIMCLR_CPU_ISA={value}: {why}")),
            "{value}: {stderr}"
        );
        assert!(!tmp.0.join("out").exists(), "{value}: wrote its output");
    }
}
