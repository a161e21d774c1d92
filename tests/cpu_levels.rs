//! Every SIMD level this CPU has, the scalar reference included, against PyTorch: the reference
//! cases and the edge-shape sweep, on one thread and on three (threads split a direction's rows
//! or units). The level is read once per process, so each level runs in a child process of this
//! test binary with `GRU_CPU_LEVEL` set; the CPU's best level is what every other test runs.

use std::process::Command;

use candle_gru::models_dir;
use gru_verify::{find_cases, run_case, Case, RunOptions};

#[path = "common/kernel_shapes.rs"]
mod kernel_shapes;

const CHILD: &str = "level_child_runs_the_cases_and_the_sweep";

#[test]
fn every_cpu_level_matches_pytorch() {
    let levels = gru_core::cpu_levels();
    let (best, lower) = levels.split_last().expect("at least the scalar level");
    assert!(lower.contains(&"scalar"), "{levels:?}");
    println!("levels: {levels:?} (the best, {best}, runs in the other tests)");
    for level in lower {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                CHILD,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("GRU_CPU_LEVEL", level)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "level {level}:\n{text}");
        assert!(
            text.contains("1 passed"),
            "level {level} ran nothing:\n{text}"
        );
    }
}

#[test]
#[ignore = "run by every_cpu_level_matches_pytorch, once per level"]
fn level_child_runs_the_cases_and_the_sweep() {
    if let Ok(want) = std::env::var("GRU_CPU_LEVEL") {
        let level = gru_core::cpu_level();
        assert!(
            level.starts_with(&want),
            "asked for {want}, running {level}"
        );
    }
    for threads in ["1", "3"] {
        // SAFETY (of set_var): this process runs this single test, before any other thread
        // reads the environment.
        std::env::set_var("RAYON_NUM_THREADS", threads);
        assert_eq!(gru_core::cpu_threads().to_string(), threads);
        for p in find_cases(&[models_dir().join("reference")]) {
            let r = run_case(&Case::load(&p).unwrap(), &RunOptions::default()).unwrap();
            let level = gru_core::cpu_level();
            assert!(
                r.passed,
                "{} at {level}, {threads} threads: {:?}",
                r.name, r.divergence
            );
        }
        kernel_shapes::kernel_matches_candle_ops_on_every_shape();
    }
}
