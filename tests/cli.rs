//! The `gru` binary end to end: verify (exit codes, table, divergence report), inspect, run, and
//! one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/case_file.rs"]
mod case_file;
#[path = "common/tensor_diff.rs"]
mod tensor_diff;

use candle_core::{DType, Device, Tensor};
use case_file::rewrite_case;
use gru_weights::WeightFile;
use tensor_diff::max_diff;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gru(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gru"))
        .args(args)
        .current_dir(root())
        // Errors stay one line even when backtraces are asked for.
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // The CLI's panic hook turns a panic into "error: internal error at ...": still a bug.
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "panic: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Asserts that each `(written, reference)` tensor pair of the `gru run` output file `got` and
/// the PyTorch reference file `reference` agree at the f32 tolerance.
fn assert_matches(got: &Path, reference: &Path, pairs: &[(&str, &str)]) {
    let got = WeightFile::open(got).unwrap();
    let reference = WeightFile::open(reference).unwrap();
    for (name, ref_name) in pairs {
        let cmp = gru_verify::compare(
            name,
            &got.load(name, &Device::Cpu).unwrap(),
            &reference.load(ref_name, &Device::Cpu).unwrap(),
            gru_verify::Tolerance::for_dtype(DType::F32),
        )
        .unwrap();
        assert!(cmp.passed, "{name}: {}", cmp.max_abs);
    }
}

#[test]
fn verify_shipped_models_passes() {
    let (code, out, _) = gru(&["verify", "models"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS") && !out.contains("FAIL"), "{out}");
    assert!(out.contains("0 failed, 0 could not run"), "{out}");
    let (code, out, _) = gru(&[
        "verify",
        "models/reference/uni_l1_h0.case.safetensors",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("\"passed\":true"), "{out}");
}

#[test]
fn perturbed_output_fails_with_exit_1_and_points_at_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("models/reference/uni_l2_long_h0.case.safetensors");
    let case = WeightFile::open(&src).unwrap();
    let out = case.load("output", &Device::Cpu).unwrap(); // (40, 2, 8)
    let mut v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[(17 * 2 + 1) * 8 + 3] += 0.01; // t = 17, batch 1, feature 3
    let bad = Tensor::from_vec(v, out.dims(), &Device::Cpu).unwrap();
    let dst = dir.path().join("perturbed.case.safetensors");
    rewrite_case(&src, &dst, &[("output", Some(bad))], &[]);
    let (code, stdout, _) = gru(&["verify", dst.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("t=17, batch 1, feature 3"), "{stdout}");
    // A looser tolerance from the command line overrides the default.
    let (code, _, _) = gru(&["verify", dst.to_str().unwrap(), "--atol", "0.1"]);
    assert_eq!(code, 0);
}

#[test]
fn corrupted_case_is_reported_with_exit_2_and_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("models/reference/uni_l1_h0.case.safetensors");
    rewrite_case(&src, &dir.path().join("good.case.safetensors"), &[], &[]);
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(
        dir.path().join("broken.case.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let (code, out, _) = gru(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("ERROR") && out.contains("PASS"), "{out}");
    assert!(out.contains("1 passed, 0 failed, 1 could not run"), "{out}");
}

#[test]
fn inspect_lists_modules() {
    let (code, out, _) = gru(&["inspect", "models/fixtures/training_checkpoint.pt"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("model_state_dict") && out.contains("encoder.rnn") && out.contains("GRUCell"),
        "{out}"
    );
    let (code, out, _) = gru(&[
        "inspect",
        "models/fixtures/nested_model.safetensors",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"prefix\":\"encoder.rnn\"") && out.contains("\"hidden_size\":6"),
        "{out}"
    );
}

#[test]
fn inspect_lists_every_state_dict_and_prefix_takes_the_key_path() {
    let (code, out, _) = gru(&["inspect", "models/checkpoints/gan.pt"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("prefix=discriminator.rnn")
            && out.contains("prefix=generator.rnn")
            && out.contains("2 state dicts"),
        "{out}"
    );
    for (file, format) in [
        ("legacy_state_dict.pth", "legacy torch.save"),
        ("scripted.pt", "TorchScript archive"),
        ("whole_module_zip", "torch.save zip"),
    ] {
        let (code, out, _) = gru(&["inspect", &format!("models/checkpoints/{file}")]);
        assert_eq!(code, 0, "{file}");
        assert!(
            out.contains(format) && out.contains("prefix=encoder.rnn"),
            "{file}: {out}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("g.safetensors");
    let dst = dst.to_str().unwrap();
    // The same prefix in two state dicts: refused, naming both key paths.
    let (code, _, err) = gru(&[
        "convert",
        "--weights",
        "models/checkpoints/gan.pt",
        "--prefix",
        "rnn",
        "--out",
        dst,
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`discriminator.rnn`") && err.contains("`generator.rnn`"),
        "{err}"
    );
    let (code, out, err) = gru(&[
        "convert",
        "--weights",
        "models/checkpoints/gan.pt",
        "--prefix",
        "generator.rnn",
        "--out",
        dst,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("generator.rnn"), "{out}");
}

#[test]
fn run_writes_npy_when_asked_and_refuses_other_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let case = "models/reference/uni_l1_h0.case.safetensors";
    let weights = "models/reference/uni_l1_h0.safetensors";
    let st = dir.path().join("y.safetensors");
    let npy = dir.path().join("y.npy");
    for out in [&st, &npy] {
        let (code, _, err) = gru(&[
            "run",
            "--weights",
            weights,
            "--input",
            case,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let st = WeightFile::open(&st).unwrap();
    for (name, path) in [
        ("output", npy.clone()),
        ("h_n", dir.path().join("y.h_n.npy")),
    ] {
        let a = st.load(name, &Device::Cpu).unwrap();
        let b = gru_weights::read_npy(&path).unwrap();
        assert_eq!(a.dims(), b.dims(), "{name}");
        assert_eq!(max_diff(&a, &b), 0.0, "{name}");
    }
    let bad = dir.path().join("y.pt");
    let (code, _, err) = gru(&[
        "run",
        "--weights",
        weights,
        "--input",
        case,
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains(".pt is not a format"), "{err}");
    assert!(!bad.exists());
}

/// Values that become Inf in the dtype asked for (1e5 in f16) are refused by name, in the
/// weights (`run`, `convert`) and in the input, never run into Inf/NaN outputs.
#[test]
fn values_beyond_the_dtype_asked_for_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let (i, h) = (3, 4);
    let w = |n: usize, k: usize, big: bool| {
        let mut v = vec![0.1f32; n * k];
        if big {
            v[5] = 1e5;
        }
        Tensor::from_vec(v, (n, k), &dev).unwrap()
    };
    let b = || Tensor::zeros(3 * h, DType::F32, &dev).unwrap();
    let map = std::collections::HashMap::from([
        ("weight_ih_l0".to_string(), w(3 * h, i, false)),
        ("weight_hh_l0".to_string(), w(3 * h, h, true)),
        ("bias_ih_l0".to_string(), b()),
        ("bias_hh_l0".to_string(), b()),
    ]);
    let weights = dir.path().join("big.safetensors");
    candle_core::safetensors::save(&map, &weights).unwrap();
    let x = dir.path().join("x.safetensors");
    let input = Tensor::from_vec(vec![1e5f32, 0.5, 0.25], (1, 1, i), &dev).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("input", input)]), &x)
        .unwrap();
    let out = dir.path().join("y.safetensors");
    let (w_s, x_s, o_s) = (
        weights.to_str().unwrap(),
        x.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let (code, _, err) = gru(&[
        "run",
        "--weights",
        w_s,
        "--input",
        x_s,
        "--out",
        o_s,
        "--dtype",
        "f16",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("weight_hh_l0") && err.contains("beyond the range of f16"),
        "{err}"
    );
    let converted = dir.path().join("c.safetensors");
    let c_s = converted.to_str().unwrap();
    let (code, _, err) = gru(&["convert", "--weights", w_s, "--out", c_s, "--dtype", "f16"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("weight_hh_l0") && err.contains("beyond the range of f16"),
        "{err}"
    );
    assert!(!converted.exists());
    // f32 weights run; the f16 model refuses the input's 1e5.
    let (code, _, err) = gru(&["run", "--weights", w_s, "--input", x_s, "--out", o_s]);
    assert_eq!(code, 0, "{err}");
    let small = dir.path().join("small.safetensors");
    let map = std::collections::HashMap::from([
        (
            "weight_ih_l0".to_string(),
            w(3 * h, i, false).to_dtype(DType::F16).unwrap(),
        ),
        (
            "weight_hh_l0".to_string(),
            w(3 * h, h, false).to_dtype(DType::F16).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&map, &small).unwrap();
    let (code, _, err) = gru(&[
        "run",
        "--weights",
        small.to_str().unwrap(),
        "--input",
        x_s,
        "--out",
        o_s,
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--input") && err.contains("beyond the range of the model's dtype f16"),
        "{err}"
    );
}

/// An input is a stored tensor: `input_g` and `input_v` (a weight-norm pair's names) do not make
/// one.
#[test]
fn an_input_is_never_computed_from_a_weight_norm_pair() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x.safetensors");
    let g = Tensor::ones((1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let v = Tensor::ones((1, 1, 4), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("input_g", g), ("input_v", v)]),
        &x,
    )
    .unwrap();
    let out = dir.path().join("y.safetensors");
    let (code, _, err) = gru(&[
        "run",
        "--weights",
        "models/reference/uni_l1_h0.safetensors",
        "--input",
        x.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no tensor `input`"), "{err}");
}

/// `--out` through a link writes the file it points to and leaves the link a link (both
/// formats); a link to a device is refused; no temporary file is left behind.
#[cfg(unix)]
#[test]
fn run_writes_through_links_and_never_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let case = "models/reference/uni_l1_h0.case.safetensors";
    let weights = "models/reference/uni_l1_h0.safetensors";
    let run = |out: &std::path::Path| {
        gru(&[
            "run",
            "--weights",
            weights,
            "--input",
            case,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    for ext in ["safetensors", "npy"] {
        let real = dir.path().join(format!("real.{ext}"));
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join(format!("link.{ext}"));
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (code, _, err) = run(&link);
        assert_eq!(code, 0, "{err}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(
            std::fs::read(&real).unwrap().len() > 3,
            "{ext}: the target was not written"
        );
    }
    let dev = dir.path().join("dev.safetensors");
    std::os::unix::fs::symlink("/dev/null", &dev).unwrap();
    let (code, _, err) = run(&dev);
    assert_eq!(code, 2);
    assert!(err.contains("is a link to a device"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn inspect_counts_tied_names_apart_from_stored_tensors() {
    // 46 names: 23 stored, 21 tied copies safetensors dropped, 2 weights computed (weight norm).
    let (code, out, _) = gru(&["inspect", "models/checkpoints/hf_sharded", "--all"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("sharded checkpoint of 13 files, 23 tensors")
            && out.contains("and 21 names of a tensor stored under another")
            && out.contains("tied.weight_hh_l1")
            && out.contains("(stored as `body.rnn.weight_hh_l1`)"),
        "{out}"
    );
    let (code, out, _) = gru(&["inspect", "models/checkpoints/hf_sharded_bin", "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(r#""tensors":44"#) && out.contains(r#""shared_names":0"#),
        "{out}"
    );
}

#[test]
fn inspect_all_lists_every_tensor() {
    let (code, out, _) = gru(&["inspect", "models/walkthrough/model.pt", "--all"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("model.embed.weight")
            && out.contains("[30, 8]")
            && out.contains("model.head.bias"),
        "{out}"
    );
    let (_, out, _) = gru(&["inspect", "models/walkthrough/model.pt"]);
    assert!(
        !out.contains("model.embed.weight") && out.contains("--all"),
        "{out}"
    );
}

#[test]
fn run_writes_pytorchs_output() {
    let dir = tempfile::tempdir().unwrap();
    let case = root().join("models/reference/varlen_bi_l2_h0.case.safetensors");
    let out = dir.path().join("out.safetensors");
    let h0 = dir.path().join("h0.npy");
    let args = [
        "run",
        "--weights",
        "models/reference/varlen_bi_l2_h0.safetensors",
        "--input",
        case.to_str().unwrap(),
        "--h0",
        h0.to_str().unwrap(),
        "--lengths",
        "3,7,1,7,5",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, stdout, stderr) = gru(&args);
    // h0.npy does not exist yet: a one-line error naming it, exit 2.
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stderr.contains("h0") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let c = WeightFile::open(&case).unwrap();
    c.load("h0", &Device::Cpu).unwrap().write_npy(&h0).unwrap();
    let (code, stdout, stderr) = gru(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_matches(&out, &case, &[("output", "output")]);
    // Refused by name: NaN in a valid position; one length too many (the batch is 5), as
    // PyTorch's count check rather than a slicing error.
    for (lengths, expected) in [
        ("7,7,7,7,7", "--input: holds NaN or Inf"),
        (
            "3,7,1,7,5,2",
            "`lengths`: expected 5 lengths (one per batch element), got 6",
        ),
    ] {
        let (code, _, stderr) = gru(&[
            "run",
            "--weights",
            "models/reference/varlen_bi_l2_h0.safetensors",
            "--input",
            case.to_str().unwrap(),
            "--lengths",
            lengths,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 2);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn run_reads_an_input_saved_as_one_bare_tensor() {
    // `torch.save(x, path)` of a non-contiguous view: one tensor without a name.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let (code, stdout, stderr) = gru(&[
        "run",
        "--weights",
        "models/checkpoints/zip_flat.pt",
        "--input",
        "models/checkpoints/zip_flat_input.pt",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let case = root().join("models/checkpoints/zip_flat.case.safetensors");
    assert_matches(&out, &case, &[("output", "output"), ("h_n", "h_n")]);
    // As weights it is refused for what it is.
    let (code, _, stderr) = gru(&["inspect", "models/checkpoints/zip_flat_input.pt"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = gru(&[
        "run",
        "--weights",
        "models/checkpoints/zip_flat_input.pt",
        "--input",
        "models/checkpoints/zip_flat_input.pt",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("the file is one bare tensor"), "{stderr}");
}

#[test]
fn run_cell_writes_pytorchs_new_state() {
    let dir = tempfile::tempdir().unwrap();
    let case = root().join("models/reference/cell_batched_hx.case.safetensors");
    let out = dir.path().join("out.safetensors");
    let mut args = vec![
        "run",
        "--weights",
        "models/reference/cell_batched_hx.safetensors",
        "--input",
        case.to_str().unwrap(),
        "--h0",
        case.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    // Without --cell: the file holds no GRU, and the error says what to do.
    let (code, _, stderr) = gru(&args);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("holds a GRUCell, not a GRU: run it with --cell"),
        "{stderr}"
    );
    args.push("--cell");
    let (code, stdout, stderr) = gru(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // A cell case's reference is h' alone, in `output`; both written tensors must equal it.
    assert_matches(&out, &case, &[("output", "output"), ("h_n", "output")]);
    // A cell has no sequence: lengths are refused.
    args.extend(["--lengths", "1,1,1,1"]);
    let (code, _, stderr) = gru(&args);
    assert_eq!(code, 2);
    assert!(stderr.contains("--lengths"), "{stderr}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        vec!["inspect", "models/does-not-exist.safetensors"],
        vec!["verify", "models", "--device", "tpu"],
        vec!["verify", "models", "--dtype", "int8"],
        vec!["verify", "models", "--kernel", "fastest"],
        vec!["verify"],
        vec![
            "run",
            "--weights",
            "models/fixtures/nested_model.safetensors",
            "--input",
            "x.npy",
            "--out",
            "/tmp/x",
        ],
        vec![
            "bench",
            "--input-size",
            "4",
            "--hidden-size",
            "0",
            "--seq-len",
            "3",
            "--batch",
            "1",
        ],
        vec![
            "bench",
            "--input-size",
            "4",
            "--hidden-size",
            "8",
            "--seq-len",
            "3",
            "--batch",
            "1",
            "--no-event-tracking",
        ],
    ] {
        let (code, _, stderr) = gru(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.trim().lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
    #[cfg(not(feature = "cuda"))]
    {
        let (code, _, stderr) = gru(&["verify", "models/reference", "--device", "cuda"]);
        assert_eq!(code, 2);
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }
}

#[test]
fn bench_runs_every_implementation() {
    for imp in ["ours", "ours-ops", "candle-nn"] {
        let (code, out, err) = gru(&[
            "bench",
            "--input-size",
            "4",
            "--hidden-size",
            "8",
            "--num-layers",
            "2",
            "--seq-len",
            "5",
            "--batch",
            "2",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--impl",
            imp,
            "--json",
        ]);
        assert_eq!(code, 0, "{imp}: {err}");
        assert!(out.contains("\"median_ms\""), "{out}");
    }
}

/// `gru convert --weights WEIGHTS --prefix PREFIX` into a temporary folder: the source and the
/// written file, opened, and the folder (kept while the file is used).
fn convert(weights: &str, prefix: &str) -> (WeightFile, WeightFile, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gru.safetensors");
    let (code, _, err) = gru(&[
        "convert",
        "--weights",
        weights,
        "--prefix",
        prefix,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let src = WeightFile::open(root().join(weights)).unwrap();
    let dst = WeightFile::open(&out).unwrap();
    (src, dst, dir)
}

#[test]
fn convert_extracts_a_gru_with_pytorch_names() {
    let (src, dst, _dir) = convert("models/fixtures/training_checkpoint.pt", "encoder.rnn");
    assert_eq!(dst.tensors().len(), 16);
    for t in dst.tensors() {
        assert!(
            !t.name.contains('.'),
            "bare nn.GRU names expected, got {}",
            t.name
        );
        let a = dst.load(&t.name, &Device::Cpu).unwrap();
        let b = src
            .load(&format!("encoder.rnn.{}", t.name), &Device::Cpu)
            .unwrap();
        assert_eq!(max_diff(&a, &b), 0.0, "{}", t.name);
    }
}

#[test]
fn convert_writes_weight_norm_as_plain_weights() {
    // A GRU trained under weight norm becomes a plain `nn.GRU` state dict.
    let (src, dst, _dir) = convert("models/reparam/weight_norm.pt", "rnn");
    assert_eq!(dst.tensors().len(), 16);
    let w = dst.load("weight_hh_l0", &Device::Cpu).unwrap();
    let v = src
        .load("rnn.parametrizations.weight_hh_l0.original1", &Device::Cpu)
        .unwrap();
    let computed = src.load("rnn.weight_hh_l0", &Device::Cpu).unwrap();
    assert_eq!(max_diff(&w, &computed), 0.0);
    assert!(max_diff(&w, &v) > 1e-2);
    let (code, out, _) = gru(&["inspect", "models/reparam/weight_norm.pt"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("rnn.weight_ih_l1 = weight norm (dim 1) of"),
        "{out}"
    );
}

/// `gru run --f32-steps` runs a small f32 model's steps in f32: both ways land within PyTorch's
/// tolerance of its reference, and closer to the exact answer with wide steps (the default).
#[test]
fn run_with_and_without_wide_steps() {
    let dir = tempfile::tempdir().unwrap();
    let case = "models/accuracy/trained_like_small.case.safetensors";
    let weights = "models/accuracy/trained_like_small.safetensors";
    let c = gru_verify::Case::load(root().join(case)).unwrap();
    let exact = c.exact.as_ref().unwrap();
    let mut errors = Vec::new();
    for flag in [None, Some("--f32-steps")] {
        let out = dir.path().join(format!("y{}.safetensors", flag.is_some()));
        let mut args = vec!["run", "--weights", weights, "--input", case];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(flag);
        let (code, _, err) = gru(&args);
        assert_eq!(code, 0, "{err}");
        let y = WeightFile::open(&out)
            .unwrap()
            .load("output", &Device::Cpu)
            .unwrap();
        assert!(max_diff(&y, &c.output) < 1e-5, "{flag:?}");
        errors.push(gru_verify::distance(&y, &exact.output).unwrap());
    }
    assert!(
        errors[0] < 0.5 * errors[1],
        "wide {} vs f32 steps {}",
        errors[0],
        errors[1]
    );
}
