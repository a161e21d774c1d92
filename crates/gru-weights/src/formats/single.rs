//! One regular file, told apart by its bytes, never by its name: a safetensors file, a
//! `torch.save` zip (also a TorchScript or `torch.export` archive), a legacy `torch.save` file;
//! or JSON (a sharded checkpoint's index, which `open` reads and a shard must not be).

use std::path::Path;

use super::container::{map, Container};
use super::safetensors::SafetensorsFile;
use super::torch::legacy;
use super::torch::TorchFile;
use crate::error::{Result, WeightsError};

/// Maps the regular file at `path`, refusing an empty one.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = crate::io::regular::open_regular(path)?;
    let len = file
        .metadata()
        .map_err(|e| WeightsError::io(path, "stat", e))?
        .len();
    if len == 0 {
        return Err(WeightsError::file(path, "the file is empty"));
    }
    map(path, &file)
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Whether `bytes` are a safetensors file's start: the header length, then `{`.
fn safetensors_like(bytes: &[u8]) -> bool {
    bytes.get(8) == Some(&b'{')
}

/// Whether the file is JSON (an index, or nothing we read), not a file holding tensors.
pub(crate) fn is_json(bytes: &[u8]) -> bool {
    // A safetensors header's length fits the file; JSON text read as one never does.
    let safetensors_header = safetensors_like(bytes)
        && bytes.get(..8).is_some_and(|h| {
            u64::from_le_bytes(h.try_into().expect("8 bytes"))
                <= (bytes.len() as u64).saturating_sub(8)
        });
    !is_zip(bytes)
        && !safetensors_header
        && bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Opens the file mapped at `map` (not JSON) as what its bytes say it is; `key` keeps only the
/// state dict(s) under that key path of a PyTorch checkpoint.
pub(crate) fn open_mapped(
    path: &Path,
    map: memmap2::Mmap,
    key: Option<&str>,
) -> Result<Box<dyn Container>> {
    let zip = is_zip(&map);
    if let Some(why) = (!zip && !safetensors_like(&map))
        .then(|| legacy::not_a_legacy_file(&map))
        .flatten()
    {
        return Err(WeightsError::file(path, why));
    }
    if !zip && (safetensors_like(&map) || !legacy::is_legacy(&map)) {
        if key.is_some() {
            return Err(WeightsError::file(
                path,
                "a safetensors file has no checkpoint keys",
            ));
        }
        return Ok(Box::new(SafetensorsFile::open(path, map)?));
    }
    Ok(Box::new(TorchFile::open(path, map, key)?))
}

/// Opens one shard of a sharded checkpoint: a file holding tensors, never an index.
pub(crate) fn open_shard(path: &Path) -> Result<Box<dyn Container>> {
    let map = map_file(path)?;
    if is_json(&map) {
        return Err(WeightsError::file(
            path,
            "is JSON (an index?), not a shard holding tensors",
        ));
    }
    open_mapped(path, map, None)
}
