//! Starting a command that is labeled before it runs: fork, hold the child
//! before exec until the caller has labeled its pid, then let it exec. The
//! command's first instruction already runs under the identity.
//!
//! `fork_paused_hardened` also lowers the child's capability ceiling, sets
//! no_new_privs and installs a seccomp filter before the gate (see `harden`),
//! so the command cannot regain what its identity is denied.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub use crate::harden::Hardening;
use crate::harden::PreparedHardening;

/// A forked child waiting, before exec, for `release`.
pub struct PausedChild {
    pub pid: u32,
    release: Option<OwnedFd>,
    /// Read end of the child's stdout when captured.
    pub stdout: Option<OwnedFd>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks a child that will exec `argv` (looked up in PATH) once released.
/// With `capture_stdout`, its stdout is a pipe the caller reads.
pub fn fork_paused(argv: &[String], capture_stdout: bool) -> io::Result<PausedChild> {
    fork_paused_with(argv, capture_stdout, None)
}

/// `fork_paused`, with the child hardened before it waits at the gate: the
/// identity's denied capabilities dropped from its bounding, ambient,
/// inheritable, permitted and effective sets, no_new_privs set, and a seccomp
/// filter installed that every descendant inherits. Returns only once the
/// child reports the hardening in place; an error if it could not be (the
/// child is then reaped, having run nothing).
pub fn fork_paused_hardened(argv: &[String], capture_stdout: bool, hardening: &Hardening) -> io::Result<PausedChild> {
    let prepared = hardening.prepare()?;
    fork_paused_with(argv, capture_stdout, Some(&prepared))
}

fn fork_paused_with(
    argv: &[String],
    capture_stdout: bool,
    hardening: Option<&PreparedHardening>,
) -> io::Result<PausedChild> {
    if argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no command given"));
    }
    // Everything the child needs is prepared before fork: after fork in a
    // multithreaded parent only async-signal-safe calls are allowed.
    let c_args: Vec<CString> = argv
        .iter()
        .map(|arg| {
            CString::new(arg.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
        })
        .collect::<Result<_, _>>()?;
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|arg| arg.as_ptr()).collect();
    c_argv.push(std::ptr::null());
    let (gate_read, gate_write) = pipe()?;
    let stdout_pipe = if capture_stdout { Some(pipe()?) } else { None };
    let stdout_write = stdout_pipe.as_ref().map(|(_, write)| write.as_raw_fd());
    // The child reports whether its hardening is in place: 0, or an errno.
    let report_pipe = if hardening.is_some() { Some(pipe()?) } else { None };
    let report_write = report_pipe.as_ref().map(|(_, write)| write.as_raw_fd());

    // SAFETY: fork has no memory-safety preconditions; the child branch below
    // only calls async-signal-safe functions (prctl, capset, seccomp, read,
    // write, close, dup2, execvp, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: child side; see above. All pointers were built before fork.
        unsafe {
            if let (Some(hardening), Some(report)) = (hardening, report_write) {
                let status: i32 = match hardening.apply_in_child() {
                    Ok(()) => 0,
                    Err(errno) => errno,
                };
                libc::write(report, &status as *const i32 as *const libc::c_void, 4);
                if status != 0 {
                    libc::_exit(126);
                }
                libc::close(report);
            }
            let mut byte = 0u8;
            let released = libc::read(gate_read.as_raw_fd(), &mut byte as *mut u8 as *mut libc::c_void, 1) == 1;
            if !released {
                libc::_exit(127);
            }
            if let Some(fd) = stdout_write {
                libc::dup2(fd, 1);
            }
            libc::execvp(c_argv[0], c_argv.as_ptr());
            libc::_exit(127);
        }
    }
    drop(gate_read);
    let stdout = stdout_pipe.map(|(read, write)| {
        drop(write);
        read
    });
    let child = PausedChild { pid: pid as u32, release: Some(gate_write), stdout };
    if let Some((report_read, report_write)) = report_pipe {
        drop(report_write);
        let status = read_report(&report_read);
        if status != 0 {
            let _ = child.abandon();
            let cause = if status > 0 { io::Error::from_raw_os_error(status) } else { io::Error::other("no report") };
            return Err(io::Error::new(cause.kind(), format!("hardening the child before exec failed: {cause}")));
        }
    }
    Ok(child)
}

/// The child's hardening report: 0 when in place, an errno, or -1 when the
/// child ended without reporting.
fn read_report(report: &OwnedFd) -> i32 {
    let mut status = [0u8; 4];
    loop {
        // SAFETY: reads at most 4 bytes into a local buffer from an open pipe.
        let read = unsafe { libc::read(report.as_raw_fd(), status.as_mut_ptr() as *mut libc::c_void, 4) };
        if read == 4 {
            return i32::from_ne_bytes(status);
        }
        if read < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return -1;
    }
}

impl PausedChild {
    /// Lets the child exec its command.
    pub fn release(&mut self) -> io::Result<()> {
        let Some(gate) = self.release.take() else { return Ok(()) };
        let byte = 1u8;
        // SAFETY: writes one byte from a valid local to an open pipe.
        let written = unsafe { libc::write(gate.as_raw_fd(), &byte as *const u8 as *const libc::c_void, 1) };
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Abandons the child: closing the gate makes it exit with 127 without running anything.
    pub fn abandon(mut self) -> io::Result<std::process::ExitStatus> {
        self.release.take();
        self.wait()
    }

    /// Waits for the child to end.
    pub fn wait(&self) -> io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; status is a valid out-pointer.
            let result = unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
            if result >= 0 {
                return Ok(std::process::ExitStatus::from_raw(status));
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}
