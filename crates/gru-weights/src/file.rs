//! `WeightFile`: a safetensors file (memory-mapped) or a PyTorch `.pt`/`.pth` zip checkpoint,
//! opened once, listing its tensors by name, dtype and shape, and loading the ones asked for.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use crate::error::{Result, WeightsError};
use crate::pth::{self, PthTensor};

/// Name, dtype and shape of one tensor in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// The on-disk format of a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// PyTorch's zip format (`torch.save`, torch >= 1.6).
    PyTorch,
}

enum Source {
    Safetensors(memmap2::Mmap),
    PyTorch(HashMap<String, PthTensor>, pth::Archive),
}

/// An opened weight file.
pub struct WeightFile {
    path: PathBuf,
    source: Source,
    infos: Vec<TensorInfo>,
    /// For `.pt` files: the key of the checkpoint dict that held the state_dict, if nested.
    state_dict_key: Option<String>,
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
fn map(path: &Path, file: &File) -> Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and lives as long as the `WeightFile`. As with every mmap, a
    // process that truncates or rewrites the file meanwhile could change what we read; weight
    // files are not modified while a model loads (candle's `MmapedSafetensors` makes the same
    // assumption).
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| WeightsError::io(path, "map", e))
}

impl WeightFile {
    /// Opens a `.safetensors` or PyTorch zip file, telling them apart by content, not by name.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_key(path, None)
    }

    /// As `open`; for a `.pt` training checkpoint, `key` names the entry holding the state_dict
    /// (otherwise it is searched for: `state_dict`, `model_state_dict`, `model`, ...).
    pub fn open_with_key(path: impl AsRef<Path>, key: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| WeightsError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| WeightsError::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Err(WeightsError::file(path, "the file is empty"));
        }
        let mmap = map(path, &file)?;
        if mmap.starts_with(b"PK\x03\x04") || mmap.starts_with(b"PK\x05\x06") {
            let (tensors, state_dict_key, archive) = pth::read_state_dict(path, mmap, key)?;
            let mut infos: Vec<TensorInfo> = tensors
                .iter()
                .map(|(name, t)| TensorInfo {
                    name: name.clone(),
                    dtype: t.info.dtype,
                    shape: t.info.layout.dims().to_vec(),
                })
                .collect();
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(Self {
                path: path.to_path_buf(),
                source: Source::PyTorch(tensors, archive),
                infos,
                state_dict_key,
            });
        }
        let infos = match safetensors_infos(path, &mmap) {
            Ok(infos) => infos,
            // Pickle protocol 2+ opcode: a pre-1.6 torch.save file, not safetensors.
            Err(_) if mmap.len() > 1 && mmap[0] == 0x80 && (2..=5).contains(&mmap[1]) && header_len_exceeds(&mmap) => {
                return Err(WeightsError::file(
                    path,
                    "a legacy (pre-1.6, non-zip) PyTorch pickle; re-save it with a current \
                     torch.save or export safetensors (safetensors.torch.save_file(model.state_dict(), path))",
                ))
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_path_buf(),
            source: Source::Safetensors(mmap),
            infos,
            state_dict_key: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        match self.source {
            Source::Safetensors(_) => Format::Safetensors,
            Source::PyTorch(..) => Format::PyTorch,
        }
    }

    /// For a `.pt` checkpoint dict, the key under which the state_dict was found.
    pub fn state_dict_key(&self) -> Option<&str> {
        self.state_dict_key.as_deref()
    }

    /// Every tensor in the file, sorted by name.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.infos
            .binary_search_by(|i| i.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.infos[i])
    }

    /// The safetensors `__metadata__` strings (empty for `.pt` files).
    pub fn metadata(&self) -> HashMap<String, String> {
        match &self.source {
            Source::Safetensors(mmap) => SafeTensors::read_metadata(mmap)
                .ok()
                .and_then(|(_, m)| m.metadata().clone())
                .unwrap_or_default(),
            Source::PyTorch(..) => HashMap::new(),
        }
    }

    /// Loads tensor `name` in its stored dtype on `device`.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let missing = || WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("not found in {}", self.path.display()),
        };
        match &self.source {
            Source::Safetensors(mmap) => {
                let st = SafeTensors::deserialize(mmap)
                    .map_err(|e| WeightsError::format(&self.path, "invalid safetensors", e))?;
                let view = st.tensor(name).map_err(|_| missing())?;
                use candle_core::safetensors::Load;
                view.load(device).map_err(|e| WeightsError::Tensor {
                    name: name.to_string(),
                    reason: format!("cannot be read from {}: {e}", self.path.display()),
                })
            }
            Source::PyTorch(tensors, archive) => {
                let t = tensors.get(name).ok_or_else(missing)?;
                Ok(pth::load_tensor(&self.path, archive, t)?.to_device(device)?)
            }
        }
    }
}

fn header_len_exceeds(bytes: &[u8]) -> bool {
    bytes.len() < 8
        || u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) > bytes.len() as u64
}

/// Validates the whole safetensors layout (header length, JSON, offsets) and lists the tensors.
fn safetensors_infos(path: &Path, bytes: &[u8]) -> Result<Vec<TensorInfo>> {
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
    for (name, view) in st.tensors() {
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
    Ok(infos)
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
