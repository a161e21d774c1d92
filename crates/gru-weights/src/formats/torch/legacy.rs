//! Legacy `torch.save` files (torch < 1.6, or `_use_new_zipfile_serialization=False`): a
//! sequence of pickles (magic number, protocol, system info, the main pickle, the storage keys)
//! followed by each storage's raw bytes.

use std::collections::HashMap;
use std::path::Path;

use super::checkpoint::{budget, parse_pickle, tensors_of, Checkpoint, Storages, MAX_PICKLE_BYTES};
use crate::error::{Result, WeightsError};
use crate::formats::container::Format;
use crate::pickle::torch::{quantized, storage_table, Tensors};
use crate::pickle::{self, Limits, Value};

/// `0x1950a86a20f9469cfc6c` as the little-endian bytes of pickle's LONG1: the first pickle of
/// every legacy `torch.save` file.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Whether `bytes` starts like a legacy `torch.save` file: a first pickle (of a few bytes, framed
/// or not) that is the magic number.
pub(crate) fn is_legacy(bytes: &[u8]) -> bool {
    if bytes.first() != Some(&0x80) {
        return false;
    }
    let head = &bytes[..bytes.len().min(64)];
    matches!(
        pickle::parse(head, Limits { max_objects: 4 }),
        Ok((p, _)) if matches!(p.get(p.root), Value::BigInt(b) if b[..] == LEGACY_MAGIC)
    )
}

/// Why a file that looks like a pickle but is no legacy `torch.save` file cannot be read, to say
/// instead of a safetensors parser's complaint.
pub(crate) fn not_a_legacy_file(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"L119547037146038801333356") {
        // The magic number as pickle protocols 0 and 1 write it.
        return Some(
            "a legacy torch.save file written with pickle protocol 0 or 1, which \
             torch.load(weights_only=True) refuses too; load it in PyTorch and save it again \
             with torch.save's default protocol",
        );
    }
    let pickle = bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|v| (2..=5).contains(v));
    (pickle && !is_legacy(bytes))
        .then_some("a Python pickle, but not a torch.save file (no PyTorch magic number)")
}

/// Reads a legacy `torch.save` file: magic number, protocol version and system info pickles, the
/// main pickle, the pickled list of storage keys, then each storage as a little-endian u64
/// element count followed by its bytes.
pub(crate) fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<pickle::Pickle> {
        let rest = &bytes[pos..];
        let (p, used) = parse_pickle(
            path,
            what,
            &rest[..rest.len().min(MAX_PICKLE_BYTES as usize)],
        )?;
        pos += used;
        Ok(p)
    };
    let magic = next("the magic number")?;
    if !matches!(magic.get(magic.root), Value::BigInt(b) if b[..] == LEGACY_MAGIC) {
        return Err(WeightsError::file(
            path,
            "a pickle, but not a PyTorch file (no magic number)",
        ));
    }
    let proto = next("the protocol version")?;
    if proto.int(proto.root) != Some(1001) {
        return Err(WeightsError::file(
            path,
            format!(
                "unknown legacy protocol version ({})",
                proto.describe(proto.root)
            ),
        ));
    }
    let _sys_info = next("the system info")?;
    let main = next("the main pickle")?;
    let Tensors {
        found: tensors,
        chained,
        packed,
    } = tensors_of(path, "the main pickle", &main)?;
    let keys = next("the storage keys")?;
    let Some(key_ids) = keys.seq(keys.root) else {
        return Err(WeightsError::file(
            path,
            "the storage key list is not a list",
        ));
    };
    // Every storage the main pickle names (also those of tensors the walk does not report, such
    // as sparse or quantized ones), sized as PyTorch sizes them (by the first reference), so that
    // each can be checked and skipped over.
    let table: HashMap<String, (usize, u64)> = storage_table(&main)
        .map_err(|e| WeightsError::file(path, format!("the main pickle: {e}")))?
        .into_iter()
        .map(|s| (s.key, (s.elem_size, s.numel)))
        .collect();
    let mut storages = HashMap::new();
    for &k in key_ids {
        let key = match keys.get(k) {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => {
                return Err(WeightsError::file(
                    path,
                    "a storage key that is not a string",
                ))
            }
        };
        let Some(&(es, declared)) = table.get(&key) else {
            // PyTorch: "storage key ... not found in deserialized_objects".
            return Err(WeightsError::file(
                path,
                format!(
                    "the storage key list names storage {key:?}, which the main pickle does \
                     not: a corrupt file"
                ),
            ));
        };
        if es == 0 {
            // Its length cannot be known, nor where the next storage starts: the storages from
            // here on stay unavailable (a tensor over one says so when loaded).
            break;
        }
        let Some(header) = bytes.get(pos..pos + 8) else {
            return Err(WeightsError::file(
                path,
                format!("storage {key}: truncated file (its size header is missing)"),
            ));
        };
        let numel = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        if numel != declared {
            // PyTorch: "storage has wrong byte size".
            return Err(WeightsError::file(
                path,
                format!(
                    "storage {key:?}: its record holds {numel} elements, the pickle declares \
                     {declared}: a lying or corrupt file"
                ),
            ));
        }
        pos += 8;
        let left = (bytes.len() - pos) as u64;
        let len = numel
            .checked_mul(es as u64)
            .filter(|&n| n <= left)
            .ok_or_else(|| {
                WeightsError::file(
                    path,
                    format!(
                        "storage {key} declares {numel} elements of {es} bytes, {left} bytes \
                         left: truncated or lying file"
                    ),
                )
            })? as usize;
        storages.insert(key, pos..pos + len);
        pos += len;
    }
    Ok(Checkpoint {
        storages: Storages::Legacy(storages),
        tensors,
        format: Format::PyTorchLegacy,
        quantized: quantized(&main),
        packed,
        chained: Some(chained),
        window: 0..bytes.len(),
        cap: budget(bytes.len()),
    })
}
