//! `torch.distributed.checkpoint` folders (`dcp.save`; FSDP's sharded checkpoints): a
//! `.metadata` pickle lists every tensor by its path (`model.rnn.weight_ih_l0`) with its dtype,
//! size and chunks, and where each chunk is: a byte range of a `*.distcp` shard that holds
//! `torch.save(chunk)`. The pickle goes through our bounded reader as plain data; each chunk is
//! read as the `torch.save` archive it is, and the chunks of a tensor, which must cover it exactly
//! once, are assembled into the whole tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;

pub(crate) mod assembly;
pub(crate) mod metadata;

use self::assembly::Assembly;
use self::metadata::{read_metadata, DcpObject, DcpTensor};
use super::container::{Container, Format, TensorInfo};
use super::torch::checkpoint::Checkpoint;
use crate::error::{Result, WeightsError};
use crate::pickle::torch::{MAX_NAME_BYTES, MAX_NAME_LEN, MAX_TENSORS};

/// Largest `.metadata` read (it lists chunks, not data: a few MB for a large model).
const MAX_METADATA_BYTES: u64 = 256 << 20;
/// Most shard files a checkpoint may name (each is mapped).
const MAX_SHARDS: usize = 16384;

/// The folder of a checkpoint given as the folder or as its `.metadata` file.
pub(crate) fn folder_of(path: &Path) -> Option<PathBuf> {
    if path.is_dir() && path.join(".metadata").is_file() {
        return Some(path.to_path_buf());
    }
    if path.file_name().is_some_and(|n| n == ".metadata") && path.is_file() {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        return Some(parent.unwrap_or(Path::new(".")).to_path_buf());
    }
    None
}

/// The shard files a checkpoint's tensors read, mapped once each.
pub(crate) type Shards = HashMap<String, Arc<memmap2::Mmap>>;

/// An opened checkpoint folder: its tensors and its mapped shards.
pub(crate) struct Dcp {
    pub dir: PathBuf,
    tensors: Vec<DcpTensor>,
    /// Name -> index into `tensors`.
    index: HashMap<String, usize>,
    shards: Shards,
    /// Bytes of all shards, each counted once.
    pub shard_bytes: u64,
    /// Pickled items holding tensors: their shard file and what they were read as.
    items: Vec<(String, Checkpoint)>,
    /// Name -> (item, tensor in it).
    in_items: HashMap<String, (usize, usize)>,
    /// Pickled items not read, with why.
    pub unread: Vec<String>,
    /// Every tensor, sorted by name.
    infos: Vec<TensorInfo>,
}

impl Dcp {
    /// Reads the folder's `.metadata`, maps every shard it names and checks each chunk's byte
    /// range against its shard; `key` keeps the tensors under that path only.
    pub(crate) fn open(dir: &Path, key: Option<&str>) -> Result<Self> {
        let meta_path = dir.join(".metadata");
        let bytes = read_metadata_file(&meta_path)?;
        let (mut tensors, mut objects) = read_metadata(dir, &bytes)?;
        let key = key.map(|k| k.trim_end_matches('.'));
        if let Some(key) = key {
            tensors.retain(|t| under(&t.name, key));
            // An item under the key, or one the key lies inside (`model.rnn` in `model`).
            objects.retain(|o| under(&o.name, key) || under(key, &o.name));
        }
        let shards = map_shards(dir, &meta_path, &tensors, &objects)?;
        // The bytes the shards hold, each counted once.
        let shard_bytes = shards
            .values()
            .fold(0u64, |a, m| a.saturating_add(m.len() as u64));
        let mut infos: Vec<TensorInfo> = tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                // Listed as U8 when candle has no dtype for it, as in a torch.save file.
                dtype: t.dtype.unwrap_or(DType::U8),
                shape: t.shape.clone(),
            })
            .collect();
        let index: HashMap<String, usize> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let read = read_items(dir, &meta_path, &objects, &shards, key, &index)?;
        infos.extend(read.infos);
        if infos.is_empty() {
            let why = match read.unread.first() {
                Some(u) => {
                    format!("lists no tensor, and its pickled items hold none we can read: {u}")
                }
                None => "lists no tensor, and its pickled items hold none".to_string(),
            };
            return Err(WeightsError::file(&meta_path, why));
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Dcp {
            dir: dir.to_path_buf(),
            tensors,
            index,
            items: read.items,
            in_items: read.in_items,
            unread: read.unread,
            shards,
            shard_bytes,
            infos,
        })
    }

    /// The names of the shard files its tensors are read from.
    pub(crate) fn shard_files(&self) -> impl Iterator<Item = &str> {
        self.shards.keys().map(String::as_str)
    }

    /// Assembles tensor `name` from its chunks (or reads it from its pickled item), on the CPU.
    fn load_cpu(&self, name: &str) -> Result<candle_core::Tensor> {
        let bad = |reason: String| WeightsError::Tensor {
            name: name.to_string(),
            reason: format!("{reason} (in {})", self.dir.display()),
        };
        if let Some(&(item, k)) = self.in_items.get(name) {
            let (file, checkpoint) = &self.items[item];
            let found = &checkpoint.tensors[k];
            let map = &self.shards[file];
            return checkpoint.load(&self.dir.join(file), map, &found.name, &found.tensor);
        }
        let t = &self.tensors[*self
            .index
            .get(name)
            .ok_or_else(|| bad("is not in the checkpoint".into()))?];
        let dtype = t
            .dtype
            .ok_or_else(|| bad("has an element type candle cannot hold".into()))?;
        let es = dtype.size_in_bytes();
        // Its chunks lie in distinct bytes of the shards (checked on open) and hold its elements
        // as torch.save files: the whole tensor cannot honestly be larger than they are.
        let held = t
            .chunks
            .iter()
            .fold(0u64, |a, c| a.saturating_add(c.range.end - c.range.start));
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let total = numel
            .and_then(|n| n.checked_mul(es as u64))
            .filter(|&n| n <= held)
            .ok_or_else(|| {
                bad(format!(
                    "its size {:?} needs more bytes than its chunks hold ({held})",
                    t.shape
                ))
            })? as usize;
        let mut whole = Assembly::new(&t.shape, dtype, total).map_err(bad)?;
        for c in &t.chunks {
            let map = &self.shards[&c.file];
            let window = c.range.start as usize..c.range.end as usize;
            let shard = self.dir.join(&c.file);
            let (bytes, got, shape) =
                crate::formats::torch::zip::read_bare_tensor(&shard, map, window)
                    .map_err(|e| bad(format!("its chunk at {:?}: {e}", c.offsets)))?;
            whole.put(c.region(), got, &shape, &bytes).map_err(bad)?;
        }
        Ok(whole.into_tensor()?)
    }
}

/// Whether `name` is `key` or lies under it (`key.…`).
fn under(name: &str, key: &str) -> bool {
    name.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The `.metadata` file's bytes, within the cap on its size.
fn read_metadata_file(meta_path: &Path) -> Result<Vec<u8>> {
    let file = crate::io::regular::open_regular(meta_path)?;
    let len = file
        .metadata()
        .map_err(|e| WeightsError::io(meta_path, "stat", e))?
        .len();
    if len > MAX_METADATA_BYTES {
        return Err(WeightsError::file(
            meta_path,
            format!("{len} bytes, more than a checkpoint's metadata needs ({MAX_METADATA_BYTES})"),
        ));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, len), &mut bytes)
        .map_err(|e| WeightsError::io(meta_path, "read", e))?;
    Ok(bytes)
}

/// Maps every shard file the chunks and items name, once each, checking that each chunk's and
/// item's bytes lie inside its shard and that no two overlap.
fn map_shards(
    dir: &Path,
    meta_path: &Path,
    tensors: &[DcpTensor],
    objects: &[DcpObject],
) -> Result<Shards> {
    let mut shards = Shards::new();
    let mut by_file: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    let chunks = tensors.iter().flat_map(|t| {
        t.chunks
            .iter()
            .map(move |c| (&t.name, &c.file, &c.range, Some(&c.offsets)))
    });
    let items = objects.iter().map(|o| (&o.name, &o.file, &o.range, None));
    // (tensor or item, shard file, bytes, the chunk's offsets: `None` for an item)
    for (name, file, range, offsets) in chunks.chain(items) {
        by_file
            .entry(file.as_str())
            .or_default()
            .push((range.start, range.end));
        if !shards.contains_key(file) {
            if shards.len() >= MAX_SHARDS {
                return Err(WeightsError::file(
                    meta_path,
                    format!("names more than {MAX_SHARDS} shard files"),
                ));
            }
            let path = dir.join(file);
            let f = crate::io::regular::open_regular(&path)?;
            let map = crate::formats::container::map(&path, &f)?;
            // SerializationFormat.SAFETENSORS shards: one safetensors file per shard. (A
            // shard may start with a raw `io.BytesIO` item: not a test of "PK".)
            if map.get(8) == Some(&b'{') && !map.starts_with(b"PK") {
                return Err(WeightsError::file(
                    &path,
                    "is not a torch.save shard (saved with another serialization \
                     format, such as SerializationFormat.SAFETENSORS, which is not read)",
                ));
            }
            shards.insert(file.clone(), Arc::new(map));
        }
        let shard_len = shards[file].len() as u64;
        if range.end > shard_len {
            let what = match offsets {
                Some(o) => format!("its chunk at {o:?}"),
                None => "its pickled item".to_string(),
            };
            return Err(WeightsError::Tensor {
                name: name.clone(),
                reason: format!(
                    "{what} is bytes {range:?} of {file}, which has {shard_len}: a \
                     truncated or lying checkpoint"
                ),
            });
        }
    }
    // A shard's chunks lie in distinct bytes, as torch writes them: then reading every chunk
    // reads each byte of the shards once (overlapping ranges could make a small file read as
    // a large one, chunk after chunk).
    for (file, ranges) in &mut by_file {
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| w[0].1 > w[1].0) {
            return Err(WeightsError::file(
                meta_path,
                format!(
                    "places two chunks in overlapping bytes of {file} ({:?} and {:?})",
                    w[0].0..w[0].1,
                    w[1].0..w[1].1
                ),
            ));
        }
    }
    Ok(shards)
}

/// The tensors of the pickled items (`objects`), named by the item's path and theirs in it.
struct Items {
    /// Each item read: its shard file and what it was read as.
    items: Vec<(String, Checkpoint)>,
    /// Name -> (item, tensor in it).
    in_items: HashMap<String, (usize, usize)>,
    /// Items not read, with why.
    unread: Vec<String>,
    infos: Vec<TensorInfo>,
}

/// Reads the pickled items; `index` holds the names the tensors already take.
fn read_items(
    dir: &Path,
    meta_path: &Path,
    objects: &[DcpObject],
    shards: &Shards,
    key: Option<&str>,
    index: &HashMap<String, usize>,
) -> Result<Items> {
    let mut infos = Vec::new();
    // The tensors inside pickled items, named by the item's path and theirs in it.
    let mut items = Vec::new();
    let mut in_items = HashMap::new();
    let mut unread = Vec::new();
    let mut name_bytes = 0usize;
    for o in objects {
        let path = dir.join(&o.file);
        let window = o.range.start as usize..o.range.end as usize;
        // An item that is no torch.save file (a custom planner's raw `io.BytesIO`), or one
        // our reader refuses (a train state of millions of objects), holds no tensor we can
        // read: it is skipped, and named where a module is then not found; but one the key
        // points into must be read.
        let wanted = key.is_some_and(|key| under(key, &o.name));
        let checkpoint =
            match crate::formats::torch::zip::read_object(&path, &shards[&o.file], window) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) if !wanted => {
                    unread.push(format!("`{}` ({e})", o.name));
                    continue;
                }
                Err(e) => {
                    return Err(WeightsError::file(
                        meta_path,
                        format!("`{}`, a pickled item: {e}", o.name),
                    ))
                }
            };
        for (k, f) in checkpoint.tensors.iter().enumerate() {
            let name = match f.name.as_str() {
                "" => o.name.clone(),
                inner => format!("{}.{inner}", o.name),
            };
            if key.is_some_and(|key| !under(&name, key)) {
                continue;
            }
            name_bytes = name_bytes.saturating_add(name.len());
            if name.len() > MAX_NAME_LEN
                || in_items.len() >= MAX_TENSORS
                || name_bytes > MAX_NAME_BYTES
            {
                return Err(WeightsError::file(
                    meta_path,
                    format!(
                        "its pickled items hold more than {MAX_TENSORS} tensors, a name of \
                         more than {MAX_NAME_LEN} bytes or more than {MAX_NAME_BYTES} bytes \
                         of names"
                    ),
                ));
            }
            if index.contains_key(&name) || in_items.contains_key(&name) {
                return Err(WeightsError::Tensor {
                    name,
                    reason: format!("is listed twice by {}", meta_path.display()),
                });
            }
            infos.push(TensorInfo {
                name: name.clone(),
                dtype: f.tensor.storage.dtype.unwrap_or(DType::U8),
                shape: f.tensor.shape.clone(),
            });
            in_items.insert(name, (items.len(), k));
        }
        items.push((o.file.clone(), checkpoint));
    }
    Ok(Items {
        items,
        in_items,
        unread,
        infos,
    })
}

impl Container for Dcp {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn format(&self) -> Format {
        Format::DistributedCheckpoint
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    fn take_tensors(&mut self) -> Vec<TensorInfo> {
        std::mem::take(&mut self.infos)
    }

    fn files(&self) -> Vec<PathBuf> {
        self.shard_files().map(|f| self.dir.join(f)).collect()
    }

    fn stored_bytes(&self) -> usize {
        usize::try_from(self.shard_bytes).unwrap_or(usize::MAX)
    }

    fn load(&self, name: &str, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        Ok(self.load_cpu(name)?.to_device(device)?)
    }

    fn unread_note(&self) -> Option<String> {
        (!self.unread.is_empty())
            .then(|| format!("pickled items not read: {}", self.unread.join("; ")))
    }
}
