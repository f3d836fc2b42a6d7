//! rtid-probe: performs one action the way an agent would, and prints what the
//! kernel answered, so tests can check enforcement from outside the process.
//!
//! Output: one line, `ok [detail]` or `err ERRNO`. Exit status 0 for ok, 1 for err.
//! Killed processes print nothing past the point of the kill.

use std::{
    env,
    ffi::CString,
    fs::OpenOptions,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::net::{UnixDatagram, UnixStream},
    process::{Command, exit},
    time::Duration,
};

fn report(result: std::io::Result<String>) -> ! {
    match result {
        Ok(detail) => {
            println!("ok {detail}");
            let _ = std::io::stdout().flush();
            exit(0)
        }
        Err(error) => {
            println!("err {}", error.raw_os_error().unwrap_or(-1));
            let _ = std::io::stdout().flush();
            exit(1)
        }
    }
}

/// `exit N` or `signal N`, for tests to match.
fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown".into(),
    }
}

fn open(path: &str, write: bool) -> std::io::Result<String> {
    let mut file = OpenOptions::new().read(!write).write(write).open(path)?;
    if write {
        file.write_all(b"written by rtid-probe\n")?;
        return Ok("written".into());
    }
    let mut content = String::new();
    file.read_to_string(&mut content)?;
    Ok(content.trim().to_string())
}

fn connect(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| "connected".into())
}

fn sendto(addr: &str) -> std::io::Result<String> {
    let target: SocketAddr = addr.parse().map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind)?;
    socket.send_to(b"rtid-probe", target).map(|n| format!("sent {n}"))
}

fn control_call(socket: &str, go: &str, line: &str, handoff: bool) -> ! {
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(error) => report(Err(error)),
    };
    if handoff {
        // SAFETY: this process is single-threaded here; both sides go on with ordinary code.
        let child = unsafe { libc::fork() };
        if child < 0 {
            report(Err(std::io::Error::last_os_error()))
        }
        if child > 0 {
            println!("child {child}");
            let _ = std::io::stdout().flush();
            exit(0)
        }
    } else {
        println!("connected {}", std::process::id());
        let _ = std::io::stdout().flush();
    }
    while std::fs::metadata(go).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let line = line.replace("{pid}", &std::process::id().to_string());
    let sent = stream.write_all(format!("{line}\n").as_bytes());
    let mut response = String::new();
    match sent.and_then(|()| std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut response)) {
        Ok(_) => println!("response {}", response.trim_end()),
        Err(error) => println!("err {}", error.raw_os_error().unwrap_or(-1)),
    }
    let _ = std::io::stdout().flush();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    exit(0)
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let arg = |index: usize| args.get(index).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "open" => report(open(&arg(1), arg(2) == "--write")),
        // Opens from a second thread of this process.
        "thread-open" => {
            let path = arg(1);
            let handle = std::thread::spawn(move || open(&path, false));
            report(handle.join().unwrap_or_else(|_| Err(std::io::Error::from_raw_os_error(libc::EIO))))
        }
        "connect" => report(connect(&arg(1))),
        // Connects to each address in turn, one result line each.
        "connect-each" => {
            for addr in &args[1..] {
                match connect(addr) {
                    Ok(detail) => println!("ok {detail}"),
                    Err(error) => println!("err {}", error.raw_os_error().unwrap_or(-1)),
                }
            }
            exit(0)
        }
        // Opens PATH N times: floods the event ring for an identity that audits everything.
        "open-many" => {
            let count: usize = arg(1).parse().unwrap_or(0);
            let mut opened = 0;
            for _ in 0..count {
                if std::fs::File::open(arg(2)).is_ok() {
                    opened += 1;
                }
            }
            report(Ok(format!("opened {opened}")))
        }
        // Connects, waits for the file GO to exist (stat only), connects again;
        // prints the first result on its own line before waiting.
        "connect-twice" => {
            match connect(&arg(1)) {
                Ok(detail) => println!("ok {detail}"),
                Err(error) => println!("err {}", error.raw_os_error().unwrap_or(-1)),
            }
            let _ = std::io::stdout().flush();
            while std::fs::metadata(arg(2)).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
            report(connect(&arg(1)))
        }
        "sendto" => report(sendto(&arg(1))),
        "unix-connect" => report(UnixStream::connect(arg(1)).map(|_| "connected".into())),
        "unix-sendto" => {
            report(UnixDatagram::unbound().and_then(|s| s.send_to(b"rtid", arg(1))).map(|n| format!("sent {n}")))
        }
        // Runs a command and reports how it ended.
        "spawn" => {
            let status = Command::new(arg(1)).args(&args[2..]).status();
            report(status.map(describe_status))
        }
        // A bpf() syscall (BPF_MAP_CREATE of a tiny array), as an agent trying to reach the monitor's maps would.
        "bpf" => {
            let mut attr = [0u32; 32];
            attr[0] = 2; // BPF_MAP_TYPE_ARRAY
            attr[1] = 4; // key size
            attr[2] = 4; // value size
            attr[3] = 1; // max entries
            // SAFETY: attr is a zeroed, correctly sized bpf_attr for BPF_MAP_CREATE.
            let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
            report(if fd >= 0 { Ok("bpf map created".into()) } else { Err(std::io::Error::last_os_error()) })
        }
        // control-call SOCKET GO LINE [--handoff]: connects to the daemon's
        // control socket and prints `connected PID` (with --handoff: forks,
        // the parent prints `child PID` and exits, leaving the connection to
        // the child); once the file GO exists, sends LINE ({pid}: the sender's
        // pid) and prints
        // `response ...` (or `err ERRNO`); then waits for stdin to close.
        "control-call" => control_call(&arg(1), &arg(2), &arg(3), arg(4) == "--handoff"),
        // Writes a marker file: proves the binary ran.
        "marker" => report(std::fs::write(arg(1), b"ran\n").map(|_| "marker".into())),
        // Blocks until stdin closes; lets a test label a running process.
        "wait-stdin" => {
            let mut buffer = String::new();
            let _ = std::io::stdin().read_line(&mut buffer);
            let command: Vec<&str> = buffer.split_whitespace().collect();
            if command.is_empty() {
                report(Ok("idle".into()))
            }
            let status = Command::new(env::current_exe().unwrap_or_default()).args(&command).status();
            report(status.map(describe_status))
        }
        // Exec without fork: replaces this process.
        "exec" => {
            let program = CString::new(arg(1)).unwrap_or_default();
            let argv: Vec<CString> = args[1..].iter().map(|a| CString::new(a.as_str()).unwrap_or_default()).collect();
            let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            pointers.push(std::ptr::null());
            // SAFETY: program and argv are NUL-terminated C strings kept alive across the call.
            unsafe { libc::execv(program.as_ptr(), pointers.as_ptr()) };
            report(Err(std::io::Error::last_os_error()))
        }
        // Attacks on rtid itself and the host (tests/tests/integrity.rs), one call each.
        "kill" | "ptrace-attach" | "vm-write" | "truncate" | "unlink" | "rename" | "link" | "symlink" | "chmod"
        | "create" | "raw-socket" | "mount-tmpfs" | "bind-mount" | "unshare-mount" | "unshare-user"
        | "open-by-handle" | "load-module" | "unix-connect-in" => report(integrity::act(arg(0).as_str(), &args[1..])),
        // Other names and routes to one object (tests/tests/aliases.rs).
        "open-chain" | "memfd-exec" | "packet-socket" | "sendto-unspec" | "clone-files-read" => {
            report(aliases::act(arg(0).as_str(), &args[1..]))
        }
        // Launch hardening (tests/tests/hardening.rs): one raw call each.
        "cap-raise" | "clone-newuser" | "clone3" | "pidfd-kill" | "io-uring-setup" => {
            report(hardening::act(arg(0).as_str(), &args[1..]))
        }
        other => {
            eprintln!("rtid-probe: unknown action {other:?}");
            exit(2)
        }
    }
}

/// Single syscalls an agent might use against rtid or the host.
mod integrity {
    use std::{ffi::CString, io::Result};

    fn c_string(text: &str) -> Result<CString> {
        CString::new(text).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn check(result: libc::c_long, what: &str) -> Result<String> {
        if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(what.to_string()) }
    }

    pub fn act(action: &str, args: &[String]) -> Result<String> {
        let arg = |index: usize| args.get(index).cloned().unwrap_or_default();
        let number = |index: usize| arg(index).parse::<i64>().unwrap_or(0);
        // SAFETY (every call below): arguments are NUL-terminated strings kept
        // alive across the call, integers, or null pointers the calls accept.
        unsafe {
            match action {
                // kill PID SIGNAL
                "kill" => check(libc::kill(number(0) as i32, number(1) as i32) as _, "signalled"),
                // ptrace-attach PID: PTRACE_ATTACH, then detach.
                "ptrace-attach" => {
                    let result = libc::ptrace(libc::PTRACE_ATTACH, number(0) as i32, 0, 0);
                    check(result, "attached")
                }
                // vm-write PID: one byte through process_vm_writev at an address
                // that is never mapped (the access check comes first).
                "vm-write" => {
                    let byte = [0u8; 1];
                    let local = libc::iovec { iov_base: byte.as_ptr() as *mut _, iov_len: 1 };
                    let remote = libc::iovec { iov_base: 8 as *mut _, iov_len: 1 };
                    check(libc::process_vm_writev(number(0) as i32, &local, 1, &remote, 1, 0) as _, "written")
                }
                "truncate" => check(libc::truncate(c_string(&arg(0))?.as_ptr(), 0) as _, "truncated"),
                "unlink" => check(libc::unlink(c_string(&arg(0))?.as_ptr()) as _, "unlinked"),
                "rename" => {
                    check(libc::rename(c_string(&arg(0))?.as_ptr(), c_string(&arg(1))?.as_ptr()) as _, "renamed")
                }
                "link" => check(libc::link(c_string(&arg(0))?.as_ptr(), c_string(&arg(1))?.as_ptr()) as _, "linked"),
                "symlink" => {
                    check(libc::symlink(c_string(&arg(0))?.as_ptr(), c_string(&arg(1))?.as_ptr()) as _, "symlinked")
                }
                "chmod" => check(libc::chmod(c_string(&arg(0))?.as_ptr(), 0o777) as _, "chmodded"),
                // create PATH: a new file, O_CREAT|O_EXCL|O_WRONLY.
                "create" => {
                    let fd =
                        libc::open(c_string(&arg(0))?.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644);
                    check(fd as _, "created")
                }
                // A raw IP socket: needs CAP_NET_RAW.
                "raw-socket" => {
                    check(libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) as _, "raw socket")
                }
                // mount-tmpfs DIR: needs CAP_SYS_ADMIN.
                "mount-tmpfs" => {
                    let target = c_string(&arg(0))?;
                    let tmpfs = c_string("tmpfs")?;
                    check(
                        libc::mount(tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()) as _,
                        "mounted",
                    )
                }
                // bind-mount SOURCE TARGET: MS_BIND, needs CAP_SYS_ADMIN.
                "bind-mount" => {
                    let (source, target) = (c_string(&arg(0))?, c_string(&arg(1))?);
                    let flags = libc::MS_BIND;
                    check(
                        libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) as _,
                        "bound",
                    )
                }
                "unshare-mount" => check(libc::unshare(libc::CLONE_NEWNS) as _, "unshared"),
                "unshare-user" => check(libc::unshare(libc::CLONE_NEWUSER) as _, "unshared"),
                // open-by-handle PATH: name_to_handle_at, then open_by_handle_at
                // (needs CAP_DAC_READ_SEARCH), read-only.
                "open-by-handle" => {
                    #[repr(C)]
                    struct FileHandle {
                        bytes: u32,
                        kind: i32,
                        handle: [u8; 128],
                    }
                    let mut handle = FileHandle { bytes: 128, kind: 0, handle: [0; 128] };
                    let mut mount_id = 0i32;
                    let path = c_string(&arg(0))?;
                    let named = libc::syscall(
                        libc::SYS_name_to_handle_at,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        &mut handle as *mut FileHandle,
                        &mut mount_id as *mut i32,
                        0,
                    );
                    check(named, "named")?;
                    let mount = libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    check(mount as _, "mount fd")?;
                    let fd = libc::syscall(
                        libc::SYS_open_by_handle_at,
                        mount,
                        &mut handle as *mut FileHandle,
                        libc::O_RDONLY,
                    );
                    check(fd, "opened by handle")
                }
                // load-module: finit_module on an empty file (needs CAP_SYS_MODULE;
                // with it, the kernel would refuse the empty image with ENOEXEC).
                "load-module" => {
                    let empty = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                    check(empty as _, "opened")?;
                    check(libc::syscall(libc::SYS_finit_module, empty, c"".as_ptr(), 0), "loaded")
                }
                // unix-connect-in DIR NAME: connects to NAME relative to DIR.
                "unix-connect-in" => {
                    std::env::set_current_dir(arg(0))?;
                    std::os::unix::net::UnixStream::connect(arg(1)).map(|_| "connected".into())
                }
                _ => Err(std::io::Error::from_raw_os_error(libc::ENOSYS)),
            }
        }
    }
}

/// Calls `rtid run`'s hardening must refuse, made directly (no libc fallbacks).
mod hardening {
    use std::io::{Error, Result};

    fn check(result: libc::c_long, what: &str) -> Result<String> {
        if result < 0 { Err(Error::last_os_error()) } else { Ok(what.to_string()) }
    }

    pub fn act(action: &str, args: &[String]) -> Result<String> {
        let number = |index: usize| args.get(index).and_then(|value| value.parse::<i64>().ok()).unwrap_or(0);
        // SAFETY (every call below): integer arguments, or pointers to locals
        // that outlive the call; a child made by clone exits at once.
        unsafe {
            match action {
                // cap-raise N: capget, add capability N to effective and permitted, capset.
                "cap-raise" => {
                    let mut header = [0x2008_0522u32, 0];
                    let mut data = [0u32; 6];
                    check(libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()), "capget")?;
                    let (index, bit) = ((number(0) / 32) as usize * 3, 1u32 << (number(0) % 32));
                    data[index] |= bit;
                    data[index + 1] |= bit;
                    check(libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()), "raised")
                }
                // clone-newuser: the raw clone syscall with CLONE_NEWUSER (fork-like, no stack).
                "clone-newuser" => {
                    let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
                    let pid = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
                    if pid == 0 {
                        libc::_exit(0);
                    }
                    if pid > 0 {
                        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
                    }
                    check(pid, "cloned")
                }
                // clone3 with CLONE_NEWUSER.
                // An io_uring instance: its submissions pass no syscall tracepoint.
                "io-uring-setup" => {
                    let mut params = [0u8; 120];
                    let fd = libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr());
                    if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok("io_uring".into()) }
                }
                "clone3" => {
                    let mut clone_args = [0u64; 11];
                    clone_args[0] = libc::CLONE_NEWUSER as u64;
                    clone_args[4] = libc::SIGCHLD as u64; // exit_signal
                    let size = std::mem::size_of_val(&clone_args);
                    let pid = libc::syscall(libc::SYS_clone3, clone_args.as_mut_ptr(), size);
                    if pid == 0 {
                        libc::_exit(0);
                    }
                    if pid > 0 {
                        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
                    }
                    check(pid, "cloned")
                }
                // pidfd-kill PID SIGNAL: a pidfd from /proc/PID, then pidfd_send_signal.
                "pidfd-kill" => {
                    let path = std::ffi::CString::new(format!("/proc/{}", number(0))).unwrap_or_default();
                    let fd = libc::open(path.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
                    check(fd as _, "opened")?;
                    let sent = libc::syscall(libc::SYS_pidfd_send_signal, fd, number(1) as i32, 0, 0);
                    check(sent, "signalled")
                }
                _ => Err(Error::from_raw_os_error(libc::ENOSYS)),
            }
        }
    }
}

/// Other names and routes to an object than its plain path.
mod aliases {
    use std::{ffi::CString, io::Result, os::fd::FromRawFd};

    fn c_string(text: &str) -> Result<CString> {
        CString::new(text).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn check(result: libc::c_long) -> Result<libc::c_long> {
        if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(result) }
    }

    pub fn act(action: &str, args: &[String]) -> Result<String> {
        // SAFETY (every call below): arguments are NUL-terminated strings kept
        // alive across the call, descriptors this process owns, or plain data.
        unsafe {
            match action {
                // open-chain BASE NAME... FILE: each name opened relative to the
                // last (O_PATH), so no single path string is ever passed; the
                // file at the end is read.
                "open-chain" => {
                    let mut dir =
                        check(libc::open(c_string(&args[0])?.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) as _)? as i32;
                    let (file, names) =
                        args[1..].split_last().ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
                    for name in names {
                        let next = libc::openat(dir, c_string(name)?.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
                        libc::close(dir);
                        dir = check(next as _)? as i32;
                    }
                    let fd = check(libc::openat(dir, c_string(file)?.as_ptr(), libc::O_RDONLY) as _)? as i32;
                    let mut content = String::new();
                    std::io::Read::read_to_string(&mut std::fs::File::from_raw_fd(fd), &mut content)?;
                    Ok(content.trim().to_string())
                }
                // memfd-exec BINARY ARGS...: copies BINARY into a memfd and executes that.
                "memfd-exec" => {
                    let bytes = std::fs::read(&args[0])?;
                    let fd = check(libc::memfd_create(c"rtid-probe".as_ptr(), 0) as _)? as i32;
                    let mut memfd = std::fs::File::from_raw_fd(fd);
                    std::io::Write::write_all(&mut memfd, &bytes)?;
                    let argv: Vec<CString> = args.iter().map(|a| c_string(a)).collect::<Result<_>>()?;
                    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
                    pointers.push(std::ptr::null());
                    let environment = [std::ptr::null()];
                    libc::fexecve(fd, pointers.as_ptr(), environment.as_ptr());
                    Err(std::io::Error::last_os_error())
                }
                // A packet socket: every frame on every interface.
                "packet-socket" => {
                    let all = (libc::ETH_P_ALL as u16).to_be() as i32;
                    check(libc::socket(libc::AF_PACKET, libc::SOCK_RAW, all) as _).map(|_| "packet socket".into())
                }
                // sendto-unspec IPV4 PORT: a UDP datagram to an address whose
                // family says AF_UNSPEC (IPv4 sends it to the address anyway).
                "sendto-unspec" => {
                    let addr: std::net::Ipv4Addr =
                        args[0].parse().map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
                    let port: u16 = args[1].parse().map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
                    let socket = check(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) as _)? as i32;
                    let target = libc::sockaddr_in {
                        sin_family: libc::AF_UNSPEC as u16,
                        sin_port: port.to_be(),
                        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
                        sin_zero: [0; 8],
                    };
                    let sent = libc::sendto(
                        socket,
                        b"rtid".as_ptr() as *const _,
                        4,
                        0,
                        &target as *const libc::sockaddr_in as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    );
                    check(sent as _).map(|n| format!("sent {n}"))
                }
                // clone-files-read PATH: a child made with CLONE_FILES (one
                // descriptor table, two processes) waits for this process to
                // be gone, then reads every descriptor it shares and prints
                // what it got (`leaked ...`); this process prints `child PID`
                // and opens PATH.
                "clone-files-read" => {
                    let parent = libc::getpid();
                    let child = libc::syscall(libc::SYS_clone, libc::CLONE_FILES | libc::SIGCHLD, 0, 0, 0, 0);
                    if child == 0 {
                        while libc::getppid() == parent {
                            std::thread::sleep(std::time::Duration::from_millis(10));
                        }
                        for fd in 3..64 {
                            let mut buffer = [0u8; 256];
                            let read = libc::pread(fd, buffer.as_mut_ptr() as *mut _, buffer.len(), 0);
                            if read > 0 {
                                let line =
                                    format!("leaked {}\n", String::from_utf8_lossy(&buffer[..read as usize]).trim());
                                libc::write(1, line.as_ptr() as *const _, line.len());
                            }
                        }
                        libc::_exit(0);
                    }
                    check(child)?;
                    println!("child {child}");
                    std::io::Write::flush(&mut std::io::stdout())?;
                    std::fs::read_to_string(&args[0]).map(|content| content.trim().to_string())
                }
                _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
    }
}
