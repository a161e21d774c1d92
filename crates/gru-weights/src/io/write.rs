//! Writing output files (`gru run --out`, `gru convert`, `save_gru`): whole or not at all. The
//! bytes go to a new temporary file beside the target, which is then renamed over it: a full
//! disk, a Ctrl-C or a concurrent writer leaves the old file or a new whole one, never a mix. A
//! path that is a link to a regular file is written through (the link stays a link); a path, or
//! a link to something, that is not a regular file is refused (renaming over `/dev/stdout`
//! would replace the device).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Tensor};

use crate::error::{Result, WeightsError};
use crate::io::regular::check_output_path;

/// The file a write to `path` replaces: `path`, or where the link at `path` points.
fn target(path: &Path) -> Result<PathBuf> {
    check_output_path(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).map_err(|_| {
            WeightsError::file(
                path,
                "is a link to nothing (dangling); refusing to replace it",
            )
        }),
        _ => Ok(path.to_path_buf()),
    }
}

/// Writes `bytes` as the whole content of `path` (see the module's doc).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let target = target(path)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // (At most 100 characters of the name in the temporary one: a name near the 255-byte limit
    // plus the suffix would be too long.)
    let name: String = target
        .file_name()
        .ok_or_else(|| WeightsError::file(path, "names no file"))?
        .to_string_lossy()
        .chars()
        .take(100)
        .collect();
    if std::fs::metadata(&target).is_ok_and(|m| m.permissions().readonly()) {
        // Renaming over it would succeed where writing into it would not.
        return Err(WeightsError::file(
            path,
            "is read-only; refusing to replace it",
        ));
    }
    let io = |what: &'static str| move |e| WeightsError::io(path, what, e);
    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1 << 20 => continue,
            Err(e) => return Err(io("create a temporary file beside")(e)),
        }
    };
    let written = (|| -> Result<()> {
        file.write_all(bytes).map_err(io("write"))?;
        if let Ok(m) = std::fs::metadata(&target) {
            // A replaced file keeps its permissions.
            file.set_permissions(m.permissions())
                .map_err(io("set permissions of"))?;
        }
        file.sync_all().map_err(io("write"))?;
        std::fs::rename(&tmp, &target).map_err(io("replace"))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Saves named tensors as a safetensors file (see [`write_file`]).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = safetensors::tensor::serialize(tensors.iter(), None)
        .map_err(|e| WeightsError::file(path, format!("cannot serialize: {e}")))?;
    write_file(path, &bytes)
}

/// Saves one tensor as a `.npy` file (`numpy.load` reads it; see [`write_file`]): f32, f64, f16,
/// the integer types; bf16, which numpy has no type for, is refused (widen it first).
pub fn save_npy(tensor: &Tensor, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let descr = match tensor.dtype() {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::U8 => "|u1",
        DType::U32 => "<u4",
        DType::I64 => "<i8",
        d => {
            return Err(WeightsError::file(
                path,
                format!("numpy has no dtype for {}", d.as_str()),
            ))
        }
    };
    let shape = match tensor.dims() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1.0: the data starts on a multiple of 64 bytes, the header ends in a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let data = tensor
        .flatten_all()
        .and_then(|t| t.to_device(&candle_core::Device::Cpu))
        .and_then(|t| raw_le_bytes(&t))
        .map_err(|e| WeightsError::file(path, format!("cannot read the tensor: {e}")))?;
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    write_file(path, &bytes)
}

/// The values of a 1-D CPU tensor as little-endian bytes.
fn raw_le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    Ok(match t.dtype() {
        DType::F32 => le(t.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => le(t.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::F16 => le(t.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::U32 => le(t.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::I64 => le(t.to_vec1::<i64>()?, i64::to_le_bytes),
        d => candle_core::bail!("no .npy type for {}", d.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_links_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &candle_core::Device::Cpu).unwrap();
        let target = dir.path().join("real.npy");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link.npy");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &link).unwrap();
        #[cfg(not(unix))]
        let link = target.clone();
        save_npy(&t, &link).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
                || cfg!(not(unix))
        );
        let back = crate::io::npy::read_npy(&target).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        // Nothing else is left in the folder (no temporary file).
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            if cfg!(unix) { 2 } else { 1 }
        );
    }
}
