//! Who is on the other end of a control connection, as the kernel saw it at
//! connect: the peer's credentials (SO_PEERCRED) and a pidfd for the very
//! process that connected (SO_PEERPIDFD on 6.5+; elsewhere pidfd_open of the
//! peer pid, confirmed by its start time). Decisions are made on this, never
//! on a pid looked up later: a pid can be reused, a pidfd cannot.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` (include/uapi/asm-generic/socket.h, Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;

/// The process that connected, pinned by a pidfd.
#[derive(Debug)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pidfd: OwnedFd,
    /// How the pidfd was obtained (`SO_PEERPIDFD` or `pidfd_open`), for logs.
    pub source: &'static str,
}

/// Why a connection has no usable peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The connecting process (as SO_PEERCRED named it) is already gone.
    #[error("the connecting process ({pid}) is already gone")]
    Gone { pid: u32, uid: u32 },
    #[error("peer credentials unavailable: {0}")]
    Credentials(std::io::Error),
}

impl Peer {
    /// The peer of an accepted connection. `accepted_boot_ns` is the boot
    /// clock read just after accept returned: a process started later cannot
    /// be the one that connected.
    pub fn of(socket: BorrowedFd<'_>, accepted_boot_ns: u64) -> Result<Peer, PeerError> {
        let credentials = peer_credentials(socket).map_err(PeerError::Credentials)?;
        let (pid, uid) = (credentials.pid.max(0) as u32, credentials.uid);
        let gone = PeerError::Gone { pid, uid };
        if pid == 0 {
            return Err(gone);
        }
        let (pidfd, source) = match peer_pidfd(socket) {
            Ok(pidfd) => (pidfd, "SO_PEERPIDFD"),
            // ENOPROTOOPT: a kernel before 6.5.
            Err(error) if error.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                (pidfd_open(pid).map_err(|_| PeerError::Gone { pid, uid })?, "pidfd_open")
            }
            // ESRCH: the peer exited (and was reaped) before accept.
            Err(_) => return Err(gone),
        };
        let peer = Peer { pid, uid: credentials.uid, gid: credentials.gid, pidfd, source };
        if source == "pidfd_open" {
            // The pid may have been reused between connect and pidfd_open: the
            // process behind the pidfd must have started before the accept.
            if start_time_ns(pid).is_none_or(|started| started > accepted_boot_ns) {
                return Err(gone);
            }
        }
        if !peer.alive() {
            return Err(gone);
        }
        Ok(peer)
    }

    /// Whether the process that connected is still running (a pidfd becomes
    /// readable when its process exits; its pid is not reused before then).
    pub fn alive(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    /// Supplementary groups, from /proc/<pid>/status, trusted only if the
    /// process is still the peer after the read (its pid cannot have been
    /// reused while the pidfd says it runs).
    pub fn groups(&self) -> Result<Vec<u32>, PeerError> {
        let gone = || PeerError::Gone { pid: self.pid, uid: self.uid };
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).map_err(|_| gone())?;
        if !self.alive() {
            return Err(gone());
        }
        Ok(parse_groups(&status))
    }
}

/// Start time of `pid` on the boot clock, in ns (clock-tick precision, rounded down).
pub(super) fn start_time_ns(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid as i32).ok()?.stat().ok()?;
    Some(stat.starttime * (1_000_000_000 / procfs::ticks_per_second()))
}

/// The `Groups:` line of /proc/<pid>/status.
fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|gid| gid.parse().ok()).collect())
        .unwrap_or_default()
}

fn peer_credentials(socket: BorrowedFd<'_>) -> std::io::Result<libc::ucred> {
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: credentials and length are valid out-pointers of the size passed.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut credentials as *mut libc::ucred as *mut libc::c_void,
            &mut length,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(credentials)
}

fn peer_pidfd(socket: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: pidfd and length are valid out-pointers of the size passed.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            &mut pidfd as *mut libc::c_int as *mut libc::c_void,
            &mut length,
        )
    };
    if result != 0 || pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supplementary_groups_are_read_from_the_status_line() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 1001 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), vec![4, 24, 1001]);
        assert!(parse_groups("Groups:\t\n").is_empty());
    }

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process_and_alive() {
        use std::os::fd::AsFd;
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(ours.as_fd(), crate::loader::boot_time_ns()).unwrap();
        assert_eq!(peer.pid, std::process::id());
        assert!(peer.alive());
        let groups = peer.groups().unwrap();
        assert_eq!(groups, parse_groups(&std::fs::read_to_string("/proc/self/status").unwrap()));
    }
}
