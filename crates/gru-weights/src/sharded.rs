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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Result, WeightsError};
use crate::file::{TensorInfo, WeightFile};

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

/// The file to open for `dir`, a folder `save_pretrained` wrote: the first of `KNOWN_FILES` it
/// has; else its one index of safetensors or `torch.save` shards, else its one `.safetensors`
/// file (`model.fp16.safetensors`).
pub(crate) fn file_in_folder(dir: &Path) -> Result<PathBuf> {
    if let Some(known) = KNOWN_FILES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    {
        return Ok(known);
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
        return Ok(p);
    }
    if let Some(p) = pick("safetensors files", &|n| n.ends_with(".safetensors"))? {
        return Ok(p);
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

/// An opened sharded checkpoint.
pub(crate) struct Sharded {
    shards: Vec<WeightFile>,
    /// Listed name -> (shard, the tensor's name inside it).
    owner: HashMap<String, (usize, String)>,
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
        let mut entries: Vec<(&String, &str)> = Vec::with_capacity(weight_map.len());
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
        let (shards, file_of) = open_shards(index, dir, &entries)?;
        let bytes = shards
            .iter()
            .fold(0u64, |a, s| a.saturating_add(s.stored_bytes() as u64));

        let mut infos = Vec::with_capacity(entries.len());
        let mut owner = HashMap::with_capacity(entries.len());
        let mut used: HashSet<(usize, &str)> = HashSet::new();
        let mut work = 0usize;
        for &(name, file) in &entries {
            let ix = file_of[file];
            let shard = &shards[ix];
            let inner = match shard.exact(name) {
                Some(_) => name.as_str(),
                None => {
                    // A name inside a state dict nested in a `torch.save` shard.
                    work = work.saturating_add(shard.state_dicts().len());
                    if work > MAX_RESOLVE_WORK {
                        return Err(WeightsError::file(
                            index,
                            "maps too many names that its shards hold only inside nested \
                             state dicts",
                        ));
                    }
                    shard.resolve(name).map_err(|e| WeightsError::Tensor {
                        name: name.clone(),
                        reason: format!(
                            "is mapped by {} to {}, which does not hold it ({e})",
                            index.display(),
                            shard.path().display()
                        ),
                    })?
                }
            };
            let info = shard.exact(inner).expect("resolved names are listed");
            infos.push(TensorInfo {
                name: name.clone(),
                ..info.clone()
            });
            used.insert((ix, inner));
            owner.insert(name.clone(), (ix, inner.to_string()));
        }
        // Tensors the index does not map: listed from the one shard that has them.
        let mut others: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (ix, shard) in shards.iter().enumerate() {
            for t in shard.tensors() {
                if !owner.contains_key(&t.name) && !used.contains(&(ix, t.name.as_str())) {
                    others.entry(&t.name).or_default().push(ix);
                }
            }
        }
        let mut ambiguous = HashMap::new();
        for (name, holders) in others {
            let info = shards[holders[0]].exact(name).expect("listed by its shard");
            infos.push(info.clone());
            if let [one] = holders.as_slice() {
                owner.insert(name.to_string(), (*one, name.to_string()));
            } else {
                ambiguous.insert(name.to_string(), holders);
            }
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
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
        Ok((
            Self {
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

    /// Loads the stored tensor listed as `name`.
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
        let (ix, inner) = self.owner.get(name).ok_or_else(|| WeightsError::Tensor {
            name: name.to_string(),
            reason: "is in no shard of the index".into(),
        })?;
        self.shards[*ix].load_stored_on(inner, device)
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

/// Opens each file the index's `entries` name once, by its spelling first, then by what it is
/// on disk; returns the shards and each spelling's shard.
fn open_shards<'a>(
    index: &Path,
    dir: &Path,
    entries: &[(&String, &'a str)],
) -> Result<(Vec<WeightFile>, HashMap<&'a str, usize>)> {
    let mut shards = Vec::new();
    let mut file_of: HashMap<&str, usize> = HashMap::new();
    let mut by_id = HashMap::new();
    for &(_, file) in entries {
        if file_of.contains_key(file) {
            continue;
        }
        let path = dir.join(shard_path(index, file)?);
        let id = file_id(&path)?;
        let ix = match by_id.get(&id) {
            Some(&ix) => ix,
            None => {
                if shards.len() == MAX_SHARDS {
                    return Err(WeightsError::file(
                        index,
                        format!("the index names more than {MAX_SHARDS} shard files"),
                    ));
                }
                shards.push(WeightFile::open_shard(&path)?);
                by_id.insert(id, shards.len() - 1);
                shards.len() - 1
            }
        };
        file_of.insert(file, ix);
    }
    Ok((shards, file_of))
}
