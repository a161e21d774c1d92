//! Safetensors files `torch.distributed.checkpoint` wrote (`HuggingFaceStorageWriter`; with
//! `save_distributed=True` each rank its own `shard-0000R-model-*.safetensors`, with no index
//! unless consolidated) hold chunks: their `DCP_SHARDING_INFO` metadata says where each lies in
//! its whole tensor. As PyTorch's `HuggingFaceStorageReader` does, a folder of them is read as
//! one checkpoint (every `.safetensors` file in it, `folder`), each tensor as large as its chunks
//! reach, assembled from them; the chunks must cover it exactly once. No file records the number
//! of ranks: a folder missing the last ranks' files, or the first rank's file alone, cannot be
//! told from a whole checkpoint.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::container::{map, Container, Format};
use super::dcp::assembly::{check_cover, Assembly};
use crate::error::{Result, WeightsError};
use crate::io::regular::{distinct_files, file_id, open_regular, MAX_FOLDER_ENTRIES};

/// The metadata key under which `torch.distributed.checkpoint` records, for each tensor of a
/// safetensors file it wrote, where that chunk lies in its whole tensor.
const DCP_SHARDING_INFO: &str = "DCP_SHARDING_INFO";

/// For a safetensors file `torch.distributed.checkpoint` wrote: each tensor's offsets in the
/// whole tensor it is a chunk of (`DCP_SHARDING_INFO`); `None` for any other file.
pub(crate) fn offsets(f: &dyn Container) -> Result<Option<HashMap<String, Vec<usize>>>> {
    if f.format() != Format::Safetensors {
        return Ok(None);
    }
    let meta = f.metadata();
    let Some(info) = meta.get(DCP_SHARDING_INFO) else {
        return Ok(None);
    };
    let bad = |why: String| {
        WeightsError::file(f.path(), format!("its {DCP_SHARDING_INFO} metadata {why}"))
    };
    // Typed, so that the numbers take 8 bytes each, not a JSON value's 32.
    #[derive(serde::Deserialize)]
    struct Placed {
        saved_offsets: Vec<u64>,
    }
    let json: HashMap<String, Placed> =
        serde_json::from_str(info).map_err(|e| bad(format!("is not what torch writes ({e})")))?;
    let mut out = HashMap::with_capacity(json.len());
    for t in f.tensors() {
        let offsets = json
            .get(&t.name)
            .and_then(|p| {
                p.saved_offsets
                    .iter()
                    .map(|&x| usize::try_from(x).ok())
                    .collect::<Option<Vec<usize>>>()
            })
            .filter(|o| o.len() == t.shape.len())
            .ok_or_else(|| {
                bad(format!(
                    "gives no `saved_offsets` of rank {} for `{}`",
                    t.shape.len(),
                    t.name
                ))
            })?;
        out.insert(t.name.clone(), offsets);
    }
    Ok(Some(out))
}

/// The tensor names of the safetensors file at `path` if it carries `DCP_SHARDING_INFO` (read
/// from its header only; a file that cannot be read carries none).
pub(crate) fn dcp_tensor_names(path: &Path) -> Option<HashSet<String>> {
    let file = open_regular(path).ok()?;
    let map = map(path, &file).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map).ok()?;
    let carries = meta
        .metadata()
        .as_ref()
        .is_some_and(|m| m.contains_key(DCP_SHARDING_INFO));
    carries.then(|| meta.tensors().into_keys().collect())
}

/// A safetensors file with `offsets` (its `DCP_SHARDING_INFO`) opened on its own: refused when
/// another file of its folder holds chunks of the same tensors (the folder is the checkpoint),
/// or when its own chunks do not start at the origin (the rest are missing). A writer that saved
/// whole tensors into several files (`fqn_to_index_mapping`, one rank) gives each file its own
/// names, and each file reads alone. What cannot be told: the first rank's file of a distributed
/// save, moved away from the others, looks like a whole checkpoint (no file records the number
/// of ranks; PyTorch's reader cannot tell either).
pub(crate) fn check_lone_chunks(path: &Path, offsets: &HashMap<String, Vec<usize>>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let me = file_id(path)?;
    let siblings: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| WeightsError::io(dir, "list", e))?
        .take(MAX_FOLDER_ENTRIES)
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    // Each file's header once, however many links reach it; not this file's.
    let others = distinct_files(&siblings)
        .into_iter()
        .filter(|p| {
            file_id(p).is_ok_and(|id| id != me)
                && dcp_tensor_names(p)
                    .is_some_and(|names| offsets.keys().any(|n| names.contains(n)))
        })
        .count();
    if others > 0 {
        return Err(WeightsError::file(
            path,
            format!(
                "is one of {} safetensors files of a torch.distributed.checkpoint holding chunks \
                 of the same tensors: pass the folder {}",
                others + 1,
                dir.display()
            ),
        ));
    }
    if let Some((name, at)) = offsets.iter().find(|(_, o)| o.iter().any(|&x| x != 0)) {
        return Err(WeightsError::Tensor {
            name: name.clone(),
            reason: format!(
                "is a chunk at {at:?} of a tensor of a torch.distributed.checkpoint whose other \
                 chunks are not beside {}",
                path.display()
            ),
        });
    }
    Ok(())
}

/// One chunk: in shard `shard` under `name`, at `offsets` of the whole tensor, of `sizes`.
pub(crate) struct Piece {
    pub shard: usize,
    pub name: String,
    pub offsets: Vec<usize>,
    pub sizes: Vec<usize>,
}

/// A tensor held in chunks: its dtype, its shape (as far as the chunks reach), the chunks.
pub(crate) struct Chunked {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pieces: Vec<Piece>,
}

impl Chunked {
    /// The whole tensor `name` its chunks `pieces` make: as large as they reach, of their one
    /// dtype, covered by them exactly as many times as it has elements (overlaps are found when
    /// placed).
    pub(crate) fn new(
        shards: &[Box<dyn Container>],
        name: &str,
        pieces: Vec<Piece>,
    ) -> Result<Self> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{reason} (chunks of a torch.distributed.checkpoint)"),
        };
        let first = shards[pieces[0].shard]
            .exact(&pieces[0].name)
            .expect("listed by its shard");
        let (dtype, rank) = (first.dtype, first.shape.len());
        let mut shape = vec![0usize; rank];
        for p in &pieces {
            let info = shards[p.shard].exact(&p.name).expect("listed by its shard");
            if info.dtype != dtype || p.sizes.len() != rank {
                return Err(bad(format!(
                    "has chunks of different dtypes or ranks ({dtype:?} {:?} and {:?} {:?})",
                    first.shape, info.dtype, info.shape
                )));
            }
            for d in 0..rank {
                let end = p.offsets[d]
                    .checked_add(p.sizes[d])
                    .ok_or_else(|| bad(format!("its chunk at {:?} overflows", p.offsets)))?;
                shape[d] = shape[d].max(end);
            }
        }
        check_cover(
            &shape,
            pieces.iter().map(|p| (&p.offsets[..], &p.sizes[..])),
        )
        .map_err(bad)?;
        Ok(Self {
            dtype,
            shape,
            pieces,
        })
    }

    /// The shard and name of its one chunk when that chunk is the whole tensor.
    pub(crate) fn whole_in_one(&self) -> Option<(usize, &str)> {
        match self.pieces.as_slice() {
            [one] if one.offsets.iter().all(|&o| o == 0) => Some((one.shard, &one.name)),
            _ => None,
        }
    }

    /// Places each chunk's stored bytes (of `shards`, read from `path`) into the whole tensor
    /// `name`, on the CPU; none may overlap another.
    pub(crate) fn assemble(
        &self,
        name: &str,
        path: &Path,
        shards: &[Box<dyn Container>],
    ) -> Result<Tensor> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{reason} (in {})", path.display()),
        };
        let (dtype, shape) = (self.dtype, &self.shape);
        let es = dtype.size_in_bytes();
        // The chunks hold as many elements as the tensor (checked on open): the whole is no
        // larger than the bytes the files hold for it.
        let total = match shape.contains(&0) {
            true => 0,
            false => shape
                .iter()
                .try_fold(es, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("its size {shape:?} overflows")))?,
        };
        let mut whole = Assembly::new(shape, dtype, total).map_err(bad)?;
        for p in &self.pieces {
            let (bytes, got, sizes) = shards[p.shard].stored_data(&p.name)?;
            whole
                .put((&p.offsets, &p.sizes), got, &sizes, bytes)
                .map_err(bad)?;
        }
        Ok(whole.into_tensor()?)
    }
}
