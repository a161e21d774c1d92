//! nn.GRU / nn.GRUCell parity with PyTorch on the reference cases in models/reference (written by
//! scripts/make_reference_cases.py), plus streaming, padding and input validation.

#[path = "common/tensor_diff.rs"]
mod tensor_diff;

use candle_core::{DType, Device, Tensor};
use candle_gru::models_dir;
use gru_core::{Gru, GruError, GruState, Kernel};
use gru_verify::{compare, find_cases, run_case, Case, RunOptions, Tolerance};
use gru_weights::WeightFile;
use tensor_diff::max_diff;

/// Cases the suite must contain: deleting or renaming one fails here instead of silently
/// testing less.
const EXPECTED: &[&str] = &[
    "uni_l1_h0",
    "uni_l2_long_h0",
    "bi_l3",
    "nobias_l2_h0",
    "nobias_bi_bf",
    "bf_bi_l2_h0",
    "unbatched_bi_l2_h0",
    "unbatched_uni",
    "unbatched_bf",
    "varlen_bi_l2_h0",
    "varlen_bf_uni_l2",
    "varlen_bf_bi_l1_h0",
    "f64_bi_l2_h0",
    "f64_varlen_l2",
    "f16_l2_h0",
    "bf16_bi_l2",
    "cell_batched_hx",
    "cell_unbatched",
    "cell_nobias_hx",
    "nested_encoder_rnn",
    "saturating_inputs",
    "long_varlen_bi",
    "wide_batch_varlen",
    "wide_bi_varlen_bf",
];

fn reference_case(name: &str) -> Case {
    Case::load(
        models_dir()
            .join("reference")
            .join(format!("{name}.case.safetensors")),
    )
    .unwrap()
}

fn load_gru(case: &Case) -> Gru {
    let file = WeightFile::open(&case.weights).unwrap();
    let (gru, _) = file
        .gru(case.prefix.as_deref(), None, &Device::Cpu)
        .unwrap();
    gru.with_batch_first(case.batch_first)
}

fn run_all(kernel: Kernel) {
    let cases = find_cases(&[models_dir().join("reference")]);
    let names: Vec<String> = cases.iter().map(|p| Case::load(p).unwrap().name).collect();
    for e in EXPECTED {
        assert!(names.iter().any(|n| n == e), "missing reference case {e}");
    }
    let opts = RunOptions {
        kernel,
        ..RunOptions::default()
    };
    for p in cases {
        let case = Case::load(&p).unwrap();
        let r = run_case(&case, &opts).unwrap();
        assert!(
            r.passed,
            "{} ({kernel:?}): output max|d| {:.3e}, h_n {:?}: {:?}",
            r.name,
            r.output.max_abs,
            r.h_n.as_ref().map(|h| h.max_abs),
            r.divergence
        );
    }
}

#[test]
fn every_reference_case_matches_pytorch() {
    run_all(Kernel::Auto);
}

#[test]
fn candle_ops_path_matches_pytorch_too() {
    // The device-generic path (what CUDA/Metal run) checked on the CPU.
    run_all(Kernel::CandleOps);
}

#[test]
fn fused_step_path_matches_pytorch_too() {
    // The CUDA path's structure with the fused gate kernel's CPU twin.
    run_all(Kernel::FusedStep);
}

#[test]
fn reference_tolerance_can_fail() {
    // A perturbed reference must fail: the comparison is not vacuous.
    let case = reference_case("uni_l1_h0");
    let gru = load_gru(&case);
    let (out, _) = gru.forward(&case.input, case.h0.as_ref()).unwrap();
    let bumped = (&case.output + 1e-3).unwrap();
    let c = compare("output", &out, &bumped, Tolerance::for_dtype(DType::F32)).unwrap();
    assert!(!c.passed);
}

#[test]
fn streaming_in_uneven_chunks_equals_one_call() {
    let case = reference_case("uni_l2_long_h0");
    let gru = load_gru(&case);
    let tol = Tolerance::for_dtype(DType::F32);
    let t_len = case.input.dim(0).unwrap();
    assert_eq!(t_len, 40);
    for sizes in [vec![1, 7, 3, 13, 16], vec![40], vec![1; 40], vec![39, 1]] {
        let mut state = GruState::with_h0(case.h0.clone().unwrap());
        let mut outs = Vec::new();
        let mut t = 0;
        for s in sizes {
            let chunk = case.input.narrow(0, t, s).unwrap();
            outs.push(gru.forward_chunk(&chunk, &mut state).unwrap());
            t += s;
        }
        let out = Tensor::cat(&outs, 0).unwrap();
        assert!(compare("output", &out, &case.output, tol).unwrap().passed);
        let h = state.h().unwrap();
        assert!(
            compare("h_n", h, case.h_n.as_ref().unwrap(), tol)
                .unwrap()
                .passed
        );
    }
    // Unbatched chunks stream too.
    let mut state = GruState::new();
    let x0 = case.input.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let a = gru
        .forward_chunk(&x0.narrow(0, 0, 5).unwrap(), &mut state)
        .unwrap();
    let b = gru
        .forward_chunk(&x0.narrow(0, 5, 35).unwrap(), &mut state)
        .unwrap();
    let (whole, _) = gru.forward(&x0, None).unwrap();
    let streamed = Tensor::cat(&[a, b], 0).unwrap();
    assert!(compare("output", &streamed, &whole, tol).unwrap().passed);
}

/// A forgotten `with_batch_first(true)`: `(B, T, I)` chunks read as `(T, B, I)` hold a batch of
/// T "streams", which changes with the chunk's length: the second chunk is refused with the hint,
/// naming the carried state, never run on transposed data. An unbatched chunk after batched ones
/// is refused too; a state may pass between GRUs of either layout.
#[test]
fn a_chunk_that_does_not_fit_the_carried_state_is_refused() {
    let case = reference_case("uni_l2_long_h0");
    let gru = load_gru(&case); // time-major
    let x = case.input.transpose(0, 1).unwrap().contiguous().unwrap(); // (B, T, I), as a user has
    let mut state = GruState::new();
    gru.forward_chunk(&x.narrow(1, 0, 4).unwrap(), &mut state)
        .unwrap();
    let e = gru
        .forward_chunk(&x.narrow(1, 4, 3).unwrap(), &mut state)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("holds 3 streams, the carried state 4 streams")
            && e.contains("with_batch_first(true)"),
        "{e}"
    );
    // The same chunks, batch-first, stream; the state then passes to the time-major GRU (a
    // state is (L, B, H) in either layout).
    let bf = load_gru(&case).with_batch_first(true);
    let mut state = GruState::new();
    for t0 in [0, 4] {
        bf.forward_chunk(&x.narrow(1, t0, 4 - t0 / 4).unwrap(), &mut state)
            .unwrap();
    }
    gru.forward_chunk(&case.input.narrow(0, 7, 2).unwrap(), &mut state)
        .unwrap();
    // An unbatched chunk after batched ones.
    let mut state = GruState::new();
    gru.forward_chunk(&case.input.narrow(0, 0, 2).unwrap(), &mut state)
        .unwrap();
    let one = case
        .input
        .narrow(0, 2, 2)
        .unwrap()
        .get_on_dim(1, 0)
        .unwrap();
    let e = gru.forward_chunk(&one, &mut state).unwrap_err().to_string();
    assert!(e.contains("an unbatched chunk"), "{e}");
}

#[test]
fn streaming_a_bidirectional_gru_is_refused() {
    let case = reference_case("bi_l3");
    let gru = load_gru(&case);
    let err = gru
        .forward_chunk(&case.input, &mut GruState::new())
        .unwrap_err();
    assert!(err.to_string().contains("bidirectional"), "{err}");
}

/// Replaces every padded position of a time-major or batch-first input with `value`.
fn fill_padding(x: &Tensor, lengths: &[usize], batch_first: bool, value: f64) -> Tensor {
    let (d0, d1, f) = x.dims3().unwrap();
    let mut v = x
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for (b, &len) in lengths.iter().enumerate() {
        let steps = if batch_first { d1 } else { d0 };
        for t in len..steps {
            let base = if batch_first {
                (b * d1 + t) * f
            } else {
                (t * d1 + b) * f
            };
            v[base..base + f].fill(value);
        }
    }
    Tensor::from_vec(v, (d0, d1, f), &Device::Cpu)
        .unwrap()
        .to_dtype(x.dtype())
        .unwrap()
}

#[test]
fn padding_is_never_read() {
    for name in [
        "varlen_bi_l2_h0",
        "varlen_bf_uni_l2",
        "varlen_bf_bi_l1_h0",
        "f64_varlen_l2",
    ] {
        let case = reference_case(name);
        let lengths = case.lengths.clone().unwrap();
        for kernel in [Kernel::Auto, Kernel::CandleOps, Kernel::FusedStep] {
            let gru = load_gru(&case).with_kernel(kernel);
            let (o_ref, h_ref) = gru
                .forward_with_lengths(&case.input, &lengths, case.h0.as_ref())
                .unwrap();
            for garbage in [0.0, 1e30, f64::NAN, f64::NEG_INFINITY] {
                let x = fill_padding(&case.input, &lengths, case.batch_first, garbage);
                let (o, h) = gru
                    .forward_with_lengths(&x, &lengths, case.h0.as_ref())
                    .unwrap();
                let exact = Tolerance::new(0.0, 0.0);
                assert!(
                    compare("output", &o, &o_ref, exact).unwrap().passed,
                    "{name} {garbage}"
                );
                assert!(
                    compare("h_n", &h, &h_ref, exact).unwrap().passed,
                    "{name} {garbage}"
                );
            }
        }
    }
}

#[test]
fn varlen_output_is_zero_past_each_length() {
    let case = reference_case("varlen_bi_l2_h0");
    let gru = load_gru(&case);
    let lengths = case.lengths.clone().unwrap();
    let (o, _) = gru
        .forward_with_lengths(&case.input, &lengths, case.h0.as_ref())
        .unwrap();
    for (b, &len) in lengths.iter().enumerate() {
        let t_len = o.dim(0).unwrap();
        if len < t_len {
            let tail = o
                .narrow(0, len, t_len - len)
                .unwrap()
                .narrow(1, b, 1)
                .unwrap();
            let m = tail
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(m, 0.0, "batch {b}");
        }
    }
}

#[test]
fn bad_inputs_are_named_errors() {
    let case = reference_case("bi_l3"); // GRU(4, 6, num_layers=3, bidirectional) f32
    let gru = load_gru(&case);
    let x = &case.input; // (5, 2, 4)

    let e = gru
        .forward(&x.to_dtype(DType::F64).unwrap(), None)
        .unwrap_err();
    assert!(
        matches!(&e, GruError::DType { name, .. } if name == "input"),
        "{e}"
    );

    let h0 = Tensor::zeros((6, 3, 6), DType::F32, &Device::Cpu).unwrap();
    let e = gru.forward(x, Some(&h0)).unwrap_err();
    assert!(
        matches!(&e, GruError::Shape { name, expected, .. } if name == "h0" && expected == &[6, 2, 6]),
        "{e}"
    );

    let h0 = Tensor::zeros((6, 2, 6), DType::F64, &Device::Cpu).unwrap();
    let e = gru.forward(x, Some(&h0)).unwrap_err();
    assert!(
        matches!(&e, GruError::DType { name, .. } if name == "h0"),
        "{e}"
    );

    let wrong = Tensor::zeros((5, 2, 3), DType::F32, &Device::Cpu).unwrap();
    let e = gru.forward(&wrong, None).unwrap_err().to_string();
    assert!(
        e.contains("input") && e.contains("Expected 4, got 3"),
        "{e}"
    );

    let four_d = Tensor::zeros((1, 5, 2, 4), DType::F32, &Device::Cpu).unwrap();
    let e = gru.forward(&four_d, None).unwrap_err().to_string();
    assert!(e.contains("4-D"), "{e}");

    let empty = Tensor::zeros((0, 2, 4), DType::F32, &Device::Cpu).unwrap();
    let e = gru.forward(&empty, None).unwrap_err().to_string();
    assert!(e.contains("sequence length to be larger than 0"), "{e}");
    // An empty batch gives empty outputs, as in PyTorch.
    let no_batch = Tensor::zeros((5, 0, 4), DType::F32, &Device::Cpu).unwrap();
    let (o, h) = gru.forward(&no_batch, None).unwrap();
    assert_eq!((o.dims(), h.dims()), (&[5, 0, 12][..], &[6, 0, 6][..]));

    for (lengths, needle) in [
        (vec![5, 0], "lengths[1] is 0"),
        (vec![6, 2], "exceeds the sequence length 5"),
        (vec![5], "expected 2 lengths"),
    ] {
        let e = gru.forward_with_lengths(x, &lengths, None).unwrap_err();
        assert!(matches!(e, GruError::Lengths(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let unbatched = x.get(0).unwrap().contiguous().unwrap();
    let e = gru
        .forward_with_lengths(&unbatched, &[2], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lengths"), "{e}");
}

#[test]
fn cell_bad_inputs_are_named_errors() {
    let case = reference_case("cell_batched_hx");
    let file = WeightFile::open(&case.weights).unwrap();
    let (cell, _) = file.gru_cell(None, None, &Device::Cpu).unwrap();
    let x3 = Tensor::zeros((1, 4, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(cell
        .forward(&x3, None)
        .unwrap_err()
        .to_string()
        .contains("1D or 2D"));
    let hx = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
    let e = cell.forward(&case.input, Some(&hx)).unwrap_err();
    assert!(
        matches!(&e, GruError::Shape { name, .. } if name == "hx"),
        "{e}"
    );
}

#[test]
fn weights_with_wrong_shapes_are_refused_by_name() {
    use std::collections::HashMap;
    let case = reference_case("uni_l1_h0"); // GRU(5, 7)
    let file = WeightFile::open(&case.weights).unwrap();
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for t in file.tensors() {
        map.insert(t.name.clone(), file.load(&t.name, &Device::Cpu).unwrap());
    }
    map.insert(
        "bias_hh_l0".into(),
        Tensor::zeros(20, DType::F32, &Device::Cpu).unwrap(),
    );
    let vb = candle_nn::VarBuilder::from_tensors(map.clone(), DType::F32, &Device::Cpu);
    let e = Gru::new(gru_core::GruConfig::new(5, 7), vb).unwrap_err();
    assert!(
        matches!(&e, GruError::Shape { name, expected, found } if name == "bias_hh_l0" && expected == &[21] && found == &[20]),
        "{e}"
    );
    map.remove("weight_hh_l0");
    let vb = candle_nn::VarBuilder::from_tensors(map, DType::F32, &Device::Cpu).pp("enc");
    let e = Gru::new(gru_core::GruConfig::new(5, 7), vb)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("enc.weight_ih_l0") && e.contains("missing"),
        "{e}"
    );
}

/// A cell built from the file's config as a GRU is, stepped with its state carried in a
/// `GruState`, gives PyTorch's `h'` step after step (the reference is one step from `hx`: the
/// first step from `GruState::with_h0(hx)` matches it; later steps equal `forward` fed by hand).
#[test]
fn a_cell_steps_with_a_carried_state_like_a_gru() {
    use gru_weights::ModuleKind;
    let case = reference_case("cell_batched_hx");
    let file = WeightFile::open(&case.weights).unwrap();
    let config = file.select(ModuleKind::GruCell, None).unwrap().config;
    let vb = file.var_builder(DType::F32, &Device::Cpu);
    let cell = gru_core::GruCell::from_config(config, vb.clone()).unwrap();
    let mut state = GruState::with_h0(case.h0.clone().unwrap());
    let h1 = cell.forward_state(&case.input, &mut state).unwrap();
    let tol = Tolerance::for_dtype(DType::F32);
    assert!(compare("h'", &h1, &case.output, tol).unwrap().passed);
    let h2 = cell.forward_state(&case.input, &mut state).unwrap();
    let by_hand = cell.forward(&case.input, Some(&h1)).unwrap();
    assert_eq!(max_diff(&h2, &by_hand), 0.0);
    assert_eq!(max_diff(state.h().unwrap(), &h2), 0.0);
    // An input of another batch size than the state's is refused, naming both.
    let one = case.input.narrow(0, 0, 1).unwrap();
    let e = cell
        .forward_state(&one, &mut state)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds 1 rows, the carried state"), "{e}");
    // A config of two layers is no cell's.
    let two = gru_core::GruConfig {
        num_layers: 2,
        ..config
    };
    let e = gru_core::GruCell::from_config(two, vb)
        .unwrap_err()
        .to_string();
    assert!(e.contains("one layer and one direction"), "{e}");
}
