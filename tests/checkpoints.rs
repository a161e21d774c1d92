//! Every kind of PyTorch checkpoint loads without Python and matches PyTorch: legacy torch.save,
//! whole pickled modules (plain, DataParallel, torch.compile, inside a dict), TorchScript,
//! torch.export archives (scripts/make_export_fixtures.py), and
//! state dicts nested in training checkpoints (models/checkpoints, written by
//! scripts/make_checkpoint_fixtures.py with real PyTorch).

use std::path::PathBuf;

use candle_core::Device;
use candle_gru::models_dir;
use gru_weights::{Format, ModuleKind, WeightFile, WeightsError};

#[path = "common/folder_cases.rs"]
mod folder_cases;
#[path = "common/tensor_diff.rs"]
mod tensor_diff;
use folder_cases::assert_folder_passes;
use tensor_diff::max_diff;

fn checkpoint(name: &str) -> PathBuf {
    models_dir().join("checkpoints").join(name)
}

/// Asserts that `f` holds every tensor of `reference` (the whole state dict PyTorch saved), under
/// `prefix` + its name, equal to the last bit, and nothing else.
fn assert_holds(f: &WeightFile, reference: &WeightFile, prefix: &str) {
    assert_eq!(f.tensors().len(), reference.tensors().len());
    for t in reference.tensors() {
        let name = &t.name[prefix.len()..];
        let a = f.load(name, &Device::Cpu).unwrap();
        let b = reference.load(&t.name, &Device::Cpu).unwrap();
        assert_eq!(a.dims(), b.dims(), "{}", t.name);
        assert_eq!(max_diff(&a, &b), 0.0, "{}", t.name);
    }
}

/// (prefix, kind) of every module found, sorted.
type Modules = Vec<(String, ModuleKind)>;

fn modules(f: &WeightFile) -> Modules {
    let d = f.discover();
    assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    d.found.into_iter().map(|g| (g.prefix, g.kind)).collect()
}

fn tagger(prefix: &str) -> Modules {
    let p = |s: &str| {
        if prefix.is_empty() {
            s.to_string()
        } else {
            format!("{prefix}.{s}")
        }
    };
    vec![
        (p("cell"), ModuleKind::GruCell),
        (p("encoder.rnn"), ModuleKind::Gru),
    ]
}

#[test]
fn every_checkpoint_kind_lists_its_grus() {
    let cases: &[(&str, Format, Modules)] = &[
        ("legacy_state_dict.pth", Format::PyTorchLegacy, tagger("")),
        (
            "legacy_checkpoint.pkl",
            Format::PyTorchLegacy,
            tagger("model"),
        ),
        ("whole_module_legacy.pkl", Format::PyTorchLegacy, tagger("")),
        ("whole_module_zip", Format::PyTorch, tagger("")),
        ("whole_dataparallel.pt", Format::PyTorch, tagger("module")),
        ("whole_ddp.pt", Format::PyTorch, tagger("module")),
        ("whole_compiled.pt", Format::PyTorch, tagger("_orig_mod")),
        ("whole_in_dict.tar", Format::PyTorch, tagger("model")),
        ("scripted.pt", Format::TorchScript, tagger("")),
        ("traced.bin", Format::TorchScript, tagger("")),
        (
            "lightning.ckpt",
            Format::PyTorch,
            tagger("state_dict.model"),
        ),
        (
            "legacy_flat.ch",
            Format::PyTorchLegacy,
            vec![(String::new(), ModuleKind::Gru)],
        ),
        (
            "zip_flat.pt",
            Format::PyTorch,
            vec![(String::new(), ModuleKind::Gru)],
        ),
        ("exported.pt2", Format::ExportedProgram, tagger("")),
        ("exported_v1.zip", Format::ExportedProgram, tagger("")),
        ("exported_v2.pt2", Format::ExportedProgram, tagger("")),
        (
            "exported_multi.pt2",
            Format::ExportedProgram,
            vec![
                ("decoder.gru".into(), ModuleKind::Gru),
                ("encoder.gru".into(), ModuleKind::Gru),
            ],
        ),
        (
            "nested_list.pth",
            Format::PyTorch,
            vec![
                ("models.0.gru".into(), ModuleKind::Gru),
                ("models.1.gru".into(), ModuleKind::Gru),
            ],
        ),
    ];
    for (name, format, expected) in cases {
        let f = WeightFile::open(checkpoint(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(f.format(), *format, "{name}");
        assert_eq!(&modules(&f), expected, "{name}");
    }
}

#[test]
fn every_checkpoint_case_matches_pytorch() {
    assert!(assert_folder_passes(&models_dir().join("checkpoints")) >= 41);
}

#[test]
fn formats_agree_tensor_for_tensor() {
    // One model saved five ways holds the same numbers in each.
    let base = WeightFile::open(checkpoint("legacy_state_dict.pth")).unwrap();
    for other in [
        "whole_module_legacy.pkl",
        "whole_module_zip",
        "scripted.pt",
        "whole_in_dict.tar",
        "legacy_checkpoint.pkl",
    ] {
        let f = WeightFile::open(checkpoint(other)).unwrap();
        for t in base.tensors() {
            let a = base.load(&t.name, &Device::Cpu).unwrap();
            let b = f
                .load(&t.name, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{other}: {e}"));
            assert_eq!(max_diff(&a, &b), 0.0, "{other}: {}", t.name);
        }
    }
    // The int64 buffer loads as stored.
    let n = base
        .load("norm.num_batches_tracked", &Device::Cpu)
        .unwrap()
        .to_scalar::<i64>()
        .unwrap();
    assert_eq!(n, 5);
}

#[test]
fn two_state_dicts_with_a_gru_at_one_prefix_need_the_key_path() {
    let f = WeightFile::open(checkpoint("gan.pt")).unwrap();
    assert_eq!(f.state_dicts(), ["discriminator", "generator"]);
    let e = f.gru(Some("rnn"), None, &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, WeightsError::Select(_))
            && msg.contains("`discriminator.rnn`")
            && msg.contains("`generator.rnn`"),
        "{msg}"
    );
    let e = f.gru(None, None, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("`discriminator.rnn`") && e.contains("`generator.rnn`"),
        "{e}"
    );
    let (g, report) = f.gru(Some("generator.rnn"), None, &Device::Cpu).unwrap();
    assert_eq!(
        (g.config().hidden_size, report.prefix.as_str()),
        (3, "generator.rnn")
    );
    // The same for single tensors.
    let e = f
        .load("rnn.weight_hh_l0", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("generator.rnn.weight_hh_l0"), "{e}");
}

#[test]
fn a_prefix_inside_the_state_dict_and_wrapper_prefixes_select_too() {
    let lightning = WeightFile::open(checkpoint("lightning.ckpt")).unwrap();
    for p in ["state_dict.model.encoder.rnn", "model.encoder.rnn"] {
        let (_, r) = lightning.gru(Some(p), None, &Device::Cpu).unwrap();
        assert_eq!(r.prefix, "state_dict.model.encoder.rnn");
    }
    let dp = WeightFile::open(checkpoint("whole_dataparallel.pt")).unwrap();
    let (_, r) = dp.gru(Some("encoder.rnn"), None, &Device::Cpu).unwrap();
    assert_eq!(r.prefix, "module.encoder.rnn");
    let compiled = WeightFile::open(checkpoint("whole_compiled.pt")).unwrap();
    let (_, r) = compiled.gru_cell(Some("cell"), None, &Device::Cpu).unwrap();
    assert_eq!(r.prefix, "_orig_mod.cell");
}

#[test]
fn the_format_comes_from_the_bytes_not_the_name() {
    let dir = tempfile::tempdir().unwrap();
    for (src, format) in [
        ("legacy_state_dict.pth", Format::PyTorchLegacy),
        ("scripted.pt", Format::TorchScript),
        ("zip_flat.pt", Format::PyTorch),
    ] {
        for ext in ["safetensors", "npy", "txt", ""] {
            let p = dir.path().join(format!("renamed.{ext}"));
            std::fs::copy(checkpoint(src), &p).unwrap();
            assert_eq!(
                WeightFile::open(&p).unwrap().format(),
                format,
                "{src} as .{ext}"
            );
        }
    }
}

#[test]
fn legacy_double_half_and_bfloat16_storages_load_as_stored() {
    let legacy = WeightFile::open(checkpoint("legacy_dtypes.pth")).unwrap();
    let reference = WeightFile::open(checkpoint("legacy_dtypes_reference.safetensors")).unwrap();
    assert_eq!(legacy.tensors(), reference.tensors());
    for t in reference.tensors() {
        let a = legacy.load(&t.name, &Device::Cpu).unwrap();
        let b = reference.load(&t.name, &Device::Cpu).unwrap();
        assert_eq!(a.dtype(), b.dtype(), "{}", t.name);
        let eq = a
            .eq(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<u8>()
            .unwrap();
        assert_eq!(eq, 1, "{}", t.name);
    }
    for (prefix, dtype) in [
        ("f64", candle_core::DType::F64),
        ("f16", candle_core::DType::F16),
        ("bf16", candle_core::DType::BF16),
    ] {
        let (g, _) = legacy.gru(Some(prefix), None, &Device::Cpu).unwrap();
        assert_eq!(g.dtype(), dtype);
    }
}

#[test]
fn a_quantized_model_loads_as_quantized() {
    // Embedding (float) + quantize_dynamic'd GRU and Linear: the GRU is packed int8 parameters,
    // read as a quantized GRU (its numbers are checked by models/quantized's cases).
    let f = WeightFile::open(checkpoint("quantized_dynamic.pt")).unwrap();
    for prefix in [None, Some("rnn")] {
        let (g, report) = f.gru(prefix, None, &Device::Cpu).unwrap();
        assert_eq!(
            report.quantized.as_deref(),
            Some("qint8 per-tensor, reduce_range")
        );
        assert_eq!((g.config().input_size, g.config().hidden_size), (5, 7));
        assert!(g.quantized().is_some());
        assert!(report.to_string().contains("quantized (qint8"), "{report}");
    }
    // A half dtype or another device is refused in one line, naming the quantization.
    let e = f
        .gru(Some("rnn"), Some(candle_core::DType::F16), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("quantized") && e.contains("f32"), "{e}");
    // The float VarBuilder route refuses it, naming the packed tensors.
    let vb = f.var_builder(candle_core::DType::F32, &Device::Cpu);
    let e = gru_core::Gru::new(gru_core::GruConfig::new(5, 7), vb.pp("rnn"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("quantized") && e.contains("rnn._all_weight_values.0.param"),
        "{e}"
    );
    // A quantized GRU alone (inside `nn.Sequential`: no float tensor at all).
    let f = WeightFile::open(checkpoint("quantized_gru.pt")).unwrap();
    let (g, _) = f.gru(None, None, &Device::Cpu).unwrap();
    assert_eq!((g.config().input_size, g.config().hidden_size), (3, 4));
    // A float checkpoint has no such note.
    let f = WeightFile::open(checkpoint("zip_flat.pt")).unwrap();
    assert_eq!(f.quantized_note(), None);
}

#[test]
fn a_file_of_several_archives_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A distributed checkpoint's shard is torch.save archives one after another.
    let one = std::fs::read(checkpoint("zip_flat.pt")).unwrap();
    let shard = dir.path().join("__0_0.distcp");
    std::fs::write(&shard, [one.as_slice(), one.as_slice()].concat()).unwrap();
    let e = WeightFile::open(&shard).unwrap_err().to_string();
    assert!(
        e.contains("more than one zip archive") && e.contains("open the folder"),
        "{e}"
    );
    // Data before an archive too.
    std::fs::write(&shard, [b"junk".as_slice(), one.as_slice()].concat()).unwrap();
    assert!(WeightFile::open(&shard).is_err());
}

#[test]
fn a_sharded_distributed_checkpoint_assembles_tensor_for_tensor() {
    // Two ranks' DTensor shards (rows 11 + 10, and columns for proj.weight), against the whole
    // state dict PyTorch saved beside it.
    let f = WeightFile::open(checkpoint("dcp_sharded")).unwrap();
    assert_eq!(f.format(), Format::DistributedCheckpoint);
    let reference = WeightFile::open(checkpoint("dcp_sharded_reference.safetensors")).unwrap();
    assert_holds(&f, &reference, "");
    // Its `.metadata` opens it too; a shard alone is named as such.
    let by_metadata = WeightFile::open(checkpoint("dcp_sharded/.metadata")).unwrap();
    assert_eq!(by_metadata.tensors().len(), f.tensors().len());
    let e = WeightFile::open(checkpoint("dcp_sharded/__1_0.distcp"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("open the folder"), "{e}");
}

#[test]
fn a_distributed_checkpoint_of_a_pickled_state_dict_reads_its_tensors() {
    // Saved with flatten_state_dict=False: `model` is one pickled item (torch.save of the whole
    // dict), `step` another without tensors, `deep` one our reader refuses.
    let f = WeightFile::open(checkpoint("dcp_unflattened")).unwrap();
    assert_eq!(f.format(), Format::DistributedCheckpoint);
    let reference = WeightFile::open(checkpoint("dcp_sharded_reference.safetensors")).unwrap();
    assert_holds(&f, &reference, "");
    // An item our reader refuses (a list nested 300 deep) is skipped, and named.
    let note = f.unread_note().unwrap();
    assert!(
        note.contains("`deep`") && note.contains("deeper than"),
        "{note}"
    );
    // A key inside the item keeps what is under it.
    let rnn = WeightFile::open_with_key(checkpoint("dcp_unflattened"), Some("model.rnn")).unwrap();
    assert_eq!(rnn.tensors().len(), 16);
    // The item's bytes past the end of a truncated shard are named.
    let dir = tempfile::tempdir().unwrap();
    let src = checkpoint("dcp_unflattened");
    std::fs::copy(src.join(".metadata"), dir.path().join(".metadata")).unwrap();
    let shard = std::fs::read(src.join("__0_0.distcp")).unwrap();
    std::fs::write(dir.path().join("__0_0.distcp"), &shard[..shard.len() / 2]).unwrap();
    let e = WeightFile::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("its pickled item is bytes"), "{e}");
}

#[test]
fn altered_distributed_checkpoints_are_refused_by_name() {
    // models/checkpoints/dcp_hostile/NAME.metadata beside the real shards.
    let cases = [
        ("past", "reaches past its size"),
        ("overlap", "overlaps another"),
        ("missing", "some are missing"),
        ("outside", "names the shard file"),
        ("past_shard", "a truncated or lying checkpoint"),
        ("other_tensor", "holds F32 [11], not F32 [11, 4]"),
        ("shared_bytes", "two chunks in overlapping bytes"),
        ("huge", "needs more bytes than its chunks hold"),
    ];
    for (name, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        for shard in ["__0_0.distcp", "__1_0.distcp"] {
            std::fs::copy(
                checkpoint("dcp_sharded").join(shard),
                dir.path().join(shard),
            )
            .unwrap();
        }
        let altered = checkpoint("dcp_hostile").join(format!("{name}.metadata"));
        std::fs::copy(altered, dir.path().join(".metadata")).unwrap();
        let e = WeightFile::open(dir.path())
            .and_then(|f| f.load("model.rnn.weight_ih_l0", &Device::Cpu))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{name}: {e}");
    }
}

#[test]
fn hugging_face_folders_and_indexes_load_tensor_for_tensor() {
    // One model saved by save_torch_state_dict as safetensors shards and as torch.save shards,
    // and by safetensors.torch.save_model as one file (scripts/make_sharded_fixtures.py).
    let single = WeightFile::open(checkpoint("hf_single")).unwrap();
    assert_eq!(single.format(), Format::Safetensors);
    let expected: Modules = vec![
        ("body.rnn".into(), ModuleKind::Gru),
        ("cell".into(), ModuleKind::GruCell),
        ("cell_tied".into(), ModuleKind::GruCell),
        ("tied".into(), ModuleKind::Gru),
    ];
    assert_eq!(modules(&single), expected);
    for path in [
        "hf_sharded",
        "hf_sharded/model.safetensors.index.json",
        "hf_sharded_bin",
        "hf_sharded_bin/pytorch_model.bin.index.json",
    ] {
        let f = WeightFile::open(checkpoint(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(f.format(), Format::Sharded, "{path}");
        assert_eq!(f.files().len(), 13, "{path}");
        assert_eq!(modules(&f), expected, "{path}");
        assert_eq!(f.tensors().len(), single.tensors().len(), "{path}");
        for t in single.tensors() {
            let a = single.load(&t.name, &Device::Cpu).unwrap();
            let b = f
                .load(&t.name, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{path}: {}: {e}", t.name));
            assert_eq!(a.dims(), b.dims(), "{path}: {}", t.name);
            assert_eq!(max_diff(&a, &b), 0.0, "{path}: {}", t.name);
        }
    }
    // Tied copies safetensors dropped are named by the metadata, and read from the kept tensor;
    // torch.save shards keep them.
    let sharded = WeightFile::open(checkpoint("hf_sharded")).unwrap();
    for f in [&single, &sharded] {
        assert_eq!(
            f.shared_with("tied.weight_hh_l1"),
            Some("body.rnn.weight_hh_l1")
        );
        assert_eq!(f.shared_with("body.rnn.weight_hh_l1"), None);
        assert!(f.computed_from("cell_tied.weight_hh").is_some());
        // The tied cell's weight is computed from dropped names: their kept tensors are its
        // sources too, and not reported as other tensors.
        let sources = f.sources_of("cell_tied.weight_hh");
        assert!(
            sources.contains(&"cell.parametrizations.weight_hh.original1"),
            "{sources:?}"
        );
        let (_, tied) = f.gru_cell(Some("cell_tied"), None, &Device::Cpu).unwrap();
        let (_, cell) = f.gru_cell(Some("cell"), None, &Device::Cpu).unwrap();
        assert_eq!(tied.other_tensors, cell.other_tensors);
    }
    let bin = WeightFile::open(checkpoint("hf_sharded_bin")).unwrap();
    assert_eq!(bin.shared_with("tied.weight_hh_l1"), None);
}

#[test]
fn a_folder_opens_the_file_from_pretrained_would() {
    let put = |dir: &std::path::Path, name: &str, from: &str| {
        std::fs::copy(checkpoint(from), dir.join(name)).unwrap();
    };
    // transformers' order: one safetensors file before an index, safetensors before torch.save;
    // another framework's index is not ours.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(
        d,
        "tf_model.h5.index.json",
        "hf_sharded/model.safetensors.index.json",
    );
    put(d, "pytorch_model.bin", "zip_flat.pt");
    assert_eq!(WeightFile::open(d).unwrap().format(), Format::PyTorch);
    put(
        d,
        "pytorch_model.bin.index.json",
        "hf_sharded_bin/pytorch_model.bin.index.json",
    );
    put(d, "model.safetensors", "hf_single/model.safetensors");
    let f = WeightFile::open(d).unwrap();
    assert_eq!(f.format(), Format::Safetensors);
    assert_eq!(f.path(), d.join("model.safetensors"));
    // A variant alone is the folder's one safetensors file; a variant's index, its one index.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "model.fp16.safetensors", "hf_single/model.safetensors");
    assert_eq!(WeightFile::open(d).unwrap().format(), Format::Safetensors);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for e in std::fs::read_dir(checkpoint("hf_sharded")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    std::fs::rename(
        d.join("model.safetensors.index.json"),
        d.join("model.safetensors.index.fp16.json"),
    )
    .unwrap();
    assert_eq!(WeightFile::open(d).unwrap().format(), Format::Sharded);
}

#[cfg(unix)]
#[test]
fn the_hugging_face_cache_layout_of_links_loads_and_links_open_a_shard_once() {
    use std::os::unix::fs::symlink;
    // models--org--name/snapshots/REV/FILE -> ../../blobs/HASH, as huggingface_hub downloads.
    let cache = tempfile::tempdir().unwrap();
    let blobs = cache.path().join("blobs");
    let snapshot = cache.path().join("snapshots/0123abc");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, e) in std::fs::read_dir(checkpoint("hf_sharded"))
        .unwrap()
        .enumerate()
    {
        let e = e.unwrap();
        std::fs::copy(e.path(), blobs.join(format!("blob{i}"))).unwrap();
        symlink(format!("../../blobs/blob{i}"), snapshot.join(e.file_name())).unwrap();
    }
    let f = WeightFile::open(&snapshot).unwrap();
    assert_eq!(f.format(), Format::Sharded);
    let reference = WeightFile::open(checkpoint("hf_single")).unwrap();
    let a = f.load("tied.weight_ih_l1", &Device::Cpu).unwrap();
    let b = reference.load("tied.weight_ih_l1", &Device::Cpu).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);

    // One shard spelled two ways (through a link to its folder) is one file: its tensors the
    // index does not map are not held by "two shards".
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shard = "model-00001-of-00013.safetensors";
    std::fs::copy(checkpoint("hf_sharded").join(shard), d.join(shard)).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::copy(
        checkpoint("hf_sharded").join("model-00002-of-00013.safetensors"),
        d.join("sub/other.safetensors"),
    )
    .unwrap();
    symlink(".", d.join("same")).unwrap();
    let index = format!(
        r#"{{"weight_map": {{"proj.weight": "{shard}", "proj.bias": "same/same/{shard}",
            "body.rnn.weight_hh_l0": "sub/other.safetensors"}}}}"#
    );
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    let f = WeightFile::open(d).unwrap();
    // Mapped, unmapped in the linked shard, and in a subfolder's shard.
    for name in [
        "proj.bias",
        "body.rnn.weight_ih_l0",
        "body.rnn.weight_hh_l0",
    ] {
        let a = f.load(name, &Device::Cpu).unwrap();
        let b = reference.load(name, &Device::Cpu).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0, "{name}");
    }
}

#[test]
fn tied_names_from_metadata_are_bounded_and_only_for_the_same_parameter() {
    use safetensors::tensor::{Dtype, TensorView};
    // One f32 tensor of rank 100,000 and 35,000 metadata entries naming copies of it: listed
    // copies copy its shape, within what the file's size justifies.
    let rank = 100_000;
    let data = 1.5f32.to_le_bytes();
    let view = TensorView::new(Dtype::F32, vec![1usize; rank], &data).unwrap();
    let mut meta = std::collections::HashMap::new();
    for i in 0..35_000 {
        meta.insert(format!("a{i}.t"), "t".to_string());
    }
    // A view under another name (`b = a[:3]`) is recorded as a copy too; it is not taken.
    meta.insert("b".into(), "t".into());
    let bytes = safetensors::serialize([("t", view)], Some(meta)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ties.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let start = std::time::Instant::now();
    let f = WeightFile::open(&path).unwrap();
    assert!(start.elapsed().as_secs() < 10);
    let listed = f.tensors().len();
    let budget = bytes.len() + (1 << 20);
    assert!(listed > 1 && (listed - 1) * 8 * rank <= budget, "{listed}");
    assert!(f.info("b").is_none());
    assert_eq!(f.shared_with("a0.t"), Some("t"));
}

#[test]
fn altered_sharded_indexes_are_refused_by_name() {
    let shards = checkpoint("hf_sharded");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(shards.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let first = "model-00001-of-00013.safetensors";
    let mapped = |name: &str, file: &str| {
        let mut v = index.clone();
        v["weight_map"][name] = file.into();
        v.to_string()
    };
    let w = "body.rnn.weight_hh_l1";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "parent",
            mapped(w, "../model-00001-of-00013.safetensors"),
            "leaves the folder",
        ),
        (
            "absolute",
            mapped(w, "/etc/hostname"),
            "is an absolute path",
        ),
        ("windows", mapped(w, "C:\\x.safetensors"), "has a `\\`"),
        (
            "absent",
            mapped(w, "model-00099-of-00013.safetensors"),
            "model-00099-of-00013",
        ),
        ("wrong shard", mapped(w, first), "which does not hold it"),
        (
            "itself",
            mapped(w, "model.safetensors.index.json"),
            "not a shard holding tensors",
        ),
        ("a folder", mapped(w, "."), "names no file"),
        ("empty map", r#"{"weight_map": {}}"#.into(), "is empty"),
        (
            "not JSON",
            "{ weight_map".into(),
            "not a sharded checkpoint index",
        ),
        (
            "no map",
            r#"{"metadata": {}}"#.into(),
            "not a sharded checkpoint index",
        ),
        (
            "numbers",
            r#"{"weight_map": {"a": 1}}"#.into(),
            "not a sharded checkpoint index",
        ),
        (
            "deep",
            format!(
                "{{\"weight_map\": {{\"a\": \"x\"}}, \"metadata\": {{\"a\": {}",
                "[".repeat(100_000)
            ),
            "recursion limit",
        ),
        (
            "metadata not an object",
            mapped(w, first).replacen("\"metadata\"", "\"metadata\": 3, \"m\"", 1),
            "which does not hold it",
        ),
        (
            "huge",
            format!(
                "{{\"weight_map\": {{}}, \"x\": \"{}\"}}",
                "x".repeat(17 << 20)
            ),
            "cap",
        ),
    ];
    for (what, text, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&shards).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        std::fs::write(dir.path().join("model.safetensors.index.json"), text).unwrap();
        let e = WeightFile::open(dir.path())
            .and_then(|f| f.load(w, &Device::Cpu))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{what}: {e}");
    }

    // A tensor the index does not map, held by two shards, is ambiguous when loaded.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shards.join(first), dir.path().join("a.safetensors")).unwrap();
    std::fs::copy(shards.join(first), dir.path().join("b.safetensors")).unwrap();
    let index = r#"{"weight_map": {"proj.weight": "a.safetensors", "proj.bias": "b.safetensors"}}"#;
    std::fs::write(dir.path().join("x.index.json"), index).unwrap();
    let f = WeightFile::open(dir.path().join("x.index.json")).unwrap();
    assert!(f.load("proj.weight", &Device::Cpu).is_ok());
    let e = f
        .load("body.rnn.weight_ih_l0", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing to guess"), "{e}");

    // A folder with two indexes, or none of what save_pretrained writes, names what it found.
    std::fs::write(dir.path().join("y.safetensors.index.json"), index).unwrap();
    std::fs::write(dir.path().join("z.safetensors.index.json"), index).unwrap();
    let e = WeightFile::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("2 indexes"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = WeightFile::open(empty.path()).unwrap_err().to_string();
    assert!(e.contains("neither a torch.distributed.checkpoint"), "{e}");
}

/// A safetensors file's bytes with its `__metadata__`'s `DCP_SHARDING_INFO` (JSON) changed.
fn with_sharding_info(bytes: &[u8], change: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let info = header["__metadata__"]["DCP_SHARDING_INFO"]
        .as_str()
        .unwrap();
    let mut info: serde_json::Value = serde_json::from_str(info).unwrap();
    change(&mut info);
    header["__metadata__"]["DCP_SHARDING_INFO"] = info.to_string().into();
    let header = header.to_string().into_bytes();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn a_distributed_checkpoint_in_safetensors_assembles_tensor_for_tensor() {
    // Two ranks' HuggingFaceStorageWriter files: chunks by rows (11 + 10), and by columns for
    // proj.weight, against the whole state dict PyTorch saved.
    let f = WeightFile::open(checkpoint("dcp_safetensors")).unwrap();
    assert_eq!(f.format(), Format::Sharded);
    assert_eq!(f.files().len(), 2);
    let reference = WeightFile::open(checkpoint("dcp_sharded_reference.safetensors")).unwrap();
    assert_holds(&f, &reference, "model.");
    let rank0 = "shard-00001-model-00001-of-00001.safetensors";
    let rank1 = "shard-00002-model-00001-of-00001.safetensors";
    // One rank's file is refused: beside the other, and alone (its chunks start past 0).
    let e = WeightFile::open(checkpoint("dcp_safetensors").join(rank0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pass the folder"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        checkpoint("dcp_safetensors").join(rank1),
        dir.path().join(rank1),
    )
    .unwrap();
    let e = WeightFile::open(dir.path().join(rank1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("whose other chunks are not beside"), "{e}");

    // One process's writer (whole tensors split over two files by fqn_to_index_mapping, an
    // index beside them): the folder, and each file alone, read as whole tensors.
    let whole_dir = checkpoint("dcp_safetensors_whole");
    let mut seen = 0;
    for path in [
        whole_dir.clone(),
        whole_dir.join("model-00001-of-00002.safetensors"),
        whole_dir.join("model-00002-of-00002.safetensors"),
    ] {
        let g = WeightFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for t in g.tensors() {
            let a = g.load(&t.name, &Device::Cpu).unwrap();
            let b = reference
                .load(&format!("model.{}", t.name), &Device::Cpu)
                .unwrap();
            assert_eq!(max_diff(&a, &b), 0.0, "{}", t.name);
            seen += 1;
        }
    }
    assert_eq!(seen, 2 * reference.tensors().len());

    // A whole tensor beside its chunks is not guessed between.
    let dir = tempfile::tempdir().unwrap();
    for r in [rank0, rank1] {
        std::fs::copy(checkpoint("dcp_safetensors").join(r), dir.path().join(r)).unwrap();
    }
    let whole = reference
        .load("model.rnn.bias_hh_l0", &Device::Cpu)
        .unwrap();
    let plain = dir.path().join("plain.safetensors");
    candle_core::safetensors::save(&[("rnn.bias_hh_l0", whole)].into_iter().collect(), &plain)
        .unwrap();
    let f = WeightFile::open(dir.path()).unwrap();
    let e = f
        .load("rnn.bias_hh_l0", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing to guess"), "{e}");
    assert!(f.load("rnn.bias_ih_l0", &Device::Cpu).is_ok());

    // Altered offsets are refused by name.
    let w = "rnn.weight_ih_l0"; // 21 x 4: rows 0-10 in rank 0's file, 11-20 in rank 1's
    type Alter = fn(&mut serde_json::Value);
    let cases: [(&str, Alter, &str); 5] = [
        (
            "overlap",
            |i| i["rnn.weight_ih_l0"]["saved_offsets"] = serde_json::json!([10, 0]),
            "missing or repeated",
        ),
        (
            "gap",
            |i| i["rnn.weight_ih_l0"]["saved_offsets"] = serde_json::json!([12, 0]),
            "missing or repeated",
        ),
        (
            "rank",
            |i| i["rnn.weight_ih_l0"]["saved_offsets"] = serde_json::json!([11]),
            "no `saved_offsets` of rank 2",
        ),
        (
            "absent",
            |i| {
                i.as_object_mut().unwrap().remove("rnn.weight_ih_l0");
            },
            "no `saved_offsets` of rank 2 for `rnn.weight_ih_l0`",
        ),
        (
            "overflow",
            |i| {
                i["rnn.weight_ih_l0"]["saved_offsets"] = serde_json::json!([u64::MAX, 0]);
            },
            "rnn.weight_ih_l0",
        ),
    ];
    for (what, change, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            checkpoint("dcp_safetensors").join(rank0),
            dir.path().join(rank0),
        )
        .unwrap();
        let bytes = std::fs::read(checkpoint("dcp_safetensors").join(rank1)).unwrap();
        std::fs::write(dir.path().join(rank1), with_sharding_info(&bytes, change)).unwrap();
        let e = WeightFile::open(dir.path())
            .and_then(|f| f.load(w, &Device::Cpu))
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{what}: {e}");
    }
}

/// A top-level GRU at `rnn` and another inside the state dict `model` (`model.rnn`): `rnn` is
/// both one's full path and the other's path inside its state dict, so it is refused with both
/// paths; `.rnn` names the top-level one, `model.rnn` the nested one.
#[test]
fn a_prefix_matching_a_top_level_and_a_nested_gru_is_refused() {
    let f = WeightFile::open(checkpoint("two_rnn_paths.pt")).unwrap();
    let e = f
        .gru(Some("rnn"), None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 GRUs at \"rnn\"")
            && e.contains("`.rnn` (from the file's root)")
            && e.contains("`model.rnn`"),
        "{e}"
    );
    let w = |prefix: &str| {
        let (gru, _) = f.gru(Some(prefix), None, &Device::Cpu).unwrap();
        let (_, t) = gru
            .named_tensors()
            .into_iter()
            .find(|(n, _)| n == "weight_ih_l0")
            .unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let load = |name: &str| {
        f.load(name, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(".rnn"), load("rnn.weight_ih_l0"));
    assert_eq!(w("model.rnn"), load("model.rnn.weight_ih_l0"));
    assert_ne!(w(".rnn"), w("model.rnn"));
}
