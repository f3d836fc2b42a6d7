//! Starting a command that is labeled before it runs: fork, hold the child
//! before exec until the caller has labeled its pid, then let it exec. The
//! command's first instruction already runs under the identity.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

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

    // SAFETY: fork has no memory-safety preconditions; the child branch below
    // only calls async-signal-safe functions (read, dup2, execvp, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: child side; see above. All pointers were built before fork.
        unsafe {
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
    Ok(PausedChild { pid: pid as u32, release: Some(gate_write), stdout })
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
