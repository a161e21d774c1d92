//! Which file of a folder to open: the one `from_pretrained` would (a Hugging Face model folder),
//! or a distributed checkpoint's safetensors files, read together. (A `torch.distributed`
//! `.metadata` folder is told apart before, in `dcp`.)

use std::path::{Path, PathBuf};

use super::dcp_safetensors::dcp_tensor_names;
use crate::error::{Result, WeightsError};
use crate::io::regular::{distinct_files, MAX_FOLDER_ENTRIES};

/// The files `from_pretrained` looks for, in its order (transformers', then diffusers' names):
/// one safetensors file before its index, safetensors before `torch.save`.
const KNOWN_FILES: [&str; 8] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
];

/// What a folder holds.
pub(crate) enum InFolder {
    /// A file to open (itself an index, or one checkpoint).
    File(PathBuf),
    /// Safetensors files `torch.distributed.checkpoint` wrote, to read together.
    DcpSafetensors(Vec<PathBuf>),
}

/// The file to open for `dir`, a folder `save_pretrained` wrote: the first of `KNOWN_FILES` it
/// has; else its one index of safetensors or `torch.save` shards, else its one `.safetensors`
/// file (`model.fp16.safetensors`); or, for several safetensors files carrying
/// `DCP_SHARDING_INFO`, all its safetensors files.
pub(crate) fn file_in_folder(dir: &Path) -> Result<InFolder> {
    if let Some(known) = KNOWN_FILES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    {
        return Ok(InFolder::File(known));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WeightsError::io(dir, "list", e))? {
        if names.len() == MAX_FOLDER_ENTRIES {
            return Err(WeightsError::file(
                dir,
                format!(
                    "the folder has more than {MAX_FOLDER_ENTRIES} entries and none of \
                     `model.safetensors`, `pytorch_model.bin` or their indexes; pass the file"
                ),
            ));
        }
        let entry = entry.map_err(|e| WeightsError::io(dir, "list", e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    let pick = |what: &str, matches: &dyn Fn(&str) -> bool| -> Result<Option<PathBuf>> {
        let found: Vec<&String> = names
            .iter()
            .filter(|n| matches(n) && dir.join(n).is_file())
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(dir.join(one))),
            many => {
                const SHOWN: usize = 8;
                let mut shown: Vec<String> =
                    many.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
                if many.len() > SHOWN {
                    shown.push(format!("and {} more", many.len() - SHOWN));
                }
                Err(WeightsError::file(
                    dir,
                    format!(
                        "the folder holds {} {what}: {}; pass the one to read",
                        many.len(),
                        shown.join(", ")
                    ),
                ))
            }
        }
    };
    // `x.safetensors.index.json`, or a variant's `model.safetensors.index.fp16.json`; not
    // TensorFlow's or Flax's. An index first: its shards are many safetensors files.
    let index = |n: &str| {
        n.ends_with(".json") && (n.contains(".safetensors.index") || n.contains(".bin.index"))
    };
    if let Some(p) = pick("indexes", &index)? {
        return Ok(InFolder::File(p));
    }
    let safetensors: Vec<PathBuf> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    // Each file's header once, however many links reach it.
    let distinct = distinct_files(&safetensors);
    if safetensors.len() > 1 && distinct.iter().any(|p| dcp_tensor_names(p).is_some()) {
        return Ok(InFolder::DcpSafetensors(safetensors));
    }
    if let Some(p) = pick("safetensors files", &|n| n.ends_with(".safetensors"))? {
        return Ok(InFolder::File(p));
    }
    Err(WeightsError::file(
        dir,
        "is a folder, but neither a torch.distributed.checkpoint (no `.metadata`) nor a Hugging \
         Face model folder (no `*.safetensors`, `pytorch_model.bin` or index of shards); pass \
         the weight file itself",
    ))
}
