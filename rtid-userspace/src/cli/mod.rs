//! The `rtid` command line. Everything except `daemon`, `policy check` and
//! `policy show` is a client of the daemon's control API.

mod output;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::{
    api::{Client, DEFAULT_SOCKET, ExplainAction, Request, Response},
    daemon::{self, DaemonOptions},
    launch::{Hardening, fork_paused_hardened},
    policy::document,
};

/// Exit codes: 0 success, 1 refused or failed, 2 invalid input, 69 daemon unreachable.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "rtid", version, about = "Runtime identity for AI agents, enforced in the kernel")]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs, enforce policy and serve the control API.
    Daemon(DaemonArgs),
    /// Run a command under an identity, labeled before its first instruction.
    Run {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        purpose: Option<String>,
        /// Expire the identity this long from now (e.g. 30m), if sooner than its current expiry.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Run as IDENTITY delegated from this identity: only what both allow.
        #[arg(long)]
        delegated_by: Option<String>,
        /// Command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Label a running process (and its future children).
    Label {
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        identity: String,
    },
    /// Remove a process's label.
    Unlabel {
        #[arg(long)]
        pid: u32,
    },
    /// Identified processes.
    Ps,
    /// Programs, backends, counters and policy in force.
    Status,
    /// Check, apply, explain or show policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The live event stream from the daemon.
    Events {
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        identity: Option<String>,
        /// Only these verdicts or outcomes (comma separated: deny,kill,killed,...).
        #[arg(long, value_delimiter = ',')]
        verdict: Vec<String>,
    },
    /// Grant an identity a narrowly scoped allow for a while (or `grant revoke ID`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Grant(GrantArgs),
    /// Live grants.
    Grants,
    /// Revoke an identity now: its next call is denied.
    Revoke {
        identity: String,
        /// Also SIGKILL every process carrying it.
        #[arg(long)]
        kill: bool,
    },
    /// Lift a revocation (or a quarantine).
    Release { identity: String },
    /// Step-up approval requests.
    Approvals,
    /// Approve a request: a grant for exactly that identity and object.
    Approve {
        request: String,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Allow a single use only.
        #[arg(long)]
        once: bool,
    },
    /// Deny a request.
    Deny {
        request: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Shell completions for bash, zsh, fish, ...
    Completions { shell: clap_complete::Shell },
    /// The man page (roff) on stdout.
    Man,
}

#[derive(Args)]
struct DaemonArgs {
    /// Policy files or directories (default: the embedded default policy).
    #[arg(long)]
    policy: Vec<PathBuf>,
    #[arg(long, default_value = "/var/lib/rtid")]
    state_dir: PathBuf,
    /// bpffs directory where maps and links are pinned, so enforcement
    /// continues while the daemon is down and a restart adopts them.
    #[arg(long, default_value = "/sys/fs/bpf/rtid")]
    pin_dir: PathBuf,
    /// Do not pin: enforcement stops when the daemon exits.
    #[arg(long)]
    no_pin: bool,
    /// Remove the pins when the daemon exits.
    #[arg(long)]
    unpin_on_exit: bool,
    /// Group allowed to use the control API besides root.
    #[arg(long)]
    admin_group: Option<String>,
    /// Print every event as a JSON line on stdout.
    #[arg(long)]
    events_stdout: bool,
    /// How long a step-up request waits for an answer.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    approval_timeout: std::time::Duration,
    /// Tell approvers of each new request: HTTP POST of the request as JSON
    /// (http://host:port/path; retried, with a timeout).
    #[arg(long)]
    approval_webhook: Option<String>,
    /// Longest TTL a grant or approval may have.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_grant_ttl: std::time::Duration,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Daemon configuration (YAML): event sinks and their formats, the audit
    /// trail, the HTTP endpoint (/metrics, /events), the per-identity event cap.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How often the daemon checks that every program is still attached and
    /// pinned (what is missing is restored, reported as a tamper event, and
    /// `rtid status` says degraded until whole).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    integrity_interval: std::time::Duration,
    /// Size of the kernel's process table (identified processes at once).
    /// When it is full, a child of an identified process is killed rather
    /// than left untagged. Fixed when the maps are created: pins adopted from
    /// an earlier daemon keep their size.
    #[arg(long, default_value_t = rtid_common::limits::MAX_PROCESSES, value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    max_processes: u32,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit log files (any order; rotated ones too):
    /// names the first record edited, removed, inserted or reordered.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct GrantArgs {
    #[command(subcommand)]
    revoke: Option<GrantCommand>,
    #[arg(required = true)]
    identity: Option<String>,
    #[arg(long, conflicts_with_all = ["connect", "exec"])]
    open: Option<String>,
    #[arg(long, requires = "open")]
    write: bool,
    /// CIDR[:PORTS], e.g. 10.0.0.0/8:443,8000-8100 or 127.0.0.1:8080 or [::1]:80.
    #[arg(long, conflicts_with = "exec")]
    connect: Option<String>,
    #[arg(long, requires = "connect")]
    udp: bool,
    #[arg(long)]
    exec: Option<String>,
    /// How long the grant lasts (required), e.g. 10m.
    #[arg(long, required = true, value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Withdraw a grant at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files without a daemon.
    Check { files: Vec<PathBuf> },
    /// Validate, compile and swap in policy files.
    Apply { files: Vec<PathBuf> },
    /// The decision and the rule that makes it, as the kernel would decide now.
    Explain {
        #[arg(long)]
        identity: String,
        #[arg(long, conflicts_with_all = ["connect", "exec"])]
        open: Option<String>,
        #[arg(long, requires = "open")]
        write: bool,
        /// ADDR:PORT ([v6]:PORT for IPv6).
        #[arg(long, conflicts_with = "exec")]
        connect: Option<String>,
        #[arg(long, requires = "connect")]
        udp: bool,
        #[arg(long)]
        exec: Option<String>,
    },
    /// Print the embedded default policy.
    Show {
        #[arg(long, required = true)]
        default: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Daemon(_)) {
        // A client whose reader went away (`rtid events | head`) ends quietly,
        // as Unix tools do, instead of panicking on a broken pipe. The daemon
        // keeps Rust's default (ignore) so a vanished client cannot kill it.
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("rtid: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = cli.socket.clone();
    let json = cli.json;
    match cli.command {
        Command::Daemon(args) => run_daemon(args, socket),
        Command::Run { identity, owner, purpose, ttl, delegated_by, command } => {
            let request = Request::LabelChild {
                pid: 0,
                identity,
                owner,
                purpose,
                ttl_seconds: ttl.map(|ttl| ttl.as_secs().max(1)),
                delegated_by,
            };
            run_command(&socket, request, &command)
        }
        Command::Label { pid, identity } => simple(&socket, &Request::Label { pid, identity }, json),
        Command::Unlabel { pid } => simple(&socket, &Request::Unlabel { pid }, json),
        Command::Ps => simple(&socket, &Request::Ps, json),
        Command::Status => simple(&socket, &Request::Status, json),
        Command::Events { follow, identity, verdict } => events(&socket, follow, identity, verdict, json),
        Command::Policy(command) => policy(&socket, command, json),
        Command::Audit(AuditCommand::Verify { files }) => audit_verify(&files, json),
        Command::Grant(args) => grant(&socket, args, json),
        Command::Grants => simple(&socket, &Request::Grants, json),
        Command::Revoke { identity, kill } => simple(&socket, &Request::Revoke { identity, kill }, json),
        Command::Release { identity } => simple(&socket, &Request::Release { identity }, json),
        Command::Approvals => simple(&socket, &Request::Approvals, json),
        Command::Approve { request, ttl, once } => {
            simple(&socket, &Request::Approve { request, ttl_seconds: ttl.as_secs().max(1), once }, json)
        }
        Command::Deny { request, reason } => simple(&socket, &Request::Deny { request, reason }, json),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rtid", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_daemon(args: DaemonArgs, socket: PathBuf) -> anyhow::Result<ExitCode> {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    match args.log_format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => {
            eprintln!("rtid: --log-format {other:?}: expected text or json");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    }
    let config = match &args.config {
        Some(path) => match daemon::config::DaemonConfig::load(path) {
            Ok(config) => config,
            Err(problem) => {
                eprintln!("rtid: --config {problem}");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        },
        None => daemon::config::DaemonConfig::default(),
    };
    let options = DaemonOptions {
        config,
        config_path: args.config.clone(),
        policy_paths: args.policy,
        state_dir: args.state_dir,
        pin_dir: (!args.no_pin).then_some(args.pin_dir),
        unpin_on_exit: args.unpin_on_exit,
        socket,
        admin_group: args.admin_group,
        events_to_stdout: args.events_stdout,
        approval_timeout: args.approval_timeout,
        webhook: args.approval_webhook,
        max_grant_ttl: args.max_grant_ttl,
        integrity_interval: args.integrity_interval.max(std::time::Duration::from_millis(100)),
        max_processes: args.max_processes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(daemon::run(options))?;
    Ok(ExitCode::SUCCESS)
}

/// `rtid audit verify`: 0 when the chain holds, 1 naming the first tampered record.
fn audit_verify(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    match crate::audit::verify_files(files) {
        Ok(summary) => {
            if json {
                println!("{}", serde_json::json!({ "ok": true, "summary": format!("{summary}") }));
            } else {
                println!("audit trail intact: {summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(tampering) => {
            if json {
                println!("{}", serde_json::json!({ "ok": false, "problem": tampering.to_string() }));
            } else {
                eprintln!("rtid: audit trail broken: {tampering}");
            }
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// Calls the daemon; maps "unreachable" to its own exit code.
fn call(socket: &Path, request: &Request) -> Result<Response, ExitCode> {
    Client::call(socket, request).map_err(|error| {
        eprintln!("rtid: {error}");
        ExitCode::from(EXIT_UNAVAILABLE)
    })
}

fn simple(socket: &Path, request: &Request, json: bool) -> anyhow::Result<ExitCode> {
    match call(socket, request) {
        Ok(response) => Ok(output::print(&response, json)),
        Err(code) => Ok(code),
    }
}

/// Asks the daemon what the identity may not hold, forks the command held
/// before exec with that taken away (capabilities, no_new_privs, seccomp: see
/// `harden`), has the daemon label it, lets it run, and exits with its status
/// (128 + signal when killed).
fn run_command(socket: &Path, mut request: Request, command: &[String]) -> anyhow::Result<ExitCode> {
    let Request::LabelChild { identity, delegated_by, .. } = &request else {
        anyhow::bail!("rtid run labels a child");
    };
    let plan_request = Request::LaunchPlan { identity: identity.clone(), delegated_by: delegated_by.clone() };
    let plan = match call(socket, &plan_request) {
        Ok(Response::LaunchPlan(plan)) => plan,
        Ok(response) => return Ok(output::print(&response, false)),
        Err(code) => return Ok(code),
    };
    let hardening = Hardening {
        denied_capabilities: plan.capability_mask().map_err(|problem| anyhow::anyhow!(problem))?,
        deny_user_namespaces: plan.deny_user_namespaces,
        daemon_pid: Some(plan.daemon_pid),
    };
    let mut child = fork_paused_hardened(command, false, &hardening)?;
    if let Request::LabelChild { pid, .. } = &mut request {
        *pid = child.pid;
    }
    match call(socket, &request) {
        Ok(Response::Ok { .. }) => {}
        Ok(response) => {
            let _ = child.abandon();
            return Ok(output::print(&response, false));
        }
        Err(code) => {
            let _ = child.abandon();
            return Ok(code);
        }
    }
    child.release()?;
    let status = child.wait()?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128 + signal as u8),
        _ => ExitCode::from(EXIT_FAILED),
    })
}

fn events(
    socket: &Path,
    follow: bool,
    identity: Option<String>,
    verdicts: Vec<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = match Client::connect(socket) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("rtid: {error}");
            return Ok(ExitCode::from(EXIT_UNAVAILABLE));
        }
    };
    client.send(&Request::Events { follow, identity, verdicts })?;
    while let Some(response) = client.next_response()? {
        let code = output::print(&response, json);
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn policy(socket: &Path, command: PolicyCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { files } => match document::load_paths(&files) {
            Ok(set) => match crate::policy::compile(&set.identities) {
                Ok(compiled) => {
                    // Opt-ins that weaken the built-in protections are legal, and said out loud.
                    for warning in crate::policy::warnings(&set.identities) {
                        eprintln!("warning: {warning}");
                    }
                    println!("policy ok: {} identities, {} rules", compiled.identities.len(), compiled.rules.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for error in errors {
                        eprintln!("{error}");
                    }
                    Ok(ExitCode::from(EXIT_INVALID))
                }
            },
            Err(errors) => {
                for error in errors {
                    eprintln!("{error}");
                }
                Ok(ExitCode::from(EXIT_INVALID))
            }
        },
        PolicyCommand::Apply { files } => {
            let mut documents = Vec::new();
            for file in document::expand_paths(&files).map_err(|error| anyhow::anyhow!(error))? {
                let text =
                    std::fs::read_to_string(&file).map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?;
                documents.push((file.display().to_string(), text));
            }
            match call(socket, &Request::PolicyApply { documents }) {
                Ok(response @ Response::Error { .. }) => {
                    output::print(&response, json);
                    Ok(ExitCode::from(EXIT_INVALID))
                }
                Ok(response) => Ok(output::print(&response, json)),
                Err(code) => Ok(code),
            }
        }
        PolicyCommand::Explain { identity, open, write, connect, udp, exec } => {
            let action = if let Some(path) = open {
                ExplainAction::Open { path: resolve(&path), write }
            } else if let Some(target) = connect {
                let Some((address, port)) = target.rsplit_once(':') else {
                    eprintln!("rtid: --connect {target:?}: expected ADDR:PORT");
                    return Ok(ExitCode::from(EXIT_INVALID));
                };
                let Ok(port) = port.parse() else {
                    eprintln!("rtid: --connect {target:?}: {port:?} is not a port");
                    return Ok(ExitCode::from(EXIT_INVALID));
                };
                ExplainAction::Connect { address: address.trim_matches(['[', ']']).into(), port, udp }
            } else if let Some(path) = exec {
                ExplainAction::Exec { path: resolve(&path) }
            } else {
                eprintln!("rtid: policy explain needs one of --open, --connect, --exec");
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            simple(socket, &Request::PolicyExplain { identity, action }, json)
        }
        PolicyCommand::Show { .. } => {
            print!("{}", document::default_policy_text());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The kernel judges resolved paths: resolve what exists, keep the rest as given.
fn resolve(path: &str) -> String {
    std::fs::canonicalize(path).map(|resolved| resolved.display().to_string()).unwrap_or_else(|_| path.to_string())
}

fn grant(socket: &Path, args: GrantArgs, json: bool) -> anyhow::Result<ExitCode> {
    use crate::daemon::grants::GrantObject;
    if let Some(GrantCommand::Revoke { id }) = args.revoke {
        return simple(socket, &Request::GrantRevoke { id }, json);
    }
    let (Some(identity), Some(ttl)) = (args.identity, args.ttl) else {
        eprintln!("rtid: grant needs IDENTITY and --ttl");
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let object = if let Some(path) = args.open {
        GrantObject::Open { path: resolve(&path), write: args.write }
    } else if let Some(path) = args.exec {
        GrantObject::Exec { path: resolve(&path) }
    } else if let Some(target) = args.connect {
        match parse_connect_target(&target) {
            Some((address, prefix_len, ports)) => GrantObject::Connect { address, prefix_len, ports, udp: args.udp },
            None => {
                eprintln!("rtid: --connect {target:?}: expected CIDR[:PORTS] (e.g. 10.0.0.0/8:443 or [::1]:80)");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        }
    } else {
        eprintln!("rtid: grant needs one of --open, --connect, --exec");
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    simple(socket, &Request::Grant { identity, object, ttl_seconds: ttl.as_secs().max(1), reason: args.reason }, json)
}

/// `CIDR[:PORTS]`: an address or block, then optional ports `443,8000-8100`.
fn parse_connect_target(text: &str) -> Option<(String, u8, Vec<(u16, u16)>)> {
    let (address_part, ports_part) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        (inside.to_string(), after.strip_prefix(':').map(str::to_string))
    } else if text.matches(':').count() == 1 {
        let (address, ports) = text.split_once(':')?;
        (address.to_string(), Some(ports.to_string()))
    } else {
        (text.to_string(), None)
    };
    let (address, prefix) = match address_part.split_once('/') {
        Some((address, prefix)) => (address.parse::<std::net::IpAddr>().ok()?, Some(prefix.parse::<u8>().ok()?)),
        None => (address_part.parse::<std::net::IpAddr>().ok()?, None),
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return None;
    }
    let mut ports = Vec::new();
    if let Some(list) = ports_part {
        for part in list.split(',') {
            let range = match part.split_once('-') {
                Some((low, high)) => (low.parse().ok()?, high.parse().ok()?),
                None => {
                    let port = part.parse().ok()?;
                    (port, port)
                }
            };
            if range.0 > range.1 {
                return None;
            }
            ports.push(range);
        }
    }
    Some((address.to_string(), prefix, ports))
}
