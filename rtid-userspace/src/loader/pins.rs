//! Pinning maps and links in bpffs so enforcement outlives the daemon: a
//! killed or restarting daemon leaves the programs attached and the maps
//! (labels, policy, status) in place, and the next one adopts them.

use std::{
    cell::RefCell,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya::{Ebpf, programs::links::FdLink};

use super::{LoadError, attachments};

/// The maps a later instance adopts (every map the programs share with userspace).
pub const PINNED_MAPS: [&str; 20] = [
    "ONCE_RULES",
    "QUARANTINE",
    "EXEC_SELECTORS",
    "PROCESS_IDENTITY",
    "CGROUP_IDENTITY",
    "IDENTITY_POLICY",
    "IDENTITY_STATUS",
    "RUNTIME_STATE",
    "BACKEND_CONFIG",
    "PATH_PREFIX_RULES",
    "PATH_SUFFIX_RULES",
    "UNIX_RULES",
    "NET_RULES",
    "EVENTS",
    "COUNTERS",
    "PATH_SCRATCH",
    // Monitor integrity (issue 10): what an adopting daemon registers again.
    "PROTECTED_PATHS",
    "PRIVILEGED_SYSCALLS",
    "PENDING_KILLS",
    "UNTAGGABLE",
];

/// Whether an earlier instance left pins here (its layout record, or, from
/// an older build, its maps: refused by the layout check, not loaded over).
pub fn present(dir: &Path) -> bool {
    dir.join(attachments::LAYOUT_PIN).exists() || dir.join("maps").join("RUNTIME_STATE").exists()
}

pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub fn link_error(name: &str, error: impl std::fmt::Display) -> LoadError {
    LoadError::Pin { path: name.into(), problem: format!("link cannot be pinned: {error}") }
}

/// Pins into a directory, or does nothing when pinning is off. A load that
/// fails before [`Pinner::keep`] removes the directory it created, so a refused
/// load leaves nothing pinned (and so nothing attached) behind.
pub struct Pinner {
    dir: Option<PathBuf>,
    /// The directory did not exist before this load.
    created: bool,
    kept: bool,
    /// Each link pinned, with the daemon's own descriptor of it.
    links: RefCell<Vec<(String, OwnedFd)>>,
}

impl Pinner {
    pub fn new(dir: Option<&Path>) -> Result<Pinner, LoadError> {
        let created = dir.is_some_and(|dir| !dir.exists());
        let pinner = Pinner { dir: dir.map(Path::to_path_buf), created, kept: false, links: RefCell::new(Vec::new()) };
        if let Some(dir) = dir {
            for sub in ["maps", "links"] {
                let path = dir.join(sub);
                std::fs::create_dir_all(&path)
                    .map_err(|error| LoadError::Pin { path: path.display().to_string(), problem: error.to_string() })?;
            }
        }
        Ok(pinner)
    }

    /// The load succeeded: records the layout of what was pinned, and the
    /// pins stay. Returns the daemon's own references to every pinned link.
    pub fn keep(mut self) -> Result<attachments::Attachments, LoadError> {
        let links = std::mem::take(&mut *self.links.borrow_mut());
        if let Some(dir) = &self.dir {
            attachments::write_layout(dir, links.iter().map(|(name, _)| name.clone()).collect())?;
        }
        self.kept = true;
        Ok(attachments::Attachments::attached(self.dir.clone(), links))
    }

    pub fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// Pins `link` as `links/NAME` (bpffs refuses dots in names: they become `_`).
    pub fn pin_link(&self, name: &str, link: FdLink) -> Result<(), LoadError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let name = name.replace('.', "_");
        let path = dir.join("links").join(&name);
        let fail = |problem: String| LoadError::Pin { path: path.display().to_string(), problem };
        let pinned = link.pin(&path).map_err(|error| fail(error.to_string()))?;
        // The daemon's own reference, besides the pin: removing the pin then detaches nothing.
        let own = attachments::sys::obj_get(&path).map_err(|error| fail(error.to_string()))?;
        drop(pinned);
        self.links.borrow_mut().push((name, own));
        Ok(())
    }

    pub fn pin_maps(&self, ebpf: &Ebpf) -> Result<(), LoadError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        for name in PINNED_MAPS {
            let path = dir.join("maps").join(name);
            let map = ebpf
                .map(name)
                .ok_or_else(|| LoadError::Pin { path: path.display().to_string(), problem: "map missing".into() })?;
            map.pin(&path)
                .map_err(|error| LoadError::Pin { path: path.display().to_string(), problem: error.to_string() })?;
        }
        Ok(())
    }
}

impl Drop for Pinner {
    fn drop(&mut self) {
        if let (false, true, Some(dir)) = (self.kept, self.created, &self.dir)
            && let Err(error) = remove(dir)
        {
            tracing::warn!(dir = %dir.display(), %error, "removing the pins of a failed load");
        }
    }
}
