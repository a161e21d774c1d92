//! What every format reader gives `WeightFile`: the [`Container`] trait (list the tensors, load
//! one, say which files they came from), the listing of one tensor, the format's name, and the
//! helpers all readers share (the file mapping, name resolution across state dicts).

use crate::pickle::quantized::PackedRnns;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WeightsError};

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

static NO_PACKED: PackedRnns = PackedRnns {
    cells: Vec::new(),
    linears: Vec::new(),
    modules: Vec::new(),
};

/// The state dicts of a container that has only the top level.
pub(crate) const TOP_LEVEL: &[String] = &[String::new()];

/// One opened checkpoint, of whatever format: what `WeightFile` (and a sharded checkpoint, for
/// its shards) asks of it. Names are full names as listed (`model_state_dict.rnn.weight_ih_l0`).
pub(crate) trait Container: Send + Sync {
    /// The file or folder it was opened from.
    fn path(&self) -> &Path;

    fn format(&self) -> Format;

    /// Every stored tensor, sorted by name.
    fn tensors(&self) -> &[TensorInfo];

    /// Moves the listing out, for the `WeightFile` that holds this container and lists its
    /// tensors from then on (with the computed and tied names): one copy of a listing that may
    /// hold a million names. Afterwards `tensors` is empty; loading is unaffected.
    fn take_tensors(&mut self) -> Vec<TensorInfo>;

    /// Key paths of the state dicts holding tensors, sorted; `""` is the top level.
    fn state_dicts(&self) -> &[String] {
        TOP_LEVEL
    }

    /// The key path of the state dict holding stored tensor `name`.
    fn state_dict_of(&self, _name: &str) -> &str {
        ""
    }

    /// The files the tensors are read from (the file itself, or its shards).
    fn files(&self) -> Vec<PathBuf> {
        vec![self.path().to_path_buf()]
    }

    /// Bytes of the file, or of all its shards: the measure of what memory it can justify.
    fn stored_bytes(&self) -> usize;

    /// Loads stored tensor `name` in its stored dtype on `device`.
    fn load(&self, name: &str, device: &Device) -> Result<Tensor>;

    /// Parametrization lists known to hold a second parametrization (their weights cannot be
    /// computed); `None` when the file cannot tell, so none is computed.
    fn chained(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    /// What marks the file as holding quantized weights, which are not listed.
    fn quantized_note(&self) -> Option<String> {
        None
    }

    /// The dynamically quantized RNN cells read from the file (their tensors are listed).
    fn packed_rnns(&self) -> &PackedRnns {
        &NO_PACKED
    }

    /// Parts of the file that were not read, and why.
    fn unread_note(&self) -> Option<String> {
        None
    }

    /// The safetensors `__metadata__` strings, or a sharded checkpoint index's `metadata`.
    fn metadata(&self) -> HashMap<String, String> {
        HashMap::new()
    }

    /// Every metadata pair that may name a tied copy (`dropped -> kept`): the file's own, and a
    /// sharded checkpoint's shards' too.
    fn tied_names(&self) -> Vec<(String, String)> {
        self.metadata().into_iter().collect()
    }

    /// The bytes, dtype and shape of tensor `name` as stored contiguously in the file (a
    /// safetensors file's; read in place to assemble a distributed checkpoint's chunks).
    fn stored_data(&self, name: &str) -> Result<(&[u8], DType, Vec<usize>)> {
        Err(WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{} is not a safetensors file", self.path().display()),
        })
    }

    /// The listing of stored tensor `name` (a full name).
    fn exact(&self, name: &str) -> Option<&TensorInfo> {
        exact(self.tensors(), name)
    }

    /// The full name `name` stands for (see [`resolve`]).
    fn resolve<'a>(&'a self, name: &'a str) -> Result<&'a str> {
        resolve(self.tensors(), self.state_dicts(), self.path(), name)
    }
}

/// The listing of `name` in `infos` (sorted by name).
pub(crate) fn exact<'a>(infos: &'a [TensorInfo], name: &str) -> Option<&'a TensorInfo> {
    infos
        .binary_search_by(|i| i.name.as_str().cmp(name))
        .ok()
        .map(|i| &infos[i])
}

/// The full name `name` stands for among `infos` (sorted): itself, or the name inside exactly
/// one of the `state_dicts`.
pub(crate) fn resolve<'a>(
    infos: &'a [TensorInfo],
    state_dicts: &[String],
    path: &Path,
    name: &'a str,
) -> Result<&'a str> {
    if exact(infos, name).is_some() {
        return Ok(name);
    }
    let hits: Vec<&TensorInfo> = state_dicts
        .iter()
        .filter(|k| !k.is_empty())
        .filter_map(|k| exact(infos, &format!("{k}.{name}")))
        .collect();
    match hits.as_slice() {
        [one] => Ok(&one.name),
        [] => Err(WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("not found in {}", path.display()),
        }),
        many => Err(WeightsError::Tensor {
            name: name.to_string(),
            reason: format!(
                "is in {} state dicts of {}, name one: {}",
                many.len(),
                path.display(),
                many.iter()
                    .map(|t| format!("`{}`", t.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// `prefix.name`, or `name` at the top level.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
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
