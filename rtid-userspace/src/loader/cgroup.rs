//! Finding the cgroup v2 hierarchy, which may sit at /sys/fs/cgroup or, on
//! hybrid layouts, at /sys/fs/cgroup/unified: read it from mountinfo.

use std::{fs, io, os::unix::fs::MetadataExt, path::PathBuf};

/// Mount point of the cgroup2 filesystem.
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options ... - fstype source options
        let Some((before, after)) = line.split_once(" - ") else { continue };
        if after.split_whitespace().next() == Some("cgroup2")
            && let Some(mount_point) = before.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mount_point));
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, "no cgroup2 filesystem in /proc/self/mountinfo"))
}

/// The cgroup v2 id of a cgroup directory: its inode number, which is what
/// `bpf_get_current_cgroup_id` returns.
pub fn cgroup_id(path: &std::path::Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}
