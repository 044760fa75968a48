//! What the compiled kernels are, from the output build.rs kept: no kernel of the hot families
//! may spill registers to local memory on sm_80 or sm_90 (a spill turns register traffic into
//! memory traffic), and the tensor-core convolutions are what their design says (PTX
//! instructions, registers for the occupancy they were built for).

use simclr::device::cuda::kernels::{NVCC_VERSION, PTX, PTXAS_REPORTS};

/// Families whose kernels must not spill.
const NO_SPILLS: &[&str] = &[
    "conv",
    "conv_tc",
    "batchnorm",
    "gemm",
    "ntxent",
    "ntxent_tc",
    "pool",
    "sk",
];

/// The tensor-core convolutions of kernels/conv_tc.cu.
const TC_CONVS: &[&str] = &[
    "conv_forward_bf16",
    "conv_backward_input_bf16",
    "conv_backward_weight_bf16",
];

/// False (and says why) when the build had no nvcc, so there is no compiled output to check;
/// with SIMCLR_REQUIRE_NVCC set that is a failure.
fn have_nvcc() -> bool {
    if NVCC_VERSION.is_some() {
        return true;
    }
    assert!(
        std::env::var("SIMCLR_REQUIRE_NVCC").is_err(),
        "SIMCLR_REQUIRE_NVCC is set but the build found no nvcc"
    );
    eprintln!("skipping: built without nvcc, so there is no compiled output");
    false
}

/// The body of PTX entry `name` (up to the next entry).
fn ptx_entry<'a>(ptx: &'a str, name: &str) -> &'a str {
    let start = ptx
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("no PTX entry {name}"));
    let rest = &ptx[start + 1..];
    &ptx[start..start + 1 + rest.find(".entry ").unwrap_or(rest.len())]
}

/// Registers ptxas gave each function of a report: (kernel, arch, registers).
fn registers(report: &str) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    let mut current = (String::new(), String::new());
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            current = (
                parts.next().unwrap_or("").to_string(),
                parts.nth(1).unwrap_or("").to_string(),
            );
        }
        // "ptxas info    : Used 126 registers, used 1 barriers, ..."
        if let Some(rest) = line.split("Used ").nth(1) {
            let n = rest.split_whitespace().next().unwrap().parse().unwrap();
            out.push((current.0.clone(), current.1.clone(), n));
        }
    }
    out
}

/// Each tensor-core conv's main loop is made of mma.sync m16n8k16 (bf16 in, f32 accumulate),
/// ldmatrix fragment loads (plain and transposed: k-major and mn-major tiles) and 16-byte
/// cp.async copies with commit/wait groups; and each fits the occupancy it was designed for:
/// 2 blocks of 256 threads per SM, so at most 65536 / 512 = 128 registers per thread.
#[test]
fn tensor_core_convs_are_built_as_designed() {
    if !have_nvcc() {
        return;
    }
    let ptx = PTX.iter().find(|(f, _)| *f == "conv_tc").unwrap().1;
    for kernel in TC_CONVS {
        let body = ptx_entry(ptx, kernel);
        for instruction in [
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
            "ldmatrix.sync.aligned.m8n8.x4.",
            "cp.async.cg.shared.global",
            "cp.async.commit_group",
            "cp.async.wait_group",
        ] {
            assert!(body.contains(instruction), "{kernel}: no {instruction}");
        }
    }
    // The transposed loads: dgrad's weights and both wgrad operands are mn-major.
    for kernel in ["conv_backward_input_bf16", "conv_backward_weight_bf16"] {
        let body = ptx_entry(ptx, kernel);
        assert!(
            body.contains("ldmatrix.sync.aligned.m8n8.x4.trans"),
            "{kernel}: no .trans"
        );
    }
    let report = PTXAS_REPORTS
        .iter()
        .find(|(f, _)| *f == "conv_tc")
        .unwrap()
        .1;
    let regs = registers(report);
    for kernel in TC_CONVS {
        for arch in ["sm_80", "sm_90"] {
            let (_, _, n) = regs
                .iter()
                .find(|(k, a, _)| k == kernel && a == arch)
                .unwrap_or_else(|| panic!("{kernel}: not compiled for {arch}"));
            assert!(
                *n <= 128,
                "{kernel} on {arch}: {n} registers, over 128 (2 blocks/SM)"
            );
        }
    }
}

/// (kernel, arch, spill store bytes, spill load bytes) for each function in a report.
fn spills(report: &str) -> Vec<(String, String, u64, u64)> {
    let mut out = Vec::new();
    let mut current = (String::new(), String::new());
    for line in report.lines() {
        // "ptxas info    : Compiling entry function 'conv2d_fwd' for 'sm_80'"
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or("").to_string();
            let arch = parts.nth(1).unwrap_or("").to_string();
            current = (name, arch);
        }
        // "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
        if line.contains("bytes spill stores") {
            let number_before = |word: &str| -> u64 {
                let words: Vec<&str> = line.split_whitespace().collect();
                let at = words
                    .iter()
                    .position(|w| w.trim_end_matches(',') == word)
                    .unwrap();
                words[at - 3].parse().unwrap()
            };
            out.push((
                current.0.clone(),
                current.1.clone(),
                number_before("stores"),
                number_before("loads"),
            ));
        }
    }
    out
}

#[test]
fn hot_kernels_do_not_spill() {
    if !have_nvcc() {
        return;
    }
    for family in NO_SPILLS {
        let report = PTXAS_REPORTS
            .iter()
            .find(|(name, _)| name == family)
            .unwrap_or_else(|| panic!("no ptxas report for kernels/{family}.cu"))
            .1;
        let functions = spills(report);
        assert!(
            !functions.is_empty(),
            "{family}: the report lists no functions"
        );
        for arch in ["sm_80", "sm_90"] {
            assert!(
                functions.iter().any(|f| f.1 == arch),
                "{family}: nothing compiled for {arch}"
            );
        }
        for (name, arch, stores, loads) in functions {
            assert!(
                stores == 0 && loads == 0,
                "{family}: {name} on {arch} spills ({stores} bytes stored, {loads} loaded)"
            );
        }
    }
}

#[test]
fn report_parser_reads_spills() {
    let report = "ptxas info    : Compiling entry function 'k' for 'sm_90'\n\
                  ptxas info    : Function properties for k\n    \
                  8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n";
    assert_eq!(spills(report), vec![("k".into(), "sm_90".into(), 12, 16)]);
    let report = "ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
                  ptxas info    : Used 126 registers, used 1 barriers, 428 bytes cmem[0]\n";
    assert_eq!(registers(report), vec![("k".into(), "sm_80".into(), 126)]);
}
