//! What /proc says about the process behind an event: its binary, argv,
//! working directory, user name, container and pod, and the parents that
//! share its identity.
//!
//! The kernel event names the actor only by pid and comm; whoever reads the
//! event later needs more, and by then the process may be gone. So the daemon
//! asks here when it first sees a process and the answer is cached by process
//! key (`tgid:start_ns`): a burst of events from one process reads /proc once,
//! and a reused pid, whose key differs, never inherits another process's
//! details. /proc is trusted only after its start time matches the key; when
//! it does not, or /proc cannot answer, the fields stay empty and are named
//! in `unavailable`. Nothing here fails the event.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    path::{Path, PathBuf},
    time::SystemTime,
};

use procfs::process::{Process, Stat};

use super::record::{Ancestor, ProcessDetails};

/// Processes remembered at once; the oldest is forgotten first.
pub const CACHE_CAPACITY: usize = 16384;
/// Parents walked at most, so a deep tree inside one identity stays cheap.
pub const MAX_ANCESTRY: usize = 16;
/// Bytes of /proc/PID/cmdline kept: a cache entry stays small even for a
/// process started with a huge argv.
pub const MAX_CMDLINE_BYTES: usize = 16 * 1024;
/// Marks a command line cut at `MAX_CMDLINE_BYTES`.
pub const CMDLINE_CUT: &str = "...";

/// The fields /proc fills, named in `unavailable` when it could not.
const PROC_FIELDS: [&str; 6] = ["exe", "cmdline", "cwd", "container_id", "pod_uid", "ancestry"];

/// Process details by process key, read from /proc once per process.
pub struct Enricher {
    cache: HashMap<String, Cached>,
    /// Insertion number to key: the first entry is the oldest.
    age: BTreeMap<u64, String>,
    next_insertion: u64,
    capacity: usize,
    users: Users,
    ticks_per_second: u64,
    proc_lookups: u64,
}

struct Cached {
    insertion: u64,
    details: ProcessDetails,
}

impl Default for Enricher {
    fn default() -> Enricher {
        Enricher::new()
    }
}

impl Enricher {
    pub fn new() -> Enricher {
        Enricher::with_capacity(CACHE_CAPACITY)
    }

    /// An enricher remembering at most `capacity` processes (at least one).
    pub fn with_capacity(capacity: usize) -> Enricher {
        Enricher {
            cache: HashMap::new(),
            age: BTreeMap::new(),
            next_insertion: 0,
            capacity: capacity.max(1),
            users: Users::new("/etc/passwd"),
            ticks_per_second: procfs::ticks_per_second(),
            proc_lookups: 0,
        }
    }

    /// The node name: $NODE_NAME (set by the DaemonSet from spec.nodeName) or the host name.
    ///
    /// In a pod without host networking the host name is the pod's, hence
    /// the variable first.
    pub fn node_name() -> String {
        if let Ok(name) = std::env::var("NODE_NAME")
            && !name.trim().is_empty()
        {
            return name.trim().to_string();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// Details of process `tgid`, known by `process_key` ("tgid:start_ns", start_ns = the task's start_boottime in ns from the kernel),
    /// from the cache or /proc. `identity_of(pid)` names the identity a pid carries (None if untagged).
    pub fn details(
        &mut self,
        tgid: u32,
        process_key: &str,
        uid: u32,
        identity_of: &dyn Fn(u32) -> Option<String>,
    ) -> ProcessDetails {
        if let Some(cached) = self.cache.get(process_key) {
            return cached.details.clone();
        }
        self.proc_lookups += 1;
        let mut details = read_process(tgid, process_key, self.ticks_per_second, identity_of);
        // From the kernel's uid, not /proc: known even when the process is gone.
        details.user = self.users.name(uid);
        self.remember(process_key, details.clone());
        details
    }

    /// The process exited: drop its cache entry (call after its exit event was enriched).
    pub fn forget(&mut self, process_key: &str) {
        if let Some(cached) = self.cache.remove(process_key) {
            self.age.remove(&cached.insertion);
        }
    }

    /// How many times details() had to consult /proc (cache misses).
    pub fn proc_lookups(&self) -> u64 {
        self.proc_lookups
    }

    /// Processes currently cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn remember(&mut self, process_key: &str, details: ProcessDetails) {
        while self.cache.len() >= self.capacity {
            let Some((_, oldest)) = self.age.pop_first() else { break };
            self.cache.remove(&oldest);
        }
        let insertion = self.next_insertion;
        self.next_insertion += 1;
        self.age.insert(insertion, process_key.to_string());
        self.cache.insert(process_key.to_string(), Cached { insertion, details });
    }
}

/// Everything /proc can say about the process, or nothing when /proc/<tgid>
/// is not (or no longer) the process the key names.
fn read_process(
    tgid: u32,
    process_key: &str,
    ticks_per_second: u64,
    identity_of: &dyn Fn(u32) -> Option<String>,
) -> ProcessDetails {
    let verified = start_ns_of(process_key).and_then(|start_ns| open_same_process(tgid, start_ns, ticks_per_second));
    let Some((process, stat)) = verified else {
        return ProcessDetails {
            unavailable: PROC_FIELDS.iter().map(|field| field.to_string()).collect(),
            ..ProcessDetails::default()
        };
    };
    // Every read below goes through the /proc/<tgid> directory handle opened
    // for the start-time check: if the process exits meanwhile and its pid is
    // reused, the reads fail instead of describing the newcomer.
    let mut unavailable = Vec::new();
    let exe = noted(&mut unavailable, "exe", process.exe().ok().map(|path| lossy_path(&path)));
    let cmdline = noted(&mut unavailable, "cmdline", read_cmdline(&process));
    let cwd = noted(&mut unavailable, "cwd", process.cwd().ok().map(|path| lossy_path(&path)));
    let (container_id, pod_uid) = match read_small(&process, "cgroup") {
        Some(cgroups) => container_and_pod_of(&cgroups),
        None => {
            unavailable.extend(["container_id".to_string(), "pod_uid".to_string()]);
            (None, None)
        }
    };
    let ancestry = ancestry_from(stat.ppid.max(0) as u32, identity_of);
    ProcessDetails { exe, cmdline, cwd, user: None, container_id, pod_uid, ancestry, unavailable }
}

/// `start_ns` of a process key `tgid:start_ns`; None (unverifiable) when malformed or zero.
fn start_ns_of(process_key: &str) -> Option<u64> {
    let (_, start) = process_key.split_once(':')?;
    start.parse().ok().filter(|&start_ns| start_ns != 0)
}

/// /proc/<tgid> and its stat, if it is still the process that started at
/// `start_ns`: once a process is reaped its pid can name another one.
fn open_same_process(tgid: u32, start_ns: u64, ticks_per_second: u64) -> Option<(Process, Stat)> {
    if tgid == 0 {
        return None;
    }
    let process = Process::new(tgid as i32).ok()?;
    let stat = process.stat().ok()?;
    started_at(stat.starttime, start_ns, ticks_per_second).then_some((process, stat))
}

/// Whether a /proc start time (clock ticks since boot, field 22 of stat) is
/// the kernel's `start_boottime` in ns. The kernel derives one from the other
/// by truncation, so they agree within one tick.
fn started_at(start_ticks: u64, start_ns: u64, ticks_per_second: u64) -> bool {
    let expected = (start_ns as u128 * ticks_per_second as u128 / 1_000_000_000) as u64;
    start_ticks.abs_diff(expected) <= 1
}

/// `value`, naming `field` in `unavailable` when there is none.
fn noted<T>(unavailable: &mut Vec<String>, field: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        unavailable.push(field.to_string());
    }
    value
}

fn lossy_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// argv as the process holds it, cut at `MAX_CMDLINE_BYTES`. Empty (a
/// zombie, a kernel thread) counts as unavailable.
fn read_cmdline(process: &Process) -> Option<Vec<String>> {
    let mut raw = Vec::new();
    let file = process.open_relative("cmdline").ok()?;
    file.take(MAX_CMDLINE_BYTES as u64 + 1).read_to_end(&mut raw).ok()?;
    split_cmdline(&raw)
}

/// Splits NUL-separated argv. Kept: empty arguments (`prog "" x`). Bytes
/// past `MAX_CMDLINE_BYTES` are dropped and `CMDLINE_CUT` ends the list.
fn split_cmdline(raw: &[u8]) -> Option<Vec<String>> {
    let cut = raw.len() > MAX_CMDLINE_BYTES;
    let raw = &raw[..raw.len().min(MAX_CMDLINE_BYTES)];
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    let mut argv: Vec<String> =
        raw.split(|&byte| byte == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
    if cut {
        argv.push(CMDLINE_CUT.to_string());
    }
    Some(argv)
}

/// A small /proc file of the process as text.
fn read_small(process: &Process, name: &str) -> Option<String> {
    let mut text = String::new();
    process.open_relative(name).ok()?.take(64 * 1024).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Parents of a process, nearest first: those carrying an identity, then the
/// first one that does not (where the identity was entered), at most
/// `MAX_ANCESTRY`. A parent /proc cannot show ends the walk.
fn ancestry_from(first_parent: u32, identity_of: &dyn Fn(u32) -> Option<String>) -> Vec<Ancestor> {
    let mut ancestry = Vec::new();
    let mut pid = first_parent;
    while pid != 0 && ancestry.len() < MAX_ANCESTRY {
        let process = Process::new(pid as i32).ok();
        let stat = process.as_ref().and_then(|process| process.stat().ok());
        let identity = identity_of(pid);
        let inside = identity.is_some();
        ancestry.push(Ancestor {
            pid,
            exe: process.as_ref().and_then(|process| process.exe().ok()).map(|path| lossy_path(&path)),
            comm: stat.as_ref().map(|stat| stat.comm.clone()),
            identity,
        });
        match stat {
            Some(stat) if inside => pid = stat.ppid.max(0) as u32,
            _ => break,
        }
    }
    ancestry
}

/// Container id and pod uid from the contents of /proc/PID/cgroup (one
/// `hierarchy:controllers:path` line per hierarchy; v2 has a single `0::` line).
fn container_and_pod_of(cgroups: &str) -> (Option<String>, Option<String>) {
    let mut found = (None, None);
    for path in cgroups.lines().filter_map(|line| line.splitn(3, ':').nth(2)) {
        let (container, pod) = container_and_pod(path);
        found.0 = found.0.or(container);
        found.1 = found.1.or(pod);
    }
    found
}

/// The container id and Kubernetes pod uid a cgroup path names, for the
/// cgroupfs and systemd layouts of docker, containerd, CRI-O and podman:
/// `/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `/kubepods/burstable/pod<uid>/<id>`,
/// `kubepods-burstable-pod<uid_with_underscores>.slice`. The innermost match
/// wins (a container nested in another reports the inner one).
pub fn container_and_pod(cgroup_path: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for segment in cgroup_path.split('/').filter(|segment| !segment.is_empty()) {
        if let Some(id) = container_id_in(segment) {
            container = Some(id);
        } else if let Some(uid) = pod_uid_in(segment) {
            pod = Some(uid);
        }
    }
    (container, pod)
}

/// Container ids are 64 hex digits for every runtime here; requiring that
/// keeps slices and service names from passing for ids.
fn container_id_in(segment: &str) -> Option<String> {
    let bare = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-", "containerd-"]
        .iter()
        .find_map(|prefix| bare.strip_prefix(prefix))
        .unwrap_or(bare);
    (id.len() == 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice`
/// (systemd, which may not put dashes in a unit name).
fn pod_uid_in(segment: &str) -> Option<String> {
    let uid = if let Some(slice) = segment.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        slice.rsplit_once("-pod")?.1
    } else {
        segment.strip_prefix("pod")?
    };
    let uid = uid.replace('_', "-");
    (!uid.is_empty() && uid.bytes().all(|byte| byte.is_ascii_hexdigit() || byte == b'-')).then_some(uid)
}

/// uid to user name from a passwd file, read once and again only when it
/// changed and a uid is missing.
///
/// The daemon's own passwd file (the host's when mounted there) is read, not
/// the container's: a file inside an agent's root is the agent's to forge
/// (a symlink, a FIFO that blocks the reader), and the agents are whom rtid
/// watches. getpwuid_r is avoided too: NSS may go to the network.
struct Users {
    path: PathBuf,
    names: HashMap<u32, String>,
    loaded: Option<SystemTime>,
}

impl Users {
    fn new(path: impl Into<PathBuf>) -> Users {
        Users { path: path.into(), names: HashMap::new(), loaded: None }
    }

    fn name(&mut self, uid: u32) -> Option<String> {
        if !self.names.contains_key(&uid) {
            self.reload_if_changed();
        }
        self.names.get(&uid).cloned()
    }

    fn reload_if_changed(&mut self) {
        let modified = std::fs::metadata(&self.path).and_then(|meta| meta.modified()).ok();
        if modified.is_some() && modified == self.loaded {
            return;
        }
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            self.names = parse_passwd(&text);
            self.loaded = modified;
        }
    }
}

/// `name:password:uid:...` lines to uid → name; the first entry of a uid wins,
/// as with getpwuid.
fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.starts_with('+') && !line.starts_with('-')) {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if let (false, Ok(uid)) = (name.is_empty(), uid.parse::<u32>()) {
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_identity(_: u32) -> Option<String> {
        None
    }

    /// The key the kernel would give this process: its tgid and start time
    /// (from /proc, in ticks, as ns: the truncation of the real start_boottime).
    fn own_key() -> (u32, String) {
        let me = Process::myself().unwrap();
        let stat = me.stat().unwrap();
        let start_ns = stat.starttime * 1_000_000_000 / procfs::ticks_per_second();
        (me.pid as u32, format!("{}:{start_ns}", me.pid))
    }

    fn all_unavailable() -> Vec<String> {
        PROC_FIELDS.iter().map(|field| field.to_string()).collect()
    }

    #[test]
    fn details_of_this_process() {
        let (tgid, key) = own_key();
        let uid = procfs::process::Process::myself().unwrap().uid().unwrap();
        let details = Enricher::new().details(tgid, &key, uid, &no_identity);
        assert_eq!(details.unavailable, Vec::<String>::new());
        assert_eq!(details.exe.as_deref(), std::env::current_exe().unwrap().to_str());
        let argv: Vec<String> = std::env::args().collect();
        assert_eq!(details.cmdline, Some(argv));
        assert_eq!(details.cwd.as_deref(), std::env::current_dir().unwrap().to_str());
        if uid == 0 {
            assert_eq!(details.user.as_deref(), Some("root"));
        }
        // Untagged parents: the walk stops at the first one, which it still shows.
        assert_eq!(details.ancestry.len(), 1);
        assert_eq!(details.ancestry[0].pid, std::os::unix::process::parent_id());
        assert_eq!(details.ancestry[0].identity, None);
        assert!(details.ancestry[0].comm.is_some());
    }

    #[test]
    fn a_missing_process_is_unavailable_but_its_user_known() {
        // pid_max is at most 2^22, so this pid never exists.
        let details = Enricher::new().details(4_194_304 + 7, "4194311:1000000000", 0, &no_identity);
        assert_eq!(details.unavailable, all_unavailable());
        assert_eq!((details.exe, details.cmdline, details.cwd), (None, None, None));
        assert!(details.ancestry.is_empty());
        assert_eq!(details.user.as_deref(), Some("root"), "the uid comes from the kernel, not /proc");
    }

    #[test]
    fn another_start_time_means_a_reused_pid() {
        let (tgid, key) = own_key();
        let start_ns: u64 = key.split_once(':').unwrap().1.parse().unwrap();
        let enricher = &mut Enricher::new();
        let earlier = format!("{tgid}:{}", start_ns - 1_000_000_000);
        assert_eq!(enricher.details(tgid, &earlier, 0, &no_identity).unavailable, all_unavailable());
        let unknown_start = format!("{tgid}:0");
        assert_eq!(enricher.details(tgid, &unknown_start, 0, &no_identity).unavailable, all_unavailable());
        assert_eq!(enricher.details(tgid, "garbage", 0, &no_identity).unavailable, all_unavailable());
    }

    #[test]
    fn start_times_agree_within_a_tick() {
        // 100 Hz: 12.345 s is tick 1234.
        assert!(started_at(1234, 12_345_000_000, 100));
        assert!(started_at(1235, 12_345_000_000, 100));
        assert!(started_at(1233, 12_345_000_000, 100));
        assert!(!started_at(1236, 12_345_000_000, 100));
        assert!(!started_at(1200, 12_345_000_000, 100));
    }

    #[test]
    fn ancestry_follows_the_identity_and_ends_outside_it() {
        // A child of this test process: its parent (us) carries the identity,
        // our parent does not.
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let child_tgid = child.id();
        // spawn() returns once the child exists, not once it has exec'd sleep.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(format!("/proc/{child_tgid}/cmdline")).unwrap_or_default() != b"sleep\x005\x00" {
            assert!(std::time::Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let stat = Process::new(child_tgid as i32).unwrap().stat().unwrap();
        let key = format!("{child_tgid}:{}", stat.starttime * 1_000_000_000 / procfs::ticks_per_second());
        let me = std::process::id();
        let identity_of = |pid: u32| (pid == me || pid == child_tgid).then(|| "agent".to_string());
        let details = Enricher::new().details(child_tgid, &key, 0, &identity_of);
        child.kill().unwrap();
        child.wait().unwrap();
        let pids: Vec<u32> = details.ancestry.iter().map(|ancestor| ancestor.pid).collect();
        assert_eq!(pids, vec![me, std::os::unix::process::parent_id()]);
        assert_eq!(details.ancestry[0].identity.as_deref(), Some("agent"));
        assert_eq!(details.ancestry[0].exe.as_deref(), std::env::current_exe().unwrap().to_str());
        assert_eq!(details.ancestry[1].identity, None);
        assert_eq!(details.cmdline, Some(vec!["sleep".to_string(), "5".to_string()]));
    }

    #[test]
    fn ancestry_is_capped() {
        let everyone = |_: u32| Some("agent".to_string());
        let (tgid, key) = own_key();
        let details = Enricher::new().details(tgid, &key, 0, &everyone);
        // The walk ends at pid 1 (its parent is 0) or at the cap.
        assert!(details.ancestry.len() <= MAX_ANCESTRY);
        assert!(details.ancestry.last().is_some_and(|last| last.pid == 1 || details.ancestry.len() == MAX_ANCESTRY));
    }

    #[test]
    fn a_process_is_read_once() {
        let (tgid, key) = own_key();
        let enricher = &mut Enricher::new();
        let first = enricher.details(tgid, &key, 0, &no_identity);
        let second = enricher.details(tgid, &key, 0, &no_identity);
        assert_eq!(first, second);
        assert_eq!(enricher.proc_lookups(), 1);
        // A missing process is remembered too: its burst of events pays once.
        enricher.details(4_194_311, "4194311:1000000000", 0, &no_identity);
        enricher.details(4_194_311, "4194311:1000000000", 0, &no_identity);
        assert_eq!(enricher.proc_lookups(), 2);
        enricher.forget(&key);
        enricher.details(tgid, &key, 0, &no_identity);
        assert_eq!(enricher.proc_lookups(), 3);
    }

    #[test]
    fn the_cache_forgets_the_oldest_first() {
        let enricher = &mut Enricher::with_capacity(2);
        let missing = |n: u32| format!("{}:1000000000", 4_194_400 + n);
        for n in 0..3 {
            enricher.details(4_194_400 + n, &missing(n), 0, &no_identity);
        }
        assert_eq!((enricher.cached(), enricher.proc_lookups()), (2, 3));
        enricher.details(4_194_402, &missing(2), 0, &no_identity);
        enricher.details(4_194_401, &missing(1), 0, &no_identity);
        assert_eq!(enricher.proc_lookups(), 3, "the two newest are cached");
        enricher.details(4_194_400, &missing(0), 0, &no_identity);
        assert_eq!(enricher.proc_lookups(), 4, "the oldest was evicted");
        // Forgetting and evicting agree on what is left.
        enricher.forget(&missing(0));
        enricher.forget(&missing(2));
        assert_eq!(enricher.cached(), 0);
    }

    #[test]
    fn container_and_pod_on_every_layout() {
        let id = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
        let uid = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";
        let uid_ = uid.replace('-', "_");
        let cases = [
            (format!("/docker/{id}"), Some(id), None),
            (format!("/system.slice/docker-{id}.scope"), Some(id), None),
            (format!("/machine.slice/libpod-{id}.scope"), Some(id), None),
            (format!("/kubepods/burstable/pod{uid}/{id}"), Some(id), Some(uid)),
            (format!("/kubepods/pod{uid}/{id}"), Some(id), Some(uid)),
            (format!("/kubepods/besteffort/pod{uid}"), None, Some(uid)),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope"
                ),
                Some(id),
                Some(uid),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{id}.scope"
                ),
                Some(id),
                Some(uid),
            ),
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{id}.scope"), Some(id), Some(uid)),
            // CRI-O's monitor lives next to the container, not in it.
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{id}.scope"), None, Some(uid)),
            // Seen from inside a cgroup namespace.
            (format!("/../../kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope"), Some(id), Some(uid)),
            ("/user.slice/user-0.slice/session-3.scope".to_string(), None, None),
            ("/system.slice/containerd.service".to_string(), None, None),
            ("/kubepods.slice/kubepods-burstable.slice".to_string(), None, None),
            ("/".to_string(), None, None),
        ];
        for (path, container, pod) in cases {
            let expected = (container.map(str::to_string), pod.map(str::to_string));
            assert_eq!(container_and_pod(&path), expected, "{path}");
        }
    }

    #[test]
    fn cgroup_files_of_both_versions() {
        let id = "ab".repeat(32);
        let v2 = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(container_and_pod_of(&v2), (Some(id.clone()), None));
        let v1 = format!("12:cpuset:/\n11:memory:/docker/{id}\n1:name=systemd:/docker/{id}\n0::/\n");
        assert_eq!(container_and_pod_of(&v1), (Some(id), None));
        assert_eq!(container_and_pod_of("0::/init.scope\n"), (None, None));
    }

    #[test]
    fn argv_keeps_empty_arguments_and_is_cut_when_huge() {
        assert_eq!(split_cmdline(b"prog\0\0x\0"), Some(vec!["prog".into(), "".into(), "x".into()]));
        assert_eq!(split_cmdline(b""), None);
        assert_eq!(split_cmdline(b"\xffname\0"), Some(vec!["\u{fffd}name".into()]));
        let huge = vec![b'a'; MAX_CMDLINE_BYTES + 1];
        let argv = split_cmdline(&huge).unwrap();
        assert_eq!(argv.len(), 2);
        assert_eq!(argv[0].len(), MAX_CMDLINE_BYTES);
        assert_eq!(argv[1], CMDLINE_CUT);
    }

    #[test]
    fn passwd_names() {
        let names = parse_passwd(
            "# comment\nroot:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\ntoor:x:0:0::/:/bin/sh\n+nis\nbroken\n",
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn users_are_read_from_the_file_and_reread_when_it_changes() {
        let path = std::env::temp_dir().join(format!("rtid-passwd-{}", std::process::id()));
        std::fs::write(&path, "root:x:0:0::/:/bin/sh\n").unwrap();
        let mut users = Users::new(&path);
        assert_eq!(users.name(0).as_deref(), Some("root"));
        assert_eq!(users.name(4242), None);
        std::fs::write(&path, "root:x:0:0::/:/bin/sh\nbob:x:4242:0::/:/bin/sh\n").unwrap();
        // Make sure the modification time moves even on a coarse clock.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert_eq!(users.name(4242).as_deref(), Some("bob"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn node_name_is_never_empty() {
        assert!(!Enricher::node_name().is_empty());
    }
}
