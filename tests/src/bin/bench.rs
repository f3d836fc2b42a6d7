//! rtid-bench: what rtid costs the actions it watches. A benchmark, not a
//! test; `cargo xtask bench` runs it as root (`--vm` also inside a VM where
//! BPF LSM is active).
//!
//! Three operations (open+close of a small file, TCP connect to a loopback
//! listener, fork+exec+wait of /bin/true) under four conditions (no rtid;
//! rtid loaded, caller untagged; caller tagged and allowed; caller tagged and
//! denied or killed). Every measurement runs in a fresh worker process, this
//! binary re-executed as `rtid-bench --worker OP EXPECT ITERATIONS TARGET`,
//! so that tagged and untagged numbers are taken the same way: the tagged
//! workers are labeled between fork and exec (`fork_paused`), exactly as
//! `rtid run` labels an agent. The worker prints its ns per operation on
//! stdout; each cell is the median of `RUNS` workers.

use std::{
    fs::File,
    io::{ErrorKind, Read},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::{ffi::OsStrExt, process::ExitStatusExt},
    path::Path,
    process::{ExitCode, ExitStatus},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use rtid_common::{Backend, Verdict};
use rtid_tests::{IdentitySpec, NetRuleSpec, PathPattern, PathRuleSpec, TestDir};
use rtid_userspace::{
    events::EventReader,
    launch::fork_paused,
    loader::{LoadOptions, RtidKernel},
    policy::compile,
};

/// Workers per cell; the cell shows their median.
const RUNS: usize = 5;
/// The identity tagged workers carry.
const IDENTITY: &str = "bench";
/// The port the network deny rule names. Outside the ephemeral range, so the
/// allowed connects (to an ephemeral listener port) never match it, and
/// nothing listens on it: a connect that rtid failed to refuse would get
/// ECONNREFUSED, which the worker reports as an error rather than timing it.
const DENIED_PORT: u16 = 9;
/// The allowed exec: tiny, and present on the host and in the VM (busybox).
const TRUE_BINARY: &str = "/bin/true";
const DEFAULT_LABEL: &str = "host, native";
const VM_LABEL: &str = "VM, Debian kernel with BPF LSM under qemu TCG (emulated)";

#[path = "bench/pipeline.rs"]
mod pipeline;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--worker") => worker::run(&args[1..]),
        _ => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rtid-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: rtid-bench [--iterations N] [--label TEXT] [--pipeline-only]\n\
    Measures ns per open+close (N per run), TCP connect (N/10) and fork+exec (N/100, at least 20)\n\
    without rtid, with rtid loaded, and tagged (allowed, denied or killed). Run as root.";

struct Options {
    iterations: u64,
    label: String,
    /// Only the event pipeline figure (`--pipeline-only`).
    pipeline_only: bool,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        // Inside the VM harness the default label says so: emulated timings.
        let default_label = if std::env::var_os("RTID_IN_VM").is_some() { VM_LABEL } else { DEFAULT_LABEL };
        let mut options = Options { iterations: 100_000, label: default_label.into(), pipeline_only: false };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--iterations" => {
                    let value = args.next().context("--iterations needs a value")?;
                    options.iterations =
                        value.parse().with_context(|| format!("--iterations {value:?}: not a number"))?;
                    ensure!(options.iterations > 0, "--iterations must be at least 1");
                }
                "--label" => options.label = args.next().context("--label needs a value")?.clone(),
                "--pipeline-only" => options.pipeline_only = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unexpected argument {other:?}\n{USAGE}"),
            }
        }
        Ok(options)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Open,
    Connect,
    Exec,
}

impl Op {
    const ALL: [Op; 3] = [Op::Open, Op::Connect, Op::Exec];

    fn arg(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Connect => "connect",
            Op::Exec => "exec",
        }
    }

    fn from_arg(arg: &str) -> anyhow::Result<Op> {
        Op::ALL.into_iter().find(|op| op.arg() == arg).with_context(|| format!("unknown operation {arg:?}"))
    }

    fn title(self) -> &'static str {
        match self {
            Op::Open => "open+close small file",
            Op::Connect => "TCP connect 127.0.0.1",
            Op::Exec => "fork+exec+wait /bin/true",
        }
    }
}

/// What the worker's every operation must end in; anything else is an error,
/// so a cell never silently times something other than what it is labeled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Succeeds (the child of an exec exits 0).
    Allowed,
    /// Fails with EPERM or EACCES, measured in the loop.
    Denied,
    /// The process doing it dies of SIGKILL: measured per forked child.
    Killed,
}

impl Expect {
    fn arg(self) -> &'static str {
        match self {
            Expect::Allowed => "allowed",
            Expect::Denied => "denied",
            Expect::Killed => "killed",
        }
    }

    fn from_arg(arg: &str) -> anyhow::Result<Expect> {
        [Expect::Allowed, Expect::Denied, Expect::Killed]
            .into_iter()
            .find(|expect| expect.arg() == arg)
            .with_context(|| format!("unknown expectation {arg:?}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    NoRtid,
    LoadedUntagged,
    TaggedAllowed,
    TaggedBlocked,
}

impl Condition {
    const LOADED: [Condition; 3] = [Condition::LoadedUntagged, Condition::TaggedAllowed, Condition::TaggedBlocked];

    fn tagged(self) -> bool {
        matches!(self, Condition::TaggedAllowed | Condition::TaggedBlocked)
    }
}

/// Files the workers use, and the policy naming them; removed on drop.
struct Fixture {
    dir: TestDir,
    /// The file the allowed opens read.
    small_file: String,
    /// A file under the directory the deny rule covers.
    denied_file: String,
    /// A copy of /bin/true that the exec kill rule names.
    killed_binary: String,
}

impl Fixture {
    fn new() -> anyhow::Result<Fixture> {
        let dir = TestDir::new("bench");
        let small_file = dir.file("allowed/small.txt", "a small file\n");
        let denied_file = dir.file("denied/secret.txt", "not for agents\n");
        let killed_binary = dir.path("killed-true");
        // A copy (not a link): exec rules match the executed file's own path.
        std::fs::copy(TRUE_BINARY, &killed_binary)
            .with_context(|| format!("copying {TRUE_BINARY} to {killed_binary}"))?;
        Ok(Fixture { dir, small_file, denied_file, killed_binary })
    }

    /// The "bench" identity: defaults allow; one rule of each kind, each
    /// naming something the allowed operations never touch.
    fn identity(&self) -> IdentitySpec {
        let mut identity = IdentitySpec::new(IDENTITY);
        identity.files.push(PathRuleSpec::file(
            "deny-dir",
            PathPattern::Directory(format!("{}/", self.dir.path("denied"))),
            Verdict::Deny,
        ));
        identity.network.push(NetRuleSpec::cidr(
            "deny-port",
            Ipv4Addr::LOCALHOST.into(),
            32,
            vec![(DENIED_PORT, DENIED_PORT)],
            Verdict::Deny,
        ));
        identity.exec.push(PathRuleSpec::exec(
            "kill-bin",
            PathPattern::Exact(self.killed_binary.clone()),
            Verdict::Kill,
        ));
        identity
    }
}

/// One cell's measurement: how to run its workers and how to label it.
struct Job {
    op: Op,
    expect: Expect,
    iterations: u64,
    target: String,
    label: &'static str,
}

impl Job {
    /// `file_lsm`: whether opens are judged by BPF LSM (a denied open fails)
    /// rather than at syscall exit (where the fallback kills the opener).
    fn new(op: Op, condition: Condition, iterations: u64, fixture: &Fixture, file_lsm: bool) -> Job {
        // Connects and execs cost far more than opens; fewer keep runs short.
        let connects = (iterations / 10).max(20);
        let execs = (iterations / 100).max(20);
        let blocked = condition == Condition::TaggedBlocked;
        let (expect, iterations, target, blocked_label) = match op {
            Op::Open if blocked && file_lsm => {
                (Expect::Denied, iterations, fixture.denied_file.clone(), "tagged, denied (EPERM)")
            }
            // The fallback kills the opener: one open per process, so the cell
            // is the whole fork-open-reap cycle, nothing subtracted.
            Op::Open if blocked => (Expect::Killed, execs, fixture.denied_file.clone(), "tagged, killed (per process)"),
            Op::Open => (Expect::Allowed, iterations, fixture.small_file.clone(), ""),
            Op::Connect if blocked => (Expect::Denied, connects, DENIED_PORT.to_string(), "tagged, denied (EPERM)"),
            // The worker listens on an ephemeral port of its own.
            Op::Connect => (Expect::Allowed, connects, "-".into(), ""),
            Op::Exec if blocked => {
                (Expect::Killed, execs, fixture.killed_binary.clone(), "tagged, killed (per fork+exec)")
            }
            Op::Exec => (Expect::Allowed, execs, TRUE_BINARY.into(), ""),
        };
        let label = match condition {
            Condition::NoRtid => "no rtid",
            Condition::LoadedUntagged => "rtid loaded, untagged",
            Condition::TaggedAllowed => "tagged, allowed",
            Condition::TaggedBlocked => blocked_label,
        };
        Job { op, expect, iterations, target, label }
    }

    /// Runs one worker, labeled with the bench identity when `kernel` is given;
    /// returns the ns per operation it measured.
    fn run_worker(&self, kernel: Option<&mut RtidKernel>) -> anyhow::Result<f64> {
        let exe = std::env::current_exe().context("path of this executable")?;
        let argv = vec![
            exe.display().to_string(),
            "--worker".into(),
            self.op.arg().into(),
            self.expect.arg().into(),
            self.iterations.to_string(),
            self.target.clone(),
        ];
        let mut child = fork_paused(&argv, true).context("forking a worker")?;
        if let Some(kernel) = kernel
            && let Err(error) = kernel.label_pid(child.pid, IDENTITY)
        {
            // The worker exits without running anything once its gate closes.
            let _ = child.abandon();
            return Err(error).context("labeling the worker");
        }
        child.release().context("releasing the worker")?;
        let mut stdout = String::new();
        if let Some(fd) = child.stdout.take() {
            File::from(fd).read_to_string(&mut stdout).context("reading the worker's output")?;
        }
        let status = child.wait().context("waiting for the worker")?;
        ensure!(status.success(), "worker {} {} ended with {}", self.op.arg(), self.expect.arg(), describe(status));
        stdout.trim().parse().with_context(|| format!("worker printed {stdout:?}, not a number"))
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => format!("{status}"),
    }
}

/// A cell: every worker's ns per operation.
struct Cell {
    op: Op,
    condition: Condition,
    label: &'static str,
    iterations: u64,
    samples: Vec<f64>,
}

impl Cell {
    fn sorted(&self) -> Vec<f64> {
        let mut samples = self.samples.clone();
        samples.sort_by(f64::total_cmp);
        samples
    }

    fn median(&self) -> f64 {
        let sorted = self.sorted();
        sorted[sorted.len() / 2]
    }
}

/// Runs `RUNS` rounds over `jobs`, interleaved so that drift over time (CPU
/// frequency, other load) spreads over every cell instead of skewing one.
fn measure(
    phase: &str,
    jobs: Vec<(Condition, Job)>,
    mut kernel: Option<&mut RtidKernel>,
    cells: &mut Vec<Cell>,
) -> anyhow::Result<()> {
    let first = cells.len();
    for (condition, job) in &jobs {
        cells.push(Cell {
            op: job.op,
            condition: *condition,
            label: job.label,
            iterations: job.iterations,
            samples: Vec::new(),
        });
    }
    for round in 1..=RUNS {
        eprintln!("rtid-bench: {phase}: round {round}/{RUNS}");
        for (index, (condition, job)) in jobs.iter().enumerate() {
            let labeler = if condition.tagged() { kernel.as_deref_mut() } else { None };
            let ns =
                job.run_worker(labeler).with_context(|| format!("measuring {} ({})", job.op.title(), job.label))?;
            cells[first + index].samples.push(ns);
        }
    }
    Ok(())
}

/// Reads the event ring while workers run, as the daemon would: an unread
/// ring fills, and then the kernel drops events (counted, not slowed).
struct EventDrain {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl EventDrain {
    fn start(mut events: EventReader) -> EventDrain {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut read = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                events.wait_readable(Duration::from_millis(100));
                read += events.drain().len() as u64;
            }
            read + events.drain().len() as u64
        });
        EventDrain { stop, thread }
    }

    /// Stops reading; returns how many events were read.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Lsm => "BPF LSM",
        Backend::Tracepoint => "tracepoints",
        Backend::CgroupSock => "cgroup sock_addr",
        Backend::None => "none",
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let options = Options::parse(args)?;
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "rtid-bench loads BPF programs: run it as root (cargo xtask bench)");
    if options.pipeline_only {
        return pipeline::run(&std::env::current_exe()?.with_file_name("rtid-probe"));
    }
    let fixture = Fixture::new()?;
    let mut cells = Vec::new();

    // Condition a: before rtid is loaded at all.
    let baseline: Vec<(Condition, Job)> = Op::ALL
        .into_iter()
        .map(|op| (Condition::NoRtid, Job::new(op, Condition::NoRtid, options.iterations, &fixture, false)))
        .collect();
    measure("no rtid", baseline, None, &mut cells)?;

    // Conditions b, c, d: one load, so every loaded cell sees the same programs.
    let mut kernel = RtidKernel::load(&LoadOptions::default())
        .context("loading rtid (EBUSY/EEXIST: another rtid instance, e.g. a test run, is attached; retry later)")?;
    let policy = compile(&[fixture.identity()]).map_err(|errors| anyhow::anyhow!("bench policy: {errors:?}"))?;
    kernel.install(policy).context("installing the bench policy")?;
    let backends = kernel.backends();
    let drain = EventDrain::start(kernel.take_events().context("the event ring was already taken")?);
    let file_lsm = backends.file == Backend::Lsm;
    let loaded: Vec<(Condition, Job)> = Op::ALL
        .into_iter()
        .flat_map(|op| Condition::LOADED.map(|condition| (op, condition)))
        .map(|(op, condition)| (condition, Job::new(op, condition, options.iterations, &fixture, file_lsm)))
        .collect();
    let measured = measure("rtid loaded", loaded, Some(&mut kernel), &mut cells);
    let events_read = drain.finish();
    measured?;

    print_report(&options, &cells, backends);
    let counters = kernel.counters().context("reading the kernel counters")?;
    println!();
    println!("Kernel counters after the run:");
    println!();
    println!("| counter | value |");
    println!("|---|---:|");
    println!("| judged (actions of tagged processes) | {} |", counters.judged);
    println!("| events read from the ring | {events_read} |");
    println!("| ring full drops | {} |", counters.ring_full_drops);
    println!("| hook errors | {} |", counters.hook_errors);
    println!("| paths unresolved | {} |", counters.paths_unresolved);
    println!("| process table full | {} |", counters.process_table_full);
    // The daemon attaches the same programs: this instance must be gone first.
    drop(kernel);
    if std::env::var_os("RTID_IN_VM").is_none() {
        pipeline::run(&std::env::current_exe()?.with_file_name("rtid-probe"))?;
    }
    Ok(())
}

fn print_report(options: &Options, cells: &[Cell], backends: rtid_userspace::loader::BackendReport) {
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("## rtid-bench: {}", options.label);
    println!();
    println!(
        "Kernel {}; backends: file {}, network {}, exec {}. Nanoseconds per operation, median of {RUNS} runs, \
         each run a fresh worker process; the ratio is to \"no rtid\" for the same operation.",
        kernel_release.trim(),
        backend_name(backends.file),
        backend_name(backends.network),
        backend_name(backends.exec),
    );
    if std::env::var_os("RTID_IN_VM").is_some() {
        println!();
        println!("Emulated (qemu TCG): compare ratios, not times.");
    }
    println!();
    println!("| operation | condition | iterations/run | ns/op (median) | min–max | vs no rtid |");
    println!("|---|---|---:|---:|---:|---:|");
    for op in Op::ALL {
        let baseline = cells.iter().find(|cell| cell.op == op && cell.condition == Condition::NoRtid).map(Cell::median);
        for cell in cells.iter().filter(|cell| cell.op == op) {
            let median = cell.median();
            let sorted = cell.sorted();
            let ratio = baseline.map_or("–".into(), |baseline| format!("{:.2}×", median / baseline));
            println!(
                "| {} | {} | {} | {:.0} | {:.0}–{:.0} | {ratio} |",
                op.title(),
                cell.label,
                cell.iterations,
                median,
                sorted[0],
                sorted[sorted.len() - 1],
            );
        }
    }
    println!();
    println!(
        "\"per process\" and \"per fork+exec\" cells time a whole fork-act-reap cycle with nothing subtracted; \
         their ratio is to the in-loop \"no rtid\" cell, so it is a scale, not an overhead."
    );
}

/// The measuring side: runs in a process of its own, tagged or not, and
/// prints ns per operation.
mod worker {
    use super::*;

    use std::{ffi::CString, os::fd::AsRawFd, sync::atomic::AtomicU64};

    pub fn run(args: &[String]) -> anyhow::Result<()> {
        let [op, expect, iterations, target] = args else {
            bail!("usage: rtid-bench --worker OP EXPECT ITERATIONS TARGET (got {args:?})");
        };
        let op = Op::from_arg(op)?;
        let expect = Expect::from_arg(expect)?;
        let iterations: u64 = iterations.parse().with_context(|| format!("iterations {iterations:?}"))?;
        ensure!(iterations > 0, "iterations must be at least 1");
        let elapsed = match (op, expect) {
            (Op::Open, Expect::Allowed) => open_loop(target, iterations, true)?,
            (Op::Open, Expect::Denied) => open_loop(target, iterations, false)?,
            (Op::Open, Expect::Killed) => killed_opens(target, iterations)?,
            (Op::Connect, Expect::Allowed) => connect_loop(None, iterations)?,
            (Op::Connect, Expect::Denied) => {
                let port = target.parse().with_context(|| format!("port {target:?}"))?;
                connect_loop(Some(port), iterations)?
            }
            (Op::Exec, Expect::Allowed | Expect::Killed) => fork_execs(target, iterations, expect)?,
            (op, expect) => bail!("no worker for {} {}", op.arg(), expect.arg()),
        };
        println!("{:.1}", elapsed.as_nanos() as f64 / iterations as f64);
        Ok(())
    }

    fn refused(error: &std::io::Error) -> bool {
        matches!(error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
    }

    /// Opens and closes `path` in a tight loop; each must succeed (`allowed`)
    /// or be refused.
    fn open_loop(path: &str, iterations: u64, allowed: bool) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for _ in 0..iterations {
            match File::open(path) {
                Ok(file) if allowed => drop(file),
                Err(error) if !allowed && refused(&error) => {}
                Ok(_) => bail!("opening {path} succeeded; expected a refusal"),
                Err(error) => bail!("opening {path}: {error}"),
            }
        }
        Ok(start.elapsed())
    }

    /// The fallback kills a denied opener: each iteration forks a child that
    /// opens `path` once, and reaps it; it must die of SIGKILL.
    fn killed_opens(path: &str, iterations: u64) -> anyhow::Result<Duration> {
        let path = CString::new(path).context("NUL in path")?;
        let start = Instant::now();
        for _ in 0..iterations {
            // SAFETY: this worker is single-threaded, and the child only calls
            // async-signal-safe functions (open, close, _exit) on data built before fork.
            let status = fork_and_wait(|| unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::close(fd);
                }
                libc::_exit(0)
            })?;
            ensure!(status.signal() == Some(libc::SIGKILL), "the opener was not killed: {}", describe(status));
        }
        Ok(start.elapsed())
    }

    /// Connects to 127.0.0.1 and drops the stream, `iterations` times. With a
    /// port, each connect must be refused; without, it goes to a listener of
    /// our own whose thread accepts and drops.
    fn connect_loop(denied_port: Option<u16>, iterations: u64) -> anyhow::Result<Duration> {
        let Some(port) = denied_port else { return accepted_connects(iterations) };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let start = Instant::now();
        for _ in 0..iterations {
            match TcpStream::connect(address) {
                Err(error) if refused(&error) => {}
                Ok(_) => bail!("connecting to {address} succeeded; expected a refusal"),
                Err(error) => bail!("connecting to {address}: {error}"),
            }
        }
        Ok(start.elapsed())
    }

    /// How far connects may run ahead of the accept thread. A loopback connect
    /// completes without waiting for accept, so an unchecked loop (on one CPU
    /// above all) fills the accept queue; the kernel then drops SYNs and the
    /// client retransmits after a whole second, which would swamp the numbers.
    const MAX_UNACCEPTED: u64 = 64;

    fn accepted_connects(iterations: u64) -> anyhow::Result<Duration> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener")?;
        // std listens with a backlog of 128; ask for the kernel's maximum
        // (somaxconn) as headroom over MAX_UNACCEPTED.
        // SAFETY: listen on a socket we own; no memory is involved.
        if unsafe { libc::listen(listener.as_raw_fd(), libc::c_int::MAX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("widening the listen backlog");
        }
        let address = listener.local_addr().context("listener address")?;
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        // Ends with the process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
                counter.fetch_add(1, Ordering::Release);
            }
        });
        let start = Instant::now();
        for connected in 1..=iterations {
            let stream = TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
            drop(stream);
            while connected - accepted.load(Ordering::Acquire) > MAX_UNACCEPTED {
                std::thread::yield_now();
            }
        }
        Ok(start.elapsed())
    }

    /// fork, exec `binary` (no arguments), wait; `expect` Allowed: exit 0, Killed: SIGKILL.
    fn fork_execs(binary: &str, iterations: u64, expect: Expect) -> anyhow::Result<Duration> {
        ensure!(Path::new(binary).exists(), "{binary} does not exist");
        let program = CString::new(Path::new(binary).as_os_str().as_bytes()).context("NUL in path")?;
        let argv = [program.as_ptr(), std::ptr::null()];
        let start = Instant::now();
        for _ in 0..iterations {
            // SAFETY: this worker is single-threaded, and the child only calls
            // async-signal-safe functions (execv, _exit) on data built before fork.
            let status = fork_and_wait(|| unsafe {
                libc::execv(program.as_ptr(), argv.as_ptr());
                libc::_exit(127)
            })?;
            let as_expected = match expect {
                Expect::Killed => status.signal() == Some(libc::SIGKILL),
                _ => status.success(),
            };
            ensure!(as_expected, "{binary} ended with {}; expected {}", describe(status), expect.arg());
        }
        Ok(start.elapsed())
    }

    /// Forks a child that runs `child` (which ends in exec or `_exit`), and reaps it.
    fn fork_and_wait(child: impl FnOnce()) -> anyhow::Result<ExitStatus> {
        // SAFETY: fork has no memory-safety preconditions; callers keep the
        // child to async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            child();
            // SAFETY: only reached if `child` returned; the child must never
            // run on into the parent's code.
            unsafe { libc::_exit(127) };
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; status is a valid out-pointer.
            if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                return Ok(ExitStatus::from_raw(status));
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != ErrorKind::Interrupted {
                return Err(error).context("waitpid");
            }
        }
    }
}
