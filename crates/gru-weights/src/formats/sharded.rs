//! Sharded checkpoints as `save_pretrained`, `huggingface_hub.save_torch_state_dict` and
//! `torch.distributed.checkpoint`'s `HuggingFaceStorageWriter` write them: shards
//! (`model-00001-of-00003.safetensors`, or `pytorch_model-00001-of-00003.bin`) and an index
//! (`*.index.json`) whose `weight_map` says which shard holds each tensor, or a folder of a
//! distributed checkpoint's safetensors files (`dcp_safetensors`). The index is JSON, read within a size cap; each shard is opened
//! as the file it is (safetensors or `torch.save`), never as another index or folder, and each
//! file once, however the index spells its path.
//!
//! As Hugging Face's loaders do, every tensor of every shard the index names is listed: a name
//! the index maps is read from the shard it maps it to (which must hold it), any other from the
//! one shard that has it (several make it ambiguous, and loading it an error).
//! A tensor that files with `DCP_SHARDING_INFO` hold in chunks is assembled from them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use candle_core::{Device, Tensor};

use super::container::{Container, Format, TensorInfo};
use super::dcp_safetensors::{self, Chunked, Piece};
use super::single;
use crate::error::{Result, WeightsError};
use crate::io::regular::file_id;

/// Largest index read (Hugging Face's own loader stops at 10 MB; a large model's is ~100 KB).
const MAX_INDEX_BYTES: usize = 16 << 20;
/// Most shard files an index may name (each is mapped).
const MAX_SHARDS: usize = 16384;
/// Most state-dict lookups spent matching index names to names nested in `torch.save` shards.
const MAX_RESOLVE_WORK: usize = 1 << 22;

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

/// Where a listed tensor is.
enum Held {
    /// In one shard, under this name.
    One(usize, String),
    /// In chunks of a distributed checkpoint, assembled on load.
    Chunks(Chunked),
}

/// An opened sharded checkpoint.
pub(crate) struct Sharded {
    /// The index, or the folder of a distributed checkpoint's safetensors files.
    path: PathBuf,
    shards: Vec<Box<dyn Container>>,
    /// Every listed tensor, sorted by name.
    infos: Vec<TensorInfo>,
    /// Listed name -> where it is.
    owner: HashMap<String, Held>,
    /// Names no index entry maps that several shards hold, with those shards.
    ambiguous: HashMap<String, Vec<usize>>,
    /// The index's `metadata`, values that are not strings as their JSON text.
    metadata: HashMap<String, String>,
    /// Bytes of all shards together.
    bytes: u64,
}

impl Sharded {
    /// Reads the index at `index` (its bytes `text`) and opens every shard it names; returns
    /// the listing of every tensor, sorted.
    pub(crate) fn open(index: &Path, text: &[u8]) -> Result<Self> {
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
    pub(crate) fn open_set(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        let (shards, _) = open_shards(dir, files)?;
        Self::list(dir, shards, &[], HashMap::new())
    }

    /// Lists the tensors of `shards`: those of `mapped` (name, shard) from their shard, the
    /// others from the one shard that has them, chunks of a distributed checkpoint assembled.
    fn list(
        path: &Path,
        shards: Vec<Box<dyn Container>>,
        mapped: &[(&str, usize)],
        metadata: HashMap<String, String>,
    ) -> Result<Self> {
        let bytes = shards
            .iter()
            .fold(0u64, |a, s| a.saturating_add(s.stored_bytes() as u64));
        // Every tensor of a file with `DCP_SHARDING_INFO` is a chunk.
        let mut pieces: BTreeMap<String, Vec<Piece>> = BTreeMap::new();
        for (ix, shard) in shards.iter().enumerate() {
            let Some(mut offsets) = dcp_safetensors::offsets(shard.as_ref())? else {
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
            let chunked = Chunked::new(&shards, &name, pieces)?;
            infos.push(TensorInfo {
                name: name.clone(),
                dtype: chunked.dtype,
                shape: chunked.shape.clone(),
            });
            let held = match chunked.whole_in_one() {
                Some((ix, inner)) => Held::One(ix, inner.to_string()),
                None => Held::Chunks(chunked),
            };
            owner.insert(name, held);
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            path: path.to_path_buf(),
            shards,
            infos,
            owner,
            ambiguous,
            metadata,
            bytes,
        })
    }
}

impl Container for Sharded {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> Format {
        Format::Sharded
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    fn take_tensors(&mut self) -> Vec<TensorInfo> {
        std::mem::take(&mut self.infos)
    }

    /// The shards, in the order the index first names them.
    fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.path().to_path_buf()).collect()
    }

    fn stored_bytes(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(usize::MAX)
    }

    fn metadata(&self) -> HashMap<String, String> {
        self.metadata.clone()
    }

    /// The index's metadata and every shard's.
    fn tied_names(&self) -> Vec<(String, String)> {
        let mut pairs = self.metadata().into_iter().collect::<Vec<_>>();
        pairs.extend(self.shards.iter().flat_map(|s| s.metadata()));
        pairs
    }

    fn quantized_note(&self) -> Option<String> {
        self.shards.iter().find_map(|s| s.quantized_note())
    }

    /// Loads the stored tensor listed as `name` (on the CPU first when assembled from chunks).
    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
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
            Some(Held::One(ix, inner)) => self.shards[*ix].load(inner, device),
            Some(Held::Chunks(c)) => Ok(c
                .assemble(name, &self.path, &self.shards)?
                .to_device(device)?),
        }
    }

    /// Parametrization lists known to be chained, from the shards that can tell (`None` when
    /// one cannot).
    fn chained(&self) -> Option<Vec<String>> {
        let mut all = Vec::new();
        for s in &self.shards {
            for c in s.chained()? {
                // An index may name a shard's tensors without the key path of the state dict
                // holding them (`cell.w` for `sd.cell.w`): its chains are known by both names.
                for k in s.state_dicts().iter().filter(|k| !k.is_empty()) {
                    if let Some(inner) =
                        c.strip_prefix(k.as_str()).and_then(|r| r.strip_prefix('.'))
                    {
                        all.push(inner.to_string());
                    }
                }
                all.push(c);
            }
        }
        all.sort();
        all.dedup();
        Some(all)
    }
}

/// The opened shards, and for each file asked for, its shard's index.
type OpenedShards = (Vec<Box<dyn Container>>, Vec<usize>);

/// Opens each of `files` once, however spelled (by what it is on disk); returns the shards and
/// each file's shard. The shards share one budget of tensors and name bytes (that of one file):
/// each shard's reader keeps within it alone, so without a shared count a checkpoint of many
/// small shards could name `shards x` the budget.
fn open_shards(path: &Path, files: &[PathBuf]) -> Result<OpenedShards> {
    use crate::pickle::torch::{MAX_NAME_BYTES, MAX_TENSORS};
    let (mut tensors, mut name_bytes) = (0usize, 0usize);
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
                let shard = single::open_shard(file)?;
                tensors += shard.tensors().len();
                name_bytes += shard.tensors().iter().map(|t| t.name.len()).sum::<usize>();
                if tensors > MAX_TENSORS || name_bytes > MAX_NAME_BYTES {
                    return Err(WeightsError::file(
                        path,
                        format!(
                            "its shards name more than {MAX_TENSORS} tensors or {MAX_NAME_BYTES} \
                             bytes of names in all (the budget of one file)"
                        ),
                    ));
                }
                shards.push(shard);
                by_id.insert(id, shards.len() - 1);
                shards.len() - 1
            }
        };
        by_spelling.insert(file, ix);
        shard_of.push(ix);
    }
    Ok((shards, shard_of))
}
