//! Enforcement cannot be detached silently. The daemon holds its own
//! descriptor for every link it attached or adopted, besides the pins: a pin
//! removed from bpffs then detaches nothing, and [`Attachments::check`] (run at
//! start, on adoption and periodically) finds what is missing, pins it again
//! or re-attaches it, and says what it found.
//!
//! The pin directory also holds a layout record (a one-entry array map,
//! `rtid-layout`): the event wire version, the sizes of the map values and the
//! links pinned. A daemon refuses to adopt pins whose record differs from its
//! own build, before it touches a map.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::LoadError;

/// Where the layout record is pinned, inside the pin directory.
pub const LAYOUT_PIN: &str = "rtid-layout";
/// Bytes of the layout record's single value: a NUL-padded JSON text.
const LAYOUT_BYTES: u32 = 4096;
/// Version of the record's own format.
const LAYOUT_FORMAT: u32 = 1;

/// What a build of rtid pins: checked before pins are adopted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Layout {
    pub format: u32,
    pub event_wire_version: u16,
    /// Size in bytes of each type the maps hold.
    pub sizes: BTreeMap<String, usize>,
    /// The links pinned under `links/`.
    pub links: Vec<String>,
}

impl Layout {
    /// This build's layout, with the links it pinned.
    pub fn current(links: Vec<String>) -> Layout {
        use std::mem::size_of;

        use rtid_common::*;
        let sizes = [
            ("Event", size_of::<Event>()),
            ("ProcessIdentity", size_of::<ProcessIdentity>()),
            ("IdentityPolicyKey", size_of::<IdentityPolicyKey>()),
            ("IdentityPolicy", size_of::<IdentityPolicy>()),
            ("IdentityStatus", size_of::<IdentityStatus>()),
            ("QuarantineState", size_of::<QuarantineState>()),
            ("RuntimeState", size_of::<RuntimeState>()),
            ("BackendConfig", size_of::<BackendConfig>()),
            ("PathKey", size_of::<PathKey>()),
            ("PathRuleList", size_of::<PathRuleList>()),
            ("NetKey", size_of::<NetKey>()),
            ("NetRuleList", size_of::<NetRuleList>()),
        ];
        Layout {
            format: LAYOUT_FORMAT,
            event_wire_version: EVENT_WIRE_VERSION,
            sizes: sizes.into_iter().map(|(name, size)| (name.to_string(), size)).collect(),
            links,
        }
    }

    /// Whether pins with layout `self` can be adopted by this build; if not, why.
    fn incompatibility(&self) -> Option<String> {
        let ours = Layout::current(Vec::new());
        if self.format != ours.format {
            return Some(format!("layout record format {} (this build: {})", self.format, ours.format));
        }
        if self.event_wire_version != ours.event_wire_version {
            return Some(format!(
                "event wire version {} (this build: {})",
                self.event_wire_version, ours.event_wire_version
            ));
        }
        let differing: Vec<String> = ours
            .sizes
            .iter()
            .filter(|(name, size)| self.sizes.get(*name) != Some(size))
            .map(|(name, size)| match self.sizes.get(name) {
                Some(theirs) => format!("{name} is {theirs} bytes (this build: {size})"),
                None => format!("{name} is not recorded (this build: {size} bytes)"),
            })
            .collect();
        (!differing.is_empty()).then(|| differing.join(", "))
    }
}

fn incompatible(dir: &Path, why: String) -> LoadError {
    LoadError::Pin {
        path: dir.display().to_string(),
        problem: format!(
            "left by an incompatible rtid build ({why}); refusing to adopt them. Stop whatever still uses them and \
             remove the directory (`rm -r {}`) to load afresh, or run the build that pinned them",
            dir.display()
        ),
    }
}

/// Pins this build's layout record (links: the names pinned under `links/`).
pub fn write_layout(dir: &Path, links: Vec<String>) -> Result<(), LoadError> {
    let path = dir.join(LAYOUT_PIN);
    let fail = |problem: String| LoadError::Pin { path: path.display().to_string(), problem };
    let mut value = serde_json::to_vec(&Layout::current(links)).map_err(|error| fail(error.to_string()))?;
    if value.len() >= LAYOUT_BYTES as usize {
        return Err(fail(format!("layout record of {} bytes does not fit", value.len())));
    }
    value.resize(LAYOUT_BYTES as usize, 0);
    let map = sys::map_create_array(LAYOUT_BYTES, c"rtid_layout").map_err(|error| fail(error.to_string()))?;
    sys::map_update(map.as_fd(), 0, &value).map_err(|error| fail(error.to_string()))?;
    let _ = std::fs::remove_file(&path);
    sys::obj_pin(map.as_fd(), &path).map_err(|error| fail(error.to_string()))
}

/// Reads the layout record of pins left by an earlier load and checks it
/// against this build; refuses pins from an incompatible one, by name.
pub fn check_layout(dir: &Path) -> Result<Layout, LoadError> {
    let path = dir.join(LAYOUT_PIN);
    let map = sys::obj_get(&path).map_err(|error| {
        incompatible(dir, format!("no readable layout record at {}: {error}; an older build", path.display()))
    })?;
    let mut value = vec![0u8; LAYOUT_BYTES as usize];
    sys::map_lookup(map.as_fd(), 0, &mut value)
        .map_err(|error| incompatible(dir, format!("layout record unreadable: {error}")))?;
    let end = value.iter().position(|byte| *byte == 0).unwrap_or(value.len());
    let layout: Layout = serde_json::from_slice(&value[..end])
        .map_err(|error| incompatible(dir, format!("layout record not understood: {error}")))?;
    match layout.incompatibility() {
        Some(why) => Err(incompatible(dir, why)),
        None => Ok(layout),
    }
}

/// One link the daemon expects attached, and its own reference to it.
struct HeldLink {
    name: String,
    /// The daemon's own descriptor of the link. None: no reference left
    /// (the pin was gone when adopted).
    link: Option<OwnedFd>,
}

/// What one check found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Check {
    /// What was missing: `NAME (pin removed)`, `NAME (detached)`, ...
    pub missing: Vec<String>,
    /// Missing things put back by this check.
    pub repaired: Vec<String>,
    /// Missing things that could not be put back, with why.
    pub unrepaired: Vec<String>,
}

impl Check {
    pub fn whole(&self) -> bool {
        self.missing.is_empty()
    }
}

/// The daemon's references to every pinned link.
#[derive(Default)]
pub struct Attachments {
    /// The pin directory (None: nothing pinned, the loader's objects hold the links).
    dir: Option<PathBuf>,
    links: Vec<HeldLink>,
}

impl Attachments {
    /// Links this instance attached and pinned.
    pub fn attached(dir: Option<PathBuf>, links: Vec<(String, OwnedFd)>) -> Attachments {
        let links = links.into_iter().map(|(name, link)| HeldLink { name, link: Some(link) }).collect();
        Attachments { dir, links }
    }

    /// Links an earlier instance pinned (as its layout record lists them).
    pub fn adopted(dir: &Path, names: &[String]) -> Attachments {
        let links = names
            .iter()
            .map(|name| HeldLink { name: name.clone(), link: sys::obj_get(&dir.join("links").join(name)).ok() })
            .collect();
        Attachments { dir: Some(dir.to_path_buf()), links }
    }

    /// Checks every expected link: still attached (for cgroup links, still
    /// on a cgroup), and pinned at its path as this very link. Pins again
    /// what lost its pin, re-attaches a detached cgroup link; reports the rest.
    pub fn check(&mut self) -> Check {
        let mut check = Check::default();
        let Some(dir) = self.dir.clone() else { return check };
        for held in &mut self.links {
            let path = dir.join("links").join(&held.name);
            let Some(link) = &held.link else {
                let what = format!("{} (no reference left)", held.name);
                check.unrepaired.push(format!(
                    "{what}: its pin was gone before this daemon started; restart the daemon with the pin dir removed"
                ));
                check.missing.push(what);
                continue;
            };
            let info = sys::link_info(link.as_fd());
            if let Ok(info) = &info
                && info.link_type == sys::BPF_LINK_TYPE_CGROUP
                && info.cgroup_id == 0
            {
                let what = format!("{} (detached)", held.name);
                match reattach_cgroup(info, &path) {
                    Ok(relinked) => {
                        held.link = Some(relinked);
                        check.repaired.push(what.clone());
                    }
                    Err(problem) => check.unrepaired.push(format!("{what}: {problem}")),
                }
                check.missing.push(what);
                continue;
            }
            let ours = info.as_ref().map(|info| info.id).unwrap_or(0);
            let pinned = sys::obj_get(&path).ok().and_then(|fd| sys::link_info(fd.as_fd()).ok()).map(|info| info.id);
            if pinned == Some(ours) && ours != 0 {
                continue;
            }
            let what = match pinned {
                None => format!("{} (pin removed)", held.name),
                Some(_) => format!("{} (pin replaced)", held.name),
            };
            let _ = std::fs::remove_file(&path);
            match sys::obj_pin(link.as_fd(), &path) {
                Ok(()) => check.repaired.push(what.clone()),
                Err(error) => check.unrepaired.push(format!("{what}: pinning again failed: {error}")),
            }
            check.missing.push(what);
        }
        check
    }
}

/// A new link of the same program on the same cgroup (v2 root) and hook,
/// pinned at `path`.
fn reattach_cgroup(info: &sys::LinkInfo, path: &Path) -> Result<OwnedFd, String> {
    let program = sys::prog_fd_by_id(info.prog_id).map_err(|error| format!("program {}: {error}", info.prog_id))?;
    let root = super::cgroup::cgroup2_root().map_err(|error| error.to_string())?;
    let cgroup = std::fs::File::open(&root).map_err(|error| format!("{}: {error}", root.display()))?;
    let link = sys::link_create(program.as_fd(), cgroup.as_fd(), info.cgroup_attach_type)
        .map_err(|error| format!("re-attaching: {error}"))?;
    let _ = std::fs::remove_file(path);
    sys::obj_pin(link.as_fd(), path).map_err(|error| format!("pinning: {error}"))?;
    Ok(link)
}

/// The few bpf() commands aya has no public call for: a map created from
/// userspace (the layout record), link info with its cgroup part, a link
/// created from a program id.
pub(super) mod sys {
    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

    /// Calls bpf(cmd, attr) with a zero-padded attribute block.
    fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i64> {
        // The kernel checks that bytes past the fields it knows are zero: pad to a fixed block.
        let mut block = [0u8; 128];
        let size = std::mem::size_of::<T>();
        // SAFETY: T is a plain repr(C) attribute struct of at most 128 bytes, copied byte for byte.
        unsafe { std::ptr::copy_nonoverlapping(attr as *const T as *const u8, block.as_mut_ptr(), size.min(128)) };
        // SAFETY: block is a valid bpf_attr for `cmd` and outlives the call.
        let result = unsafe { libc::syscall(libc::SYS_bpf, cmd, block.as_mut_ptr(), block.len()) };
        if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(result) }
    }

    fn owned(fd: i64) -> OwnedFd {
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn c_path(path: &Path) -> std::io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    }

    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }

    pub fn map_create_array(value_size: u32, name: &std::ffi::CStr) -> std::io::Result<OwnedFd> {
        let mut map_name = [0u8; 16];
        for (slot, byte) in map_name.iter_mut().zip(name.to_bytes().iter().take(15)) {
            *slot = *byte;
        }
        let attr = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size,
            max_entries: 1,
            map_flags: 0,
            inner_map_fd: 0,
            numa_node: 0,
            map_name,
        };
        bpf(BPF_MAP_CREATE, &attr).map(owned)
    }

    #[repr(C)]
    struct MapElem {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    pub fn map_update(map: BorrowedFd<'_>, key: u32, value: &[u8]) -> std::io::Result<()> {
        let attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &attr).map(drop)
    }

    /// `value` must be exactly the map's value size.
    pub fn map_lookup(map: BorrowedFd<'_>, key: u32, value: &mut [u8]) -> std::io::Result<()> {
        let info = map_value_size(map)?;
        if info as usize != value.len() {
            return Err(std::io::Error::other(format!("value of {info} bytes, expected {}", value.len())));
        }
        let attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &attr).map(drop)
    }

    #[repr(C)]
    struct ObjPath {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }

    pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
        let path = c_path(path)?;
        let attr = ObjPath { pathname: path.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
        bpf(BPF_OBJ_PIN, &attr).map(drop)
    }

    pub fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
        let path = c_path(path)?;
        let attr = ObjPath { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
        bpf(BPF_OBJ_GET, &attr).map(owned)
    }

    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    fn info_by_fd(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> std::io::Result<()> {
        let attr =
            InfoByFd { bpf_fd: fd.as_raw_fd() as u32, info_len: buffer.len() as u32, info: buffer.as_mut_ptr() as u64 };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &attr).map(drop)
    }

    fn u32_at(buffer: &[u8], offset: usize) -> u32 {
        u32::from_ne_bytes(buffer[offset..offset + 4].try_into().expect("4 bytes"))
    }

    /// struct bpf_map_info: type, id, key_size, value_size, ...
    fn map_value_size(map: BorrowedFd<'_>) -> std::io::Result<u32> {
        let mut buffer = [0u8; 80];
        info_by_fd(map, &mut buffer)?;
        Ok(u32_at(&buffer, 12))
    }

    /// The parts of struct bpf_link_info the check needs.
    #[derive(Debug)]
    pub struct LinkInfo {
        pub link_type: u32,
        pub id: u32,
        pub prog_id: u32,
        /// Cgroup links: the cgroup (0 once detached) and the hook.
        pub cgroup_id: u64,
        pub cgroup_attach_type: u32,
    }

    pub fn link_info(link: BorrowedFd<'_>) -> std::io::Result<LinkInfo> {
        // type, id, prog_id, then the per-type union, 8-byte aligned at offset 16.
        let mut buffer = [0u8; 64];
        info_by_fd(link, &mut buffer)?;
        Ok(LinkInfo {
            link_type: u32_at(&buffer, 0),
            id: u32_at(&buffer, 4),
            prog_id: u32_at(&buffer, 8),
            cgroup_id: u64::from_ne_bytes(buffer[16..24].try_into().expect("8 bytes")),
            cgroup_attach_type: u32_at(&buffer, 24),
        })
    }

    #[repr(C)]
    struct ById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }

    pub fn prog_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
        bpf(BPF_PROG_GET_FD_BY_ID, &ById { id, next_id: 0, open_flags: 0 }).map(owned)
    }

    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
    }

    pub fn link_create(program: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<OwnedFd> {
        let attr = LinkCreate {
            prog_fd: program.as_raw_fd() as u32,
            target_fd: target.as_raw_fd() as u32,
            attach_type,
            flags: 0,
        };
        bpf(BPF_LINK_CREATE, &attr).map(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_differing_in_wire_version_or_sizes_is_named() {
        let ours = Layout::current(vec!["sched_process_fork".into()]);
        assert_eq!(ours.incompatibility(), None);
        let older = Layout { event_wire_version: ours.event_wire_version - 1, ..ours.clone() };
        assert!(older.incompatibility().unwrap().contains("event wire version"));
        let mut resized = ours.clone();
        resized.sizes.insert("IdentityPolicy".into(), 1);
        let why = resized.incompatibility().unwrap();
        assert!(why.contains("IdentityPolicy is 1 bytes"), "{why}");
    }
}
