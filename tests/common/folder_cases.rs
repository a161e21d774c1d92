//! Every reference case of a folder, run on the CPU at its default tolerance.

use std::path::Path;

use gru_verify::{find_cases, run_case, Case, RunOptions};

/// Runs every `*.case.safetensors` under `dir` and asserts that each passes; returns how many.
pub fn assert_folder_passes(dir: &Path) -> usize {
    let cases = find_cases(&[dir.to_path_buf()]);
    for p in &cases {
        let case = Case::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let r = run_case(&case, &RunOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(r.passed, "{}: {:?}", r.name, r.divergence);
    }
    cases.len()
}
