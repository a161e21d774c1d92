//! PyTorch's own containers, read without Python and without running anything: `torch.save` zip
//! archives and TorchScript archives (`zip`), legacy `torch.save` files (`legacy`), `torch.export`
//! archives (`pt2`, and `zip` for the older layouts). Each is read into a `Checkpoint`
//! (`checkpoint`); [`TorchFile`] lists and loads its tensors.

pub(crate) mod checkpoint;
pub(crate) mod legacy;
pub(crate) mod pt2;
pub(crate) mod zip;

use crate::pickle::quantized::PackedRnns;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use self::checkpoint::{quantized_hint, Checkpoint};
use super::container::{Container, Format, TensorInfo};
use crate::error::{Result, WeightsError};

/// An opened PyTorch checkpoint: its tensors by full name (the key path of their state dict
/// joined with their name inside it).
pub(crate) struct TorchFile {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    checkpoint: Checkpoint,
    infos: Vec<TensorInfo>,
    /// Key paths of the state dicts that hold tensors, sorted.
    state_dicts: Vec<String>,
    /// Full name -> index into `checkpoint.tensors`.
    index: HashMap<String, usize>,
    /// Names that two different tensors of the file have.
    conflicts: HashSet<String>,
}

impl TorchFile {
    /// Reads the zip or legacy checkpoint mapped at `map`, keeping only the state dict(s) under
    /// the key path `key` when one is given.
    pub(crate) fn open(path: &Path, map: memmap2::Mmap, key: Option<&str>) -> Result<Self> {
        let map = Arc::new(map);
        let mut checkpoint = if legacy::is_legacy(&map) {
            legacy::read_legacy(path, &map)?
        } else {
            zip::read_zip(path, map.clone())?
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
                let first: &crate::pickle::torch::Found = &checkpoint.tensors[first];
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
        Ok(Self {
            path: path.to_path_buf(),
            map,
            checkpoint,
            infos,
            state_dicts,
            index,
            conflicts,
        })
    }
}

impl Container for TorchFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> Format {
        self.checkpoint.format
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    fn take_tensors(&mut self) -> Vec<TensorInfo> {
        std::mem::take(&mut self.infos)
    }

    fn state_dicts(&self) -> &[String] {
        &self.state_dicts
    }

    fn state_dict_of(&self, name: &str) -> &str {
        self.index
            .get(name)
            .map(|&i| self.checkpoint.tensors[i].state_dict.as_str())
            .unwrap_or("")
    }

    fn stored_bytes(&self) -> usize {
        self.map.len()
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        if self.conflicts.contains(name) {
            return Err(WeightsError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "names two different tensors in {} (reached by two key paths); refusing to \
                     guess",
                    self.path.display()
                ),
            });
        }
        let i = *self.index.get(name).ok_or_else(|| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("not found in {}", self.path.display()),
        })?;
        let found = &self.checkpoint.tensors[i];
        Ok(self
            .checkpoint
            .load(&self.path, &self.map[..], name, &found.tensor)?
            .to_device(device)?)
    }

    fn chained(&self) -> Option<Vec<String>> {
        self.checkpoint.chained.clone()
    }

    fn packed_rnns(&self) -> &PackedRnns {
        &self.checkpoint.packed
    }

    fn quantized_note(&self) -> Option<String> {
        self.checkpoint.quantized.as_deref().map(quantized_hint)
    }
}
