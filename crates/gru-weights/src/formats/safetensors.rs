//! Safetensors files (`safetensors.torch.save_file`, `save_model`, a shard of a sharded
//! checkpoint, a rank's file of a distributed checkpoint): the header validated and parsed once,
//! each tensor read in place from the mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::container::{Container, Format, TensorInfo};
use crate::error::{Result, WeightsError};

/// Where a safetensors tensor's bytes are, and what they hold.
struct StoredTensor {
    bytes: std::ops::Range<usize>,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
}

/// An opened safetensors file.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Each tensor's bytes in the mapping, stored dtype and shape, from the header parsed once.
    stored: HashMap<String, StoredTensor>,
    infos: Vec<TensorInfo>,
}

impl SafetensorsFile {
    pub(crate) fn open(path: &Path, map: memmap2::Mmap) -> Result<Self> {
        let (infos, stored) = safetensors_infos(path, &map)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            stored,
            infos,
        })
    }
}

impl Container for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn format(&self) -> Format {
        Format::Safetensors
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    fn take_tensors(&mut self) -> Vec<TensorInfo> {
        std::mem::take(&mut self.infos)
    }

    fn stored_bytes(&self) -> usize {
        self.map.len()
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (bytes, dtype, shape) = self.stored_data(name)?;
        Ok(Tensor::from_raw_buffer(bytes, dtype, &shape, device)?)
    }

    fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.map)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default()
    }

    fn stored_data(&self, name: &str) -> Result<(&[u8], DType, Vec<usize>)> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason,
        };
        let t = self
            .stored
            .get(name)
            .ok_or_else(|| bad(format!("not found in {}", self.path.display())))?;
        let dtype = candle_dtype(t.dtype).ok_or_else(|| {
            bad(format!(
                "has dtype {:?}, which candle cannot hold (in {})",
                t.dtype,
                self.path.display()
            ))
        })?;
        Ok((&self.map[t.bytes.clone()], dtype, t.shape.clone()))
    }
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
