//! `torch.export.save` archives (the PT2 archive format, `.pt2`): a zip with `archive_format`
//! = `pt2`, whose weights are raw storage files under `data/weights/`, described by one JSON
//! config per exported program (`data/weights/{model}_weights_config.json`: for each parameter or
//! buffer by its module path, the storage file, dtype, sizes, strides and storage offset). No
//! pickle is involved. The graph (`models/{model}.json`) is read only for the module paths that show
//! a chained parametrization; when it cannot be read, no reparametrized weight is computed.
//!
//! A program named `model` (what `torch.export.save` writes) is the top-level state dict; others
//! (`package_pt2` of several programs) are state dicts under their names. Weights pickled in the
//! archive (`use_pickle`: tensor subclasses) are not listed. Older archives, whose weights are a
//! `torch.save` file inside them, are read by `zip` as that file.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::DType;
use serde::Deserialize;

use super::checkpoint::Archive;
use crate::error::{Result, WeightsError};
use crate::pickle::torch::{Found, StorageRef, TensorRef, MAX_NAME_LEN, MAX_TENSORS};

/// Most bytes of weights configs and graphs read in all (a model of 10,000 tensors needs a few
/// MB of config, a large graph tens of MB).
const MAX_JSON_BYTES: u64 = 256 << 20;

/// The parts of a program's graph (`models/{model}.json`) read: the module path of every module
/// the program calls, which lists a parametrization without tensors too.
#[derive(Deserialize)]
struct Graph {
    graph_module: GraphModule,
}

#[derive(Deserialize)]
struct GraphModule {
    module_call_graph: Vec<ModuleCall>,
}

#[derive(Deserialize)]
struct ModuleCall {
    fqn: String,
}

/// The parametrization lists that hold a second parametrization (`cell.parametrizations.w`),
/// from a program's graph JSON, under the program's state dict `state_dict`; `None` when the
/// graph cannot be read (then no reparametrized weight of the archive is computed).
pub(crate) fn graph_chains(json: &[u8], state_dict: &str) -> Option<Vec<String>> {
    let graph: Graph = serde_json::from_slice(json).ok()?;
    let mut chains = Vec::new();
    for call in graph.graph_module.module_call_graph {
        if let Some(list) = crate::pickle::torch::chained_list(&call.fqn) {
            chains.push(if state_dict.is_empty() {
                list.to_string()
            } else {
                format!("{state_dict}.{list}")
            });
        }
    }
    Some(chains)
}

/// The tensors of a PT2 archive and the parametrization chains its graphs show (`None`: a
/// graph could not be read).
pub(crate) type Read = (Vec<Found>, Option<Vec<String>>);

#[derive(Deserialize)]
struct PayloadConfig {
    config: BTreeMap<String, PayloadMeta>,
}

#[derive(Deserialize)]
struct PayloadMeta {
    path_name: String,
    #[serde(default)]
    use_pickle: bool,
    tensor_meta: Option<TensorMeta>,
}

#[derive(Deserialize)]
struct TensorMeta {
    dtype: i64,
    sizes: Vec<SymInt>,
    strides: Vec<SymInt>,
    storage_offset: SymInt,
    #[serde(default = "strided")]
    layout: i64,
}

/// `torch._export.serde.schema.Layout.Strided`.
fn strided() -> i64 {
    7
}

/// A size of the export schema: a weight's are plain integers (`as_int`); a symbolic one
/// (`as_expr`) has no value here.
#[derive(Deserialize)]
struct SymInt {
    as_int: Option<i64>,
}

/// dtype and element size of the export schema's `ScalarType` code
/// (`torch/_export/serde/schema.py`); `None` dtype for types candle cannot hold, and size 0 for a
/// code of a newer torch (listed, never loaded).
fn scalar_type(code: i64) -> (Option<DType>, usize) {
    match code {
        1 | 12 => (Some(DType::U8), 1), // BYTE, BOOL
        2 => (None, 1),                 // CHAR (int8)
        3 => (Some(DType::I16), 2),
        4 => (Some(DType::I32), 4),
        5 => (Some(DType::I64), 8),
        6 => (Some(DType::F16), 2),
        7 => (Some(DType::F32), 4),
        8 => (Some(DType::F64), 8),
        9 => (None, 4),  // COMPLEXHALF
        10 => (None, 8), // COMPLEXFLOAT
        11 => (None, 16),
        13 => (Some(DType::BF16), 2),
        28 => (None, 2),             // UINT16
        29..=33 => (None, 1),        // FLOAT8 variants
        34 => (Some(DType::U32), 4), // UINT32
        35 => (None, 8),             // UINT64
        _ => (None, 0),
    }
}

/// The folder of a PT2 archive (`{dir}archive_format` holding `pt2`), if `names` has one.
pub(crate) fn archive_dir(names: &[String]) -> Option<String> {
    names.iter().find_map(|n| {
        let dir = n.strip_suffix("archive_format")?;
        (dir.is_empty() || dir.strip_suffix('/').is_some_and(|d| !d.contains('/')))
            .then(|| dir.to_string())
    })
}

/// The tensors of the PT2 archive in `dir`, with their storages as `weights/{path_name}` (which
/// `{dir}data/` prefixes when loaded).
pub(crate) fn tensors(
    path: &Path,
    archive: &Archive,
    names: &[String],
    dir: &str,
    read: impl Fn(&str, u64) -> Result<Vec<u8>>,
) -> Result<Read> {
    let weights = format!("{dir}data/weights/");
    let configs: Vec<(&str, &String)> = names
        .iter()
        .filter_map(|n| {
            let model = n
                .strip_prefix(&weights)?
                .strip_suffix("_weights_config.json")?;
            (!model.contains('/')).then_some((model, n))
        })
        .collect();
    if configs.is_empty() {
        return Err(WeightsError::file(
            path,
            "a torch.export (PT2) archive without weights (no data/weights/*_weights_config.json)",
        ));
    }
    let mut out = Vec::new();
    let mut chains = Some(Vec::new());
    let mut json_bytes_left = MAX_JSON_BYTES;
    for (model, config_name) in configs {
        let bytes = read(config_name, json_bytes_left)?;
        json_bytes_left -= bytes.len() as u64;
        let config: PayloadConfig = serde_json::from_slice(&bytes)
            .map_err(|e| WeightsError::format(path, format!("malformed {config_name}"), e))?;
        let state_dict = if model == "model" { "" } else { model };
        // A graph past the budget counts as unreadable: then no chain can be ruled out.
        let graph = read(&format!("{dir}models/{model}.json"), json_bytes_left).ok();
        if let Some(g) = &graph {
            json_bytes_left -= g.len() as u64;
        }
        let found = graph.and_then(|g| graph_chains(&g, state_dict));
        chains = chains.zip(found).map(|(mut a, b)| {
            a.extend(b);
            a
        });
        for (fqn, meta) in config.config {
            if meta.use_pickle {
                continue;
            }
            if out.len() >= MAX_TENSORS {
                return Err(WeightsError::file(
                    path,
                    format!("more than {MAX_TENSORS} tensors"),
                ));
            }
            let name = if state_dict.is_empty() {
                fqn
            } else {
                format!("{state_dict}.{fqn}")
            };
            if name.len() > MAX_NAME_LEN {
                return Err(WeightsError::file(
                    path,
                    format!(
                        "a tensor name of {} bytes (at most {MAX_NAME_LEN}) in {config_name}",
                        name.len()
                    ),
                ));
            }
            let tensor =
                tensor_ref(archive, &weights, &meta).map_err(|reason| WeightsError::Tensor {
                    name: name.clone(),
                    reason: format!("{reason} (in {config_name} of {})", path.display()),
                })?;
            // A sparse or other non-strided tensor is skipped, as in a torch.save file.
            let Some(tensor) = tensor else { continue };
            out.push(Found {
                name,
                state_dict: state_dict.to_string(),
                tensor,
            });
        }
    }
    if let Some(c) = chains.as_mut() {
        c.sort();
        c.dedup();
    }
    Ok((out, chains))
}

fn tensor_ref(
    archive: &Archive,
    weights: &str,
    meta: &PayloadMeta,
) -> std::result::Result<Option<TensorRef>, String> {
    let t = meta.tensor_meta.as_ref().ok_or("has no tensor_meta")?;
    if t.layout != strided() {
        return Ok(None);
    }
    if meta.path_name.contains('/') || meta.path_name.contains("..") {
        return Err(format!("names the storage file {:?}", meta.path_name));
    }
    let (dtype, elem_size) = scalar_type(t.dtype);
    let ints = |v: &[SymInt], what: &str| -> std::result::Result<Vec<u64>, String> {
        v.iter()
            .map(|s| {
                s.as_int
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| format!("has a {what} that is not a non-negative integer"))
            })
            .collect()
    };
    let shape: Vec<usize> = ints(&t.sizes, "size")?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| "has a size too large".to_string()))
        .collect::<std::result::Result<_, _>>()?;
    let stride = ints(&t.strides, "stride")?;
    if stride.len() != shape.len() {
        return Err(format!(
            "has sizes {shape:?} and strides {stride:?} of different ranks"
        ));
    }
    let offset = ints(std::slice::from_ref(&t.storage_offset), "storage offset")?[0];
    // The storage is the whole file: its element count is the entry's declared size (checked
    // against the file when it is read).
    let entry = format!("{weights}{}", meta.path_name);
    let size = archive
        .clone()
        .by_name(&entry)
        .map_err(|_| format!("names the storage file {entry}, which the archive lacks"))?
        .size();
    if elem_size > 0 && size % elem_size as u64 != 0 {
        return Err(format!(
            "has a storage file {entry} of {size} bytes, not a multiple of its {elem_size}-byte \
             elements"
        ));
    }
    let numel = if elem_size == 0 {
        0
    } else {
        size / elem_size as u64
    };
    Ok(Some(TensorRef {
        storage: StorageRef {
            key: format!("weights/{}", meta.path_name),
            dtype,
            elem_size,
            numel,
            view: None,
            view_key: None,
        },
        offset,
        shape,
        stride,
    }))
}
