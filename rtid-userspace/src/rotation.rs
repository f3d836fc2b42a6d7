//! Size-rotated files, as the file sink and the audit trail keep them: the
//! live file `path`, then `path.1` (newest) ... `path.<keep>` (oldest kept).

use std::{
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
};

/// `path.<k>`.
pub fn rotated_path(path: &Path, k: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// Removes `path`; a file that is not there is already removed.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Renames `from`; a file that is not there has nothing to move.
pub fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}
