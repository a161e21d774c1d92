//! Checks that need a CUDA GPU (built with `--features cuda`, run by `scripts/gpu-check.sh`; without
//! the feature this binary holds no test, and with it but no GPU each test fails).
#![cfg(feature = "cuda")]

use std::sync::Arc;

use candle_core::{Device, Tensor};
use gru_core::Kernel;
use gru_verify::{find_cases, run_case, Case, CaseKind, RunOptions};
use gru_weights::WeightFile;

/// The shipped models: `GRU_MODELS_DIR` when set (the binary is carried to a GPU machine whose
/// checkout is elsewhere), else this checkout's.
fn models_dir() -> std::path::PathBuf {
    std::env::var_os("GRU_MODELS_DIR")
        .map(Into::into)
        .unwrap_or_else(candle_gru::models_dir)
}

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device")
}

/// Every reference case passes on CUDA with each kernel the GPU has.
#[test]
fn every_kernel_matches_pytorch_on_cuda() {
    let cases = find_cases(&[models_dir().join("reference")]);
    for kernel in [
        Kernel::Auto,
        Kernel::FusedStep,
        Kernel::Persistent,
        Kernel::CandleOps,
    ] {
        let opts = RunOptions {
            device: cuda(),
            kernel,
            ..RunOptions::default()
        };
        for p in &cases {
            let r = run_case(&Case::load(p).unwrap(), &opts).unwrap();
            assert!(r.passed, "{} with {kernel:?}: {:?}", r.name, r.divergence);
        }
    }
}

/// One model shared by 4 host threads gives, on each thread and every call, exactly the result
/// of a single thread (both CUDA kernels).
#[test]
fn one_model_shared_by_four_threads_gives_identical_results() {
    let dev = cuda();
    let case = find_cases(&[models_dir().join("reference")])
        .into_iter()
        .map(|p| Case::load(p).unwrap())
        .find(|c| c.kind == CaseKind::Gru && c.lengths.is_some() && c.input.rank() == 3)
        .expect("a variable-length reference case");
    let file = WeightFile::open(&case.weights).unwrap();
    for kernel in [Kernel::Persistent, Kernel::FusedStep] {
        let (gru, _) = file.gru(case.prefix.as_deref(), None, &dev).unwrap();
        let gru = Arc::new(gru.with_batch_first(case.batch_first).with_kernel(kernel));
        let x = case.input.to_device(&dev).unwrap();
        let lengths = case.lengths.clone().unwrap();
        let run = |gru: &gru_core::Gru| -> Vec<f32> {
            let (out, h_n) = gru.forward_with_lengths(&x, &lengths, None).unwrap();
            let flat = |t: Tensor| {
                t.to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let mut v = flat(out);
            v.extend(flat(h_n));
            v
        };
        let single = run(&gru);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let gru = gru.clone();
                    s.spawn(move || (0..20).map(|_| run(&gru)).collect::<Vec<_>>())
                })
                .collect();
            for h in handles {
                for v in h.join().unwrap() {
                    assert!(
                        v.iter()
                            .zip(&single)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kernel:?}: a thread's result differs from the single-thread one"
                    );
                }
            }
        });
    }
}
