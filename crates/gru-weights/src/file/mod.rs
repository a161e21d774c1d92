//! `WeightFile`: a checkpoint of any format (see `formats`), opened once, listing its tensors by
//! name, dtype and shape and loading the ones asked for; weights stored reparametrized (weight
//! norm, spectral norm) listed under their plain names and computed on load (`reparam`), and
//! tied copies a safetensors writer dropped listed under their own names.

pub(crate) mod reparam;

use crate::pickle::quantized::PackedRnns;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use self::reparam::Reparam;
use crate::error::{Result, WeightsError};
use crate::formats::container::{exact, resolve, Container, Format, TensorInfo};
use crate::formats::torch::checkpoint::budget;

/// An opened weight file.
///
/// A PyTorch file may hold several state dicts (a training checkpoint's model and optimizer, a
/// GAN's generator and discriminator, a whole pickled model): each tensor's name is the key path
/// of its state dict joined with its name inside it (`model_state_dict.encoder.rnn.weight_ih_l0`).
/// `load`, `info` and the `var_builder` also accept the name inside the state dict
/// (`encoder.rnn.weight_ih_l0`) when exactly one state dict has it.
pub struct WeightFile {
    container: Box<dyn Container>,
    /// The container's tensors, the computed and the tied names, sorted.
    infos: Vec<TensorInfo>,
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
            .field("path", &self.path())
            .field("format", &self.format())
            .field("tensors", &self.infos.len())
            .finish()
    }
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
        let mut container = crate::formats::open::open(path.as_ref(), key)?;
        let mut f = Self {
            infos: container.take_tensors(),
            container,
            derived: HashMap::new(),
            shared: HashMap::new(),
        };
        f.add_shared();
        let chained = f.container.chained();
        f.derived = add_derived(&mut f.infos, chained.as_deref());
        Ok(f)
    }

    /// Lists the names the metadata records as dropped copies of a stored tensor
    /// (`{"tied.weight": "body.weight"}`), under their own names. Only a copy under the same
    /// parameter name (its last segment) is taken: a module shared by two paths, or tied weights.
    /// The metadata also names views of other shapes (`b = a[:3]`) as copies; their shape is
    /// not recorded, and loading `a` for them would be wrong.
    fn add_shared(&mut self) {
        let last = |n: &str| n.rsplit('.').next().unwrap_or(n).to_string();
        let mut pairs = self.container.tied_names();
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
        self.container.path()
    }

    /// The files the tensors are read from: the file itself, or the shards of a sharded or
    /// distributed checkpoint (sorted).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = self.container.files();
        files.sort();
        files
    }

    pub fn format(&self) -> Format {
        self.container.format()
    }

    /// Key paths of the state dicts holding tensors, sorted; `""` is the top level (a plain
    /// state dict, a whole pickled module, a TorchScript module, any safetensors file).
    pub fn state_dicts(&self) -> &[String] {
        self.container.state_dicts()
    }

    /// The key path of the state dict that holds tensor `name` (a full name).
    pub fn state_dict_of(&self, name: &str) -> &str {
        if let Some(how) = self.derived.get(name) {
            return self.state_dict_of(how.sources()[0]);
        }
        self.container.state_dict_of(name)
    }

    /// The dynamically quantized RNN cells and packed linears read from the file.
    pub(crate) fn packed_rnns(&self) -> &PackedRnns {
        self.container.packed_rnns()
    }

    /// When the file holds quantized weights (a model after `torch.ao.quantization`): what marks
    /// them. Dynamically quantized GRUs and GRUCells are read (`packed_rnns`); the note says
    /// why a module that is not found was not read.
    pub fn quantized_note(&self) -> Option<String> {
        self.container.quantized_note()
    }

    /// Parts of the file that were not read (a distributed checkpoint's pickled items our reader
    /// refuses, such as a train state of millions of objects), with why; `None` when all were.
    pub fn unread_note(&self) -> Option<String> {
        self.container.unread_note()
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
        exact(&self.infos, name)
    }

    /// The full name `name` stands for: itself, or the name inside exactly one state dict.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Result<&'a str> {
        resolve(&self.infos, self.state_dicts(), self.path(), name)
    }

    /// The tensor `name` (a full name, or a name inside exactly one state dict).
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.exact(self.resolve(name).ok()?)
    }

    /// The safetensors `__metadata__` strings, or a sharded checkpoint index's `metadata`
    /// (empty for PyTorch files).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.container.metadata()
    }

    /// Loads tensor `name` (as `info` resolves it) in its stored dtype on `device`; a weight
    /// stored reparametrized is computed (on the CPU, then moved).
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let name = self.resolve(name)?;
        if let Some(how) = self.derived.get(name) {
            let info = self.exact(name).expect("derived names are listed");
            // Computed in f64: each copy must fit the memory this file justifies.
            let cap = budget(self.stored_bytes());
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
        self.container.stored_bytes()
    }

    fn load_stored(&self, name: &str) -> Result<Tensor> {
        self.load_stored_on(name, &Device::Cpu)
    }

    /// Loads the stored tensor of full name `name` (or of the name it is shared with).
    fn load_stored_on(&self, name: &str, device: &Device) -> Result<Tensor> {
        let name = self.shared.get(name).map_or(name, String::as_str);
        self.container.load(name, device)
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
