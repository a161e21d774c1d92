//! Dynamically quantized GRUs (`quantize_dynamic`, int8 and float16): the reference cases of
//! `models/quantized` (PyTorch's own quantized forward; `scripts/export_quantized.py`), in each
//! container they are saved in, and hostile packed parameters refused by name.

#[path = "common/folder_cases.rs"]
mod folder_cases;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::Device;
use gru_weights::WeightFile;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn quantized(name: &str) -> PathBuf {
    root().join("models/quantized").join(name)
}

#[test]
fn every_quantized_case_passes() {
    let n = folder_cases::assert_folder_passes(&root().join("models/quantized"));
    assert!(n >= 12, "{n} cases");
}

#[test]
fn each_container_reads_the_same_kind_of_gru() {
    for (file, kind, bi, layers) in [
        (
            "int8_tensor_l1.pt",
            "qint8 per-tensor, reduce_range",
            false,
            1,
        ),
        (
            "int8_channel_l2_bi.pt",
            "qint8 per-channel, reduce_range",
            true,
            2,
        ), // whole model
        (
            "int8_tensor_l3_h0_bf.pt",
            "qint8 per-tensor, reduce_range",
            false,
            3,
        ), // TorchScript
        ("fp16_l2.pt", "float16", false, 2),
    ] {
        let f = WeightFile::open(quantized(file)).unwrap();
        let (g, report) = f.gru(Some("rnn"), None, &Device::Cpu).unwrap();
        assert_eq!(report.quantized.as_deref(), Some(kind), "{file}");
        assert_eq!(
            (g.config().bidirectional, g.config().num_layers),
            (bi, layers),
            "{file}"
        );
        assert!(report.unused_under_prefix.is_empty(), "{file}: {report}");
    }
}

#[test]
fn quantized_gru_cells_load_as_cells() {
    for (file, kind) in [
        ("cell_int8_tensor.pt", "qint8 per-tensor, reduce_range"),
        ("cell_int8_channel_ts.pt", "qint8 per-channel, reduce_range"), // TorchScript
        ("cell_fp16_whole.pt", "float16"),                              // whole model
    ] {
        let f = WeightFile::open(quantized(file)).unwrap();
        let (cell, report) = f.gru_cell(Some("cell"), None, &Device::Cpu).unwrap();
        assert_eq!(report.quantized.as_deref(), Some(kind), "{file}");
        assert!(cell.quantized().is_some());
        // Not a GRU, and not a float cell either.
        let e = f
            .gru(Some("cell"), None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = gru_weights::save_gru_cell(&cell, "cell", dir.path().join("c.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("quantized"), "{e}");
    }
}

/// The members of a zip archive, in order.
fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).unwrap();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (e.name().unwrap().to_string(), b)
        })
        .collect()
}

fn write_zip(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file(name.as_str(), opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

/// `file` with `data.pkl`'s first occurrence of `from` (after `after`) replaced by `to`.
fn patched(dir: &Path, file: &str, after: &[u8], from: &[u8], to: &[u8]) -> PathBuf {
    let mut m = members(&quantized(file));
    let pkl = m
        .iter_mut()
        .find(|(n, _)| n.ends_with("/data.pkl"))
        .expect("data.pkl");
    let start = find(&pkl.1, after, 0).expect("anchor") + after.len();
    let at = find(&pkl.1, from, start).expect("pattern");
    pkl.1.splice(at..at + from.len(), to.iter().copied());
    let out = dir.join(format!(
        "{}.pt",
        to.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    write_zip(&out, &m);
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from);
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn error(path: &Path) -> String {
    match WeightFile::open(path) {
        Err(e) => e.to_string(),
        Ok(f) => match f.gru(Some("rnn"), None, &Device::Cpu) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} loaded", path.display()),
        },
    }
}

#[test]
fn hostile_packed_parameters_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The weight's scale: `per_tensor_affine` then BINFLOAT (8 bytes, big-endian).
    let anchor = b"per_tensor_affine";
    let file = "int8_tensor_l1.pt";
    let m = members(&quantized(file));
    let pkl = &m.iter().find(|(n, _)| n.ends_with("/data.pkl")).unwrap().1;
    let g = find(pkl, b"G", find(pkl, anchor, 0).unwrap()).unwrap();
    let scale = pkl[g..g + 9].to_vec();
    for (bad, what) in [
        (0.0f64, "scale 0"),
        (f64::NAN, "scale NaN"),
        (f64::INFINITY, "scale inf"),
        (-0.01, "scale -0.01"),
    ] {
        let mut to = b"G".to_vec();
        to.extend_from_slice(&bad.to_be_bytes());
        let e = error(&patched(d, file, anchor, &scale, &to));
        assert!(
            e.contains(what) && e.contains("weight_ih_l0") && !e.contains('\n'),
            "{what}: {e}"
        );
    }
    // Its zero point: BININT1 0 after the scale -> 200, and a BININT -70000.
    let mut zp = scale.clone();
    zp.extend_from_slice(b"K\x00");
    for (to, what) in [
        (b"K\xc8".to_vec(), "zero point 200"),
        (
            [b"J".as_slice(), &(-70000i32).to_le_bytes()].concat(),
            "zero point -70000",
        ),
    ] {
        let mut with = scale.clone();
        with.extend_from_slice(&to);
        let e = error(&patched(d, file, anchor, &zp, &with));
        assert!(e.contains(what) && !e.contains('\n'), "{what}: {e}");
    }
    // A weight that lies about its shape: (48, 8) -> (48, 9) over the same 384 bytes.
    let e = error(&patched(
        d,
        file,
        b"QInt8Storage",
        b"K0K\x08\x86",
        b"K0K\x09\x86",
    ));
    assert!(!e.contains('\n') && e.contains("weight"), "{e}");
    // Per-channel scales of the wrong length: the first scales tensor (96,) said to be (95,).
    let e = error(&patched(
        d,
        "int8_channel_varlen_bi.pt",
        b"DoubleStorage",
        b"K`\x85",
        b"K_\x85",
    ));
    assert!(
        e.contains("95 scales") && !e.contains('\n'),
        "wrong per-channel length: {e}"
    );
    // A cell kind that is not dynamic quantization.
    let e = error(&patched(
        d,
        file,
        b"",
        b"quantized_dynamic",
        b"quantized_dynamiX",
    ));
    assert!(e.contains("quantized_dynamiX") && !e.contains('\n'), "{e}");
}
