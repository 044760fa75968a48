//! The ptxas `-v` reports build.rs kept: no kernel of the hot families may spill registers to
//! local memory on sm_80 or sm_90 (a spill turns register traffic into memory traffic).

use simclr::device::cuda::kernels::{NVCC_VERSION, PTXAS_REPORTS};

/// Families whose kernels must not spill.
const NO_SPILLS: &[&str] = &["conv", "batchnorm", "gemm", "ntxent", "pool", "sk"];

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
    if NVCC_VERSION.is_none() {
        assert!(
            std::env::var("SIMCLR_REQUIRE_NVCC").is_err(),
            "SIMCLR_REQUIRE_NVCC is set but the build found no nvcc"
        );
        eprintln!("skipping: built without nvcc, so there are no ptxas reports");
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
}
