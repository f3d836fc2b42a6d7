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
        other => {
            eprintln!("rtid-probe: unknown action {other:?}");
            exit(2)
        }
    }
}
