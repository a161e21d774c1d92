//! The shipped trained models reproduce what PyTorch produced with them.

#[path = "../examples/common/charlm.rs"]
mod charlm;
#[path = "../examples/common/classifier.rs"]
mod classifier;

use candle_core::{DType, Device};
use candle_gru::{core::lengths_from_tensor, models_dir, WeightFile};
use gru_verify::{compare, find_cases, run_case, Case, RunOptions, Tolerance};

#[test]
fn charlm_generates_pytorchs_greedy_text() {
    let dir = models_dir().join("charlm");
    let lm = charlm::CharLm::load(&dir.join("charlm.safetensors")).unwrap();
    let expected = std::fs::read_to_string(dir.join("greedy.txt")).unwrap();
    assert_eq!(expected.chars().count(), lm.n_generate);
    let text = lm.generate(&lm.prompt, lm.n_generate).unwrap();
    assert_eq!(text, expected);
}

#[test]
fn classifier_predictions_match_pytorch_exactly() {
    let dir = models_dir().join("classifier");
    let model = classifier::Classifier::load(&dir.join("classifier.safetensors")).unwrap();
    let data = WeightFile::open(dir.join("heldout.safetensors")).unwrap();
    let x = data.load("input", &Device::Cpu).unwrap();
    let lengths = lengths_from_tensor(&data.load("lengths", &Device::Cpu).unwrap()).unwrap();
    let logits = model.logits(&x, &lengths).unwrap();
    let ours = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let torch = data
        .load("predictions", &Device::Cpu)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    assert_eq!(ours.len(), 256);
    for (i, (a, b)) in ours.iter().zip(&torch).enumerate() {
        assert_eq!(*a as i64, *b, "held-out sequence {i}");
    }
    let ref_logits = data.load("logits", &Device::Cpu).unwrap();
    let c = compare(
        "logits",
        &logits,
        &ref_logits,
        Tolerance::for_dtype(DType::F32),
    )
    .unwrap();
    assert!(c.passed, "max |d| {}", c.max_abs);
}

#[test]
fn shipped_model_cases_pass() {
    let cases = find_cases(&[models_dir().join("charlm"), models_dir().join("classifier")]);
    assert_eq!(cases.len(), 2);
    for p in cases {
        let r = run_case(&Case::load(&p).unwrap(), &RunOptions::default()).unwrap();
        assert!(r.passed, "{}: {:?}", r.name, r.divergence);
    }
}
