//! Only regular files are read or replaced: a FIFO would block `open` forever, a device would
//! stream without end, and renaming over `/dev/null` destroys it. And what makes two paths one
//! file (`file_id`), so that a file reached twice is read once.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Result, WeightsError};

fn kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_block_device() || ft.is_char_device() {
            return "a device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (after symlinks). The type is checked before
/// `open` and again on the open handle, which is opened non-blocking so that a FIFO swapped in
/// between cannot block.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| WeightsError::io(path, "open", e))?;
    if !meta.is_file() {
        return Err(WeightsError::file(
            path,
            format!("is {}, not a regular file", kind(&meta.file_type())),
        ));
    }
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|e| WeightsError::io(path, "open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| WeightsError::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(WeightsError::file(
            path,
            format!("is {}, not a regular file", kind(&meta.file_type())),
        ));
    }
    Ok(file)
}

/// Refuses an output path that exists and is not a regular file (a device, FIFO, directory):
/// writing a temporary file and renaming it over such a path would replace it.
pub fn check_output_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(m) => Err(WeightsError::file(
                path,
                format!(
                    "is a link to {}; refusing to replace it",
                    kind(&m.file_type())
                ),
            )),
            Err(_) => Ok(()),
        },
        Ok(meta) if !meta.is_file() => Err(WeightsError::file(
            path,
            format!("is {}; refusing to replace it", kind(&meta.file_type())),
        )),
        _ => Ok(()),
    }
}

/// What tells two paths to one file from two files: device and inode where there are some
/// (links, names differing in case on a case-insensitive disk), else the canonical path.
pub(crate) fn file_id(path: &Path) -> Result<(u64, u64, PathBuf)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| WeightsError::io(path, "open", e))?;
        Ok((m.dev(), m.ino(), PathBuf::new()))
    }
    #[cfg(not(unix))]
    {
        let c = std::fs::canonicalize(path).map_err(|e| WeightsError::io(path, "open", e))?;
        Ok((0, 0, c))
    }
}

/// Most folder entries looked at when choosing the file of a folder or its siblings.
pub(crate) const MAX_FOLDER_ENTRIES: usize = 100_000;

/// `paths` less those that are a file an earlier one is (links), and those that cannot be read.
pub(crate) fn distinct_files(paths: &[PathBuf]) -> Vec<&PathBuf> {
    let mut seen = std::collections::HashSet::new();
    paths
        .iter()
        .filter(|p| file_id(p).is_ok_and(|id| seen.insert(id)))
        .collect()
}
