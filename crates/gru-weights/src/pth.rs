//! PyTorch zip checkpoints (`torch.save`, torch >= 1.6) read without Python, on candle's pickle
//! reader: a plain state_dict, or a state_dict nested in a training checkpoint dict.

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::Tensor;

use crate::error::{Result, WeightsError};

/// Keys under which training checkpoints commonly keep the model's state_dict, in the order
/// they are tried when no key is given.
const STATE_DICT_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "model_state",
    "net",
    "module",
    "network",
];

#[derive(Debug, Clone)]
pub(crate) struct PthTensor {
    pub info: TensorInfo,
}

/// The checkpoint's zip archive over the memory-mapped file: its directory is parsed once, and
/// every tensor is read from the mapping.
pub(crate) type Archive = zip::ZipArchive<Cursor<SharedMap>>;

/// A cheaply clonable handle on the mapping, so that each read gets its own cursor.
#[derive(Clone)]
pub(crate) struct SharedMap(std::sync::Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn open_zip(path: &Path, mmap: memmap2::Mmap) -> Result<Archive> {
    zip::ZipArchive::new(Cursor::new(SharedMap(std::sync::Arc::new(mmap))))
        .map_err(|e| WeightsError::format(path, "not a readable PyTorch zip file", e))
}

/// Reads `data.pkl` and finds the state_dict: the top-level dict if it holds tensors, else the
/// entry `key`, else the first of `STATE_DICT_KEYS` present, else the first nested dict of tensors.
/// Returns the tensors, the key they were found under, and the archive to read them from.
pub(crate) fn read_state_dict(
    path: &Path,
    mmap: memmap2::Mmap,
    key: Option<&str>,
) -> Result<(HashMap<String, PthTensor>, Option<String>, Archive)> {
    let mut zip = open_zip(path, mmap)?;
    let pkl = zip
        .file_names()
        .filter_map(|f| f.ok().map(|f| f.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| {
            WeightsError::file(path, "zip file without data.pkl: not a PyTorch checkpoint")
        })?;
    let dir = pkl.strip_suffix(".pkl").unwrap_or(&pkl).to_string();
    let obj = {
        let reader = zip
            .by_name(&pkl)
            .map_err(|e| WeightsError::format(path, format!("cannot read {pkl}"), e))?;
        let mut reader = BufReader::new(reader);
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut stack = Stack::empty();
            stack.read_loop(&mut reader)?;
            stack.finalize()
        }));
        match parsed {
            Ok(Ok(obj)) => obj,
            Ok(Err(e)) => {
                return Err(WeightsError::file(
                    path,
                    format!("cannot unpickle {pkl}: {e}"),
                ))
            }
            Err(_) => {
                return Err(WeightsError::file(
                    path,
                    format!("malformed pickle in {pkl}"),
                ))
            }
        }
    };
    if let Some(class) = pickled_module_class(&obj) {
        return Err(WeightsError::file(
            path,
            format!(
                "holds a whole pickled module ({class}), which needs your Python classes to load; \
                 save its weights instead: torch.save(model.state_dict(), path) or \
                 safetensors.torch.save_file(model.state_dict(), path)"
            ),
        ));
    }
    let Object::Dict(entries) = obj else {
        return Err(WeightsError::file(
            path,
            "data.pkl does not hold a dict (state_dict or checkpoint)",
        ));
    };
    let dir = Path::new(&dir);
    if let Some(key) = key {
        let value = entries
            .into_iter()
            .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| WeightsError::file(path, format!("checkpoint has no key `{key}`")))?;
        let tensors = tensors_of(value, dir);
        if tensors.is_empty() {
            return Err(WeightsError::file(
                path,
                format!("checkpoint key `{key}` holds no tensors"),
            ));
        }
        return Ok((tensors, Some(key.to_string()), zip));
    }
    let top = tensors_of(Object::Dict(entries.clone()), dir);
    if !top.is_empty() {
        return Ok((top, None, zip));
    }
    let mut nested: Vec<(String, Object)> = entries
        .into_iter()
        .filter_map(|(k, v)| match (k, &v) {
            (Object::Unicode(k), Object::Dict(_)) => Some((k, v)),
            _ => None,
        })
        .collect();
    nested.sort_by_key(|(k, _)| {
        STATE_DICT_KEYS
            .iter()
            .position(|c| c == k)
            .unwrap_or(STATE_DICT_KEYS.len())
    });
    for (k, v) in nested {
        let tensors = tensors_of(v, dir);
        if !tensors.is_empty() {
            return Ok((tensors, Some(k), zip));
        }
    }
    Err(WeightsError::file(
        path,
        "found no dict of tensors (state_dict) in the checkpoint",
    ))
}

/// The tensors directly inside a dict object.
fn tensors_of(obj: Object, dir: &Path) -> HashMap<String, PthTensor> {
    let Object::Dict(entries) = obj else {
        return HashMap::new();
    };
    entries
        .into_iter()
        .filter(|(_, v)| well_formed(v))
        .filter_map(|(k, v)| {
            // Defence in depth: candle's reader indexes into the pickle's tuples.
            let info = std::panic::catch_unwind(|| v.into_tensor_info(k, dir)).ok()?;
            match info {
                Ok(Some(info)) => Some((info.name.clone(), PthTensor { info })),
                _ => None,
            }
        })
        .collect()
}

/// Whether a tensor entry has the tuple sizes that candle's `into_tensor_info` indexes into
/// (it panics on shorter ones, which a corrupted file can hold). Entries that are not tensors
/// pass: `into_tensor_info` skips them without indexing.
fn well_formed(v: &Object) -> bool {
    let class = |o: &Object, module: &str, name: &str| matches!(o, Object::Class { module_name, class_name } if module_name == module && class_name == name);
    let Object::Reduce { callable, args } = v else {
        return true;
    };
    let (callable, args): (&Object, &Object) =
        if class(callable, "torch._tensor", "_rebuild_from_type_v2") {
            match args.as_ref() {
                Object::Tuple(a) if a.len() >= 3 => (&a[0], &a[2]),
                Object::Tuple(_) => return false,
                _ => return true,
            }
        } else if class(callable, "torch._utils", "_rebuild_parameter") {
            match args.as_ref() {
                Object::Tuple(a) if !a.is_empty() => match &a[0] {
                    Object::Reduce { callable, args } => (callable.as_ref(), args.as_ref()),
                    _ => return true,
                },
                Object::Tuple(_) => return false,
                _ => return true,
            }
        } else {
            (callable.as_ref(), args.as_ref())
        };
    if !class(callable, "torch._utils", "_rebuild_tensor_v2") {
        return true;
    }
    match args {
        Object::Tuple(a) if a.len() >= 4 => match &a[0] {
            Object::PersistentLoad(p) => !matches!(p.as_ref(), Object::Tuple(s) if s.len() < 5),
            _ => true,
        },
        Object::Tuple(_) => false,
        _ => true,
    }
}

/// `Some("module.Class")` when the pickle is an object of a user class (a whole `nn.Module`).
fn pickled_module_class(obj: &Object) -> Option<String> {
    let callable = match obj {
        Object::Build { callable, .. } => callable.as_ref(),
        Object::Reduce { .. } => obj,
        _ => return None,
    };
    let class = match callable {
        Object::Reduce { callable, .. } => callable.as_ref(),
        other => other,
    };
    match class {
        Object::Class {
            module_name,
            class_name,
        } if module_name != "collections" => Some(format!("{module_name}.{class_name}")),
        _ => None,
    }
}

/// Reads one tensor's data from the zip (contiguous or Fortran-contiguous layouts).
pub(crate) fn load_tensor(path: &Path, archive: &Archive, t: &PthTensor) -> Result<Tensor> {
    let info = &t.info;
    let bad = |reason: String| WeightsError::Tensor {
        name: info.name.clone(),
        reason: format!("{reason} (in {})", path.display()),
    };
    // A clone shares the parsed directory and the mapping; it only has its own read position.
    let mut zip = archive.clone();
    let mut reader = zip
        .by_name(&info.path)
        .map_err(|e| bad(format!("storage {} unreadable: {e}", info.path)))?;
    let layout = &info.layout;
    let fortran = layout.is_fortran_contiguous();
    if !layout.is_contiguous() && !fortran {
        return Err(bad("non-contiguous storage layout is not supported".into()));
    }
    let skip = layout.start_offset() as u64;
    if skip > 0 {
        std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink())
            .map_err(|e| bad(format!("cannot seek in storage: {e}")))?;
    }
    let n_bytes = layout
        .shape()
        .elem_count()
        .checked_mul(info.dtype.size_in_bytes())
        .ok_or_else(|| bad("tensor size overflows".into()))?;
    let mut bytes = Vec::with_capacity(n_bytes.min(1 << 30));
    reader
        .take(n_bytes as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read data: {e}")))?;
    if bytes.len() != n_bytes {
        return Err(bad(format!(
            "storage holds {} bytes, the tensor needs {n_bytes}: truncated file",
            bytes.len()
        )));
    }
    let tensor =
        Tensor::from_raw_buffer(&bytes, info.dtype, layout.dims(), &candle_core::Device::Cpu)?;
    let rank = layout.dims().len();
    if rank > 1 && fortran && !layout.is_contiguous() {
        let rev: Vec<usize> = layout.dims().iter().rev().copied().collect();
        let perm: Vec<usize> = (0..rank).rev().collect();
        return Ok(tensor.reshape(rev)?.permute(perm)?.contiguous()?);
    }
    Ok(tensor)
}
