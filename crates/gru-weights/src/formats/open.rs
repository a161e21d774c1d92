//! What a path stands for, opened: a `torch.distributed.checkpoint` folder (or its
//! `.metadata`), a folder holding one checkpoint or a distributed checkpoint's safetensors files,
//! a sharded checkpoint's index, or one file.

use std::path::Path;

use super::container::{Container, Format};
use super::dcp::{self, Dcp};
use super::dcp_safetensors;
use super::folder::{self, InFolder};
use super::sharded::Sharded;
use super::single;
use crate::error::{Result, WeightsError};

/// Opens the checkpoint at `path`; `key` keeps only the state dict(s) under that key path.
pub(crate) fn open(path: &Path, key: Option<&str>) -> Result<Box<dyn Container>> {
    if let Some(dir) = dcp::folder_of(path) {
        return Ok(Box::new(Dcp::open(&dir, key)?));
    }
    let no_keys = |at: &Path, what: &str| -> Result<()> {
        match key {
            Some(_) => Err(WeightsError::file(
                at,
                format!("{what} has no checkpoint keys"),
            )),
            None => Ok(()),
        }
    };
    let file = if path.is_dir() {
        match folder::file_in_folder(path)? {
            InFolder::File(file) => file,
            InFolder::DcpSafetensors(files) => {
                no_keys(path, "a folder of safetensors files")?;
                return Ok(Box::new(Sharded::open_set(path, &files)?));
            }
        }
    } else {
        path.to_path_buf()
    };
    let map = single::map_file(&file)?;
    if single::is_json(&map) {
        no_keys(&file, "a sharded checkpoint")?;
        return Ok(Box::new(Sharded::open(&file, &map)?));
    }
    let opened = single::open_mapped(&file, map, key)?;
    if opened.format() == Format::Safetensors {
        // A distributed checkpoint's chunks are read with the rest of their folder.
        if let Some(offsets) = dcp_safetensors::offsets(opened.as_ref())? {
            dcp_safetensors::check_lone_chunks(&file, &offsets)?;
        }
    }
    Ok(opened)
}
