//! GRUs saved with weight norm or spectral norm (both of PyTorch's APIs): the state dict holds
//! the reparametrized values, and the weights are computed from them as PyTorch's eval forward
//! computes them (models/reparam, written by scripts/make_reparam_fixtures.py with real PyTorch).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_gru::models_dir;
use gru_core::Gru;
use gru_weights::{ModuleKind, WeightFile};

#[path = "common/folder_cases.rs"]
mod folder_cases;
#[path = "common/tensor_diff.rs"]
mod tensor_diff;
use folder_cases::assert_folder_passes;
use tensor_diff::max_diff;

fn reparam(name: &str) -> PathBuf {
    models_dir().join("reparam").join(name)
}

#[test]
fn every_reparametrized_case_matches_pytorch() {
    assert_eq!(assert_folder_passes(&models_dir().join("reparam")), 6);
}

#[test]
fn computed_weights_differ_from_what_is_stored() {
    // The cases could not pass with `v` (or the spectral norm's unscaled weight) taken as is.
    let f = WeightFile::open(reparam("weight_norm.pt")).unwrap();
    for (w, v) in [
        (
            "rnn.weight_hh_l0",
            "rnn.parametrizations.weight_hh_l0.original1",
        ),
        (
            "rnn.weight_ih_l1",
            "rnn.parametrizations.weight_ih_l1.original1",
        ),
        (
            "rnn.weight_hh_l1_reverse",
            "rnn.parametrizations.weight_hh_l1_reverse.original1",
        ),
        (
            "cell.weight_ih",
            "cell.parametrizations.weight_ih.original1",
        ),
    ] {
        let a = f.load(w, &Device::Cpu).unwrap();
        let b = f.load(v, &Device::Cpu).unwrap();
        assert_eq!(a.dims(), b.dims(), "{w}");
        assert!(max_diff(&a, &b) > 1e-2, "{w} equals its v");
        assert!(f.computed_from(w).unwrap().contains(v), "{w}");
    }
    let s = WeightFile::open(reparam("spectral_norm.pt")).unwrap();
    for (w, orig) in [
        (
            "gru.weight_hh_l0",
            "gru.parametrizations.weight_hh_l0.original",
        ),
        ("gru.weight_ih_l1", "gru.weight_ih_l1_orig"),
    ] {
        let a = s.load(w, &Device::Cpu).unwrap();
        let b = s.load(orig, &Device::Cpu).unwrap();
        assert!(max_diff(&a, &b) > 1e-2, "{w} equals its original");
        assert!(
            s.computed_from(w)
                .unwrap()
                .starts_with("spectral norm (dim 0)"),
            "{w}"
        );
    }
    assert_eq!(s.computed_from("gru.weight_ih_l0"), None);
}

#[test]
fn the_load_report_counts_the_stored_values_as_used() {
    let f = WeightFile::open(reparam("weight_norm_legacy.safetensors")).unwrap();
    let (_, report) = f.gru(None, None, &Device::Cpu).unwrap();
    assert!(
        report.unused_under_prefix.is_empty(),
        "{:?}",
        report.unused_under_prefix
    );
    assert!(report.applied.contains(&"gru.weight_hh_l0".to_string()));
    assert_eq!(report.other_tensors, 0, "{report}");
}

#[test]
fn a_whole_model_var_builder_sees_the_computed_weights() {
    let f = WeightFile::open(reparam("weight_norm.pt")).unwrap();
    let (loaded, _) = f.gru(Some("rnn"), None, &Device::Cpu).unwrap();
    let info = f.select(ModuleKind::Gru, Some("rnn")).unwrap();
    let vb = f.var_builder(DType::F32, &Device::Cpu);
    let built = Gru::new(info.config, vb.pp("rnn")).unwrap();
    let x = Tensor::randn(0f32, 1., (4, 2, 5), &Device::Cpu).unwrap();
    let (a, ha) = loaded.forward(&x, None).unwrap();
    let (b, hb) = built.forward(&x, None).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    assert_eq!(max_diff(&ha, &hb), 0.0);
}

#[test]
fn a_chained_parametrization_is_not_computed() {
    // weight_norm, then a parametrization without tensors: only `_metadata` shows it.
    let f = WeightFile::open(reparam("chained.pt")).unwrap();
    assert_eq!(f.computed_from("gru.weight_hh_l0"), None);
    let e = f.gru(None, None, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("`gru.weight_hh_l0`: is stored reparametrized") && e.contains("chained"),
        "{e}"
    );
}

#[test]
fn an_unknown_parametrization_is_named() {
    let f = WeightFile::open(reparam("orthogonal.pt")).unwrap();
    let e = f.gru(None, None, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("`gru.weight_hh_l0`: is stored reparametrized")
            && e.contains("remove_parametrizations(module, \"weight_hh_l0\")"),
        "{e}"
    );
}

#[test]
fn values_that_cannot_be_computed_are_errors_naming_the_weight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.safetensors");
    let dev = Device::Cpu;
    let t = |shape: &[usize]| Tensor::ones(shape, DType::F32, &dev).unwrap();
    let tensors = std::collections::HashMap::from([
        // Spectral norm of a (2, 2, 1) convolution weight: u and v fit dim 0 and dim 1, where
        // W v is (1, -0.5) and (1, 2), and u points between the two.
        (
            "s.weight_orig".to_string(),
            Tensor::new(&[[[1f32], [2.]], [[-0.5], [0.]]], &dev).unwrap(),
        ),
        (
            "s.weight_u".to_string(),
            Tensor::new(&[3f32, 1.], &dev).unwrap(),
        ),
        (
            "s.weight_v".to_string(),
            Tensor::new(&[1f32, 0.], &dev).unwrap(),
        ),
        // Weight norm of an empty weight.
        ("e.weight_g".to_string(), t(&[0, 1])),
        ("e.weight_v".to_string(), t(&[0, 4])),
        // A whole GRU whose weight_hh_l0 has a zero row: its norm is 0, the weight NaN.
        ("gru.weight_ih_l0".to_string(), t(&[6, 3])),
        ("gru.weight_hh_l0_g".to_string(), t(&[6, 1])),
        (
            "gru.weight_hh_l0_v".to_string(),
            Tensor::zeros((6, 2), DType::F32, &dev).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let f = WeightFile::open(&path).unwrap();
    let e = f.load("s.weight", &dev).unwrap_err().to_string();
    assert!(
        e.starts_with("`s.weight`:") && e.contains("dim 0") && e.contains("dim 1"),
        "{e}"
    );
    // Either an empty weight or an error: never a panic.
    if let Ok(w) = f.load("e.weight", &dev) {
        assert_eq!(w.dims(), [0, 4]);
    }
    let e = f.gru(None, None, &dev).unwrap_err().to_string();
    assert!(
        e.contains("`gru.weight_hh_l0`") && e.contains("non-finite"),
        "{e}"
    );
}

#[test]
fn an_exported_program_shows_its_chains_in_its_graph() {
    // torch.export archives: the weights config lists tensors only; the graph lists modules.
    let dir = models_dir().join("checkpoints");
    let f = WeightFile::open(dir.join("exported_wn.pt2")).unwrap();
    assert!(f
        .computed_from("gru.weight_hh")
        .unwrap()
        .starts_with("weight norm (dim 0)"));
    let f = WeightFile::open(dir.join("exported_chained.pt2")).unwrap();
    assert_eq!(f.computed_from("gru.weight_hh"), None);
    let e = f
        .gru_cell(None, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`gru.weight_hh`: is stored reparametrized") && e.contains("chained"),
        "{e}"
    );
}
