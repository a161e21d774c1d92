//! `WeightFile`: a safetensors file or a PyTorch checkpoint (zip, legacy, TorchScript, `torch.export`),
//! memory-mapped and opened once, or a folder of them (`torch.distributed.checkpoint`, Hugging Face
//! shards), listing its tensors by name, dtype and shape, and loading the ones asked for.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use crate::dcp_safetensors;
use crate::error::{Result, WeightsError};
use crate::folder::{self, InFolder};
use crate::pth;
use crate::reparam::{self, Reparam};
use crate::sharded::{self, Sharded};

/// Name, dtype and shape of one tensor in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// An f32 tensor's listing, for the crate's tests.
#[cfg(test)]
pub(crate) fn f32_info(name: &str, shape: &[usize]) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
    }
}

/// The on-disk format of a weight file, told from its bytes, never from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// PyTorch's zip format (`torch.save`, torch >= 1.6).
    PyTorch,
    /// A legacy `torch.save` file (torch < 1.6, or `_use_new_zipfile_serialization=False`).
    PyTorchLegacy,
    /// A TorchScript archive (`torch.jit.save` of a scripted or traced model).
    TorchScript,
    /// A `torch.export.save` archive (`.pt2`): raw storages listed by a JSON weights config.
    ExportedProgram,
    /// A `torch.distributed.checkpoint` folder (`.metadata` and `*.distcp` shards).
    DistributedCheckpoint,
    /// A sharded checkpoint: a Hugging Face `*.index.json` and the shards it names, or a
    /// folder of a distributed checkpoint's safetensors files (`HuggingFaceStorageWriter`).
    Sharded,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::PyTorch => "torch.save zip",
            Format::PyTorchLegacy => "legacy torch.save",
            Format::TorchScript => "TorchScript archive",
            Format::ExportedProgram => "torch.export archive",
            Format::DistributedCheckpoint => "torch.distributed.checkpoint folder",
            Format::Sharded => "sharded checkpoint",
        })
    }
}

enum Source {
    /// The mapping, and each tensor's bytes in it with its stored dtype and shape, from the
    /// header parsed once when the file was opened.
    Safetensors(memmap2::Mmap, HashMap<String, StoredTensor>),
    PyTorch {
        map: Arc<memmap2::Mmap>,
        checkpoint: Box<pth::Checkpoint>,
        /// Full name -> index into `checkpoint.tensors`.
        index: HashMap<String, usize>,
        /// Names that two different tensors of the file have.
        conflicts: HashSet<String>,
    },
    /// A `torch.distributed.checkpoint` folder.
    Dcp(Box<crate::dcp::Dcp>),
    /// A Hugging Face index and its shards.
    Sharded(Box<Sharded>),
}

/// Where a safetensors tensor's bytes are, and what they hold.
struct StoredTensor {
    bytes: std::ops::Range<usize>,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
}

/// An opened weight file.
///
/// A PyTorch file may hold several state dicts (a training checkpoint's model and optimizer, a
/// GAN's generator and discriminator, a whole pickled model): each tensor's name is the key path
/// of its state dict joined with its name inside it (`model_state_dict.encoder.rnn.weight_ih_l0`).
/// `load`, `info` and the `var_builder` also accept the name inside the state dict
/// (`encoder.rnn.weight_ih_l0`) when exactly one state dict has it.
pub struct WeightFile {
    path: PathBuf,
    source: Source,
    infos: Vec<TensorInfo>,
    /// Key paths of the state dicts that hold tensors (empty for a top-level one), sorted.
    state_dicts: Vec<String>,
    /// Weights stored reparametrized (weight norm, spectral norm), listed in `infos` under their
    /// plain names and computed when loaded.
    derived: HashMap<String, Reparam>,
    /// Names of tensors that safetensors stored once for several names (tied weights): the
    /// dropped name -> the stored one, as `safetensors.torch.save_model` and
    /// `save_torch_state_dict` record them in the metadata.
    shared: HashMap<String, String>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile")
            .field("path", &self.path)
            .field("format", &self.format())
            .field("tensors", &self.infos.len())
            .finish()
    }
}

/// Memory-maps `file`; the one `unsafe` of this crate.
pub(crate) fn map(path: &Path, file: &File) -> Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and lives as long as the `WeightFile`. As with every mmap, a
    // process that truncates or rewrites the file meanwhile could change what we read; weight
    // files are not modified while a model loads (candle's `MmapedSafetensors` makes the same
    // assumption).
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| WeightsError::io(path, "map", e))
}

impl WeightFile {
    /// Opens a safetensors file, a `torch.save` checkpoint (zip or legacy), a TorchScript or
    /// `torch.export` archive, telling them apart by content, not by name; a
    /// `torch.distributed.checkpoint` folder (or its `.metadata`); or a Hugging Face sharded
    /// checkpoint (its `*.index.json`, or the folder `save_pretrained` wrote).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_key(path, None)
    }

    /// As `open`, keeping only the state dict(s) under the key path `key` of a checkpoint
    /// (`model_state_dict`, `generator`, `models.0`).
    pub fn open_with_key(path: impl AsRef<Path>, key: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = crate::dcp::folder_of(path) {
            let (dcp, infos) = crate::dcp::Dcp::open(&dir, key)?;
            return Ok(Self::new(dir, Source::Dcp(Box::new(dcp)), infos).with_derived());
        }
        let path = if path.is_dir() {
            match folder::file_in_folder(path)? {
                InFolder::File(file) => file,
                InFolder::DcpSafetensors(files) => {
                    if key.is_some() {
                        return Err(WeightsError::file(
                            path,
                            "a folder of safetensors files has no checkpoint keys",
                        ));
                    }
                    let sharded = Sharded::open_set(path, &files)?;
                    return Ok(Self::from_sharded(path, sharded).with_derived());
                }
            }
        } else {
            path.to_path_buf()
        };
        Ok(Self::open_file(&path, key, true)?.with_derived())
    }

    /// Opens one shard of a sharded checkpoint: a file, not an index; weights stored
    /// reparametrized and tied names are not listed yet (their sources may lie in other
    /// shards).
    pub(crate) fn open_shard(path: &Path) -> Result<Self> {
        Self::open_file(path, None, false)
    }

    fn new(path: PathBuf, source: Source, infos: Vec<TensorInfo>) -> Self {
        Self {
            path,
            source,
            infos,
            state_dicts: vec![String::new()],
            derived: HashMap::new(),
            shared: HashMap::new(),
        }
    }

    /// A sharded checkpoint at `path`, with the tied names its metadata records.
    fn from_sharded(path: &Path, (sharded, infos): (Sharded, Vec<TensorInfo>)) -> Self {
        let mut f = Self::new(
            path.to_path_buf(),
            Source::Sharded(Box::new(sharded)),
            infos,
        );
        f.add_shared();
        f
    }

    /// Lists the weights stored reparametrized under their plain names.
    fn with_derived(mut self) -> Self {
        let chained = self.chained();
        self.derived = add_derived(&mut self.infos, chained.as_deref());
        self
    }

    /// The parametrization lists known to hold a second parametrization; `None` when the file
    /// cannot tell (see `reparam::find`). A safetensors file keeps no module list: chains
    /// without tensors cannot be seen there.
    pub(crate) fn chained(&self) -> Option<Vec<String>> {
        match &self.source {
            // DCP pickles even a state dict it stores whole (`flatten_state_dict=False`) as a
            // plain dict: its `_metadata` is gone.
            Source::Safetensors(..) | Source::Dcp(_) => Some(Vec::new()),
            Source::PyTorch { checkpoint, .. } => checkpoint.chained.clone(),
            Source::Sharded(s) => s.chained(),
        }
    }

    /// Opens a regular file: the whole checkpoint (`whole`; an index opens its shards), or a
    /// shard.
    fn open_file(path: &Path, key: Option<&str>, whole: bool) -> Result<Self> {
        let file = crate::regular::open_regular(path)?;
        let len = file
            .metadata()
            .map_err(|e| WeightsError::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Err(WeightsError::file(path, "the file is empty"));
        }
        let mmap = map(path, &file)?;
        let zip = mmap.starts_with(b"PK\x03\x04") || mmap.starts_with(b"PK\x05\x06");
        let safetensors_like = mmap.get(8) == Some(&b'{');
        // A safetensors header's length fits the file; JSON text read as one never does.
        let safetensors_header = safetensors_like
            && mmap.get(..8).is_some_and(|h| {
                u64::from_le_bytes(h.try_into().expect("8 bytes")) <= len.saturating_sub(8)
            });
        let json = !zip && !safetensors_header && sharded::looks_like_json(&mmap);
        if json {
            if !whole {
                return Err(WeightsError::file(
                    path,
                    "is JSON (an index?), not a shard holding tensors",
                ));
            }
            if key.is_some() {
                return Err(WeightsError::file(
                    path,
                    "a sharded checkpoint has no checkpoint keys",
                ));
            }
            return Ok(Self::from_sharded(path, Sharded::open(path, &mmap)?));
        }
        if let Some(why) = (!zip && !safetensors_like)
            .then(|| pth::not_a_legacy_file(&mmap))
            .flatten()
        {
            return Err(WeightsError::file(path, why));
        }
        if !zip && (safetensors_like || !pth::is_legacy(&mmap)) {
            if key.is_some() {
                return Err(WeightsError::file(
                    path,
                    "a safetensors file has no checkpoint keys",
                ));
            }
            let (infos, stored) = safetensors_infos(path, &mmap)?;
            let mut f = Self::new(path.to_path_buf(), Source::Safetensors(mmap, stored), infos);
            if whole {
                // A distributed checkpoint's chunks are read with the rest of their folder.
                if let Some(offsets) = dcp_safetensors::offsets(&f)? {
                    dcp_safetensors::check_lone_chunks(path, &offsets)?;
                }
                f.add_shared();
            }
            return Ok(f);
        }
        let map = Arc::new(mmap);
        let mut checkpoint = if zip {
            pth::read_zip(path, map.clone())?
        } else {
            pth::read_legacy(path, &map)?
        };
        if let Some(key) = key {
            let key = key.trim_end_matches('.');
            let under = format!("{key}.");
            checkpoint
                .tensors
                .retain(|f| f.state_dict == key || f.name.starts_with(&under));
            if checkpoint.tensors.is_empty() {
                return Err(WeightsError::file(
                    path,
                    format!("checkpoint has no key {key:?} holding tensors"),
                ));
            }
        }
        let mut infos = Vec::with_capacity(checkpoint.tensors.len());
        let mut index = HashMap::with_capacity(checkpoint.tensors.len());
        let mut state_dicts = Vec::new();
        let mut conflicts = HashSet::new();
        for (i, f) in checkpoint.tensors.iter().enumerate() {
            // One name reached twice: the same tensor (a module shared by two paths) is listed
            // once; two different tensors (`{"a.b": t1, "a": {"b": t2}}`) make the name
            // ambiguous, and loading it an error.
            if let Some(&first) = index.get(&f.name) {
                let first: &crate::torch_pickle::Found = &checkpoint.tensors[first];
                if first.tensor != f.tensor {
                    conflicts.insert(f.name.clone());
                }
                continue;
            }
            index.insert(f.name.clone(), i);
            infos.push(TensorInfo {
                name: f.name.clone(),
                // Element types candle cannot hold are listed as U8, so that discovery names
                // them if a GRU tensor has one; they are never loaded.
                dtype: f.tensor.storage.dtype.unwrap_or(DType::U8),
                shape: f.tensor.shape.clone(),
            });
            state_dicts.push(f.state_dict.clone());
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        state_dicts.sort();
        state_dicts.dedup();
        let source = Source::PyTorch {
            map,
            checkpoint: Box::new(checkpoint),
            index,
            conflicts,
        };
        Ok(Self {
            state_dicts,
            ..Self::new(path.to_path_buf(), source, infos)
        })
    }

    /// Lists the names the metadata records as dropped copies of a stored tensor
    /// (`{"tied.weight": "body.weight"}`), under their own names. Only a copy under the same
    /// parameter name (its last segment) is taken: a module shared by two paths, or tied weights.
    /// The metadata also names views of other shapes (`b = a[:3]`) as copies; their shape is
    /// not recorded, and loading `a` for them would be wrong.
    fn add_shared(&mut self) {
        let last = |n: &str| n.rsplit('.').next().unwrap_or(n).to_string();
        let mut pairs: Vec<(String, String)> = self.metadata().into_iter().collect();
        if let Source::Sharded(s) = &self.source {
            pairs.extend(s.shards().iter().flat_map(WeightFile::metadata));
        }
        pairs.sort();
        pairs.dedup();
        // Each listing copies a shape: their size is bounded by the bytes of the file.
        let mut budget = self.stored_bytes().saturating_add(1 << 20);
        let mut shared = Vec::new();
        for (dropped, kept) in pairs {
            if self.exact(&dropped).is_some() || last(&dropped) != last(&kept) {
                continue;
            }
            let Some(info) = self.exact(&kept) else {
                continue;
            };
            let cost = dropped.len() + 8 * info.shape.len();
            if cost > budget {
                break;
            }
            budget -= cost;
            let info = TensorInfo {
                name: dropped.clone(),
                ..info.clone()
            };
            shared.push((dropped, kept, info));
        }
        // Two records for one name (the index's and a shard's): the first, in sorted order.
        for (dropped, kept, info) in shared {
            if let std::collections::hash_map::Entry::Vacant(e) = self.shared.entry(dropped) {
                e.insert(kept);
                self.infos.push(info);
            }
        }
        self.infos.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files the tensors are read from: the file itself, or the shards of a sharded or
    /// distributed checkpoint (sorted).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = match &self.source {
            Source::Sharded(s) => s.shards().iter().map(|s| s.path.clone()).collect(),
            Source::Dcp(d) => d.shard_files().map(|f| d.dir.join(f)).collect(),
            Source::Safetensors(..) | Source::PyTorch { .. } => vec![self.path.clone()],
        };
        files.sort();
        files
    }

    pub fn format(&self) -> Format {
        match &self.source {
            Source::Safetensors(..) => Format::Safetensors,
            Source::PyTorch { checkpoint, .. } => checkpoint.format,
            Source::Dcp(_) => Format::DistributedCheckpoint,
            Source::Sharded(_) => Format::Sharded,
        }
    }

    /// Key paths of the state dicts holding tensors, sorted; `""` is the top level (a plain
    /// state dict, a whole pickled module, a TorchScript module, any safetensors file).
    pub fn state_dicts(&self) -> &[String] {
        &self.state_dicts
    }

    /// The key path of the state dict that holds tensor `name` (a full name).
    pub fn state_dict_of(&self, name: &str) -> &str {
        if let Some(how) = self.derived.get(name) {
            return self.state_dict_of(how.sources()[0]);
        }
        match &self.source {
            Source::Safetensors(..) | Source::Dcp(_) | Source::Sharded(_) => "",
            Source::PyTorch {
                checkpoint, index, ..
            } => index
                .get(name)
                .map(|&i| checkpoint.tensors[i].state_dict.as_str())
                .unwrap_or(""),
        }
    }

    /// When the file holds quantized weights (a model after `torch.ao.quantization`, whose
    /// quantized tensors and packed parameters are not listed among its tensors): what marks
    /// them, and why they are not read.
    pub fn quantized_note(&self) -> Option<String> {
        match &self.source {
            Source::Safetensors(..) | Source::Dcp(_) => None,
            Source::PyTorch { checkpoint, .. } => {
                checkpoint.quantized.as_deref().map(pth::quantized_hint)
            }
            Source::Sharded(s) => s.shards().iter().find_map(WeightFile::quantized_note),
        }
    }

    /// Parts of the file that were not read (a distributed checkpoint's pickled items our reader
    /// refuses, such as a train state of millions of objects), with why; `None` when all were.
    pub fn unread_note(&self) -> Option<String> {
        match &self.source {
            Source::Dcp(d) if !d.unread.is_empty() => {
                Some(format!("pickled items not read: {}", d.unread.join("; ")))
            }
            _ => None,
        }
    }

    /// Every tensor in the file, by full name, sorted; with the weights stored reparametrized
    /// (weight norm, spectral norm) also under their plain names (see `computed_from`).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    /// For a weight the file stores reparametrized (`rnn.weight_hh_l0` of a model saved with
    /// `weight_norm`): what it is computed from, as `weight norm (dim 0) of `..g`, `..v``.
    /// `None` for a tensor stored as it is.
    pub fn computed_from(&self, name: &str) -> Option<String> {
        let name = self.resolve(name).ok()?;
        self.derived.get(name).map(Reparam::describe)
    }

    /// The stored tensors a computed weight reads, or the one a shared name stands for (empty
    /// for a stored tensor).
    pub fn sources_of(&self, name: &str) -> Vec<&str> {
        let Ok(name) = self.resolve(name) else {
            return Vec::new();
        };
        if let Some(kept) = self.shared.get(name) {
            return vec![kept];
        }
        let Some(how) = self.derived.get(name) else {
            return Vec::new();
        };
        // A source may itself be a tied name (a shared module under weight norm).
        let mut out = how.sources();
        for src in how.sources() {
            out.extend(self.shared.get(src).map(String::as_str));
        }
        out
    }

    /// For a tensor a safetensors file stores once for several names (tied weights, as
    /// `safetensors.torch.save_model` and `save_torch_state_dict` drop the copies): the name it
    /// is stored under. `None` for a tensor stored under its own name.
    pub fn shared_with(&self, name: &str) -> Option<&str> {
        let name = self.resolve(name).ok()?;
        self.shared.get(name).map(String::as_str)
    }

    pub(crate) fn exact(&self, name: &str) -> Option<&TensorInfo> {
        self.infos
            .binary_search_by(|i| i.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.infos[i])
    }

    /// The full name `name` stands for: itself, or the name inside exactly one state dict.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Result<&'a str> {
        if self.exact(name).is_some() {
            return Ok(name);
        }
        let hits: Vec<&TensorInfo> = self
            .state_dicts
            .iter()
            .filter(|k| !k.is_empty())
            .filter_map(|k| self.exact(&format!("{k}.{name}")))
            .collect();
        match hits.as_slice() {
            [one] => Ok(&one.name),
            [] => Err(WeightsError::Tensor {
                name: name.to_string(),
                reason: format!("not found in {}", self.path.display()),
            }),
            many => Err(WeightsError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "is in {} state dicts of {}, name one: {}",
                    many.len(),
                    self.path.display(),
                    many.iter()
                        .map(|t| format!("`{}`", t.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// The tensor `name` (a full name, or a name inside exactly one state dict).
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.exact(self.resolve(name).ok()?)
    }

    /// The safetensors `__metadata__` strings, or a sharded checkpoint index's `metadata`
    /// (empty for PyTorch files).
    pub fn metadata(&self) -> HashMap<String, String> {
        match &self.source {
            Source::Safetensors(mmap, _) => SafeTensors::read_metadata(mmap)
                .ok()
                .and_then(|(_, m)| m.metadata().clone())
                .unwrap_or_default(),
            Source::Sharded(s) => s.metadata.clone(),
            Source::PyTorch { .. } | Source::Dcp(_) => HashMap::new(),
        }
    }

    /// Loads tensor `name` (as `info` resolves it) in its stored dtype on `device`; a weight
    /// stored reparametrized is computed (on the CPU, then moved).
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let name = self.resolve(name)?;
        if let Some(how) = self.derived.get(name) {
            let info = self.exact(name).expect("derived names are listed");
            // Computed in f64: each copy must fit the memory this file justifies.
            let cap = pth::budget(self.stored_bytes());
            let fits = info
                .shape
                .iter()
                .try_fold(8u64, |a, &d| a.checked_mul(d as u64))
                .is_some_and(|bytes| bytes <= cap);
            if !fits {
                return Err(WeightsError::Tensor {
                    name: name.to_string(),
                    reason: format!(
                        "its shape {:?} needs more memory to compute than this file justifies",
                        info.shape
                    ),
                });
            }
            let dtype = info.dtype;
            let w = reparam::compute(name, how, dtype, |n| self.load_stored(n)).map_err(
                |e| match e {
                    e @ WeightsError::Tensor { .. } => e,
                    e => WeightsError::Tensor {
                        name: name.to_string(),
                        reason: format!("cannot be computed ({}): {e}", how.describe()),
                    },
                },
            )?;
            return Ok(w.to_device(device)?);
        }
        self.load_stored_on(name, device)
    }

    /// Bytes of the file, or of all its shards.
    pub(crate) fn stored_bytes(&self) -> usize {
        match &self.source {
            Source::Safetensors(mmap, _) => mmap.len(),
            Source::PyTorch { map, .. } => map.len(),
            Source::Dcp(d) => usize::try_from(d.shard_bytes).unwrap_or(usize::MAX),
            Source::Sharded(s) => usize::try_from(s.bytes).unwrap_or(usize::MAX),
        }
    }

    fn load_stored(&self, name: &str) -> Result<Tensor> {
        self.load_stored_on(name, &Device::Cpu)
    }

    /// The bytes, dtype and shape of tensor `name` of a safetensors file, as stored (loaded as
    /// they are, or placed by the caller as a chunk of a distributed checkpoint's tensor).
    pub(crate) fn safetensors_data(&self, name: &str) -> Result<(&[u8], DType, Vec<usize>)> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason,
        };
        let Source::Safetensors(mmap, stored) = &self.source else {
            return Err(bad(format!(
                "{} is not a safetensors file",
                self.path.display()
            )));
        };
        let t = stored
            .get(name)
            .ok_or_else(|| bad(format!("not found in {}", self.path.display())))?;
        let dtype = candle_dtype(t.dtype).ok_or_else(|| {
            bad(format!(
                "has dtype {:?}, which candle cannot hold (in {})",
                t.dtype,
                self.path.display()
            ))
        })?;
        Ok((&mmap[t.bytes.clone()], dtype, t.shape.clone()))
    }

    /// Loads the stored tensor of full name `name` (or of the name it is shared with).
    pub(crate) fn load_stored_on(&self, name: &str, device: &Device) -> Result<Tensor> {
        let name = self.shared.get(name).map_or(name, String::as_str);
        match &self.source {
            Source::Safetensors(..) => {
                let (bytes, dtype, shape) = self.safetensors_data(name)?;
                Ok(Tensor::from_raw_buffer(bytes, dtype, &shape, device)?)
            }
            Source::PyTorch {
                map,
                checkpoint,
                index,
                conflicts,
            } => {
                if conflicts.contains(name) {
                    return Err(WeightsError::Tensor {
                        name: name.to_string(),
                        reason: format!(
                            "names two different tensors in {} (reached by two key paths); \
                             refusing to guess",
                            self.path.display()
                        ),
                    });
                }
                let found = &checkpoint.tensors[index[name]];
                Ok(checkpoint
                    .load(&self.path, map, name, &found.tensor)?
                    .to_device(device)?)
            }
            Source::Dcp(d) => Ok(d.load(name)?.to_device(device)?),
            Source::Sharded(s) => s.load(name, device),
        }
    }
}

/// Lists the reparametrized weights of `infos` (sorted) under their plain names, keeping the
/// order, and returns how each is computed; not those of the parametrization lists `chained`.
fn add_derived(
    infos: &mut Vec<TensorInfo>,
    chained: Option<&[String]>,
) -> HashMap<String, Reparam> {
    let found = reparam::find(infos, chained);
    // A name two reparametrizations claim (a crafted file: PyTorch's APIs refuse to stack on
    // one weight) is derived by neither.
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (info, _) in &found {
        *count.entry(info.name.as_str()).or_default() += 1;
    }
    let twice: HashSet<String> = count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(k, _)| k.to_string())
        .collect();
    let mut derived = HashMap::with_capacity(found.len());
    for (info, how) in found {
        if !twice.contains(&info.name) {
            derived.insert(info.name.clone(), how);
            infos.push(info);
        }
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    derived
}

/// Validates the whole safetensors layout (header length, JSON, offsets) and lists the tensors,
/// with where each one's bytes are (the header is parsed once: a file of 600,000 tensors loaded
/// tensor by tensor would parse it 600,000 times).
fn safetensors_infos(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<TensorInfo>, HashMap<String, StoredTensor>)> {
    if bytes.len() < 8 {
        return Err(WeightsError::file(
            path,
            format!(
                "{} bytes is too short for a safetensors file (8-byte header length first)",
                bytes.len()
            ),
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let available = bytes.len() as u64 - 8;
    if header_len > available {
        return Err(WeightsError::file(
            path,
            format!(
                "safetensors header length {header_len} exceeds the {available} bytes that follow it: \
                 the file is truncated or is not safetensors"
            ),
        ));
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::format(path, "invalid safetensors", e))?;
    let mut infos = Vec::with_capacity(st.len());
    let mut stored = HashMap::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        stored.insert(
            name.clone(),
            StoredTensor {
                bytes: start..start + view.data().len(),
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
            },
        );
        let dtype = match candle_dtype(view.dtype()) {
            Some(d) => d,
            None => {
                // Unsupported dtypes are listed as U8 so that discovery can name them if a GRU
                // tensor has one; they are never loaded as weights.
                DType::U8
            }
        };
        infos.push(TensorInfo {
            name,
            dtype,
            shape: view.shape().to_vec(),
        });
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((infos, stored))
}

fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::U8 | S::BOOL => DType::U8,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        S::I32 => DType::I32,
        S::I16 => DType::I16,
        _ => return None,
    })
}
