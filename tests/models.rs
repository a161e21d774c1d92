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

#[path = "../examples/common/walkthrough.rs"]
mod walkthrough;

#[test]
fn walkthrough_model_matches_pytorch() {
    let dir = models_dir().join("walkthrough");
    let model = walkthrough::Classifier::load(&dir.join("model.pt"), &Device::Cpu).unwrap();
    let expected = WeightFile::open(dir.join("expected.safetensors")).unwrap();
    let batch: Vec<Vec<u32>> = walkthrough::SEQUENCES.iter().map(|s| s.to_vec()).collect();
    // The hard-coded batch is the one PyTorch ran on, padded the same way.
    let seqs: Vec<_> = batch
        .iter()
        .map(|s| candle_core::Tensor::new(s.as_slice(), &Device::Cpu).unwrap())
        .collect();
    let (ids, lengths) = candle_gru::core::pad_sequences(&seqs, true, 0.0).unwrap();
    let torch_ids = expected.load("ids", &Device::Cpu).unwrap();
    assert_eq!(
        ids.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap(),
        torch_ids.to_vec2::<i64>().unwrap()
    );
    let torch_lengths = lengths_from_tensor(&expected.load("lengths", &Device::Cpu).unwrap());
    assert_eq!(lengths, torch_lengths.unwrap());
    let logits = model.logits(&batch, &Device::Cpu).unwrap();
    let reference = expected.load("logits", &Device::Cpu).unwrap();
    let c = compare(
        "logits",
        &logits,
        &reference,
        Tolerance::for_dtype(DType::F32),
    )
    .unwrap();
    assert!(c.passed, "max |d| {}", c.max_abs);
}

#[test]
fn the_readme_shows_the_walkthrough_as_tested() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let code = std::fs::read_to_string(root.join("examples/common/walkthrough.rs")).unwrap();
    assert!(
        readme.contains(&code),
        "README.md must show examples/common/walkthrough.rs verbatim"
    );
}

#[path = "../examples/common/streaming.rs"]
mod streaming;

/// The streaming walkthrough: any chunking of the frames gives PyTorch's output for the whole
/// sequence at once.
#[test]
fn streaming_model_matches_pytorch_in_every_chunking() {
    let dir = models_dir().join("streaming");
    let model = streaming::Streamer::load(&dir.join("model.pt"), &Device::Cpu).unwrap();
    let expected = WeightFile::open(dir.join("expected.safetensors")).unwrap();
    let frames = expected.load("frames", &Device::Cpu).unwrap();
    let reference = expected.load("logits", &Device::Cpu).unwrap();
    let t = frames.dim(1).unwrap();
    for chunk in [1, 4, 7, t] {
        let mut state = streaming::StreamState::default();
        let mut outs = Vec::new();
        for t0 in (0..t).step_by(chunk) {
            let x = frames.narrow(1, t0, chunk.min(t - t0)).unwrap();
            outs.push(model.forward_chunk(&x, &mut state).unwrap());
        }
        let logits = candle_core::Tensor::cat(&outs, 1).unwrap();
        let c = compare(
            "logits",
            &logits,
            &reference,
            Tolerance::for_dtype(DType::F32),
        )
        .unwrap();
        assert!(c.passed, "chunks of {chunk}: max |d| {}", c.max_abs);
    }
}

#[test]
fn the_streaming_page_shows_the_walkthrough_as_tested() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/streaming.md")).unwrap();
    let code = std::fs::read_to_string(root.join("examples/common/streaming.rs")).unwrap();
    assert!(
        page.contains(&code),
        "docs/streaming.md must show examples/common/streaming.rs verbatim"
    );
    // The README's excerpt calls what the page defines.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for used in [
        "Streamer::load(",
        "StreamState::default()",
        ".forward_chunk(&frames",
    ] {
        assert!(
            readme.contains(used),
            "README.md's streaming excerpt lacks {used}"
        );
    }
}
