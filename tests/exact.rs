//! The verdict through the exact answer (`gru_verify::Exact`): a trained-like 500-unit GRU over
//! 40 steps (`models/accuracy/`, `scripts/make_accuracy_fixture.py`) on which our f32 and
//! PyTorch's f32 drift apart past the default tolerance passes because ours is at least as close
//! to the exact (f64) answer; without the exact answer it fails and says why; one wrong weight
//! fails with the exact answer present; an exact answer that is not the case's is refused.

#[path = "common/case_file.rs"]
mod case_file;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_gru::models_dir;
use case_file::rewrite_case;
use gru_verify::{run_case, Case, RunOptions};
use gru_weights::WeightFile;

fn case_path() -> std::path::PathBuf {
    models_dir().join("accuracy/trained_like_500.case.safetensors")
}

#[test]
fn a_drifting_trained_model_passes_through_the_exact_answer() {
    let case = Case::load(case_path()).unwrap();
    assert!(case.exact.is_some());
    let r = run_case(&case, &RunOptions::default()).unwrap();
    // Past the tolerance against PyTorch's f32 output (the drift)...
    assert!(!r.output.passed, "max |d| {}", r.output.max_abs);
    // ...but closer to the exact answer than PyTorch's own f32.
    let x = r.exact.as_ref().unwrap();
    assert!(
        x.ours <= x.reference,
        "ours {} vs PyTorch {}",
        x.ours,
        x.reference
    );
    assert!(r.passed && r.passed_by_exact);

    // The same case without its exact answer fails, and says how the difference grows and why.
    let mut bare = case.clone();
    bare.exact = None;
    let r = run_case(&bare, &RunOptions::default()).unwrap();
    assert!(!r.passed && !r.passed_by_exact);
    let why = r.divergence.unwrap();
    assert!(why.contains("max |d| per time step"), "{why}");
    assert!(
        why.contains("re-export the case with its exact answer"),
        "{why}"
    );
}

#[test]
fn one_wrong_weight_fails_with_the_exact_answer_present() {
    let dir = tempfile::tempdir().unwrap();
    let weights = models_dir().join("accuracy/trained_like_500.safetensors");
    let file = WeightFile::open(&weights).unwrap();
    let mut tensors: HashMap<String, Tensor> = file
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), file.load(&t.name, &Device::Cpu).unwrap()))
        .collect();
    // One recurrent weight off by 1e-3 (of values around 0.2).
    let w = &tensors["rnn.weight_hh_l0"];
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[1234] += 1e-3;
    let broken = Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap();
    tensors.insert("rnn.weight_hh_l0".into(), broken);
    let path = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let case = Case::load(case_path()).unwrap();
    let opts = RunOptions {
        weights: Some(path),
        ..RunOptions::default()
    };
    let r = run_case(&case, &opts).unwrap();
    let x = r.exact.as_ref().unwrap();
    assert!(!r.passed, "ours {} vs PyTorch {}", x.ours, x.reference);
    assert!(
        x.ours > 10.0 * x.reference,
        "ours {} vs PyTorch {}",
        x.ours,
        x.reference
    );
}

#[test]
fn an_exact_answer_that_is_not_the_cases_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case::load(case_path()).unwrap();
    let exact = case.exact.clone().unwrap();
    let load = |name: &str, replace: &[(&str, Option<Tensor>)]| {
        let dst = dir.path().join(format!("{name}.case.safetensors"));
        rewrite_case(&case_path(), &dst, replace, &[]);
        Case::load(&dst).map(|_| ()).map_err(|e| e.to_string())
    };
    // Not f64.
    let f32_exact = exact.output.to_dtype(DType::F32).unwrap();
    let e = load("f32", &[("output_f64", Some(f32_exact))]).unwrap_err();
    assert!(e.contains("must be f64"), "{e}");
    // Another model's answer: off at the first step already.
    let other = (exact.output.clone() * 0.5).unwrap();
    let e = load("other", &[("output_f64", Some(other))]).unwrap_err();
    assert!(e.contains("at the first time step beyond rounding"), "{e}");
    // Half of the pair.
    let e = load("half", &[("h_n_f64", None)]).unwrap_err();
    assert!(e.contains("no `h_n_f64`"), "{e}");
    // Another shape.
    let narrow = exact.output.narrow(1, 0, 10).unwrap();
    let e = load("shape", &[("output_f64", Some(narrow))]).unwrap_err();
    assert!(e.contains("has shape"), "{e}");
    // The case itself loads.
    load("same", &[]).unwrap();
}

/// A small trained-like GRU (2 layers, 16 -> 64, 100 steps, batch 4; `trained_like_small`):
/// every kernel's wide steps (f64 inside each step, the state rounded to f32) land several times
/// closer to the exact answer than PyTorch's f32; the same model in f32 steps lands about as far
/// as PyTorch's. Streaming it in chunks gives the whole sequence's numbers exactly.
#[test]
fn small_layers_wide_steps_are_closer_to_the_exact_answer_than_pytorch() {
    use candle_gru::{Gru, GruState, Kernel};
    let case =
        Case::load(models_dir().join("accuracy/trained_like_small.case.safetensors")).unwrap();
    let exact = case.exact.clone().unwrap();
    let file = WeightFile::open(&case.weights).unwrap();
    let (gru, _) = file
        .gru(case.prefix.as_deref(), None, &Device::Cpu)
        .unwrap();
    let error = |g: &Gru| {
        let (out, h_n) = g.forward(&case.input, None).unwrap();
        let e = gru_verify::distance(&out, &exact.output).unwrap();
        e.max(gru_verify::distance(&h_n, exact.h_n.as_ref().unwrap()).unwrap())
    };
    let torch = gru_verify::distance(&case.output, &exact.output)
        .unwrap()
        .max(
            gru_verify::distance(case.h_n.as_ref().unwrap(), exact.h_n.as_ref().unwrap()).unwrap(),
        );
    for kernel in [Kernel::Auto, Kernel::FusedStep, Kernel::CandleOps] {
        let wide = error(&gru.clone().with_kernel(kernel));
        let narrow = error(
            &gru.clone()
                .with_kernel(kernel)
                .with_wide_steps(false)
                .unwrap(),
        );
        eprintln!(
            "{kernel:?}: wide {:.2}, f32 steps {:.2} of PyTorch's error {torch:.2e}",
            wide / torch,
            narrow / torch
        );
        assert!(
            wide < 0.5 * torch,
            "{kernel:?}: wide {wide:.2e} vs PyTorch {torch:.2e}"
        );
        assert!(
            wide < 0.5 * narrow,
            "{kernel:?}: wide {wide:.2e} vs f32 steps {narrow:.2e}"
        );
    }
    // One step per call, the state carried in f32 between calls: the whole sequence's numbers.
    let (whole, _) = gru.forward(&case.input, None).unwrap();
    let mut state = GruState::new();
    let mut steps = Vec::new();
    for t in 0..case.input.dim(0).unwrap() {
        let frame = case.input.narrow(0, t, 1).unwrap();
        steps.push(gru.forward_chunk(&frame, &mut state).unwrap());
    }
    let streamed = Tensor::cat(&steps, 0).unwrap();
    assert_eq!(gru_verify::distance(&streamed, &whole).unwrap(), 0.0);
}

/// Past 512 batch rows x hidden units a call runs f32 steps (the products would dominate): the
/// same numbers as `with_wide_steps(false)`; below it, not.
#[test]
fn large_batches_run_f32_steps() {
    let case =
        Case::load(models_dir().join("accuracy/trained_like_small.case.safetensors")).unwrap();
    let file = WeightFile::open(&case.weights).unwrap();
    let (gru, _) = file
        .gru(case.prefix.as_deref(), None, &Device::Cpu)
        .unwrap();
    let f32_steps = gru.clone().with_wide_steps(false).unwrap();
    // (T, B, 16): 4 rows (4 x 64 <= 512) and 12 rows (768 > 512).
    let x4 = case.input.clone();
    let x12 = Tensor::cat(&[&x4, &x4, &x4], 1).unwrap();
    let run = |g: &candle_gru::Gru, x: &Tensor| g.forward(x, None).unwrap().0;
    let d = |a: &Tensor, b: &Tensor| gru_verify::distance(a, b).unwrap();
    assert_eq!(d(&run(&gru, &x12), &run(&f32_steps, &x12)), 0.0);
    assert!(d(&run(&gru, &x4), &run(&f32_steps, &x4)) > 0.0);
}
