//! A distributed checkpoint's `.metadata` pickle read as plain data: every tensor by its path
//! with its dtype, size and chunks (where each is: a byte range of a `*.distcp` shard), and the
//! pickled items (objects saved whole).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use candle_core::DType;

use super::assembly::{check_cover, Region};
use crate::error::{Result, WeightsError};
use crate::pickle::torch::{MAX_NAME_LEN, MAX_TENSORS};
use crate::pickle::{self, Id, Limits, Pickle, Value};

/// Most chunks one tensor may have, and all tensors together (a shard per rank and tensor).
const MAX_CHUNKS: usize = 4096;
const MAX_ALL_CHUNKS: usize = 1 << 20;
/// Most axes of a tensor (PyTorch's have a handful).
const MAX_RANK: usize = 64;

/// Where one chunk of a tensor is.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    /// A file name in the checkpoint's folder.
    pub file: String,
    /// Bytes of that file holding `torch.save(chunk)`.
    pub range: Range<u64>,
    pub offsets: Vec<usize>,
    pub sizes: Vec<usize>,
}

impl Chunk {
    pub(crate) fn region(&self) -> Region<'_> {
        (&self.offsets, &self.sizes)
    }
}

/// A tensor of the checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct DcpTensor {
    pub name: String,
    /// `None` for an element type candle cannot hold (listed, never loaded).
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    pub chunks: Vec<Chunk>,
}

/// A pickled item of the checkpoint (`torch.save` of any object), which may hold tensors: a
/// state dict saved with `flatten_state_dict=False` is one.
#[derive(Debug, Clone)]
pub(crate) struct DcpObject {
    pub name: String,
    pub file: String,
    pub range: Range<u64>,
}

/// `name = value` attributes of a pickled object (its `BUILD` state, a dict).
fn attrs(p: &Pickle, id: Id) -> Option<HashMap<&str, Id>> {
    let Value::Object {
        state: Some(state), ..
    } = p.get(id)
    else {
        return None;
    };
    let state = match p.get(*state) {
        // `(dict, slots)` from a `__getstate__` with slots.
        Value::Tuple(t) if !t.is_empty() => t[0],
        _ => *state,
    };
    let pairs: &[(Id, Id)] = match p.get(state) {
        Value::Dict(kv) => kv,
        Value::Object { items, .. } => items,
        _ => return None,
    };
    Some(
        pairs
            .iter()
            .filter_map(|&(k, v)| p.str(k).map(|k| (k, v)))
            .collect(),
    )
}

/// The class name an object was built by (`TensorStorageMetadata`).
fn class(p: &Pickle, id: Id) -> Option<&str> {
    match p.get(id) {
        Value::Object { callable, .. } => p.global(*callable).map(|(_, n)| n),
        _ => None,
    }
}

/// A `torch.Size` (or a plain tuple) of non-negative integers.
fn size(p: &Pickle, id: Id) -> Option<Vec<usize>> {
    let tuple = match p.get(id) {
        Value::Object { callable, args, .. } if p.global(*callable) == Some(("torch", "Size")) => {
            *p.seq(*args)?.first()?
        }
        _ => id,
    };
    crate::pickle::torch::usizes(p, tuple, "a size").ok()
}

fn uint(p: &Pickle, id: Id) -> Option<u64> {
    p.int(id).and_then(|v| u64::try_from(v).ok())
}

/// dtype of a `torch.<name>` dtype global; `None` inside for a type candle cannot hold.
fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "float32" | "float" => DType::F32,
        "float64" | "double" => DType::F64,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        "int64" | "long" => DType::I64,
        "int32" | "int" => DType::I32,
        "int16" | "short" => DType::I16,
        "uint8" | "bool" => DType::U8,
        "uint32" => DType::U32,
        _ => return None,
    })
}

/// `Some(dtype)` and whether the layout is strided, from a `TensorProperties` object (its state is
/// `(dtype, layout, requires_grad, memory_format, pin_memory)`, or a dict in other versions).
fn properties(p: &Pickle, id: Id) -> Option<(Option<DType>, bool)> {
    let Value::Object {
        state: Some(state), ..
    } = p.get(id)
    else {
        return None;
    };
    let (dtype, layout) = match p.get(*state) {
        Value::Tuple(t) if t.len() >= 2 => (t[0], Some(t[1])),
        _ => {
            let a = attrs(p, id)?;
            (*a.get("dtype")?, a.get("layout").copied())
        }
    };
    let (module, name) = p.global(dtype)?;
    if module != "torch" {
        return None;
    }
    // The layout pickles as `_get_layout("torch.strided")`.
    let strided = layout.is_none_or(|l| match p.get(l) {
        Value::Object { args, .. } => p
            .seq(*args)
            .and_then(|a| a.first())
            .and_then(|&s| p.str(s))
            .is_none_or(|s| s == "torch.strided"),
        _ => true,
    });
    Some((dtype_of(name), strided))
}

/// A chunk's tensor path and offsets.
type ChunkKey<'a> = (&'a str, Vec<usize>);
/// The shard file and byte range holding a chunk.
type ChunkBytes = (String, Range<u64>);

/// Where each chunk's and each pickled item's bytes are (`storage_data`): by tensor path and
/// offsets, and by item path.
type ChunkPlaces<'a> = (
    HashMap<ChunkKey<'a>, ChunkBytes>,
    HashMap<&'a str, ChunkBytes>,
);

fn storage_data<'a>(
    p: &'a Pickle,
    root: &HashMap<&str, Id>,
    dir: &Path,
) -> Result<ChunkPlaces<'a>> {
    let bad = |reason: String| WeightsError::file(&dir.join(".metadata"), reason);
    let mut storage: HashMap<ChunkKey, ChunkBytes> = HashMap::new();
    let mut items: HashMap<&str, ChunkBytes> = HashMap::new();
    if let Some(Value::Dict(kv)) = root.get("storage_data").map(|&d| p.get(d)) {
        for &(k, v) in kv {
            let (Some(key), Some(info)) = (attrs(p, k), attrs(p, v)) else {
                continue;
            };
            let Some(fqn) = key.get("fqn").and_then(|&f| p.str(f)) else {
                continue;
            };
            // A pickled item's key has no offsets (`None`).
            let offsets = key.get("offset").and_then(|&o| size(p, o));
            if let Some(&t) = info.get("transform_descriptors") {
                if p.seq(t).is_some_and(|t| !t.is_empty()) {
                    return Err(bad(format!(
                        "`{fqn}` is stored transformed (compressed or encrypted shards), which \
                         is not read"
                    )));
                }
            }
            let file = info
                .get("relative_path")
                .and_then(|&f| p.str(f))
                .ok_or_else(|| bad(format!("`{fqn}` has no shard file")))?;
            // One plain file name of the folder (`C:x` would leave it on Windows).
            if file.is_empty() || file.contains(['/', '\\', ':']) || file == ".." || file == "." {
                return Err(bad(format!("`{fqn}` names the shard file {file:?}")));
            }
            let (Some(start), Some(len)) = (
                info.get("offset").and_then(|&o| uint(p, o)),
                info.get("length").and_then(|&l| uint(p, l)),
            ) else {
                return Err(bad(format!("`{fqn}` has no byte range in {file}")));
            };
            let end = start
                .checked_add(len)
                .ok_or_else(|| bad(format!("`{fqn}`: its byte range overflows")))?;
            match offsets {
                Some(offsets) => storage.insert((fqn, offsets), (file.to_string(), start..end)),
                None => items.insert(fqn, (file.to_string(), start..end)),
            };
        }
    }
    Ok((storage, items))
}

/// The chunks of tensor `name` (`chunk_ids` in the pickle), each with the shard bytes holding
/// it; an empty chunk (a rank holding no rows) has none and is left out.
fn chunks_of(
    p: &Pickle,
    name: &str,
    chunk_ids: &[Id],
    shape: &[usize],
    storage: &HashMap<ChunkKey, ChunkBytes>,
    dir: &Path,
) -> Result<Vec<Chunk>> {
    let bad = |reason: String| WeightsError::file(&dir.join(".metadata"), reason);
    let mut chunks = Vec::with_capacity(chunk_ids.len());
    for &c in chunk_ids {
        let a = attrs(p, c).ok_or_else(|| bad(format!("`{name}`: a chunk without fields")))?;
        let (Some(offsets), Some(sizes)) = (
            a.get("offsets").and_then(|&o| size(p, o)),
            a.get("sizes").and_then(|&s| size(p, s)),
        ) else {
            return Err(bad(format!("`{name}`: a chunk without offsets or sizes")));
        };
        // An empty chunk (a rank holding no rows) has no bytes to read.
        if sizes.contains(&0) && offsets.len() == shape.len() && sizes.len() == shape.len() {
            continue;
        }
        let (file, range) = storage
            .get(&(name, offsets.clone()))
            .cloned()
            .ok_or_else(|| {
                bad(format!(
                    "`{name}`: the chunk at {offsets:?} is not in any shard file"
                ))
            })?;
        chunks.push(Chunk {
            file,
            range,
            offsets,
            sizes,
        });
    }
    Ok(chunks)
}

/// Reads the tensors and pickled items listed by the `.metadata` pickle `bytes` of the
/// checkpoint at `dir`.
pub(crate) fn read_metadata(dir: &Path, bytes: &[u8]) -> Result<(Vec<DcpTensor>, Vec<DcpObject>)> {
    let bad = |reason: String| WeightsError::file(&dir.join(".metadata"), reason);
    let (p, _) = pickle::parse(bytes, Limits::default())
        .map_err(|e| WeightsError::format(&dir.join(".metadata"), "malformed pickle", e))?;
    let root = attrs(&p, p.root)
        .filter(|_| class(&p, p.root) == Some("Metadata"))
        .ok_or_else(|| {
            bad(format!(
                "is {}, not a checkpoint's Metadata",
                p.describe(p.root)
            ))
        })?;
    let listed = root
        .get("state_dict_metadata")
        .and_then(|&d| match p.get(d) {
            Value::Dict(kv) => Some(kv.as_slice()),
            _ => None,
        })
        .ok_or_else(|| bad("has no state_dict_metadata".into()))?;
    let (storage, items) = storage_data(&p, &root, dir)?;
    let mut out = Vec::new();
    let mut objects = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut all_chunks = 0usize;
    for &(k, v) in listed {
        let Some(name) = p.str(k) else { continue };
        // Pickled items (BytesStorageMetadata): a step count, RNG states, or, saved with
        // `flatten_state_dict=False`, a whole state dict.
        if class(&p, v) == Some("BytesStorageMetadata") {
            if let Some((file, range)) = items.get(name) {
                if objects.len() >= MAX_TENSORS {
                    return Err(bad(format!("more than {MAX_TENSORS} pickled items")));
                }
                objects.push(DcpObject {
                    name: name.to_string(),
                    file: file.clone(),
                    range: range.clone(),
                });
            }
            continue;
        }
        if class(&p, v) != Some("TensorStorageMetadata") {
            continue;
        }
        if !names.insert(name) {
            return Err(bad(format!("lists `{name}` twice")));
        }
        if out.len() >= MAX_TENSORS || name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "more than {MAX_TENSORS} tensors, or a name of more than {MAX_NAME_LEN} bytes"
            )));
        }
        let t = attrs(&p, v).ok_or_else(|| bad(format!("`{name}` has no attributes")))?;
        let (dtype, strided) = t
            .get("properties")
            .and_then(|&pr| properties(&p, pr))
            .ok_or_else(|| bad(format!("`{name}` has no dtype")))?;
        if !strided {
            continue; // sparse: skipped, as in a torch.save file
        }
        let shape = t
            .get("size")
            .and_then(|&s| size(&p, s))
            .ok_or_else(|| bad(format!("`{name}` has no size")))?;
        if shape.len() > MAX_RANK {
            return Err(bad(format!("`{name}` has {} axes", shape.len())));
        }
        let chunk_ids = t
            .get("chunks")
            .and_then(|&c| p.seq(c))
            .ok_or_else(|| bad(format!("`{name}` has no chunks")))?;
        all_chunks = all_chunks.saturating_add(chunk_ids.len());
        if chunk_ids.len() > MAX_CHUNKS || all_chunks > MAX_ALL_CHUNKS {
            return Err(bad(format!(
                "`{name}` has {} chunks (at most {MAX_CHUNKS}, and {MAX_ALL_CHUNKS} in all)",
                chunk_ids.len()
            )));
        }
        let chunks = chunks_of(&p, name, chunk_ids, &shape, &storage, dir)?;
        check_cover(&shape, chunks.iter().map(Chunk::region))
            .map_err(|r| bad(format!("`{name}`: {r}")))?;
        out.push(DcpTensor {
            name: name.to_string(),
            dtype,
            shape,
            chunks,
        });
    }
    if out.is_empty() && objects.is_empty() && !listed.is_empty() {
        return Err(bad("lists no tensor and no pickled item".into()));
    }
    Ok((out, objects))
}
