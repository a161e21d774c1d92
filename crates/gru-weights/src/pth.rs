//! PyTorch checkpoints without Python: `torch.save` zip archives (torch >= 1.6), legacy
//! `torch.save` files (torch < 1.6, or `_use_new_zipfile_serialization=False`), TorchScript
//! archives (`torch.jit.save`), and `torch.export` archives: the current layout through `pt2`, the
//! older ones (a `torch.save` file stored inside) as a window of the mapping (`read_nested`).
//! Pickles go through our bounded reader (`pickle`), their meaning through `torch_pickle`;
//! storages are sliced from the mapped file. Nothing is executed.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WeightsError};
use crate::file::Format;
use crate::pickle::{self, Limits, Value};
use crate::torch_pickle::{quantized, storage_table, walk_tensors, Found, TensorRef, Tensors};

/// Largest pickle read (a state dict of 10,000 tensors pickles to a few MB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// The most bytes one zip entry may inflate to, or one tensor may occupy, for a file of
/// `file_len` bytes: torch stores entries uncompressed, so a sane file never needs more than a
/// small multiple of itself; a zip bomb does.
pub(crate) fn budget(file_len: usize) -> u64 {
    (file_len as u64).saturating_mul(16).saturating_add(1 << 20)
}

/// `0x1950a86a20f9469cfc6c` as the little-endian bytes of pickle's LONG1: the first pickle of
/// every legacy `torch.save` file.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// A cheaply clonable handle on (a window of) the mapping, so that each read gets its own cursor.
#[derive(Clone)]
pub(crate) struct SharedMap {
    map: Arc<memmap2::Mmap>,
    window: Range<usize>,
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
        "it holds {what}: a model quantized with torch.ao.quantization (quantize_dynamic, \
         convert) runs PyTorch's int8 kernels, which candle-gru does not reproduce; save the \
         float model's state_dict (before quantizing) instead"
    )
}

fn parse_pickle(path: &Path, what: &str, bytes: &[u8]) -> Result<(pickle::Pickle, usize)> {
    pickle::parse(bytes, Limits::default())
        .map_err(|e| WeightsError::format(path, format!("malformed pickle in {what}"), e))
}

/// The tensors of a parsed main pickle; a pickle with none is described, not accepted.
fn tensors_of(path: &Path, what: &str, p: &pickle::Pickle) -> Result<Tensors> {
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
fn zip_entry(
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

enum EntryBytes {
    Mapped(Range<usize>),
    Owned(Vec<u8>),
}

impl EntryBytes {
    fn get<'a>(&'a self, map: &'a [u8]) -> &'a [u8] {
        match self {
            EntryBytes::Mapped(r) => &map[r.clone()],
            EntryBytes::Owned(v) => v,
        }
    }
}

/// The archive format versions PyTorch reads (`caffe2/serialize/versions.h`).
const ZIP_FORMAT_VERSIONS: std::ops::RangeInclusive<u64> = 1..=10;

/// PyTorch's zip reader refuses an archive without a readable `version` (or `.data/version`)
/// record, or with a version outside the range it knows; so do we.
fn check_version(path: &Path, archive: &Archive, map: &[u8], dir: &str) -> Result<()> {
    let name = [format!("{dir}.data/version"), format!("{dir}version")]
        .into_iter()
        .find(|n| archive.index_for_name(n).is_some())
        .ok_or_else(|| {
            WeightsError::file(
                path,
                format!("the archive has no {dir}version record (PyTorch refuses it)"),
            )
        })?;
    let record = zip_entry(path, archive, map.len(), &name, 64)?;
    // As C++'s stoull reads it: leading white space, then the digits.
    let text = String::from_utf8_lossy(record.get(map));
    let digits: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    match digits.parse::<u64>() {
        Ok(v) if ZIP_FORMAT_VERSIONS.contains(&v) => Ok(()),
        _ => Err(WeightsError::file(
            path,
            format!(
                "{name} says {text:?}, not an archive format version PyTorch reads ({}..={})",
                ZIP_FORMAT_VERSIONS.start(),
                ZIP_FORMAT_VERSIONS.end()
            ),
        )),
    }
}

/// Reads a zip checkpoint: `torch.save` (state dict, training checkpoint, whole module) or a
/// TorchScript archive. The top folder may have any name.
/// torch >= 2.1 records the byte order; storages written big-endian would load byte-swapped.
fn check_byteorder(path: &Path, archive: &Archive, map: &[u8], dir: &str) -> Result<()> {
    let byteorder = format!("{dir}byteorder");
    if archive.index_for_name(&byteorder).is_some() {
        let order = zip_entry(path, archive, map.len(), &byteorder, 16)?;
        match order.get(map) {
            b"little" => {}
            b"big" => {
                return Err(WeightsError::file(
                    path,
                    "saved on a big-endian machine: its storages are big-endian, which is not \
                     supported; re-save it on a little-endian one",
                ))
            }
            other => {
                return Err(WeightsError::file(
                    path,
                    format!(
                        "{byteorder} says {:?}, neither \"little\" nor \"big\" (PyTorch \
                         refuses it)",
                        String::from_utf8_lossy(other)
                    ),
                ))
            }
        }
    }
    Ok(())
}

pub(crate) fn read_zip(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Checkpoint> {
    let whole = 0..map.len();
    read_zip_in(path, map, whole, Role::File)
}

/// What a zip archive read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The file itself (an archive stored inside is read, once).
    File,
    /// A `torch.save` file inside another: holds tensors.
    Nested,
    /// A `torch.save` file of any object inside another (a distributed checkpoint's pickled
    /// item): may hold no tensor.
    Object,
}

/// What to do with a `torch.distributed.checkpoint` shard.
pub(crate) const DCP_HINT: &str = "a torch.distributed.checkpoint shard (`*.distcp`) is read \
    through its checkpoint: open the folder (or its `.metadata`) instead";

/// Whether the zip's central directory, as its last end record declares it, ends where that
/// record (or its zip64 record) starts, as in a file that is one archive from byte 0. Several
/// archives written one after another (a `.distcp` shard) fail this: the last one's offsets are
/// relative to its own start. A file whose end record cannot be found passes, for the zip
/// reader to name what is wrong.
fn directory_ends_at_record(map: &[u8]) -> bool {
    match central_directory(map) {
        None => true,
        Some(None) => false,
        Some(Some(d)) => d.offset.checked_add(d.size) == Some(d.record_at),
    }
}

/// Where a zip's central directory is, from its end record (and zip64 record).
struct Directory {
    offset: u64,
    size: u64,
    /// Where the end record (or the zip64 end record) starts.
    record_at: u64,
}

/// `None` when no end record is found, `Some(None)` when a zip64 locator points at no zip64
/// record, else where the directory is.
fn central_directory(map: &[u8]) -> Option<Option<Directory>> {
    const EOCD: &[u8] = b"PK\x05\x06";
    let from = map.len().saturating_sub(22 + 0xFFFF);
    // Only a signature with a whole 22-byte record after it (as miniz, PyTorch's zip reader,
    // requires): a comment ending in the 4 signature bytes must not hide the real record.
    let end = map.len().saturating_sub(18).max(from);
    let at = map[from..end]
        .windows(4)
        .rposition(|w| w == EOCD)
        .map(|i| from + i)?;
    let rec = map.get(at..at + 22)?;
    let u32_at = |i: usize| u64::from(u32::from_le_bytes(rec[i..i + 4].try_into().expect("4")));
    let (mut size, mut offset) = (u32_at(12), u32_at(16));
    // The directory ends at the end record, or at the zip64 record when a locator (the 20 bytes
    // before the end record) points to one; zip64 sizes replace saturated 32-bit ones.
    let mut record_at = at as u64;
    let locator = at.checked_sub(20).and_then(|l| map.get(l..at));
    if let Some(loc) = locator.filter(|l| l.starts_with(b"PK\x06\x07")) {
        let z_at = u64::from_le_bytes(loc[8..16].try_into().expect("8 bytes"));
        let z = usize::try_from(z_at)
            .ok()
            .and_then(|r| map.get(r..r.checked_add(56)?));
        let Some(z) = z.filter(|z| z.starts_with(b"PK\x06\x06")) else {
            return Some(None);
        };
        let u64_at = |i: usize| u64::from_le_bytes(z[i..i + 8].try_into().expect("8 bytes"));
        // The zip64 record ends where the locator starts: a pointer relative to a later
        // archive's start lands on an earlier archive's record instead.
        if z_at.checked_add(12).and_then(|e| e.checked_add(u64_at(4))) != Some(at as u64 - 20) {
            return Some(None);
        }
        if size == u64::from(u32::MAX) {
            size = u64_at(40);
        }
        if offset == u64::from(u32::MAX) {
            offset = u64_at(48);
        }
        record_at = z_at;
    }
    Some(Some(Directory {
        offset,
        size,
        record_at,
    }))
}

/// The entry names of the central directory, in its order (`None` when it cannot be read: the
/// zip reader then says what is wrong).
fn central_names(map: &[u8]) -> Option<Vec<&[u8]>> {
    let Some(Some(d)) = central_directory(map) else {
        return None;
    };
    let start = usize::try_from(d.offset).ok()?;
    let dir = map.get(start..start.checked_add(usize::try_from(d.size).ok()?)?)?;
    let mut names = Vec::new();
    let mut pos = 0;
    while let Some(h) = dir
        .get(pos..pos + 46)
        .filter(|h| h.starts_with(b"PK\x01\x02"))
    {
        let u16_at = |i: usize| usize::from(u16::from_le_bytes([h[i], h[i + 1]]));
        let (name_len, extra, comment) = (u16_at(28), u16_at(30), u16_at(32));
        names.push(dir.get(pos + 46..pos + 46 + name_len)?);
        pos += 46 + name_len + extra + comment;
    }
    Some(names)
}

/// Why PyTorch would refuse or read differently a zip's entries, if it would: a name stored
/// twice, in any letter case (PyTorch's reader finds names case-insensitively, by a binary
/// search that may land on either copy; the zip reader takes the exact name's last entry), or,
/// for a `torch.save` file (`folder_rule`), an entry outside the folder of the first one
/// (PyTorch: "file in archive is not in a subdirectory").
fn entries_pytorch_refuses(map: &[u8], folder_rule: bool) -> Option<String> {
    let names = central_names(map)?;
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Some(format!(
                "holds two entries named {:?} (in some letter case; PyTorch and a zip reader may \
                 read different ones): refusing to choose",
                String::from_utf8_lossy(name)
            ));
        }
    }
    if !folder_rule {
        return None;
    }
    let first = names.first()?;
    let folder = &first[..first.iter().position(|&b| b == b'/').unwrap_or(first.len())];
    let outside = names
        .iter()
        .find(|n| !(n.len() > folder.len() && n.starts_with(folder) && n[folder.len()] == b'/'))?;
    Some(format!(
        "entry {:?} lies outside the folder {:?} of the archive's first entry: PyTorch refuses \
         such a file (\"file in archive is not in a subdirectory\")",
        String::from_utf8_lossy(outside),
        String::from_utf8_lossy(folder)
    ))
}

/// The `torch.save` file an older `torch.export` archive keeps its state dict in: torch 2.1-2.5
/// wrote `serialized_state_dict.pt` at the root, torch 2.6-2.7 a PT2 archive with
/// `data/weights/{model}.pt` (one program).
fn nested_state_dict(names: &[String]) -> Option<&String> {
    let mut found = names.iter().filter(|n| {
        n.as_str() == "serialized_state_dict.pt"
            || n.split_once('/').is_some_and(|(_, rest)| {
                rest.strip_prefix("data/weights/")
                    .is_some_and(|f| f.ends_with(".pt") && !f.contains('/'))
            })
    });
    let first = found.next();
    // Several programs' state dicts: which one is meant is not known here.
    first.filter(|_| found.next().is_none())
}

/// Reads the zip archive in `window` of the mapping.
fn read_zip_in(
    path: &Path,
    map: Arc<memmap2::Mmap>,
    window: Range<usize>,
    role: Role,
) -> Result<Checkpoint> {
    let outer = role == Role::File;
    let shared = SharedMap {
        map: map.clone(),
        window: window.clone(),
    };
    let map = &map[window.clone()];
    let file_len = map.len();
    if outer && !directory_ends_at_record(map) {
        return Err(WeightsError::file(
            path,
            format!(
                "holds more than one zip archive (data before it, or archives one after another, \
                 as a torch.distributed.checkpoint shard has); {DCP_HINT}"
            ),
        ));
    }
    // torch writes the archive from byte 0. Letting the zip crate detect an offset instead can
    // mislead it: a torch.export archive holds a whole torch.save zip (its sample inputs), whose
    // records it may take for the outer archive's.
    let config = zip::read::Config {
        archive_offset: zip::read::ArchiveOffset::Known(0),
    };
    let archive = zip::ZipArchive::with_config(config, Cursor::new(shared))
        .map_err(|e| WeightsError::format(path, "not a readable PyTorch zip file", e))?;
    if let Some(why) = entries_pytorch_refuses(map, false) {
        return Err(WeightsError::file(path, format!("the zip archive {why}")));
    }
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pkl = names.iter().find(|n| {
        n.as_str() == "data.pkl"
            || n.strip_suffix("/data.pkl")
                .is_some_and(|d| !d.contains('/'))
    });
    let Some(pkl) = pkl else {
        let pt2 = crate::pt2::archive_dir(&names);
        // torch prefers the older layout's state dict file where an archive has one.
        if let (true, Some(inner)) = (outer, nested_state_dict(&names)) {
            return read_nested(path, map, window, &archive, inner);
        }
        return match pt2 {
            // A file inside another is a torch.save file, never an archive of archives.
            Some(dir) if outer => read_pt2(path, map, window, archive, &names, dir),
            _ => Err(WeightsError::file(
                path,
                "zip file without data.pkl: not a PyTorch checkpoint",
            )),
        };
    };
    if let Some(why) = entries_pytorch_refuses(map, true) {
        return Err(WeightsError::file(path, format!("the zip archive's {why}")));
    }
    let dir = pkl
        .strip_suffix("data.pkl")
        .expect("found by suffix")
        .to_string();
    let torchscript = names.iter().any(|n| n.starts_with(&format!("{dir}code/")));
    check_version(path, &archive, map, &dir)?;
    check_byteorder(path, &archive, map, &dir)?;
    let entry_cap = if outer {
        budget(file_len)
    } else {
        file_len as u64
    };
    let cap = entry_cap.min(MAX_PICKLE_BYTES);
    let bytes = zip_entry(path, &archive, file_len, pkl, cap)?;
    let (p, _) = parse_pickle(path, pkl, bytes.get(map))?;
    let Tensors {
        found: tensors,
        chained,
    } = match role {
        Role::Object => {
            walk_tensors(&p).map_err(|e| WeightsError::file(path, format!("{pkl}: {e}")))?
        }
        Role::File | Role::Nested => tensors_of(path, pkl, &p)?,
    };
    Ok(Checkpoint {
        storages: Storages::Zip { archive, dir },
        tensors,
        format: if torchscript {
            Format::TorchScript
        } else {
            Format::PyTorch
        },
        quantized: quantized(&p),
        chained: Some(chained),
        window,
        cap: entry_cap,
    })
}

/// Reads the state dict an older `torch.export` archive keeps as a `torch.save` file inside it
/// (stored, so it is a window of the mapping).
fn read_nested(
    path: &Path,
    map: &[u8],
    window: Range<usize>,
    archive: &Archive,
    inner: &str,
) -> Result<Checkpoint> {
    let entry = zip_entry(path, archive, map.len(), inner, budget(map.len()))?;
    let EntryBytes::Mapped(range) = entry else {
        return Err(WeightsError::file(
            path,
            format!("{inner} is compressed: a torch.export archive stores it as is"),
        ));
    };
    let full = window.start + range.start..window.start + range.end;
    let mut checkpoint = read_zip_in(path, archive_map(archive), full, Role::Nested)
        .map_err(|e| WeightsError::file(path, format!("{inner}, inside it: {e}")))?;
    checkpoint.format = Format::ExportedProgram;
    // Its state dict is a plain dict (no `_metadata`): the program's graph tells the chains.
    let graph = match inner.split_once("/data/weights/") {
        Some((root, file)) => format!("{root}/models/{}.json", file.trim_end_matches(".pt")),
        None => "serialized_exported_program.json".to_string(),
    };
    let bytes = zip_entry(path, archive, map.len(), &graph, budget(map.len())).ok();
    checkpoint.chained = bytes.and_then(|b| crate::pt2::graph_chains(b.get(map), ""));
    Ok(checkpoint)
}

/// The whole mapping an archive reads from.
fn archive_map(archive: &Archive) -> Arc<memmap2::Mmap> {
    archive.clone().into_inner().into_inner().map
}

/// Reads a `torch.export` archive whose folder is `dir`.
fn read_pt2(
    path: &Path,
    map: &[u8],
    window: Range<usize>,
    archive: Archive,
    names: &[String],
    dir: String,
) -> Result<Checkpoint> {
    let file_len = map.len();
    let read = |name: &str, cap: u64| -> Result<Vec<u8>> {
        let entry = zip_entry(path, &archive, file_len, name, cap.min(budget(file_len)))?;
        Ok(entry.get(map).to_vec())
    };
    let format = read(&format!("{dir}archive_format"), 16)?;
    if format.trim_ascii() != b"pt2" {
        return Err(WeightsError::file(
            path,
            format!(
                "zip file without data.pkl whose archive_format is {:?}, not pt2: not a PyTorch \
                 checkpoint",
                String::from_utf8_lossy(&format)
            ),
        ));
    }
    check_byteorder(path, &archive, map, &dir)?;
    let (tensors, chained) = crate::pt2::tensors(path, &archive, names, &dir, read)?;
    if tensors.is_empty() {
        return Err(WeightsError::file(
            path,
            "a torch.export archive whose programs have no weights",
        ));
    }
    Ok(Checkpoint {
        storages: Storages::Zip { archive, dir },
        tensors,
        format: Format::ExportedProgram,
        quantized: None,
        chained,
        cap: budget(map.len()),
        window,
    })
}

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
        chained: Some(chained),
        window: 0..bytes.len(),
        cap: budget(bytes.len()),
    })
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

/// The one tensor of a `torch.save(tensor)` zip archive at `window` of the mapping (a chunk of a
/// `torch.distributed.checkpoint` shard): its elements, contiguous, dtype and shape.
pub(crate) fn read_bare_tensor(
    path: &Path,
    map: &Arc<memmap2::Mmap>,
    window: Range<usize>,
) -> Result<(Vec<u8>, DType, Vec<usize>)> {
    let checkpoint = read_zip_in(path, map.clone(), window, Role::Nested)?;
    let [found] = checkpoint.tensors.as_slice() else {
        return Err(WeightsError::file(
            path,
            format!(
                "a chunk holds {} tensors, not one",
                checkpoint.tensors.len()
            ),
        ));
    };
    let (bytes, dtype) = checkpoint.load_bytes(path, map, &found.name, &found.tensor)?;
    Ok((bytes, dtype, found.tensor.shape.clone()))
}

/// The tensors of a `torch.save` zip archive of any object at `window` of the mapping (a
/// distributed checkpoint's pickled item: a whole state dict saved with
/// `flatten_state_dict=False`, or a step count); `None` when it holds none.
pub(crate) fn read_object(
    path: &Path,
    map: &Arc<memmap2::Mmap>,
    window: Range<usize>,
) -> Result<Option<Checkpoint>> {
    let checkpoint = read_zip_in(path, map.clone(), window, Role::Object)?;
    Ok((!checkpoint.tensors.is_empty()).then_some(checkpoint))
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
