//! A `torch.save` checkpoint once read (zip, legacy, TorchScript, an older `torch.export`
//! archive's inner file): its tensors as the pickle describes them and where their storages'
//! bytes are; loading one tensor (any strides into its storage, checked against the storage and
//! the file's budget). `zip` and `legacy` read the containers into this.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WeightsError};
use crate::formats::container::Format;
use crate::pickle::quantized::PackedRnns;
use crate::pickle::torch::{quantized, storage_table, walk_tensors, Found, TensorRef, Tensors};
use crate::pickle::{self, Limits};

/// Largest pickle read (a state dict of 10,000 tensors pickles to a few MB).
pub(crate) const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// The most bytes one zip entry may inflate to, or one tensor may occupy, for a file of
/// `file_len` bytes: torch stores entries uncompressed, so a sane file never needs more than a
/// small multiple of itself; a zip bomb does.
pub(crate) fn budget(file_len: usize) -> u64 {
    (file_len as u64).saturating_mul(16).saturating_add(1 << 20)
}

/// A cheaply clonable handle on (a window of) the mapping, so that each read gets its own cursor.
#[derive(Clone)]
pub(crate) struct SharedMap {
    pub map: Arc<memmap2::Mmap>,
    pub window: Range<usize>,
}

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.window.clone()]
    }
}

pub(crate) type Archive = zip::ZipArchive<Cursor<SharedMap>>;

/// Where the storages of a checkpoint are.
pub(crate) enum Storages {
    /// `{dir}/data/{key}` entries of a zip archive.
    Zip { archive: Archive, dir: String },
    /// Byte ranges of the mapped legacy file, by storage key.
    Legacy(HashMap<String, Range<usize>>),
}

/// A read checkpoint: its tensors and where their bytes are.
pub(crate) struct Checkpoint {
    pub storages: Storages,
    pub tensors: Vec<Found>,
    /// `PyTorch`, `TorchScript` (a zip with a `code/` folder), `ExportedProgram` or
    /// `PyTorchLegacy`.
    pub format: Format,
    /// What marks the file as holding quantized weights, which are not listed as tensors.
    pub quantized: Option<String>,
    /// Dynamically quantized RNN cells, read.
    pub packed: PackedRnns,
    /// Parametrization lists holding a chain (`rnn.parametrizations.weight_hh_l0`), sorted: their
    /// weight cannot be computed from the stored values. `None`: the file cannot tell (a
    /// `torch.export` archive whose graph is unreadable), so none is computed.
    pub chained: Option<Vec<String>>,
    /// The bytes of the mapping it was read from: the whole file, or a `torch.save` file stored
    /// inside it (an older `torch.export` archive's state dict, a distributed checkpoint's chunk).
    pub window: Range<usize>,
    /// The most bytes one entry may inflate to, or one tensor occupy: `budget` of the file, or,
    /// for a `torch.save` file inside another (whose entries torch stores as they are), its own
    /// length, so that many such files cannot each inflate a small file into a large one.
    pub cap: u64,
}

/// Why a quantized model is not read, for messages.
pub(crate) fn quantized_hint(what: &str) -> String {
    format!(
        "it holds {what}: a model quantized with torch.ao.quantization; candle-gru runs GRUs \
         and GRUCells after quantize_dynamic (int8, float16), not other quantized modules \
         (LSTMs, statically quantized models with quantized activations): for those, save the \
         float model's state_dict (before quantizing)"
    )
}

pub(crate) fn parse_pickle(
    path: &Path,
    what: &str,
    bytes: &[u8],
) -> Result<(pickle::Pickle, usize)> {
    pickle::parse(bytes, Limits::default())
        .map_err(|e| WeightsError::format(path, format!("malformed pickle in {what}"), e))
}

/// The tensors of a parsed main pickle; a pickle with none is described, not accepted.
pub(crate) fn tensors_of(path: &Path, what: &str, p: &pickle::Pickle) -> Result<Tensors> {
    let walked = walk_tensors(p).map_err(|e| WeightsError::file(path, format!("{what}: {e}")))?;
    storage_table(p).map_err(|e| WeightsError::file(path, format!("{what}: {e}")))?;
    let found = &walked.found;
    if let (true, Some(q)) = (found.is_empty(), quantized(p)) {
        return Err(WeightsError::file(
            path,
            format!("{what} holds no float tensors: {}", quantized_hint(&q)),
        ));
    }
    if found.is_empty() {
        return Err(WeightsError::file(
            path,
            format!(
                "{what} holds no tensors: it is {} (nothing in it was run)",
                p.describe(p.root)
            ),
        ));
    }
    Ok(walked)
}

/// The byte range of a zip entry in the mapping if it is stored, else its inflated bytes; either
/// checked against its declared size and the budget before anything is read.
pub(crate) fn zip_entry(
    path: &Path,
    archive: &Archive,
    map_len: usize,
    name: &str,
    cap: u64,
) -> Result<EntryBytes> {
    let mut zip = archive.clone();
    let mut f = zip
        .by_name(name)
        .map_err(|e| WeightsError::format(path, format!("cannot read {name}"), e))?;
    let size = f.size();
    if size > cap {
        return Err(WeightsError::file(
            path,
            format!(
                "zip entry {name} declares {size} bytes, more than this file can justify ({cap})"
            ),
        ));
    }
    if f.compression() == zip::CompressionMethod::Stored {
        if let Some(start) = f.data_start() {
            let end = start.checked_add(size).filter(|&e| e <= map_len as u64);
            return match end {
                Some(end) if f.compressed_size() == size => {
                    Ok(EntryBytes::Mapped(start as usize..end as usize))
                }
                _ => Err(WeightsError::file(
                    path,
                    format!("zip entry {name} extends past the end of the file"),
                )),
            };
        }
    }
    let mut bytes = Vec::new();
    (&mut f)
        .take(size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| WeightsError::format(path, format!("cannot inflate {name}"), e))?;
    if bytes.len() as u64 != size {
        return Err(WeightsError::file(
            path,
            format!(
                "zip entry {name} inflates to {} bytes, not the {size} it declares",
                bytes.len()
            ),
        ));
    }
    Ok(EntryBytes::Owned(bytes))
}

pub(crate) enum EntryBytes {
    Mapped(Range<usize>),
    Owned(Vec<u8>),
}

impl EntryBytes {
    pub(crate) fn get<'a>(&'a self, map: &'a [u8]) -> &'a [u8] {
        match self {
            EntryBytes::Mapped(r) => &map[r.clone()],
            EntryBytes::Owned(v) => v,
        }
    }
}

impl Checkpoint {
    /// Reads one tensor (any strides into its storage) onto the CPU.
    pub(crate) fn load(
        &self,
        path: &Path,
        map: &[u8],
        name: &str,
        t: &TensorRef,
    ) -> Result<Tensor> {
        let (bytes, dtype) = self.load_bytes(path, map, name, t)?;
        Ok(Tensor::from_raw_buffer(
            &bytes,
            dtype,
            &t.shape,
            &Device::Cpu,
        )?)
    }

    /// One tensor's elements, contiguous, with their dtype.
    pub(crate) fn load_bytes(
        &self,
        path: &Path,
        map: &[u8],
        name: &str,
        t: &TensorRef,
    ) -> Result<(Vec<u8>, DType)> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{reason} (in {})", path.display()),
        };
        let map = &map[self.window.clone()];
        let s = &t.storage;
        let dtype = s.dtype.ok_or_else(|| {
            bad("has an element type candle cannot hold (complex, int8, float8, quantized)".into())
        })?;
        let owned;
        let storage: &[u8] = match &self.storages {
            Storages::Legacy(ranges) => {
                let r = ranges.get(&s.key).ok_or_else(|| {
                    bad(format!(
                        "storage {} cannot be located in the file (missing, or after a storage \
                         of unknown element type)",
                        s.key
                    ))
                })?;
                &map[r.clone()]
            }
            Storages::Zip { archive, dir } => {
                let entry = format!("{dir}data/{}", s.key);
                owned = zip_entry(path, archive, map.len(), &entry, self.cap)?;
                owned.get(map)
            }
        };
        let have = (storage.len() / s.elem_size) as u64;
        let zip = matches!(self.storages, Storages::Zip { .. });
        if zip && Some(storage.len() as u64) != s.numel.checked_mul(s.elem_size as u64) {
            // torch.load checks the record's size against the pickle's, both ways.
            return Err(bad(format!(
                "storage {}: its record holds {} bytes, the pickle declares {} elements of {} \
                 bytes: a lying or corrupt file (PyTorch refuses it)",
                s.key,
                storage.len(),
                s.numel,
                s.elem_size
            )));
        }
        if s.numel > have {
            return Err(bad(format!(
                "storage {} declares {} elements, the file holds {have}: truncated file",
                s.key, s.numel
            )));
        }
        let bytes = gather(storage, s.elem_size, s.numel, s.view, t, self.cap).map_err(bad)?;
        Ok((bytes, dtype))
    }
}

/// Copies the elements of a strided view into a contiguous buffer, after checking (with checked
/// arithmetic) that the view stays inside the storage's `numel_storage` elements (and inside its
/// storage view, for a legacy one) and the result inside `budget` bytes.
fn gather(
    storage: &[u8],
    es: usize,
    numel_storage: u64,
    view: Option<(u64, u64)>,
    t: &TensorRef,
    budget: u64,
) -> std::result::Result<Vec<u8>, String> {
    let (view_start, view_len) = view.unwrap_or((0, numel_storage));
    if view_start
        .checked_add(view_len)
        .is_none_or(|end| end > numel_storage)
    {
        return Err(format!(
            "its storage view ({view_len} elements at {view_start}) exceeds the \
             {numel_storage}-element storage"
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or("its size overflows")?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let out_len = numel
        .checked_mul(es as u64)
        .filter(|&n| n <= budget)
        .ok_or_else(|| {
            format!(
                "its size {:?} needs more memory than this file justifies",
                t.shape
            )
        })?;
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &s)| {
            a.checked_add((d as u64 - 1).checked_mul(s)?)
        })
        .ok_or("its extent overflows")?;
    if last >= view_len {
        return Err(format!(
            "its view (offset {}, size {:?}, stride {:?}) reaches element {last} of a \
             {view_len}-element storage",
            t.offset, t.shape, t.stride
        ));
    }
    let base = view_start + t.offset;
    let (base, es) = (base as usize, es);
    let contiguous = {
        let mut expect = 1u64;
        t.shape.iter().zip(&t.stride).rev().all(|(&d, &s)| {
            let ok = d == 1 || s == expect;
            expect *= d as u64;
            ok
        })
    };
    if contiguous {
        return Ok(storage[base * es..base * es + out_len as usize].to_vec());
    }
    let mut out = Vec::with_capacity(out_len as usize);
    let rank = t.shape.len();
    let mut idx = vec![0usize; rank];
    let mut at = base;
    loop {
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        // Odometer increment, innermost axis first.
        let mut axis = rank;
        loop {
            if axis == 0 {
                return Ok(out);
            }
            axis -= 1;
            idx[axis] += 1;
            at += t.stride[axis] as usize;
            if idx[axis] < t.shape[axis] {
                break;
            }
            at -= t.stride[axis] as usize * t.shape[axis];
            idx[axis] = 0;
        }
    }
}
