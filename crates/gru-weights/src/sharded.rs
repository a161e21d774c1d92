//! Hugging Face checkpoints as `save_pretrained`, `huggingface_hub.save_torch_state_dict` and
//! `torch.distributed.checkpoint`'s `HuggingFaceStorageWriter` write them: a folder with one
//! `model.safetensors`, or with shards (`model-00001-of-00003.safetensors`, or
//! `pytorch_model-00001-of-00003.bin`) and an index (`*.index.json`) whose `weight_map` says
//! which shard holds each tensor. The index is JSON, read within a size cap; each shard is opened
//! as the file it is (safetensors or `torch.save`), never as another index or folder, and each
//! file once, however the index spells its path.
//!
//! As Hugging Face's loaders do, every tensor of every shard the index names is listed: a name
//! the index maps is read from the shard it maps it to (which must hold it), any other from the
//! one shard that has it (several make it ambiguous, and loading it an error).
//!
//! Safetensors files `torch.distributed.checkpoint` wrote (`HuggingFaceStorageWriter`; each rank
//! its own `shard-0000R-model-*.safetensors`, with no index unless consolidated) hold chunks: their
//! `DCP_SHARDING_INFO` metadata says where each lies in its whole tensor. As PyTorch's
//! `HuggingFaceStorageReader` does, a folder of them is read as one checkpoint (every
//! `.safetensors` file in it), each tensor as large as its chunks reach, assembled from them; the
//! chunks must cover it exactly once. No file records the number of ranks: a folder missing the
//! last ranks' files, or the first rank's file alone, cannot be told from a whole checkpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::dcp::{check_cover, Assembly};
use crate::error::{Result, WeightsError};
use crate::file::{Format, TensorInfo, WeightFile};

/// Largest index read (Hugging Face's own loader stops at 10 MB; a large model's is ~100 KB).
const MAX_INDEX_BYTES: usize = 16 << 20;
/// Most shard files an index may name (each is mapped).
const MAX_SHARDS: usize = 16384;
/// Most folder entries looked at when choosing the file of a folder.
const MAX_FOLDER_ENTRIES: usize = 100_000;
/// Most state-dict lookups spent matching index names to names nested in `torch.save` shards.
const MAX_RESOLVE_WORK: usize = 1 << 22;

/// Whether `bytes` (not a safetensors file) start as a JSON object: an index, or nothing we read.
pub(crate) fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The files `from_pretrained` looks for, in its order (transformers', then diffusers' names):
/// one safetensors file before its index, safetensors before `torch.save`.
const KNOWN_FILES: [&str; 8] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
];

/// What a folder holds.
pub(crate) enum InFolder {
    /// A file to open (itself an index, or one checkpoint).
    File(PathBuf),
    /// Safetensors files `torch.distributed.checkpoint` wrote, to read together.
    DcpSafetensors(Vec<PathBuf>),
}

/// The metadata key under which `torch.distributed.checkpoint` records, for each tensor of a
/// safetensors file it wrote, where that chunk lies in its whole tensor.
const DCP_SHARDING_INFO: &str = "DCP_SHARDING_INFO";

/// For a safetensors file `torch.distributed.checkpoint` wrote: each tensor's offsets in the
/// whole tensor it is a chunk of (`DCP_SHARDING_INFO`); `None` for any other file.
pub(crate) fn dcp_offsets(f: &WeightFile) -> Result<Option<HashMap<String, Vec<usize>>>> {
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
    let json: HashMap<String, serde_json::Value> =
        serde_json::from_str(info).map_err(|e| bad(format!("is not a JSON object ({e})")))?;
    let mut out = HashMap::with_capacity(json.len());
    for t in f.tensors() {
        let offsets = json
            .get(&t.name)
            .and_then(|v| v.get("saved_offsets"))
            .and_then(serde_json::Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
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
fn dcp_tensor_names(path: &Path) -> Option<HashSet<String>> {
    let file = crate::regular::open_regular(path).ok()?;
    let map = crate::file::map(path, &file).ok()?;
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
    let others = std::fs::read_dir(dir)
        .map_err(|e| WeightsError::io(dir, "list", e))?
        .take(MAX_FOLDER_ENTRIES)
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors")
                && file_id(p).is_ok_and(|id| id != me)
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

/// The file to open for `dir`, a folder `save_pretrained` wrote: the first of `KNOWN_FILES` it
/// has; else its one index of safetensors or `torch.save` shards, else its one `.safetensors`
/// file (`model.fp16.safetensors`); or, for several safetensors files carrying
/// `DCP_SHARDING_INFO`, all its safetensors files.
pub(crate) fn file_in_folder(dir: &Path) -> Result<InFolder> {
    if let Some(known) = KNOWN_FILES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    {
        return Ok(InFolder::File(known));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WeightsError::io(dir, "list", e))? {
        if names.len() == MAX_FOLDER_ENTRIES {
            return Err(WeightsError::file(
                dir,
                format!(
                    "the folder has more than {MAX_FOLDER_ENTRIES} entries and none of \
                     `model.safetensors`, `pytorch_model.bin` or their indexes; pass the file"
                ),
            ));
        }
        let entry = entry.map_err(|e| WeightsError::io(dir, "list", e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    let pick = |what: &str, matches: &dyn Fn(&str) -> bool| -> Result<Option<PathBuf>> {
        let found: Vec<&String> = names
            .iter()
            .filter(|n| matches(n) && dir.join(n).is_file())
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(dir.join(one))),
            many => Err(WeightsError::file(
                dir,
                format!(
                    "the folder holds {} {what}: {}; pass the one to read",
                    many.len(),
                    many.iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    };
    // `x.safetensors.index.json`, or a variant's `model.safetensors.index.fp16.json`; not
    // TensorFlow's or Flax's. An index first: its shards are many safetensors files.
    let index = |n: &str| {
        n.ends_with(".json") && (n.contains(".safetensors.index") || n.contains(".bin.index"))
    };
    if let Some(p) = pick("indexes", &index)? {
        return Ok(InFolder::File(p));
    }
    let safetensors: Vec<PathBuf> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    if safetensors.len() > 1 && safetensors.iter().any(|p| dcp_tensor_names(p).is_some()) {
        return Ok(InFolder::DcpSafetensors(safetensors));
    }
    if let Some(p) = pick("safetensors files", &|n| n.ends_with(".safetensors"))? {
        return Ok(InFolder::File(p));
    }
    Err(WeightsError::file(
        dir,
        "is a folder, but neither a torch.distributed.checkpoint (no `.metadata`) nor a Hugging \
         Face model folder (no `*.safetensors`, `pytorch_model.bin` or index of shards); pass \
         the weight file itself",
    ))
}

/// A shard's name from the index, as a path inside the index's folder: relative, without `..`,
/// a drive or a root (on any OS's reading of it), and `.` components dropped.
fn shard_path(index: &Path, name: &str) -> Result<PathBuf> {
    let bad = |why: &str| {
        WeightsError::file(
            index,
            format!("shard {name:?} in `weight_map` {why}; shards are files beside the index"),
        )
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    // Windows separators and drives too: the same index must mean the same files everywhere.
    if name.contains('\\') || name.contains(':') || name.contains('\0') {
        return Err(bad("has a `\\`, `:` or NUL"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("leaves the folder (`..`)")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("is an absolute path")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(out)
}

/// What tells two paths to one file from two files: device and inode where there are some
/// (links, names differing in case on a case-insensitive disk), else the canonical path.
fn file_id(path: &Path) -> Result<(u64, u64, PathBuf)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| WeightsError::io(path, "open", e))?;
        Ok((m.dev(), m.ino(), PathBuf::new()))
    }
    #[cfg(not(unix))]
    {
        let c = std::fs::canonicalize(path).map_err(|e| WeightsError::io(path, "open", e))?;
        Ok((0, 0, c))
    }
}

/// Where a listed tensor is.
enum Held {
    /// In one shard, under this name.
    One(usize, String),
    /// In chunks of a distributed checkpoint, assembled on load.
    Chunks {
        dtype: DType,
        shape: Vec<usize>,
        pieces: Vec<Piece>,
    },
}

/// One chunk: in shard `shard` under `name`, at `offsets` of the whole tensor, of `sizes`.
struct Piece {
    shard: usize,
    name: String,
    offsets: Vec<usize>,
    sizes: Vec<usize>,
}

/// An opened sharded checkpoint.
pub(crate) struct Sharded {
    /// The index, or the folder of a distributed checkpoint's safetensors files.
    path: PathBuf,
    shards: Vec<WeightFile>,
    /// Listed name -> where it is.
    owner: HashMap<String, Held>,
    /// Names no index entry maps that several shards hold, with those shards.
    ambiguous: HashMap<String, Vec<usize>>,
    /// The index's `metadata`, values that are not strings as their JSON text.
    pub metadata: HashMap<String, String>,
    /// Bytes of all shards together.
    pub bytes: u64,
}

impl Sharded {
    /// Reads the index at `index` (its bytes `text`) and opens every shard it names; returns
    /// the listing of every tensor, sorted.
    pub(crate) fn open(index: &Path, text: &[u8]) -> Result<(Self, Vec<TensorInfo>)> {
        if text.len() > MAX_INDEX_BYTES {
            return Err(WeightsError::file(
                index,
                format!(
                    "a {}-byte JSON file is past the {MAX_INDEX_BYTES}-byte cap on a sharded \
                     checkpoint's index",
                    text.len()
                ),
            ));
        }
        let not_index = |why: String| {
            WeightsError::file(
                index,
                format!(
                    "not a sharded checkpoint index (a JSON object with a `weight_map` of tensor \
                     names to shard files): {why}"
                ),
            )
        };
        // As Python's `json` reads it: a repeated key keeps its last value.
        let json: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| not_index(e.to_string()))?;
        let weight_map = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| not_index("it has no `weight_map` object".into()))?;
        let mut entries: Vec<(&str, &str)> = Vec::with_capacity(weight_map.len());
        for (name, file) in weight_map {
            let file = file
                .as_str()
                .ok_or_else(|| not_index(format!("`{name}` maps to {file}, not a file name")))?;
            entries.push((name, file));
        }
        if entries.is_empty() {
            return Err(WeightsError::file(
                index,
                "the index's `weight_map` is empty",
            ));
        }
        let dir = index
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let files: Vec<PathBuf> = entries
            .iter()
            .map(|&(_, file)| shard_path(index, file).map(|rel| dir.join(rel)))
            .collect::<Result<_>>()?;
        let (shards, shard_of) = open_shards(index, &files)?;
        let mapped: Vec<(&str, usize)> = entries
            .iter()
            .zip(&shard_of)
            .map(|(&(name, _), &ix)| (name, ix))
            .collect();
        // Hugging Face's loaders ignore `metadata`: one that is not an object is no error.
        let metadata = json
            .get("metadata")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| match v {
                        serde_json::Value::String(s) => (k.clone(), s.clone()),
                        other => (k.clone(), other.to_string()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self::list(index, shards, &mapped, metadata)
    }

    /// Opens the safetensors files a distributed checkpoint wrote into folder `dir`, together.
    pub(crate) fn open_set(dir: &Path, files: &[PathBuf]) -> Result<(Self, Vec<TensorInfo>)> {
        let (shards, _) = open_shards(dir, files)?;
        Self::list(dir, shards, &[], HashMap::new())
    }

    /// Lists the tensors of `shards`: those of `mapped` (name, shard) from their shard, the
    /// others from the one shard that has them, chunks of a distributed checkpoint assembled.
    fn list(
        path: &Path,
        shards: Vec<WeightFile>,
        mapped: &[(&str, usize)],
        metadata: HashMap<String, String>,
    ) -> Result<(Self, Vec<TensorInfo>)> {
        let bytes = shards
            .iter()
            .fold(0u64, |a, s| a.saturating_add(s.stored_bytes() as u64));
        // Every tensor of a file with `DCP_SHARDING_INFO` is a chunk.
        let mut pieces: BTreeMap<String, Vec<Piece>> = BTreeMap::new();
        for (ix, shard) in shards.iter().enumerate() {
            let Some(mut offsets) = dcp_offsets(shard)? else {
                continue;
            };
            for t in shard.tensors() {
                pieces.entry(t.name.clone()).or_default().push(Piece {
                    shard: ix,
                    name: t.name.clone(),
                    offsets: offsets.remove(&t.name).expect("one per tensor"),
                    sizes: t.shape.clone(),
                });
            }
        }

        let mut infos = Vec::with_capacity(mapped.len());
        let mut owner = HashMap::with_capacity(mapped.len());
        let mut used: HashSet<(usize, &str)> = HashSet::new();
        let mut work = 0usize;
        for &(name, ix) in mapped {
            if pieces.contains_key(name) {
                continue; // listed from its chunks below
            }
            let shard = &shards[ix];
            let inner = match shard.exact(name) {
                Some(_) => name,
                None => {
                    // A name inside a state dict nested in a `torch.save` shard.
                    work = work.saturating_add(shard.state_dicts().len());
                    if work > MAX_RESOLVE_WORK {
                        return Err(WeightsError::file(
                            path,
                            "maps too many names that its shards hold only inside nested \
                             state dicts",
                        ));
                    }
                    shard.resolve(name).map_err(|e| WeightsError::Tensor {
                        name: name.to_string(),
                        reason: format!(
                            "is mapped by {} to {}, which does not hold it ({e})",
                            path.display(),
                            shard.path().display()
                        ),
                    })?
                }
            };
            let info = shard.exact(inner).expect("resolved names are listed");
            infos.push(TensorInfo {
                name: name.to_string(),
                ..info.clone()
            });
            used.insert((ix, inner));
            owner.insert(name.to_string(), Held::One(ix, inner.to_string()));
        }
        // Tensors the index does not map: listed from the one shard that has them.
        let mut others: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut ambiguous = HashMap::new();
        for (ix, shard) in shards.iter().enumerate() {
            for t in shard.tensors() {
                if let Some(p) = pieces.get(&t.name) {
                    // A whole tensor in one file and chunks of it in others: neither is chosen.
                    if !p.iter().any(|p| p.shard == ix) {
                        let mut holders: Vec<usize> = p.iter().map(|p| p.shard).collect();
                        holders.push(ix);
                        ambiguous.insert(t.name.clone(), holders);
                    }
                } else if !owner.contains_key(&t.name) && !used.contains(&(ix, t.name.as_str())) {
                    others.entry(&t.name).or_default().push(ix);
                }
            }
        }
        for (name, holders) in others {
            let info = shards[holders[0]].exact(name).expect("listed by its shard");
            infos.push(info.clone());
            if let [one] = holders.as_slice() {
                owner.insert(name.to_string(), Held::One(*one, name.to_string()));
            } else {
                ambiguous.insert(name.to_string(), holders);
            }
        }
        for (name, pieces) in pieces {
            let (info, held) = whole_of(&shards, &name, pieces)?;
            infos.push(info);
            owner.insert(name, held);
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((
            Self {
                path: path.to_path_buf(),
                shards,
                owner,
                ambiguous,
                metadata,
                bytes,
            },
            infos,
        ))
    }

    /// The shards, in the order the index first names them.
    pub(crate) fn shards(&self) -> &[WeightFile] {
        &self.shards
    }

    /// Loads the stored tensor listed as `name` (on the CPU first when assembled from chunks).
    pub(crate) fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        if let Some(holders) = self.ambiguous.get(name) {
            return Err(WeightsError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "is held by {} shards the index does not choose between ({}); refusing to guess",
                    holders.len(),
                    holders
                        .iter()
                        .map(|&i| self.shards[i].path().display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        match self.owner.get(name) {
            None => Err(WeightsError::Tensor {
                name: name.to_string(),
                reason: format!("is in no shard of {}", self.path.display()),
            }),
            Some(Held::One(ix, inner)) => self.shards[*ix].load_stored_on(inner, device),
            Some(Held::Chunks {
                dtype,
                shape,
                pieces,
            }) => Ok(self
                .assemble(name, *dtype, shape, pieces)?
                .to_device(device)?),
        }
    }

    /// Places each chunk's stored bytes into the whole tensor; none may overlap another.
    fn assemble(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        pieces: &[Piece],
    ) -> Result<Tensor> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{reason} (in {})", self.path.display()),
        };
        let es = dtype.size_in_bytes();
        // The chunks hold as many elements as the tensor (checked on open): the whole is no
        // larger than the bytes the files hold for it.
        let total = shape.iter().product::<usize>() * es;
        let mut whole = Assembly::new(shape, es, total).map_err(bad)?;
        for p in pieces {
            let (bytes, got, sizes) = self.shards[p.shard].safetensors_data(&p.name)?;
            if got != dtype || sizes != p.sizes {
                return Err(bad(format!(
                    "its chunk at {:?} holds {got:?} {sizes:?}, not {dtype:?} {:?}",
                    p.offsets, p.sizes
                )));
            }
            whole.place((&p.offsets, &p.sizes), bytes).map_err(|at| {
                bad(format!(
                    "its chunk at {:?} overlaps another at flat index {at}",
                    p.offsets
                ))
            })?;
        }
        Ok(whole.into_tensor(dtype)?)
    }

    /// Parametrization lists known to be chained, from the shards that can tell (`None` when
    /// one cannot).
    pub(crate) fn chained(&self) -> Option<Vec<String>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(s.chained()?);
        }
        all.sort();
        all.dedup();
        Some(all)
    }
}

/// The whole tensor `name` its chunks `pieces` make: as large as they reach, of their one dtype,
/// covered by them exactly as many times as it has elements (overlaps are found when placed).
fn whole_of(shards: &[WeightFile], name: &str, pieces: Vec<Piece>) -> Result<(TensorInfo, Held)> {
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
    let info = TensorInfo {
        name: name.to_string(),
        dtype,
        shape: shape.clone(),
    };
    let held = match pieces.as_slice() {
        [one] if one.offsets.iter().all(|&o| o == 0) => Held::One(one.shard, one.name.clone()),
        _ => Held::Chunks {
            dtype,
            shape,
            pieces,
        },
    };
    Ok((info, held))
}

/// Opens each of `files` once, however spelled (by what it is on disk); returns the shards and
/// each file's shard.
fn open_shards(path: &Path, files: &[PathBuf]) -> Result<(Vec<WeightFile>, Vec<usize>)> {
    let mut shards = Vec::new();
    let mut shard_of = Vec::with_capacity(files.len());
    let mut by_spelling: HashMap<&Path, usize> = HashMap::new();
    let mut by_id = HashMap::new();
    for file in files {
        if let Some(&ix) = by_spelling.get(file.as_path()) {
            shard_of.push(ix);
            continue;
        }
        let id = file_id(file)?;
        let ix = match by_id.get(&id) {
            Some(&ix) => ix,
            None => {
                if shards.len() == MAX_SHARDS {
                    return Err(WeightsError::file(
                        path,
                        format!("names more than {MAX_SHARDS} shard files"),
                    ));
                }
                shards.push(WeightFile::open_shard(file)?);
                by_id.insert(id, shards.len() - 1);
                shards.len() - 1
            }
        };
        by_spelling.insert(file, ix);
        shard_of.push(ix);
    }
    Ok((shards, shard_of))
}
