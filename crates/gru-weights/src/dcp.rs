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
use crate::torch_pickle::{MAX_NAME_LEN, MAX_TENSORS};

/// Largest `.metadata` read (it lists chunks, not data: a few MB for a large model).
const MAX_METADATA_BYTES: u64 = 256 << 20;
/// Most chunks one tensor may have (a shard per rank; coverage is checked pairwise).
const MAX_CHUNKS: usize = 4096;

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

/// A tensor of the checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct DcpTensor {
    pub name: String,
    /// `None` for an element type candle cannot hold (listed, never loaded).
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    pub chunks: Vec<Chunk>,
}

/// The folder of a checkpoint given as the folder or as its `.metadata` file.
pub(crate) fn folder_of(path: &Path) -> Option<PathBuf> {
    if path.is_dir() && path.join(".metadata").is_file() {
        return Some(path.to_path_buf());
    }
    if path.file_name().is_some_and(|n| n == ".metadata") && path.is_file() {
        return Some(path.parent().unwrap_or(Path::new(".")).to_path_buf());
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
    p.seq(tuple)?
        .iter()
        .map(|&i| p.int(i).and_then(|v| usize::try_from(v).ok()))
        .collect()
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

/// Reads the tensors listed by the `.metadata` pickle `bytes` of the checkpoint at `dir`.
pub(crate) fn read_metadata(dir: &Path, bytes: &[u8]) -> Result<Vec<DcpTensor>> {
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
    if let Some(Value::Dict(kv)) = root.get("storage_data").map(|&d| p.get(d)) {
        for &(k, v) in kv {
            let (Some(key), Some(info)) = (attrs(&p, k), attrs(&p, v)) else {
                continue;
            };
            let (Some(fqn), Some(offsets)) = (
                key.get("fqn").and_then(|&f| p.str(f)),
                key.get("offset").and_then(|&o| size(&p, o)),
            ) else {
                continue;
            };
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
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
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
            storage.insert((fqn, offsets), (file.to_string(), start..end));
        }
    }
    let mut out = Vec::new();
    for &(k, v) in listed {
        let Some(name) = p.str(k) else { continue };
        // Bytes items (BytesStorageMetadata: optimizer steps, RNG states) are not tensors.
        if class(&p, v) != Some("TensorStorageMetadata") {
            continue;
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
        let chunk_ids = t
            .get("chunks")
            .and_then(|&c| p.seq(c))
            .ok_or_else(|| bad(format!("`{name}` has no chunks")))?;
        if chunk_ids.len() > MAX_CHUNKS {
            return Err(bad(format!(
                "`{name}` has {} chunks (at most {MAX_CHUNKS})",
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
        check_cover(&shape, &chunks).map_err(|r| bad(format!("`{name}`: {r}")))?;
        out.push(DcpTensor {
            name: name.to_string(),
            dtype,
            shape,
            chunks,
        });
    }
    Ok(out)
}

/// The chunks lie inside the tensor, do not overlap, and together hold every element of it.
fn check_cover(shape: &[usize], chunks: &[Chunk]) -> std::result::Result<(), String> {
    let numel = |s: &[usize]| {
        s.iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or("a size overflows")
    };
    let mut total = 0u64;
    for c in chunks {
        if c.offsets.len() != shape.len() || c.sizes.len() != shape.len() {
            return Err(format!(
                "a chunk of rank {} in a tensor of rank {}",
                c.sizes.len(),
                shape.len()
            ));
        }
        for d in 0..shape.len() {
            if c.offsets[d]
                .checked_add(c.sizes[d])
                .is_none_or(|e| e > shape[d])
            {
                return Err(format!(
                    "the chunk at {:?} of size {:?} reaches past its size {shape:?}",
                    c.offsets, c.sizes
                ));
            }
        }
        total = total
            .checked_add(numel(&c.sizes)?)
            .ok_or("the chunks' sizes overflow")?;
    }
    for (i, a) in chunks.iter().enumerate() {
        for b in &chunks[i + 1..] {
            let disjoint = (0..shape.len()).any(|d| {
                a.offsets[d] + a.sizes[d] <= b.offsets[d]
                    || b.offsets[d] + b.sizes[d] <= a.offsets[d]
            });
            let empty = numel(&a.sizes)? == 0 || numel(&b.sizes)? == 0;
            if !disjoint && !empty {
                return Err(format!(
                    "the chunks at {:?} and {:?} overlap",
                    a.offsets, b.offsets
                ));
            }
        }
    }
    if total != numel(shape)? {
        return Err(format!(
            "its chunks hold {total} elements of its {}: some are missing",
            numel(shape)?
        ));
    }
    Ok(())
}

/// Copies a chunk's contiguous elements (`es` bytes each) into the whole tensor's buffer.
pub(crate) fn place(whole: &mut [u8], shape: &[usize], es: usize, chunk: &Chunk, bytes: &[u8]) {
    let rank = shape.len();
    if rank == 0 {
        whole.copy_from_slice(&bytes[..es]);
        return;
    }
    // Row-major strides of the whole tensor, in elements.
    let mut stride = vec![1usize; rank];
    for d in (0..rank - 1).rev() {
        stride[d] = stride[d + 1] * shape[d + 1];
    }
    let run = chunk.sizes[rank - 1] * es;
    let rows: usize = chunk.sizes[..rank - 1].iter().product();
    if run == 0 || rows == 0 {
        return;
    }
    let mut idx = vec![0usize; rank - 1];
    for row in 0..rows {
        let start: usize = (0..rank - 1)
            .map(|d| (chunk.offsets[d] + idx[d]) * stride[d])
            .sum::<usize>()
            + chunk.offsets[rank - 1];
        whole[start * es..start * es + run].copy_from_slice(&bytes[row * run..(row + 1) * run]);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < chunk.sizes[d] {
                break;
            }
            idx[d] = 0;
        }
    }
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
    /// Bytes of all chunks: what the memory budget of an assembled tensor is measured against.
    pub chunk_bytes: u64,
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
        let bytes =
            std::fs::read(&meta_path).map_err(|e| WeightsError::io(&meta_path, "read", e))?;
        let mut tensors = read_metadata(dir, &bytes)?;
        if let Some(key) = key.map(|k| k.trim_end_matches('.')) {
            let under = format!("{key}.");
            tensors.retain(|t| t.name == key || t.name.starts_with(&under));
        }
        let mut shards = Shards::new();
        let mut chunk_bytes = 0u64;
        for t in &tensors {
            for c in &t.chunks {
                if !shards.contains_key(&c.file) {
                    let path = dir.join(&c.file);
                    let f = crate::regular::open_regular(&path)?;
                    shards.insert(c.file.clone(), Arc::new(crate::file::map(&path, &f)?));
                }
                let shard_len = shards[&c.file].len() as u64;
                if c.range.end > shard_len {
                    return Err(WeightsError::Tensor {
                        name: t.name.clone(),
                        reason: format!(
                            "its chunk at {:?} is bytes {:?} of {}, which has {shard_len}: a \
                             truncated or lying checkpoint",
                            c.offsets, c.range, c.file
                        ),
                    });
                }
                chunk_bytes = chunk_bytes.saturating_add(c.range.end - c.range.start);
            }
        }
        let mut infos: Vec<crate::file::TensorInfo> = tensors
            .iter()
            .map(|t| crate::file::TensorInfo {
                name: t.name.clone(),
                // Listed as U8 when candle has no dtype for it, as in a torch.save file.
                dtype: t.dtype.unwrap_or(DType::U8),
                shape: t.shape.clone(),
            })
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos.dedup_by(|a, b| a.name == b.name);
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let dcp = Dcp {
            dir: dir.to_path_buf(),
            tensors,
            index,
            shards,
            chunk_bytes,
        };
        Ok((dcp, infos))
    }

    /// Assembles tensor `name` from its chunks, on the CPU.
    pub(crate) fn load(&self, name: &str) -> Result<candle_core::Tensor> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{reason} (in {})", self.dir.display()),
        };
        let t = &self.tensors[*self
            .index
            .get(name)
            .ok_or_else(|| bad("is not in the checkpoint".into()))?];
        let dtype = t
            .dtype
            .ok_or_else(|| bad("has an element type candle cannot hold".into()))?;
        let es = dtype.size_in_bytes();
        let cap = crate::pth::budget(usize::try_from(self.chunk_bytes).unwrap_or(usize::MAX));
        let total = t
            .shape
            .iter()
            .try_fold(es as u64, |a, &d| a.checked_mul(d as u64))
            .filter(|&n| n <= cap)
            .ok_or_else(|| {
                bad(format!(
                    "its size {:?} needs more memory than its chunks justify",
                    t.shape
                ))
            })?;
        let mut whole = vec![0u8; total as usize];
        for c in &t.chunks {
            let map = &self.shards[&c.file];
            let window = c.range.start as usize..c.range.end as usize;
            let shard = self.dir.join(&c.file);
            let (bytes, got, shape) = crate::pth::read_bare_tensor(&shard, map, window)
                .map_err(|e| bad(format!("its chunk at {:?}: {e}", c.offsets)))?;
            if got != dtype || shape != c.sizes {
                return Err(bad(format!(
                    "its chunk at {:?} holds {got:?} {shape:?}, not {dtype:?} {:?}",
                    c.offsets, c.sizes
                )));
            }
            place(&mut whole, &t.shape, es, c, &bytes);
        }
        Ok(candle_core::Tensor::from_raw_buffer(
            &whole,
            dtype,
            &t.shape,
            &candle_core::Device::Cpu,
        )?)
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
        assert_eq!(check_cover(&[3, 3], &rows), Ok(()));
        let gap = [chunk(&[0, 0], &[2, 3])];
        assert!(check_cover(&[3, 3], &gap).unwrap_err().contains("missing"));
        let overlap = [chunk(&[0, 0], &[2, 3]), chunk(&[1, 0], &[2, 3])];
        assert!(check_cover(&[3, 3], &overlap)
            .unwrap_err()
            .contains("overlap"));
        let past = [chunk(&[0, 0], &[4, 3])];
        assert!(check_cover(&[3, 3], &past).unwrap_err().contains("past"));
        // Overlapping and missing in equal measure still overlaps.
        let both = [chunk(&[0, 0], &[2, 3]), chunk(&[1, 0], &[1, 3])];
        assert!(check_cover(&[3, 3], &both).is_err());
        let huge = [chunk(&[usize::MAX, 0], &[2, 3])];
        assert!(check_cover(&[3, 3], &huge).is_err());
    }

    #[test]
    fn chunks_land_where_their_offsets_say() {
        // A 3 x 4 tensor of bytes 0..12 as two column chunks (cols 0-1, cols 2-3).
        let left = chunk(&[0, 0], &[3, 2]);
        let right = chunk(&[0, 2], &[3, 2]);
        let mut whole = vec![0u8; 12];
        place(&mut whole, &[3, 4], 1, &left, &[0, 1, 4, 5, 8, 9]);
        place(&mut whole, &[3, 4], 1, &right, &[2, 3, 6, 7, 10, 11]);
        assert_eq!(whole, (0..12).collect::<Vec<u8>>());
        // Rows of 2-byte elements, the second chunk shorter.
        let mut whole = vec![0u8; 3 * 2 * 2];
        place(
            &mut whole,
            &[3, 2],
            2,
            &chunk(&[0, 0], &[2, 2]),
            &[1, 1, 2, 2, 3, 3, 4, 4],
        );
        place(
            &mut whole,
            &[3, 2],
            2,
            &chunk(&[2, 0], &[1, 2]),
            &[5, 5, 6, 6],
        );
        assert_eq!(whole, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
    }
}
