//! `torch.save` zip archives (torch >= 1.6) and TorchScript archives (`torch.jit.save`: the same
//! container with a `code/` folder), and the zip side of `torch.export` archives: the current
//! layout through `pt2`, the older ones (a `torch.save` file stored inside) as a window of the
//! mapping (`read_nested`). The archive's entries are checked as PyTorch's reader checks them
//! (version, byte order, names stored twice, entries outside the folder) before anything is read.

use std::io::Cursor;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::DType;

use super::checkpoint::{
    budget, parse_pickle, tensors_of, zip_entry, Archive, Checkpoint, EntryBytes, SharedMap,
    Storages, MAX_PICKLE_BYTES,
};
use super::pt2;
use crate::error::{Result, WeightsError};
use crate::formats::container::Format;
use crate::pickle::torch::{quantized, walk_tensors, Tensors};

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

/// Reads a zip checkpoint: `torch.save` (state dict, training checkpoint, whole module) or a
/// TorchScript archive (a `code/` folder beside `data.pkl`). The top folder may have any name.
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
        let pt2 = pt2::archive_dir(&names);
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
        packed,
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
        packed,
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
    checkpoint.chained = bytes.and_then(|b| pt2::graph_chains(b.get(map), ""));
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
    let (tensors, chained) = pt2::tensors(path, &archive, names, &dir, read)?;
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
        packed: Default::default(),
        chained,
        cap: budget(map.len()),
        window,
    })
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
