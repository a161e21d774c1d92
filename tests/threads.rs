//! The CPU kernel with more threads than CI's two cores: bidirectional layers then split each
//! direction's steps across a team of threads too (reverse direction included). One test in
//! its own binary, because it sets RAYON_NUM_THREADS for the whole process: the reference cases
//! against PyTorch, then the edge-shape sweep against the candle-ops path.

use candle_gru::models_dir;
use gru_verify::{find_cases, run_case, Case, RunOptions};

#[path = "common/kernel_shapes.rs"]
mod kernel_shapes;

#[test]
fn reference_cases_match_pytorch_with_four_and_three_threads() {
    for threads in ["4", "3"] {
        // SAFETY (of set_var): this binary runs this single test, before any other thread reads
        // the environment.
        std::env::set_var("RAYON_NUM_THREADS", threads);
        assert_eq!(gru_core::cpu_threads().to_string(), threads);
        for p in find_cases(&[models_dir().join("reference")]) {
            let r = run_case(&Case::load(&p).unwrap(), &RunOptions::default()).unwrap();
            assert!(
                r.passed,
                "{} with {threads} threads: {:?}",
                r.name, r.divergence
            );
        }
        kernel_shapes::kernel_matches_candle_ops_on_every_shape();
    }
}
