//! `Gru` inside candle's own contracts: any `VarBuilder` source, `Module`, error conversion,
//! weights changed after building, and gradients against PyTorch autograd
//! (`models/gradients/`, written by `scripts/make_gradient_reference.py`).

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_gru::models_dir;
use candle_nn::{VarBuilder, VarMap};
use gru_core::{Gru, GruCell, GruConfig, Kernel};
use gru_verify::Case;

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let b = b.to_dtype(a.dtype()).unwrap();
    max_abs(&(a - b).unwrap())
}

#[test]
fn a_fresh_varmap_is_initialised_as_pytorch_does() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = GruConfig::new(3, 16)
        .with_num_layers(2)
        .with_bidirectional(true);
    let gru = Gru::new(cfg, vb.pp("rnn")).unwrap();
    let cell = GruCell::from_config(GruConfig::new(3, 16), vb.pp("cell")).unwrap();
    let vars = varmap.all_vars();
    assert_eq!(vars.len(), 2 * 2 * 4 + 4);
    let bound = 1.0 / 16f64.sqrt();
    for v in &vars {
        let m = max_abs(v.as_tensor());
        // U(-1/sqrt(H), 1/sqrt(H)): inside the bound, and not a constant.
        assert!(
            m <= bound && m > bound / 2.0,
            "{:?}: max |w| {m}",
            v.shape()
        );
    }
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert!(
        names.contains(&"rnn.weight_hh_l1_reverse".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"cell.bias_ih".to_string()), "{names:?}");
    let x = Tensor::randn(0f32, 1.0, (5, 2, 3), &Device::Cpu).unwrap();
    assert_eq!(gru.forward(&x, None).unwrap().0.dims(), &[5, 2, 32]);
    assert_eq!(
        GruCell::forward(&cell, &x.get(0).unwrap(), None)
            .unwrap()
            .dims(),
        &[2, 16]
    );
}

#[test]
fn a_zeros_var_builder_builds_a_gru_whose_state_stays_zero() {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let gru = Gru::new(GruConfig::new(4, 6).with_num_layers(2), vb.clone()).unwrap();
    let x = Tensor::randn(0f32, 1.0, (7, 3, 4), &Device::Cpu).unwrap();
    let (out, h_n) = gru.forward(&x, None).unwrap();
    // Zero weights: r = z = 1/2, n = 0, so h' = h / 2 stays 0.
    assert_eq!(max_abs(&out), 0.0);
    assert_eq!(max_abs(&h_n), 0.0);
    // The older constructor is a thin wrapper of `from_config`.
    #[allow(deprecated)]
    let old = GruCell::new(4, 6, false, vb.clone()).unwrap();
    let new = GruCell::from_config(GruConfig::new(4, 6).with_bias(false), vb).unwrap();
    assert_eq!(
        (old.input_size(), old.hidden_size(), old.bias()),
        (4, 6, false)
    );
    assert_eq!(
        (new.input_size(), new.hidden_size(), new.bias()),
        (4, 6, false)
    );
}

#[test]
fn from_pth_var_builder_loads_a_torch_save_state_dict() {
    let path = models_dir().join("fixtures/nested_model.pt");
    let vb = VarBuilder::from_pth(&path, DType::F32, &Device::Cpu).unwrap();
    let file = candle_gru::WeightFile::open(&path).unwrap();
    let found = file.discover();
    let info = found
        .found
        .iter()
        .find(|i| i.keys.iter().any(|k| k.ends_with("weight_ih_l0")))
        .expect("a GRU in the fixture");
    let gru = Gru::new(info.config, vb.pp(&info.prefix)).unwrap();
    let (reference, _) = file.gru(Some(&info.prefix), None, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 2, info.config.input_size), &Device::Cpu).unwrap();
    let a = gru.forward(&x, None).unwrap().0;
    let b = reference.forward(&x, None).unwrap().0;
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn weights_loaded_into_the_varmap_after_building_are_the_ones_used() {
    let case = Case::load(models_dir().join("reference/varlen_bi_l2_h0.case.safetensors")).unwrap();
    let file = candle_gru::WeightFile::open(&case.weights).unwrap();
    let (loaded, _) = file
        .gru(case.prefix.as_deref(), None, &Device::Cpu)
        .unwrap();
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let vb = match case.prefix.as_deref() {
        Some(p) if !p.is_empty() => vb.pp(p),
        _ => vb,
    };
    let gru = Gru::new(*loaded.config(), vb).unwrap();
    let run = |g: &Gru| {
        g.forward_with_lengths(
            &case.input,
            case.lengths.as_ref().unwrap(),
            case.h0.as_ref(),
        )
        .unwrap()
        .0
    };
    let before = run(&gru);
    assert!(max_diff(&before, &case.output) > 1e-2);
    varmap.load(&case.weights).unwrap();
    // PyTorch's output, from the values loaded after `Gru::new`.
    assert!(max_diff(&run(&gru), &case.output) < 1e-5);
}

#[test]
fn a_gru_is_a_candle_module_and_its_errors_are_candle_errors() {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let varmap = VarMap::new();
    let vbm = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let gru = Gru::new(GruConfig::new(4, 6), vbm.pp("rnn")).unwrap();
    let head = candle_nn::linear(6, 2, vb.pp("head")).unwrap();
    let model = candle_nn::seq().add(gru.clone()).add(head);
    let x = Tensor::randn(0f32, 1.0, (5, 3, 4), &Device::Cpu).unwrap();
    assert_eq!(model.forward(&x).unwrap().dims(), &[5, 3, 2]);
    assert_eq!(
        max_diff(
            &Module::forward(&gru, &x).unwrap(),
            &gru.forward(&x, None).unwrap().0
        ),
        0.0
    );
    // `?` inside a candle forward: the GRU's error, message kept.
    let bad = Tensor::zeros((5, 3, 9), DType::F32, &Device::Cpu).unwrap();
    fn inner(gru: &Gru, x: &Tensor) -> candle_core::Result<Tensor> {
        let (out, _) = gru.forward(x, None)?;
        Ok(out)
    }
    let err = inner(&gru, &bad).unwrap_err().to_string();
    assert!(err.contains("input_size"), "{err}");
}

/// Runs a gradient reference case in `dtype`; returns the worst |ours - PyTorch| over every
/// gradient.
fn gradient_case(name: &str, dtype: DType) -> f64 {
    let path = models_dir()
        .join("gradients")
        .join(format!("{name}.safetensors"));
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let get = |k: &str| t[k].to_dtype(dtype).unwrap();
    let mut vars: HashMap<String, Var> = HashMap::new();
    for k in t
        .keys()
        .filter(|k| k.starts_with("weight_") || k.starts_with("bias_"))
    {
        vars.insert(k.clone(), Var::from_tensor(&get(k)).unwrap());
    }
    let weights: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let vb = VarBuilder::from_tensors(weights, dtype, &Device::Cpu);
    let x = Var::from_tensor(&get("input")).unwrap();
    let h0 = Var::from_tensor(&get("h0")).unwrap();
    let loss = if name == "cell" {
        let (input, hidden) = (x.dim(1).unwrap(), h0.dim(1).unwrap());
        let cell = GruCell::from_config(GruConfig::new(input, hidden), vb).unwrap();
        let out = cell.forward(x.as_tensor(), Some(h0.as_tensor())).unwrap();
        (out * get("loss_output")).unwrap().sum_all().unwrap()
    } else {
        let cfg = GruConfig::new(3, 5)
            .with_num_layers(2)
            .with_bidirectional(true);
        let gru = Gru::new(cfg, vb).unwrap();
        let lengths: Vec<usize> = t["lengths"]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|l| l as usize)
            .collect();
        let (out, h_n) = gru
            .forward_with_lengths(x.as_tensor(), &lengths, Some(h0.as_tensor()))
            .unwrap();
        assert!(max_diff(&out, &t["output"]) < 1e-5);
        let a = (out * get("loss_output")).unwrap().sum_all().unwrap();
        let b = (h_n * get("loss_h_n")).unwrap().sum_all().unwrap();
        (a + b).unwrap()
    };
    let grads = loss.backward().unwrap();
    let mut worst: f64 = 0.0;
    let all = vars
        .iter()
        .map(|(k, v)| (k.clone(), v))
        .chain([("input".to_string(), &x), ("h0".to_string(), &h0)]);
    for (k, v) in all {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for `{k}`"));
        let d = max_diff(g, &t[&format!("grad.{k}")]);
        worst = worst.max(d);
    }
    worst
}

#[test]
fn gradients_match_pytorch_autograd() {
    for name in ["gru_bi_l2_varlen", "cell"] {
        let f64_err = gradient_case(name, DType::F64);
        assert!(f64_err < 1e-10, "{name} f64: {f64_err:e}");
        let f32_err = gradient_case(name, DType::F32);
        assert!(f32_err < 1e-4, "{name} f32: {f32_err:e}");
    }
}

#[test]
fn kernels_that_cut_the_graph_are_refused_for_tracked_tensors() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let gru = Gru::new(GruConfig::new(2, 3), vb).unwrap();
    let x = Tensor::zeros((4, 1, 2), DType::F32, &Device::Cpu).unwrap();
    for k in [Kernel::FusedStep, Kernel::Persistent] {
        let err = gru
            .clone()
            .with_kernel(k)
            .forward(&x, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("autograd"), "{k:?}: {err}");
    }
    assert!(gru.with_kernel(Kernel::Auto).forward(&x, None).is_ok());
}

#[test]
fn a_gru_cell_is_candle_nns_rnn_and_runs_a_sequence_as_pytorchs_one_layer_gru() {
    use candle_nn::rnn::{GRUState, RNN};
    // uni_l1_h0: PyTorch's nn.GRU(5, 7) (one layer, one direction) run from h0; its weights,
    // renamed, are an nn.GRUCell's, and the cell stepped along the sequence gives its output.
    let case = Case::load(models_dir().join("reference/uni_l1_h0.case.safetensors")).unwrap();
    let weights = candle_core::safetensors::load(&case.weights, &Device::Cpu).unwrap();
    // The names candle-nn's `gru()` reads, as the cell's docs say.
    let vb =
        VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu).rename_f(|n| format!("{n}_l0"));
    let cell = GruCell::from_config(GruConfig::new(5, 7), vb).unwrap();
    // candle-nn's layout: batch first.
    let x = case.input.transpose(0, 1).unwrap().contiguous().unwrap();
    let h0 = GRUState {
        h: case.h0.as_ref().unwrap().squeeze(0).unwrap(),
    };
    let want = case.output.transpose(0, 1).unwrap();
    // candle-nn's GRU concatenates the states, (B, T * H).
    let (b, t) = (x.dim(0).unwrap(), x.dim(1).unwrap());
    let fused = cell
        .states_to_tensor(&cell.seq_init(&x, &h0).unwrap())
        .unwrap()
        .reshape((b, t, 7))
        .unwrap();
    assert_eq!(max_diff(&cell.forward_seq(&x, &h0.h).unwrap(), &fused), 0.0);
    assert!(
        max_diff(&fused, &want) < 1e-5,
        "{}",
        max_diff(&fused, &want)
    );
    // Step by step through the trait's `step`, and from the zero state.
    let mut state = h0.clone();
    let mut states = Vec::new();
    for t in 0..x.dim(1).unwrap() {
        let xt = x.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
        state = cell.step(&xt, &state).unwrap();
        states.push(state.clone());
    }
    let stepped = cell
        .states_to_tensor(&states)
        .unwrap()
        .reshape((b, t, 7))
        .unwrap();
    assert!(max_diff(&stepped, &want) < 1e-5);
    let from_zero = cell
        .states_to_tensor(&cell.seq(&x).unwrap())
        .unwrap()
        .reshape((b, t, 7))
        .unwrap();
    let zero = cell.zero_state(x.dim(0).unwrap()).unwrap();
    let again = cell
        .states_to_tensor(&cell.seq_init(&x, &zero).unwrap())
        .unwrap()
        .reshape((b, t, 7))
        .unwrap();
    assert_eq!(max_diff(&from_zero, &again), 0.0);
    assert!(max_diff(&from_zero, &fused) > 1e-3, "h0 must matter");
    // A sequence of the wrong width is an error naming the input.
    let e = cell
        .seq(&x.narrow(2, 0, 4).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("input"), "{e}");
}
