//! `torch.distributed.checkpoint` folders (`dcp.save`; FSDP's sharded checkpoints): a
//! `.metadata` pickle lists every tensor by its path (`model.rnn.weight_ih_l0`) with its dtype,
//! size and chunks, and where each chunk is: a byte range of a `*.distcp` shard that holds
//! `torch.save(chunk)`. The pickle goes through our bounded reader as plain data; each chunk is
//! read as the `torch.save` archive it is, and the chunks of a tensor, which must cover it exactly
//! once, are assembled into the whole tensor.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;

use crate::error::{Result, WeightsError};
use crate::pickle::{self, Id, Limits, Pickle, Value};
use crate::torch_pickle::{MAX_NAME_BYTES, MAX_NAME_LEN, MAX_TENSORS};

/// Largest `.metadata` read (it lists chunks, not data: a few MB for a large model).
const MAX_METADATA_BYTES: u64 = 256 << 20;
/// Most chunks one tensor may have, and all tensors together (a shard per rank and tensor).
const MAX_CHUNKS: usize = 4096;
const MAX_ALL_CHUNKS: usize = 1 << 20;
/// Most shard files a checkpoint may name (each is mapped).
const MAX_SHARDS: usize = 16384;
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

/// Where a chunk lies in its tensor: its offsets and sizes.
pub(crate) type Region<'a> = (&'a [usize], &'a [usize]);

impl Chunk {
    fn region(&self) -> Region<'_> {
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

/// The folder of a checkpoint given as the folder or as its `.metadata` file.
pub(crate) fn folder_of(path: &Path) -> Option<PathBuf> {
    if path.is_dir() && path.join(".metadata").is_file() {
        return Some(path.to_path_buf());
    }
    if path.file_name().is_some_and(|n| n == ".metadata") && path.is_file() {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        return Some(parent.unwrap_or(Path::new(".")).to_path_buf());
    }
    None
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
    crate::torch_pickle::usizes(p, tuple, "a size").ok()
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
    let mut storage: HashMap<ChunkKey, ChunkBytes> = HashMap::new();
    let mut items: HashMap<&str, ChunkBytes> = HashMap::new();
    if let Some(Value::Dict(kv)) = root.get("storage_data").map(|&d| p.get(d)) {
        for &(k, v) in kv {
            let (Some(key), Some(info)) = (attrs(&p, k), attrs(&p, v)) else {
                continue;
            };
            let Some(fqn) = key.get("fqn").and_then(|&f| p.str(f)) else {
                continue;
            };
            // A pickled item's key has no offsets (`None`).
            let offsets = key.get("offset").and_then(|&o| size(&p, o));
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
                info.get("offset").and_then(|&o| uint(&p, o)),
                info.get("length").and_then(|&l| uint(&p, l)),
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
        let mut chunks = Vec::with_capacity(chunk_ids.len());
        for &c in chunk_ids {
            let a = attrs(&p, c).ok_or_else(|| bad(format!("`{name}`: a chunk without fields")))?;
            let (Some(offsets), Some(sizes)) = (
                a.get("offsets").and_then(|&o| size(&p, o)),
                a.get("sizes").and_then(|&s| size(&p, s)),
            ) else {
                return Err(bad(format!("`{name}`: a chunk without offsets or sizes")));
            };
            // An empty chunk (a rank holding no rows) has no bytes to read.
            if sizes.contains(&0) && offsets.len() == shape.len() && sizes.len() == shape.len() {
                continue;
            }
            let (file, range) =
                storage
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

/// The chunks lie inside the tensor and hold as many elements as it has. That they do not
/// overlap (and so cover it exactly once) is checked as they are placed (`place`).
pub(crate) fn check_cover<'a>(
    shape: &[usize],
    chunks: impl IntoIterator<Item = Region<'a>>,
) -> std::result::Result<(), String> {
    let numel = |s: &[usize]| match s.contains(&0) {
        true => Ok(0),
        false => s
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or("a size overflows"),
    };
    let mut total = 0u64;
    for (offsets, sizes) in chunks {
        if offsets.len() != shape.len() || sizes.len() != shape.len() {
            return Err(format!(
                "a chunk of rank {} in a tensor of rank {}",
                sizes.len(),
                shape.len()
            ));
        }
        for d in 0..shape.len() {
            if offsets[d]
                .checked_add(sizes[d])
                .is_none_or(|e| e > shape[d])
            {
                return Err(format!(
                    "the chunk at {offsets:?} of size {sizes:?} reaches past its size {shape:?}"
                ));
            }
        }
        total = total
            .checked_add(numel(sizes)?)
            .ok_or("the chunks' sizes overflow")?;
    }
    if total != numel(shape)? {
        return Err(format!(
            "its chunks hold {total} elements of its {}: some are missing or repeated",
            numel(shape)?
        ));
    }
    Ok(())
}

/// A whole tensor being assembled from its chunks: its bytes, and which elements are placed.
pub(crate) struct Assembly<'a> {
    whole: Vec<u8>,
    seen: Vec<bool>,
    shape: &'a [usize],
    dtype: DType,
}

impl<'a> Assembly<'a> {
    /// Zeroed buffers for `total` bytes of `dtype` elements, or why they cannot be had.
    pub(crate) fn new(
        shape: &'a [usize],
        dtype: DType,
        total: usize,
    ) -> std::result::Result<Self, String> {
        let es = dtype.size_in_bytes();
        let mut whole: Vec<u8> = Vec::new();
        let mut seen: Vec<bool> = Vec::new();
        whole
            .try_reserve_exact(total)
            .and_then(|_| seen.try_reserve_exact(total / es))
            .map_err(|_| format!("cannot allocate its {total} bytes"))?;
        whole.resize(total, 0);
        seen.resize(total / es, false);
        Ok(Self {
            whole,
            seen,
            shape,
            dtype,
        })
    }

    /// Places the chunk at `region`, read as `got` elements of shape `got_shape` (`bytes`): it
    /// must be what the region says, and overlap no chunk placed before (see `place`).
    pub(crate) fn put(
        &mut self,
        region: Region,
        got: DType,
        got_shape: &[usize],
        bytes: &[u8],
    ) -> std::result::Result<(), String> {
        let (offsets, sizes) = region;
        if got != self.dtype || got_shape != sizes {
            return Err(format!(
                "its chunk at {offsets:?} holds {got:?} {got_shape:?}, not {:?} {sizes:?}",
                self.dtype
            ));
        }
        let es = self.dtype.size_in_bytes();
        place(
            &mut self.whole,
            &mut self.seen,
            self.shape,
            es,
            region,
            bytes,
        )
        .map_err(|at| format!("its chunk at {offsets:?} overlaps another at flat index {at}"))
    }

    /// The assembled tensor, on the CPU.
    pub(crate) fn into_tensor(self) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_raw_buffer(
            &self.whole,
            self.dtype,
            self.shape,
            &candle_core::Device::Cpu,
        )
    }
}

/// Copies a chunk's contiguous elements (`es` bytes each) into the whole tensor's buffer,
/// marking each element in `seen`; an element already seen means two chunks overlap (`Err`
/// with its flat index).
fn place(
    whole: &mut [u8],
    seen: &mut [bool],
    shape: &[usize],
    es: usize,
    (offsets, sizes): Region,
    bytes: &[u8],
) -> std::result::Result<(), usize> {
    let rank = shape.len();
    let mut mark = |start: usize, len: usize| -> std::result::Result<(), usize> {
        for (i, s) in seen[start..start + len].iter_mut().enumerate() {
            if std::mem::replace(s, true) {
                return Err(start + i);
            }
        }
        Ok(())
    };
    if rank == 0 {
        mark(0, 1)?;
        whole.copy_from_slice(&bytes[..es]);
        return Ok(());
    }
    // An empty chunk places nothing, whatever its other sizes. A chunk with elements lies inside
    // the tensor (`check_cover`), which then has elements too: its strides fit, as it was
    // allocated.
    if sizes.contains(&0) {
        return Ok(());
    }
    // Row-major strides of the whole tensor, in elements.
    let mut stride = vec![1usize; rank];
    for d in (0..rank - 1).rev() {
        stride[d] = stride[d + 1] * shape[d + 1];
    }
    let run = sizes[rank - 1];
    let rows: usize = sizes[..rank - 1].iter().product();
    let mut idx = vec![0usize; rank - 1];
    for row in 0..rows {
        let start: usize = (0..rank - 1)
            .map(|d| (offsets[d] + idx[d]) * stride[d])
            .sum::<usize>()
            + offsets[rank - 1];
        mark(start, run)?;
        whole[start * es..(start + run) * es]
            .copy_from_slice(&bytes[row * run * es..(row + 1) * run * es]);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < sizes[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

/// The shard files a checkpoint's tensors read, mapped once each.
pub(crate) type Shards = HashMap<String, Arc<memmap2::Mmap>>;

/// An opened checkpoint folder: its tensors and its mapped shards.
pub(crate) struct Dcp {
    pub dir: PathBuf,
    tensors: Vec<DcpTensor>,
    /// Name -> index into `tensors`.
    index: HashMap<String, usize>,
    shards: Shards,
    /// Bytes of all shards, each counted once.
    pub shard_bytes: u64,
    /// Pickled items holding tensors: their shard file and what they were read as.
    items: Vec<(String, crate::pth::Checkpoint)>,
    /// Name -> (item, tensor in it).
    in_items: HashMap<String, (usize, usize)>,
    /// Pickled items not read, with why.
    pub unread: Vec<String>,
}

impl Dcp {
    /// Reads the folder's `.metadata`, maps every shard it names and checks each chunk's byte
    /// range against its shard; `key` keeps the tensors under that path only.
    pub(crate) fn open(
        dir: &Path,
        key: Option<&str>,
    ) -> Result<(Self, Vec<crate::file::TensorInfo>)> {
        let meta_path = dir.join(".metadata");
        let file = crate::regular::open_regular(&meta_path)?;
        let len = file
            .metadata()
            .map_err(|e| WeightsError::io(&meta_path, "stat", e))?
            .len();
        if len > MAX_METADATA_BYTES {
            return Err(WeightsError::file(
                &meta_path,
                format!(
                    "{len} bytes, more than a checkpoint's metadata needs ({MAX_METADATA_BYTES})"
                ),
            ));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, len), &mut bytes)
            .map_err(|e| WeightsError::io(&meta_path, "read", e))?;
        let (mut tensors, mut objects) = read_metadata(dir, &bytes)?;
        let key = key.map(|k| k.trim_end_matches('.'));
        let under = |name: &str, key: &str| {
            name.strip_prefix(key)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        if let Some(key) = key {
            tensors.retain(|t| under(&t.name, key));
            // An item under the key, or one the key lies inside (`model.rnn` in `model`).
            objects.retain(|o| under(&o.name, key) || under(key, &o.name));
        }
        let mut shards = Shards::new();
        let mut by_file: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        let chunks = tensors.iter().flat_map(|t| {
            t.chunks
                .iter()
                .map(move |c| (&t.name, &c.file, &c.range, Some(&c.offsets)))
        });
        let items = objects.iter().map(|o| (&o.name, &o.file, &o.range, None));
        // (tensor or item, shard file, bytes, the chunk's offsets: `None` for an item)
        for (name, file, range, offsets) in chunks.chain(items) {
            by_file
                .entry(file.as_str())
                .or_default()
                .push((range.start, range.end));
            if !shards.contains_key(file) {
                if shards.len() >= MAX_SHARDS {
                    return Err(WeightsError::file(
                        &meta_path,
                        format!("names more than {MAX_SHARDS} shard files"),
                    ));
                }
                let path = dir.join(file);
                let f = crate::regular::open_regular(&path)?;
                let map = crate::file::map(&path, &f)?;
                // SerializationFormat.SAFETENSORS shards: one safetensors file per shard. (A
                // shard may start with a raw `io.BytesIO` item: not a test of "PK".)
                if map.get(8) == Some(&b'{') && !map.starts_with(b"PK") {
                    return Err(WeightsError::file(
                        &path,
                        "is not a torch.save shard (saved with another serialization \
                         format, such as SerializationFormat.SAFETENSORS, which is not read)",
                    ));
                }
                shards.insert(file.clone(), Arc::new(map));
            }
            let shard_len = shards[file].len() as u64;
            if range.end > shard_len {
                let what = match offsets {
                    Some(o) => format!("its chunk at {o:?}"),
                    None => "its pickled item".to_string(),
                };
                return Err(WeightsError::Tensor {
                    name: name.clone(),
                    reason: format!(
                        "{what} is bytes {range:?} of {file}, which has {shard_len}: a \
                         truncated or lying checkpoint"
                    ),
                });
            }
        }
        // A shard's chunks lie in distinct bytes, as torch writes them: then reading every chunk
        // reads each byte of the shards once (overlapping ranges could make a small file read as
        // a large one, chunk after chunk).
        for (file, ranges) in &mut by_file {
            ranges.sort_unstable();
            if let Some(w) = ranges.windows(2).find(|w| w[0].1 > w[1].0) {
                return Err(WeightsError::file(
                    &meta_path,
                    format!(
                        "places two chunks in overlapping bytes of {file} ({:?} and {:?})",
                        w[0].0..w[0].1,
                        w[1].0..w[1].1
                    ),
                ));
            }
        }
        // The bytes the shards hold, each counted once.
        let shard_bytes = shards
            .values()
            .fold(0u64, |a, m| a.saturating_add(m.len() as u64));
        let mut infos: Vec<crate::file::TensorInfo> = tensors
            .iter()
            .map(|t| crate::file::TensorInfo {
                name: t.name.clone(),
                // Listed as U8 when candle has no dtype for it, as in a torch.save file.
                dtype: t.dtype.unwrap_or(DType::U8),
                shape: t.shape.clone(),
            })
            .collect();
        let index: HashMap<String, usize> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        // The tensors inside pickled items, named by the item's path and theirs in it.
        let mut items = Vec::new();
        let mut in_items = HashMap::new();
        let mut unread = Vec::new();
        let mut name_bytes = 0usize;
        for o in &objects {
            let path = dir.join(&o.file);
            let window = o.range.start as usize..o.range.end as usize;
            // An item that is no torch.save file (a custom planner's raw `io.BytesIO`), or one
            // our reader refuses (a train state of millions of objects), holds no tensor we can
            // read: it is skipped, and named where a module is then not found; but one the key
            // points into must be read.
            let wanted = key.is_some_and(|key| under(key, &o.name));
            let checkpoint = match crate::pth::read_object(&path, &shards[&o.file], window) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) if !wanted => {
                    unread.push(format!("`{}` ({e})", o.name));
                    continue;
                }
                Err(e) => {
                    return Err(WeightsError::file(
                        &meta_path,
                        format!("`{}`, a pickled item: {e}", o.name),
                    ))
                }
            };
            for (k, f) in checkpoint.tensors.iter().enumerate() {
                let name = match f.name.as_str() {
                    "" => o.name.clone(),
                    inner => format!("{}.{inner}", o.name),
                };
                if key.is_some_and(|key| !under(&name, key)) {
                    continue;
                }
                name_bytes = name_bytes.saturating_add(name.len());
                if name.len() > MAX_NAME_LEN
                    || in_items.len() >= MAX_TENSORS
                    || name_bytes > MAX_NAME_BYTES
                {
                    return Err(WeightsError::file(
                        &meta_path,
                        format!(
                            "its pickled items hold more than {MAX_TENSORS} tensors, a name of \
                             more than {MAX_NAME_LEN} bytes or more than {MAX_NAME_BYTES} bytes \
                             of names"
                        ),
                    ));
                }
                if index.contains_key(&name) || in_items.contains_key(&name) {
                    return Err(WeightsError::Tensor {
                        name,
                        reason: format!("is listed twice by {}", meta_path.display()),
                    });
                }
                infos.push(crate::file::TensorInfo {
                    name: name.clone(),
                    dtype: f.tensor.storage.dtype.unwrap_or(DType::U8),
                    shape: f.tensor.shape.clone(),
                });
                in_items.insert(name, (items.len(), k));
            }
            items.push((o.file.clone(), checkpoint));
        }
        if infos.is_empty() {
            let why = match unread.first() {
                Some(u) => {
                    format!("lists no tensor, and its pickled items hold none we can read: {u}")
                }
                None => "lists no tensor, and its pickled items hold none".to_string(),
            };
            return Err(WeightsError::file(&meta_path, why));
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let dcp = Dcp {
            dir: dir.to_path_buf(),
            tensors,
            index,
            items,
            in_items,
            unread,
            shards,
            shard_bytes,
        };
        Ok((dcp, infos))
    }

    /// The names of the shard files its tensors are read from.
    pub(crate) fn shard_files(&self) -> impl Iterator<Item = &str> {
        self.shards.keys().map(String::as_str)
    }

    /// Assembles tensor `name` from its chunks (or reads it from its pickled item), on the CPU.
    pub(crate) fn load(&self, name: &str) -> Result<candle_core::Tensor> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{reason} (in {})", self.dir.display()),
        };
        if let Some(&(item, k)) = self.in_items.get(name) {
            let (file, checkpoint) = &self.items[item];
            let found = &checkpoint.tensors[k];
            let map = &self.shards[file];
            return checkpoint.load(&self.dir.join(file), map, &found.name, &found.tensor);
        }
        let t = &self.tensors[*self
            .index
            .get(name)
            .ok_or_else(|| bad("is not in the checkpoint".into()))?];
        let dtype = t
            .dtype
            .ok_or_else(|| bad("has an element type candle cannot hold".into()))?;
        let es = dtype.size_in_bytes();
        // Its chunks lie in distinct bytes of the shards (checked on open) and hold its elements
        // as torch.save files: the whole tensor cannot honestly be larger than they are.
        let held = t
            .chunks
            .iter()
            .fold(0u64, |a, c| a.saturating_add(c.range.end - c.range.start));
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let total = numel
            .and_then(|n| n.checked_mul(es as u64))
            .filter(|&n| n <= held)
            .ok_or_else(|| {
                bad(format!(
                    "its size {:?} needs more bytes than its chunks hold ({held})",
                    t.shape
                ))
            })? as usize;
        let mut whole = Assembly::new(&t.shape, dtype, total).map_err(bad)?;
        for c in &t.chunks {
            let map = &self.shards[&c.file];
            let window = c.range.start as usize..c.range.end as usize;
            let shard = self.dir.join(&c.file);
            let (bytes, got, shape) = crate::pth::read_bare_tensor(&shard, map, window)
                .map_err(|e| bad(format!("its chunk at {:?}: {e}", c.offsets)))?;
            whole.put(c.region(), got, &shape, &bytes).map_err(bad)?;
        }
        Ok(whole.into_tensor()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offsets: &[usize], sizes: &[usize]) -> Chunk {
        Chunk {
            file: "s".into(),
            range: 0..0,
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
        }
    }

    #[test]
    fn chunks_must_cover_the_tensor_once() {
        let rows = [chunk(&[0, 0], &[2, 3]), chunk(&[2, 0], &[1, 3])];
        assert_eq!(check_cover(&[3, 3], rows.iter().map(Chunk::region)), Ok(()));
        let gap = [chunk(&[0, 0], &[2, 3])];
        assert!(check_cover(&[3, 3], gap.iter().map(Chunk::region))
            .unwrap_err()
            .contains("missing"));
        let past = [chunk(&[0, 0], &[4, 3])];
        assert!(check_cover(&[3, 3], past.iter().map(Chunk::region))
            .unwrap_err()
            .contains("past"));
        let huge = [chunk(&[usize::MAX, 0], &[2, 3])];
        assert!(check_cover(&[3, 3], huge.iter().map(Chunk::region)).is_err());
        // Overlapping and missing in equal measure passes the count, and fails when placed.
        let both = [chunk(&[0, 0], &[2, 3]), chunk(&[1, 0], &[1, 3])];
        assert_eq!(check_cover(&[3, 3], both.iter().map(Chunk::region)), Ok(()));
        let (mut whole, mut seen) = (vec![0u8; 9], vec![false; 9]);
        place(&mut whole, &mut seen, &[3, 3], 1, both[0].region(), &[0; 6]).unwrap();
        assert_eq!(
            place(&mut whole, &mut seen, &[3, 3], 1, both[1].region(), &[0; 3]),
            Err(3)
        );
    }

    #[test]
    fn empty_chunks_place_nothing_whatever_their_sizes() {
        let big = 1usize << 62;
        let empty = chunk(&[0, 0, 0], &[0, big, 4]);
        assert_eq!(
            place(&mut [], &mut [], &[0, big, 4], 4, empty.region(), &[]),
            Ok(())
        );
        let flat = [chunk(&[0, 0, 0], &[1 << 40, 1 << 40, 0])];
        assert_eq!(
            check_cover(&[1 << 40, 1 << 40, 0], flat.iter().map(Chunk::region)),
            Ok(())
        );
    }

    #[test]
    fn chunks_land_where_their_offsets_say() {
        // A 3 x 4 tensor of bytes 0..12 as two column chunks (cols 0-1, cols 2-3).
        let left = chunk(&[0, 0], &[3, 2]);
        let right = chunk(&[0, 2], &[3, 2]);
        let (mut whole, mut seen) = (vec![0u8; 12], vec![false; 12]);
        place(
            &mut whole,
            &mut seen,
            &[3, 4],
            1,
            left.region(),
            &[0, 1, 4, 5, 8, 9],
        )
        .unwrap();
        place(
            &mut whole,
            &mut seen,
            &[3, 4],
            1,
            right.region(),
            &[2, 3, 6, 7, 10, 11],
        )
        .unwrap();
        assert_eq!(whole, (0..12).collect::<Vec<u8>>());
        assert!(seen.iter().all(|&s| s));
        // Rows of 2-byte elements, the second chunk shorter.
        let (mut whole, mut seen) = (vec![0u8; 12], vec![false; 6]);
        let top = chunk(&[0, 0], &[2, 2]);
        place(
            &mut whole,
            &mut seen,
            &[3, 2],
            2,
            top.region(),
            &[1, 1, 2, 2, 3, 3, 4, 4],
        )
        .unwrap();
        place(
            &mut whole,
            &mut seen,
            &[3, 2],
            2,
            chunk(&[2, 0], &[1, 2]).region(),
            &[5, 5, 6, 6],
        )
        .unwrap();
        assert_eq!(whole, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
    }
}
