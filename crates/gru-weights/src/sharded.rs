//! Hugging Face checkpoints as `save_pretrained`, `huggingface_hub.save_torch_state_dict` and
//! `torch.distributed.checkpoint`'s `HuggingFaceStorageWriter` write them: a folder with one
//! `model.safetensors`, or with shards (`model-00001-of-00003.safetensors`, or
//! `pytorch_model-00001-of-00003.bin`) and an index (`*.index.json`) whose `weight_map` says
//! which shard holds each tensor. The index is JSON, read within a size cap; each shard is opened
//! as the file it is (safetensors or `torch.save`), never as another index or folder.
//!
//! As Hugging Face's loaders do, every tensor of every shard the index names is listed: a name
//! the index maps is read from the shard it maps it to (which must hold it), any other from the
//! one shard that has it (several make it ambiguous, and loading it an error).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::{Result, WeightsError};
use crate::file::{TensorInfo, WeightFile};

/// Largest index read (Hugging Face's own loader stops at 10 MB; a large model's is ~100 KB).
const MAX_INDEX_BYTES: usize = 16 << 20;
/// Most shard files an index may name (each is mapped).
const MAX_SHARDS: usize = 16384;
/// Most folder entries looked at when choosing the file of a folder.
const MAX_FOLDER_ENTRIES: usize = 100_000;

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    weight_map: BTreeMap<String, String>,
}

/// Whether `bytes` (not a safetensors file) start as a JSON object: an index, or nothing we read.
pub(crate) fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The file to open for `dir`, a folder `save_pretrained` wrote: its one index (a safetensors
/// index first, as Hugging Face's loaders prefer), else its one `.safetensors` file, else
/// `pytorch_model.bin`.
pub(crate) fn file_in_folder(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| WeightsError::io(dir, "list", e))?;
    let mut names = Vec::new();
    for entry in entries.take(MAX_FOLDER_ENTRIES) {
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
    if let Some(p) = pick("safetensors indexes", &|n| {
        n.ends_with(".safetensors.index.json")
    })? {
        return Ok(p);
    }
    if let Some(p) = pick("indexes", &|n| n.ends_with(".index.json"))? {
        return Ok(p);
    }
    if let Some(p) = pick("safetensors files", &|n| n.ends_with(".safetensors"))? {
        return Ok(p);
    }
    if let Some(p) = pick("PyTorch model files", &|n| n == "pytorch_model.bin")? {
        return Ok(p);
    }
    Err(WeightsError::file(
        dir,
        "is a folder, but neither a torch.distributed.checkpoint (no `.metadata`) nor a Hugging \
         Face model folder (no `*.index.json`, `*.safetensors` or `pytorch_model.bin`); pass the \
         weight file itself",
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
        let json: IndexJson = serde_json::from_slice(text).map_err(|e| {
            WeightsError::format(
                index,
                "not a sharded checkpoint index (a JSON object with a `weight_map` of tensor \
                 names to shard files)",
                e,
            )
        })?;
        if json.weight_map.is_empty() {
            return Err(WeightsError::file(
                index,
                "the index's `weight_map` is empty",
            ));
        }
        let dir = index
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = Vec::new();
        let mut file_of: HashMap<&str, usize> = HashMap::new();
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        for file in json.weight_map.values() {
            if file_of.contains_key(file.as_str()) {
                continue;
            }
            let rel = shard_path(index, file)?;
            let next = by_path.len();
            let ix = *by_path.entry(rel.clone()).or_insert(next);
            if ix == files.len() {
                if files.len() == MAX_SHARDS {
                    return Err(WeightsError::file(
                        index,
                        format!("the index names more than {MAX_SHARDS} shard files"),
                    ));
                }
                files.push(rel);
            }
            file_of.insert(file, ix);
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut bytes = 0u64;
        for rel in &files {
            let shard = WeightFile::open_shard(&dir.join(rel))?;
            bytes = bytes.saturating_add(shard.stored_bytes() as u64);
            shards.push(shard);
        }

        let mut infos = Vec::with_capacity(json.weight_map.len());
        let mut owner = HashMap::with_capacity(json.weight_map.len());
        let mut used: HashSet<(usize, &str)> = HashSet::new();
        for (name, file) in &json.weight_map {
            let ix = file_of[file.as_str()];
            let shard = &shards[ix];
            let inner = shard.resolve(name).map_err(|_| WeightsError::Tensor {
                name: name.clone(),
                reason: format!(
                    "is mapped by {} to {}, which does not hold it",
                    index.display(),
                    shard.path().display()
                ),
            })?;
            let info = shard.info(inner).expect("resolved names are listed");
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
            let info = shards[holders[0]].info(name).expect("listed by its shard");
            infos.push(info.clone());
            if let [one] = holders.as_slice() {
                owner.insert(name.to_string(), (*one, name.to_string()));
            } else {
                ambiguous.insert(name.to_string(), holders);
            }
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let metadata = json
            .metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
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
