//! gru-weights against files written by real PyTorch (models/fixtures, by
//! scripts/make_weight_fixtures.py) and against malformed files made from them.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_gru::models_dir;
use gru_weights::{save_gru, Format, ModuleKind, WeightFile, WeightsError};

fn fixture(name: &str) -> PathBuf {
    models_dir().join("fixtures").join(name)
}

/// Every tensor of `f`, by name.
fn load_all(f: &WeightFile) -> std::collections::HashMap<String, Tensor> {
    f.tensors()
        .iter()
        .map(|t| (t.name.clone(), f.load(&t.name, &Device::Cpu).unwrap()))
        .collect()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims()
        && a.dtype() == b.dtype()
        && a.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            == b.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
}

#[test]
fn a_missing_file_keeps_its_io_error() {
    let err = WeightFile::open(fixture("does-not-exist.safetensors")).unwrap_err();
    let msg = err.to_string();
    match &err {
        gru_weights::WeightsError::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected WeightsError::Io, got {other:?}"),
    }
    assert!(std::error::Error::source(&err).is_some());
    assert!(
        msg.contains("does-not-exist.safetensors") && msg.contains("cannot open"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1);
}

#[test]
fn a_malformed_container_keeps_its_parser_error() {
    let good = std::fs::read(fixture("nested_model.safetensors")).unwrap();
    let mut bad = good.clone();
    bad[8] = b'!'; // the JSON header no longer parses
    let err = open_bytes(&bad).unwrap_err();
    assert!(
        matches!(err, WeightsError::Format { .. }),
        "expected WeightsError::Format, got {err:?}"
    );
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(err.to_string().lines().count(), 1);
    let zip = std::fs::read(fixture("nested_model.pt")).unwrap();
    let err = open_bytes(&zip[..zip.len() / 2]).unwrap_err();
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
}

#[test]
fn discovers_every_module_with_its_config() {
    for name in [
        "nested_model.safetensors",
        "nested_model_save_model.safetensors",
        "nested_model.pt",
        "training_checkpoint.pt",
    ] {
        let f = WeightFile::open(fixture(name)).unwrap();
        let d = f.discover();
        // Inside the checkpoint's `model_state_dict`, the same module paths.
        let found: Vec<(String, ModuleKind)> = d
            .found
            .iter()
            .map(|g| (g.relative_prefix().to_string(), g.kind))
            .collect();
        assert_eq!(
            found,
            vec![
                ("decoder.cell".to_string(), ModuleKind::GruCell),
                ("decoder.gru".to_string(), ModuleKind::Gru),
                ("encoder.rnn".to_string(), ModuleKind::Gru),
            ],
            "{name}"
        );
        let enc = &d.found[2].config;
        assert_eq!((enc.input_size, enc.hidden_size, enc.num_layers), (5, 6, 2));
        assert!(enc.bidirectional && enc.bias);
        // The LSTM is not taken for a GRU.
        assert!(d.rejected.iter().any(|(p, _)| p.ends_with("aux.lstm")));
    }
}

#[test]
fn several_grus_need_a_prefix_and_a_wrong_prefix_lists_what_exists() {
    let f = WeightFile::open(fixture("nested_model.safetensors")).unwrap();
    let e = f.gru(None, None, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("2 GRUs found") && e.contains("`decoder.gru`") && e.contains("`encoder.rnn`"),
        "{e}"
    );
    let e = f
        .gru(Some("encoder.rn"), None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no GRU at prefix \"encoder.rn\"") && e.contains("`encoder.rnn`"),
        "{e}"
    );
    let (gru, report) = f.gru(Some("encoder.rnn"), None, &Device::Cpu).unwrap();
    assert_eq!(gru.config().hidden_size, 6);
    assert_eq!(report.applied.len(), 16);
    assert!(report.unused_under_prefix.is_empty());
    assert_eq!(report.other_tensors, 31 - 16);
    let (cell, _) = f.gru_cell(None, None, &Device::Cpu).unwrap();
    assert_eq!((cell.input_size(), cell.hidden_size()), (4, 3));
    // The only GRU of a file loads without a prefix: DataParallel's `module.` included.
    let f = WeightFile::open(fixture("dataparallel.safetensors")).unwrap();
    let (gru, report) = f.gru(None, None, &Device::Cpu).unwrap();
    assert_eq!(report.prefix, "module.gru");
    assert_eq!(gru.config().num_layers, 2);
}

#[test]
fn pt_files_hold_the_same_tensors_as_safetensors() {
    let st = WeightFile::open(fixture("nested_model.safetensors")).unwrap();
    let pt = WeightFile::open(fixture("nested_model.pt")).unwrap();
    assert_eq!(pt.format(), Format::PyTorch);
    assert_eq!(st.tensors(), pt.tensors());
    for t in st.tensors() {
        let a = st.load(&t.name, &Device::Cpu).unwrap();
        let b = pt.load(&t.name, &Device::Cpu).unwrap();
        assert!(same(&a, &b), "{}", t.name);
    }
    let ck = WeightFile::open(fixture("training_checkpoint.pt")).unwrap();
    assert!(ck.state_dicts().contains(&"model_state_dict".to_string()));
    // The optimizer's state is listed apart, never mistaken for the model's.
    assert!(ck
        .state_dicts()
        .iter()
        .all(|k| k == "model_state_dict" || k.starts_with("optimizer_state_dict.state.")));
    let by_key =
        WeightFile::open_with_key(fixture("training_checkpoint.pt"), Some("model_state_dict"))
            .unwrap();
    let model_part: Vec<_> = ck
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("model_state_dict."))
        .cloned()
        .collect();
    assert_eq!(by_key.tensors(), &model_part[..]);
    // Names inside the state dict resolve when only one state dict has them.
    assert_eq!(
        ck.resolve("encoder.rnn.weight_ih_l0").unwrap(),
        "model_state_dict.encoder.rnn.weight_ih_l0"
    );
    let e = WeightFile::open_with_key(fixture("training_checkpoint.pt"), Some("nope")).unwrap_err();
    assert!(e.to_string().contains("no key \"nope\""), "{e}");
}

#[test]
fn state_dict_saved_from_cuda_loads_on_cpu() {
    let pt = WeightFile::open(fixture("cuda_saved.pt")).unwrap();
    let st = WeightFile::open(fixture("cuda_saved_reference.safetensors")).unwrap();
    assert_eq!(pt.tensors(), st.tensors());
    for t in st.tensors() {
        let a = pt.load(&t.name, &Device::Cpu).unwrap();
        assert!(
            same(&a, &st.load(&t.name, &Device::Cpu).unwrap()),
            "{}",
            t.name
        );
    }
    let (gru, _) = pt.gru(None, None, &Device::Cpu).unwrap();
    assert_eq!(gru.config().num_layers, 2);
}

#[test]
fn whole_pickled_module_holds_its_state_dict() {
    // torch.save(model) after the optimizer step, like the checkpoint's model_state_dict.
    let whole = WeightFile::open(fixture("whole_module.pt")).unwrap();
    let ck = WeightFile::open_with_key(fixture("training_checkpoint.pt"), Some("model_state_dict"))
        .unwrap();
    assert_eq!(whole.tensors().len(), ck.tensors().len());
    for t in whole.tensors() {
        let a = whole.load(&t.name, &Device::Cpu).unwrap();
        let b = ck.load(&t.name, &Device::Cpu).unwrap();
        assert!(same(&a, &b), "{}", t.name);
    }
}

#[test]
fn half_dtypes_load_as_stored_or_converted() {
    for (name, dtype) in [
        ("half_f16.safetensors", DType::F16),
        ("half_bf16.safetensors", DType::BF16),
    ] {
        let f = WeightFile::open(fixture(name)).unwrap();
        let (gru, report) = f.gru(None, None, &Device::Cpu).unwrap();
        assert_eq!((gru.dtype(), report.stored_dtype), (dtype, dtype));
        let (gru32, report) = f.gru(None, Some(DType::F32), &Device::Cpu).unwrap();
        assert_eq!((gru32.dtype(), report.dtype), (DType::F32, DType::F32));
        // Widening is exact.
        for ((_, a), (_, b)) in gru.named_tensors().iter().zip(gru32.named_tensors().iter()) {
            assert!(same(&a.to_dtype(DType::F32).unwrap(), b));
        }
        let x = Tensor::ones((3, 2, 4), dtype, &Device::Cpu).unwrap();
        let (o, h) = gru.forward(&x, None).unwrap();
        assert_eq!(
            (o.dims(), h.dims(), o.dtype()),
            (&[3, 2, 10][..], &[4, 2, 5][..], dtype)
        );
    }
}

#[test]
fn load_save_load_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    for (name, prefix) in [
        ("nested_model.safetensors", "encoder.rnn"),
        ("half_bf16.safetensors", ""),
        ("training_checkpoint.pt", "decoder.gru"),
    ] {
        let f = WeightFile::open(fixture(name)).unwrap();
        let (gru, _) = f.gru(Some(prefix), None, &Device::Cpu).unwrap();
        let out = dir.path().join("saved.safetensors");
        save_gru(&gru, prefix, &out).unwrap();
        let g = WeightFile::open(&out).unwrap();
        for (k, t) in gru.named_tensors() {
            let full = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let stored = f.load(&full, &Device::Cpu).unwrap();
            assert!(
                same(&stored, &g.load(&full, &Device::Cpu).unwrap()),
                "{name} {full}"
            );
            assert!(same(&stored, &t), "{name} {full}");
        }
        let (gru2, _) = g.gru(Some(prefix), None, &Device::Cpu).unwrap();
        assert_eq!(gru2.config(), gru.config());
    }
}

#[test]
fn non_finite_weights_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut map = load_all(&WeightFile::open(fixture("dataparallel.safetensors")).unwrap());
    let w = map["module.gru.weight_hh_l1"].clone();
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[5] = f32::NAN;
    map.insert(
        "module.gru.weight_hh_l1".into(),
        Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("nan.safetensors");
    candle_core::safetensors::save(&map, &p).unwrap();
    let e = WeightFile::open(&p)
        .unwrap()
        .gru(None, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("module.gru.weight_hh_l1") && e.contains("non-finite"),
        "{e}"
    );
}

/// Writes `bytes` to a temp file and opens it.
fn open_bytes(bytes: &[u8]) -> Result<WeightFile, WeightsError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.bin");
    std::fs::write(&p, bytes).unwrap();
    let r = WeightFile::open(&p);
    if let Ok(f) = &r {
        // Opening may succeed; loading every tensor and discovering must still not panic.
        let _ = f.discover();
        for t in f.tensors() {
            let _ = f.load(&t.name, &Device::Cpu);
        }
    }
    r
}

fn file_error(r: Result<WeightFile, WeightsError>) -> String {
    match r {
        Err(
            e @ (WeightsError::File { .. } | WeightsError::Io { .. } | WeightsError::Format { .. }),
        ) => e.to_string(),
        Err(e) => panic!("expected a file error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn malformed_safetensors_give_file_errors() {
    let good = std::fs::read(fixture("nested_model.safetensors")).unwrap();
    let e = file_error(open_bytes(&[]));
    assert!(e.contains("empty"), "{e}");
    let e = file_error(open_bytes(&good[..5]));
    assert!(e.contains("too short"), "{e}");
    let e = file_error(open_bytes(&good[..good.len() / 2]));
    assert!(
        e.contains("invalid safetensors") || e.contains("truncated"),
        "{e}"
    );
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = file_error(open_bytes(&huge));
    assert!(e.contains("header length") && e.contains("exceeds"), "{e}");
    let mut not_json = good.clone();
    not_json[8..20].copy_from_slice(b"not json!!!!");
    let e = file_error(open_bytes(&not_json));
    assert!(e.contains("invalid safetensors"), "{e}");
    // Offsets past the data: grow one tensor's end offset in the JSON header.
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
    let pos = header.find("\"data_offsets\":[").unwrap() + 16;
    let end = pos + header[pos..].find(']').unwrap();
    let (a, b) = header[pos..end].split_once(',').unwrap();
    let bumped = format!("{a},{}", b.parse::<u64>().unwrap() + 1_000_000);
    let mut h2 = header.clone();
    h2.replace_range(pos..end, &bumped);
    let mut bad = (h2.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(h2.as_bytes());
    bad.extend_from_slice(&good[8 + n..]);
    let e = file_error(open_bytes(&bad));
    assert!(e.contains("invalid safetensors"), "{e}");
    let e = file_error(open_bytes(
        b"hello, this is plainly not a weight file at all",
    ));
    assert!(
        e.contains("not safetensors") || e.contains("invalid safetensors"),
        "{e}"
    );
}

#[test]
fn malformed_pt_files_give_file_errors() {
    let good = std::fs::read(fixture("nested_model.pt")).unwrap();
    let e = file_error(open_bytes(&good[..good.len() / 3]));
    assert!(
        e.contains("zip") || e.contains("data.pkl") || e.contains("unpickle"),
        "{e}"
    );
    // A zip that is not a PyTorch checkpoint.
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file(
            "archive/readme.txt",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        std::io::Write::write_all(&mut z, b"hi").unwrap();
        z.finish().unwrap();
    }
    let e = file_error(open_bytes(buf.get_ref()));
    assert!(e.contains("without data.pkl"), "{e}");
    let e = file_error(WeightFile::open(fixture("does_not_exist.pt")));
    assert!(e.contains("cannot open"), "{e}");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
        let mut b = base.to_vec();
        for &(i, v) in edits {
            let i = i % b.len();
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("GRU_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(128),
            ..ProptestConfig::default()
        })]

        /// Random byte edits and truncations of real files never panic.
        #[test]
        fn loaders_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in proptest::option::of(any::<usize>()),
            which in 0usize..7,
        ) {
            let name = [
                "fixtures/nested_model.safetensors",
                "fixtures/nested_model.pt",
                "fixtures/half_f16.safetensors",
                "checkpoints/legacy_state_dict.pth",
                "checkpoints/legacy_flat.ch",
                "checkpoints/whole_module_legacy.pkl",
                "checkpoints/scripted.pt",
            ][which];
            let base = std::fs::read(models_dir().join(name)).unwrap();
            let _ = open_bytes(&mutate(&base, &edits, cut));
        }

        /// Header edits of safetensors (the part that is parsed) never panic.
        #[test]
        fn safetensors_header_edits_never_panic(
            edits in proptest::collection::vec((0usize..400, any::<u8>()), 1..6),
        ) {
            let base = std::fs::read(fixture("dataparallel.safetensors")).unwrap();
            let _ = open_bytes(&mutate(&base, &edits, None));
        }
    }
}

#[test]
fn load_report_names_unused_tensors_under_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut map = load_all(&WeightFile::open(fixture("dataparallel.safetensors")).unwrap());
    // A parameter nn.GRU does not have (as a projection would add) and an unrelated head.
    map.insert(
        "module.gru.weight_hr_l0".into(),
        Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    map.insert(
        "module.head.weight".into(),
        Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("extra.safetensors");
    candle_core::safetensors::save(&map, &p).unwrap();
    let (_, report) = WeightFile::open(&p)
        .unwrap()
        .gru(None, None, &Device::Cpu)
        .unwrap();
    assert_eq!(
        report.unused_under_prefix,
        vec!["module.gru.weight_hr_l0".to_string()]
    );
    assert_eq!(report.applied.len(), 8);
    assert_eq!(report.other_tensors, 1);
    // What came from the file and what the caller sets are told apart.
    let text = report.to_string();
    assert!(
        text.contains("from the file input_size=3 hidden_size=4 num_layers=2")
            && text.contains("yours to set: batch_first")
            && text.contains("1 unused under the prefix"),
        "{text}"
    );
}
