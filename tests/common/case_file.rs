//! A reference case rewritten for a test: tensors replaced or removed, metadata changed, and
//! `weights` made absolute so that the copy still finds the original's weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use gru_weights::WeightFile;

/// Copies case `src` to `dst`, with `replace` (`None` removes the tensor) and `meta` applied.
pub fn rewrite_case(
    src: &Path,
    dst: &Path,
    replace: &[(&str, Option<Tensor>)],
    meta: &[(&str, &str)],
) {
    let f = WeightFile::open(src).unwrap();
    let mut m = f.metadata();
    let weights = src.parent().unwrap().join(&m["weights"]);
    m.insert(
        "weights".into(),
        weights.canonicalize().unwrap().display().to_string(),
    );
    for (k, v) in meta {
        m.insert(k.to_string(), v.to_string());
    }
    let mut tensors: HashMap<String, Tensor> = f
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), f.load(&t.name, &Device::Cpu).unwrap()))
        .collect();
    for (k, v) in replace {
        match v {
            Some(t) => tensors.insert(k.to_string(), t.clone()),
            None => tensors.remove(*k),
        };
    }
    // A candle `Tensor` is a safetensors `View`: written as it is.
    safetensors::serialize_to_file(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(m), dst)
        .unwrap();
}
