//! Compiles every kernel family in `kernels/*.cu` twice (docs/ARCHITECTURE.md, "Kernels and
//! build.rs"):
//!
//! 1. nvcc → one fatbin per file (SASS for sm_80 and sm_90 plus compute_80 PTX for newer GPUs),
//!    embedded in the binary through `$OUT_DIR/kernels.rs`, with ptxas's `-v` resource report kept
//!    beside it (tests/ptxas.rs fails on register spills). Without nvcc the build still succeeds:
//!    it warns once and the `cuda` device says how to install nvcc. `SIMCLR_REQUIRE_NVCC=1` (CI)
//!    turns the missing compiler into an error.
//! 2. The C++ compiler with the emulator (`kernels/emu/`) → the static library behind the `emu`
//!    device. This needs no CUDA installation at all.

use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: &[&str] = &[
    "arch=compute_80,code=sm_80",
    "arch=compute_90,code=sm_90",
    "arch=compute_80,code=compute_80",
];

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "SIMCLR_REQUIRE_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let families = kernel_families();
    build_emulator(&families);

    let mut fatbins = String::new();
    let mut reports = String::new();
    let mut ptx = String::new();
    let version = match find_nvcc() {
        Some(nvcc) => {
            let version = nvcc_version(&nvcc);
            // The emulator's self-test kernels too: they use every wrapper of the portability
            // header, so ptxas checks the wrappers' inline PTX (mma, ldmatrix, cp.async) on
            // every build.
            let selftest = (
                "selftest".to_string(),
                PathBuf::from("kernels/emu/selftest.cu"),
            );
            let sources: Vec<(String, PathBuf)> =
                families.iter().cloned().chain([selftest]).collect();
            // One nvcc per family, in parallel: each is single-threaded and slow.
            let results: Vec<(String, PathBuf, String)> = std::thread::scope(|scope| {
                let handles: Vec<_> = sources
                    .iter()
                    .map(|(stem, src)| {
                        let (nvcc, out) = (&nvcc, &out);
                        scope.spawn(move || {
                            let fatbin = out.join(format!("{stem}.fatbin"));
                            let report = compile_fatbin(nvcc, src, &fatbin);
                            if PTX_FAMILIES.contains(&stem.as_str()) {
                                compile_ptx(nvcc, src, &out.join(format!("{stem}.ptx")));
                            }
                            (stem.clone(), fatbin, report)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (stem, fatbin, report) in results {
                let report_path = out.join(format!("{stem}.ptxas.txt"));
                std::fs::write(&report_path, report).unwrap();
                fatbins.push_str(&format!(
                    "    (\"{stem}\", include_bytes!({:?})),\n",
                    fatbin.display()
                ));
                reports.push_str(&format!(
                    "    (\"{stem}\", include_str!({:?})),\n",
                    report_path.display()
                ));
                if PTX_FAMILIES.contains(&stem.as_str()) {
                    ptx.push_str(&format!(
                        "    (\"{stem}\", include_str!({:?})),\n",
                        out.join(format!("{stem}.ptx")).display()
                    ));
                }
            }
            format!("Some({version:?})")
        }
        None => {
            if std::env::var("SIMCLR_REQUIRE_NVCC").is_ok_and(|v| v == "1") {
                panic!("SIMCLR_REQUIRE_NVCC=1 but nvcc was not found (set NVCC or CUDA_HOME)");
            }
            println!(
                "cargo:warning=nvcc not found: kernels are built for the emulator only, and the \
                 cuda device will explain how to install nvcc"
            );
            "None".into()
        }
    };
    let generated = format!(
        "/// nvcc's version line, or None when the build found no nvcc.\n\
         pub const NVCC_VERSION: Option<&str> = {version};\n\
         /// One fatbin per kernel family (kernels/<family>.cu).\n\
         pub const FATBINS: &[(&str, &[u8])] = &[\n{fatbins}];\n\
         /// ptxas -v resource reports (registers, spills), one per family.\n\
         pub const PTXAS_REPORTS: &[(&str, &str)] = &[\n{reports}];\n\
         /// The sm_90 PTX of the tensor-core families, for tests of the instructions they use.\n\
         pub const PTX: &[(&str, &str)] = &[\n{ptx}];\n"
    );
    std::fs::write(out.join("kernels.rs"), generated).unwrap();
}

/// `kernels/*.cu`, sorted by name: (family stem, path).
fn kernel_families() -> Vec<(String, PathBuf)> {
    let mut families: Vec<(String, PathBuf)> = std::fs::read_dir("kernels")
        .expect("kernels/ is missing")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    families.sort();
    families
}

/// The kernels plus the emulator runtime as one static library, linked whole-archive: each
/// kernel registers itself with the emulator from a static constructor that nothing else
/// references, which a plain static link would drop.
fn build_emulator(families: &[(String, PathBuf)]) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .include("kernels")
        .define("SIMCLR_EMU", None)
        .flag("-fno-strict-aliasing")
        .flag("-Wno-unknown-pragmas")
        .warnings(true)
        .link_lib_modifier("+whole-archive");
    if std::env::var("CARGO_CFG_TARGET_ARCH").unwrap() == "x86_64" {
        // Without FMA, fmaf is a library call and the emulated kernels run 6-7x slower.
        build.flag("-march=x86-64-v3");
    }
    // The .cu files are C++ to the host compiler.
    build.flag("-x").flag("c++");
    for (_, src) in families {
        build.file(src);
    }
    build.file("kernels/emu/emu.cpp");
    build.file("kernels/emu/selftest.cu");
    build.compile("simclr_emu");
}

/// nvcc from `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then `PATH`.
fn find_nvcc() -> Option<PathBuf> {
    let candidates = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            ["CUDA_HOME", "CUDA_PATH"]
                .iter()
                .filter_map(std::env::var_os)
                .map(|home| Path::new(&home).join("bin/nvcc")),
        )
        .chain(std::iter::once(PathBuf::from("nvcc")));
    candidates.into_iter().find(|nvcc| {
        Command::new(nvcc)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn nvcc_version(nvcc: &Path) -> String {
    let out = Command::new(nvcc).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// Families whose PTX the build keeps (tests/ptxas.rs checks their instructions).
const PTX_FAMILIES: &[&str] = &["conv_tc"];

/// Writes one family's sm_90 PTX.
fn compile_ptx(nvcc: &Path, src: &Path, ptx: &Path) {
    let out = Command::new(nvcc)
        .args([
            "-ptx",
            "-O3",
            "-std=c++17",
            "-Ikernels",
            "-arch=sm_90",
            "-o",
        ])
        .arg(ptx)
        .arg(src)
        .output()
        .expect("running nvcc");
    if !out.status.success() {
        panic!(
            "nvcc -ptx failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs nvcc on one family; returns ptxas's `-v` report. A kernel that does not compile fails
/// the build with nvcc's message.
fn compile_fatbin(nvcc: &Path, src: &Path, fatbin: &Path) -> String {
    let mut cmd = Command::new(nvcc);
    cmd.args(["-fatbin", "-O3", "-std=c++17", "-Ikernels", "-Xptxas", "-v"]);
    for arch in ARCHS {
        cmd.args(["-gencode", arch]);
    }
    cmd.arg("-o").arg(fatbin).arg(src);
    let out = cmd.output().expect("running nvcc");
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        panic!("nvcc failed on {}:\n{report}", src.display());
    }
    report
}
