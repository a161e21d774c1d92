//! Tensors as a torch pickle describes them: `_rebuild_tensor_v2` (and the wrappers around it:
//! parameters, subclasses, device tensors) over a persistent storage id, and the table of every
//! storage the pickle names. Nothing is read here; `TensorRef`s say where the bytes are.

use std::collections::HashMap;

use candle_core::DType;

use crate::pickle::{Id, Pickle, Value};

/// A reference to (part of) a storage, as the persistent id gives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// The storage's key: `data/{key}` in a zip, a key of the storage table in a legacy file.
    pub key: String,
    /// `None` for element types candle has no dtype for (complex, int8, float8, quantized, ...):
    /// such tensors are listed, never loaded.
    pub dtype: Option<DType>,
    /// Bytes per element; 0 when the storage type is unknown.
    pub elem_size: usize,
    /// Element count the pickle declares for the storage.
    pub numel: u64,
    /// For a legacy storage view (`view_metadata`): elements before the view and its length.
    pub view: Option<(u64, u64)>,
    /// The legacy view's own key (PyTorch caches a view by it).
    pub view_key: Option<String>,
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    /// In elements, from the start of the storage.
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<u64>,
}

/// dtype and element size of a storage class (`torch.FloatStorage`, or `torch.cuda.*` in old
/// files saved on a GPU); `None` when `module.name` is not a storage class at all.
fn storage_type(module: &str, name: &str) -> Option<(Option<DType>, usize)> {
    if name == "UntypedStorage" && (module == "torch" || module == "torch.storage") {
        // Raw bytes (PyTorch reads them as uint8): sized, listed, never a weight.
        return Some((None, 1));
    }
    if module != "torch" && module != "torch.cuda" {
        return None;
    }
    let name = name.strip_suffix("Storage")?;
    Some(match name {
        "Float" => (Some(DType::F32), 4),
        "Double" => (Some(DType::F64), 8),
        "Half" => (Some(DType::F16), 2),
        "BFloat16" => (Some(DType::BF16), 2),
        "Long" => (Some(DType::I64), 8),
        "Int" => (Some(DType::I32), 4),
        "Short" => (Some(DType::I16), 2),
        "Byte" | "Bool" => (Some(DType::U8), 1),
        "Char" | "QInt8" | "QUInt8" | "QUInt4x2" | "QUInt2x4" | "Float8_e4m3fn" | "Float8_e5m2"
        | "Float8_e4m3fnuz" | "Float8_e5m2fnuz" => (None, 1),
        "UInt16" => (None, 2),
        "UInt32" | "QInt32" | "ComplexHalf" => (None, 4),
        "UInt64" | "ComplexFloat" => (None, 8),
        "ComplexDouble" => (None, 16),
        // A storage class of a newer torch: listed, never loaded; its size is unknown.
        _ => (None, 0),
    })
}

/// The storage a persistent id names: `('storage', type, key, location, numel[, view])`.
fn storage_ref(p: &Pickle, pid: Id) -> Result<StorageRef, String> {
    let t = p.seq(pid).ok_or("a storage id that is not a tuple")?;
    if t.len() < 5 || p.str(t[0]) != Some("storage") {
        return Err(format!(
            "a persistent id of {} fields, not a storage",
            t.len()
        ));
    }
    let (module, name) = p.global(t[1]).ok_or("a storage type that is not a class")?;
    let (dtype, elem_size) = storage_type(module, name)
        .ok_or_else(|| format!("{module}.{name} is not a storage type"))?;
    let key = match p.get(t[2]) {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => return Err("a storage key that is not a string".into()),
    };
    let numel = p
        .int(t[4])
        .and_then(|n| u64::try_from(n).ok())
        .ok_or("a storage size that is not a non-negative integer")?;
    let (mut view, mut view_key) = (None, None);
    if let Some(&v) = t.get(5) {
        if let Some(v) = p.seq(v) {
            view_key = v.first().and_then(|&k| match p.get(k) {
                Value::Str(s) => Some(s.clone()),
                Value::Int(i) => Some(i.to_string()),
                _ => None,
            });
            // (view_key, offset, view_size): a view into the storage `key`.
            let field = |i: usize| {
                v.get(i)
                    .and_then(|&o| p.int(o))
                    .and_then(|o| u64::try_from(o).ok())
            };
            match (field(1), field(2)) {
                (Some(offset), Some(size)) => view = Some((offset, size)),
                _ => return Err("a storage view whose offset or size is not an integer".into()),
            }
        }
    }
    Ok(StorageRef {
        key,
        dtype,
        elem_size,
        numel,
        view,
        view_key,
    })
}

/// Every storage a pickle names, as its first reference gives it (type, size), in the order
/// they are first named: a legacy file's storage record is sized by it, as PyTorch sizes it.
/// A key named again over another number of bytes, or with another element type over bytes
/// that exist (torch versions disagree on how to read that: older ones through the first
/// reference's type, newer ones each through its own; `torch.save` writes neither), or a legacy
/// view key over another range (PyTorch keeps the first), is an error. Malformed references are
/// skipped (a tensor over one reports it).
pub(crate) fn storage_table(p: &Pickle) -> Result<Vec<StorageRef>, String> {
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut views: HashMap<String, (String, (u64, u64))> = HashMap::new();
    let mut out: Vec<StorageRef> = Vec::new();
    for v in p.values() {
        let Value::Persistent(pid) = v else { continue };
        let Ok(s) = storage_ref(p, *pid) else {
            continue;
        };
        if let (Some(vk), Some(range)) = (&s.view_key, s.view) {
            match views.get(vk) {
                Some((root, r)) if root != &s.key || *r != range => {
                    return Err(format!(
                        "storage view {vk:?} is named twice, over {} elements at {} of storage \
                         {root:?} and over {} at {} of {:?}: PyTorch would read both through the \
                         first",
                        r.1, r.0, range.1, range.0, s.key
                    ))
                }
                Some(_) => {}
                None => {
                    views.insert(vk.clone(), (s.key.clone(), range));
                }
            }
        }
        match first.get(&s.key) {
            Some(&i) => {
                let f = &out[i];
                let bytes = |r: &StorageRef| r.numel.checked_mul(r.elem_size as u64);
                let other_type = (f.dtype, f.elem_size) != (s.dtype, s.elem_size);
                if bytes(f) != bytes(&s) || (other_type && bytes(f) != Some(0)) {
                    let ty = |r: &StorageRef| {
                        r.dtype
                            .map_or_else(|| format!("{} bytes", r.elem_size), |d| d.as_str().into())
                    };
                    return Err(format!(
                        "storage {:?} is named as {} elements of {} and as {} of {}: torch \
                         versions disagree on how to read it (torch.save never writes this)",
                        s.key,
                        f.numel,
                        ty(f),
                        s.numel,
                        ty(&s)
                    ));
                }
            }
            None => {
                first.insert(s.key.clone(), out.len());
                out.push(s);
            }
        }
    }
    Ok(out)
}

pub(crate) fn usizes(p: &Pickle, id: Id, what: &str) -> Result<Vec<usize>, String> {
    let items = p.seq(id).ok_or_else(|| format!("{what} is not a tuple"))?;
    items
        .iter()
        .map(|&i| {
            p.int(i)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| format!("{what} holds a value that is not a non-negative integer"))
        })
        .collect()
}

/// A strided view `(storage, offset, size, stride)` as `_rebuild_tensor_v2` takes it.
pub(crate) fn strided(
    p: &Pickle,
    storage: Id,
    offset: Id,
    size: Id,
    stride: Id,
) -> Result<TensorRef, String> {
    let Value::Persistent(pid) = p.get(storage) else {
        return Err("a tensor whose storage is not a persistent id".into());
    };
    let storage = storage_ref(p, *pid)?;
    let offset = p
        .int(offset)
        .and_then(|o| u64::try_from(o).ok())
        .ok_or("a storage offset that is not a non-negative integer")?;
    let shape = usizes(p, size, "the size")?;
    let stride: Vec<u64> = usizes(p, stride, "the stride")?
        .into_iter()
        .map(|s| s as u64)
        .collect();
    if stride.len() != shape.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in rank"
        ));
    }
    Ok(TensorRef {
        storage,
        offset,
        shape,
        stride,
    })
}

/// `Ok(Some(..))` when `id` rebuilds a tensor, `Ok(None)` when it is something else, `Err` when
/// it is a tensor whose description is malformed.
pub(crate) fn tensor(p: &Pickle, id: Id) -> Result<Option<TensorRef>, String> {
    match p.get(id) {
        Value::Object { callable, args, .. } => rebuild(p, *callable, *args, 0),
        _ => Ok(None),
    }
}

/// The tensor `callable(*args)` rebuilds, if it is one of torch's tensor rebuild functions.
fn rebuild(p: &Pickle, callable: Id, args: Id, depth: usize) -> Result<Option<TensorRef>, String> {
    let Some((module, name)) = p.global(callable) else {
        return Ok(None);
    };
    if depth > 4 {
        return Err(format!("{module}.{name} nested more than 4 deep"));
    }
    let args = p.seq(args).unwrap_or(&[]);
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(format!("{name} with {} arguments", args.len()));
            }
            strided(p, args[0], args[1], args[2], args[3]).map(Some)
        }
        // Parameters wrap a tensor: (tensor, requires_grad, hooks[, state]).
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
        | ("torch.nn.parameter", "Parameter") => match args.first().map(|&a| p.get(a)) {
            Some(Value::Object { callable, args, .. }) => rebuild(p, *callable, *args, depth + 1),
            _ => Err(format!("{name} without a tensor")),
        },
        // A tensor saved from an accelerator torch knows only by name (xla, privateuse1):
        // (cpu_tensor, dtype, device, requires_grad).
        ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor") => {
            match args.first().map(|&a| p.get(a)) {
                Some(Value::Object { callable, args, .. }) => {
                    rebuild(p, *callable, *args, depth + 1)
                }
                _ => Err(format!("{name} without a tensor")),
            }
        }
        // (func, type, args, state): the tensor is func(*args).
        ("torch._tensor" | "torch.tensor", "_rebuild_from_type_v2" | "_rebuild_from_type") => {
            match (args.first(), args.get(2)) {
                (Some(&func), Some(&inner)) => rebuild(p, func, inner, depth + 1),
                _ => Err("_rebuild_from_type_v2 with too few arguments".into()),
            }
        }
        _ => Ok(None),
    }
}
