//! What rtid assumes of the running kernel, checked before any program is loaded.
//!
//! One rtid binary runs on many kernels, and what it needs of each differs
//! between versions, configs and architectures: BTF, the helpers every program
//! calls, the record layout of the syscall tracepoints it reads, the arguments
//! of the BTF tracepoints. When such an assumption fails, the kernel's own
//! answer is a verifier log: hundreds of lines of register state that name
//! nothing an operator can act on. So the loader checks every assumption here
//! first and either adapts (a BPF LSM hook whose helper is missing leaves its
//! actions to the tracepoint and cgroup backends; a syscall this architecture
//! does not have has no tracepoint to attach) or refuses with a [`CompatError`]
//! that names the missing feature. The helpers are read from the eBPF object
//! itself, so the check follows the programs as they change; where the kernel
//! still refuses a program, [`name_refusal`] turns the verifier's answer into
//! the same named error.
//!
//! `RTID_SIMULATE_MISSING` (comma-separated `btf`, `helper:NAME`,
//! `tracepoint:NAME`, `btf-type:NAME`) makes the check treat those features as
//! missing, as if the kernel lacked them, so tests can reach every refusal on
//! a kernel that has everything.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::CStr,
    fmt, io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use aya::programs::ProgramError;
use aya_obj::{
    ProgramSection,
    generated::{
        BPF_ALU64, BPF_CALL, BPF_DW, BPF_EXIT, BPF_IMM, BPF_JMP, BPF_K, BPF_LD, BPF_MOV, bpf_attach_type, bpf_attr,
        bpf_cmd, bpf_func_id, bpf_insn, bpf_prog_type,
    },
};
use rtid_common::Backend;
use serde::{Deserialize, Serialize};

use super::{BackendReport, LoadError, btf_offsets::RUNNING_KERNEL_BTF, lsm::LsmAttachment};

/// The environment variable naming features to treat as missing.
pub const SIMULATE_ENV: &str = "RTID_SIMULATE_MISSING";

/// A kernel feature rtid needs and this kernel does not offer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    #[error("this kernel has no BTF ({} missing; needs CONFIG_DEBUG_INFO_BTF=y)", path.display())]
    NoBtf { path: PathBuf },
    #[error("reading the kernel's BTF from {}: {problem}", path.display())]
    UnreadableBtf { path: PathBuf, problem: String },
    #[error("kernel {release} lacks helper {helper} for {program} programs")]
    MissingHelper { release: String, helper: Helper, program: ProgramRef },
    #[error(
        "kernel {release} has no tracepoint syscalls/{tracepoint} although it has the {} syscall; \
         {program} needs it to {} without BPF LSM (CONFIG_FTRACE_SYSCALLS=y)",
        syscall_of(tracepoint),
        purpose(&program.name)
    )]
    MissingTracepoint { release: String, tracepoint: String, program: ProgramRef },
    #[error(
        "tracefs is not mounted (neither /sys/kernel/tracing nor /sys/kernel/debug/tracing in /proc/self/mounts); \
         {program} attaches to syscall tracepoints: mount -t tracefs none /sys/kernel/tracing"
    )]
    NoTracefs { program: ProgramRef },
    #[error("tracepoint syscalls/{tracepoint}: {problem}")]
    TracepointLayout { tracepoint: String, problem: LayoutProblem },
    #[error("kernel {release}'s BTF has no btf_trace_{}, which {program} attaches to", program.name)]
    MissingBtfType { release: String, program: ProgramRef },
    #[error(
        "kernel {release}'s BTF: btf_trace_{} {problem}; {program} reads argument {argument} as struct {expected} *",
        program.name
    )]
    BtfTracepointArgument {
        release: String,
        program: ProgramRef,
        argument: u32,
        expected: &'static str,
        problem: String,
    },
    #[error(
        "{SIMULATE_ENV}: {problem} (expected a comma-separated list of btf, helper:NAME, tracepoint:NAME, btf-type:NAME)"
    )]
    BadSimulation { problem: String },
    #[error("reading rtid's eBPF object: {0}")]
    Object(String),
}

/// A BPF helper function, by its id in the kernel's UAPI (`enum bpf_func_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Helper(pub u32);

/// Names of the helpers rtid's programs (and aya's helpers) call, for messages.
const HELPER_NAMES: [(bpf_func_id, &str); 24] = [
    (bpf_func_id::BPF_FUNC_map_lookup_elem, "bpf_map_lookup_elem"),
    (bpf_func_id::BPF_FUNC_map_update_elem, "bpf_map_update_elem"),
    (bpf_func_id::BPF_FUNC_map_delete_elem, "bpf_map_delete_elem"),
    (bpf_func_id::BPF_FUNC_probe_read, "bpf_probe_read"),
    (bpf_func_id::BPF_FUNC_ktime_get_ns, "bpf_ktime_get_ns"),
    (bpf_func_id::BPF_FUNC_get_smp_processor_id, "bpf_get_smp_processor_id"),
    (bpf_func_id::BPF_FUNC_get_current_pid_tgid, "bpf_get_current_pid_tgid"),
    (bpf_func_id::BPF_FUNC_get_current_uid_gid, "bpf_get_current_uid_gid"),
    (bpf_func_id::BPF_FUNC_get_current_comm, "bpf_get_current_comm"),
    (bpf_func_id::BPF_FUNC_get_current_task, "bpf_get_current_task"),
    (bpf_func_id::BPF_FUNC_probe_read_str, "bpf_probe_read_str"),
    (bpf_func_id::BPF_FUNC_get_current_cgroup_id, "bpf_get_current_cgroup_id"),
    (bpf_func_id::BPF_FUNC_send_signal, "bpf_send_signal"),
    (bpf_func_id::BPF_FUNC_probe_read_user, "bpf_probe_read_user"),
    (bpf_func_id::BPF_FUNC_probe_read_kernel, "bpf_probe_read_kernel"),
    (bpf_func_id::BPF_FUNC_probe_read_user_str, "bpf_probe_read_user_str"),
    (bpf_func_id::BPF_FUNC_probe_read_kernel_str, "bpf_probe_read_kernel_str"),
    (bpf_func_id::BPF_FUNC_get_current_ancestor_cgroup_id, "bpf_get_current_ancestor_cgroup_id"),
    (bpf_func_id::BPF_FUNC_ktime_get_boot_ns, "bpf_ktime_get_boot_ns"),
    (bpf_func_id::BPF_FUNC_ringbuf_reserve, "bpf_ringbuf_reserve"),
    (bpf_func_id::BPF_FUNC_ringbuf_submit, "bpf_ringbuf_submit"),
    (bpf_func_id::BPF_FUNC_ringbuf_discard, "bpf_ringbuf_discard"),
    (bpf_func_id::BPF_FUNC_get_retval, "bpf_get_retval"),
    (bpf_func_id::BPF_FUNC_set_retval, "bpf_set_retval"),
];

impl Helper {
    pub const PROBE_READ_KERNEL: Helper = Helper(bpf_func_id::BPF_FUNC_probe_read_kernel as u32);

    pub fn name(self) -> Option<&'static str> {
        HELPER_NAMES.iter().find(|(id, _)| *id as u32 == self.0).map(|(_, name)| *name)
    }

    /// `bpf_send_signal`, `send_signal`, `#109` or `109`.
    pub fn from_name(text: &str) -> Option<Helper> {
        if let Ok(id) = text.trim_start_matches('#').parse() {
            return Some(Helper(id));
        }
        HELPER_NAMES
            .iter()
            .find(|(_, name)| *name == text || name.strip_prefix("bpf_") == Some(text))
            .map(|(id, _)| Helper(*id as u32))
    }
}

impl fmt::Display for Helper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (#{})", self.0),
            None => write!(f, "helper #{}", self.0),
        }
    }
}

/// What kind of program, as far as the kernel's checks go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    TracePoint,
    BtfTracePoint,
    /// With its `expected_attach_type` (`BPF_CGROUP_INET4_CONNECT`, ...).
    CgroupSockAddr(bpf_attach_type),
    Lsm,
    Other,
}

impl ProgramKind {
    fn of(section: &ProgramSection) -> ProgramKind {
        match section {
            ProgramSection::TracePoint => ProgramKind::TracePoint,
            ProgramSection::BtfTracePoint => ProgramKind::BtfTracePoint,
            ProgramSection::CgroupSockAddr { attach_type } => ProgramKind::CgroupSockAddr((*attach_type).into()),
            ProgramSection::Lsm { .. } => ProgramKind::Lsm,
            _ => ProgramKind::Other,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            ProgramKind::TracePoint => "tracepoint",
            ProgramKind::BtfTracePoint => "tp_btf",
            ProgramKind::CgroupSockAddr(_) => "cgroup",
            ProgramKind::Lsm => "lsm",
            ProgramKind::Other => "program",
        }
    }
}

/// A program of rtid's, named as its section is (`cgroup/connect4`, `lsm/file_open`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRef {
    pub kind: ProgramKind,
    pub name: String,
}

impl fmt::Display for ProgramRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.prefix(), self.name)
    }
}

/// One program of the eBPF object and the helpers it calls (its subprograms' included).
#[derive(Clone, Debug)]
pub struct ObjectProgram {
    pub name: String,
    pub kind: ProgramKind,
    pub helpers: BTreeSet<Helper>,
}

impl ObjectProgram {
    fn reference(&self) -> ProgramRef {
        ProgramRef { kind: self.kind, name: self.name.clone() }
    }
}

/// The helpers called by `instructions`: `BPF_JMP | BPF_CALL` with source
/// register 0 (1 is a call of a BPF function, 2 of a kernel function), the
/// helper id in the immediate.
pub fn helper_calls(instructions: &[bpf_insn]) -> BTreeSet<Helper> {
    const CALL: u8 = (BPF_JMP | BPF_CALL) as u8;
    const LOAD_IMM64: u8 = (BPF_LD | BPF_DW | BPF_IMM) as u8;
    let mut helpers = BTreeSet::new();
    let mut index = 0;
    while let Some(instruction) = instructions.get(index) {
        if instruction.code == CALL && instruction.src_reg() == 0 {
            helpers.insert(Helper(instruction.imm as u32));
        }
        // The second slot of a 64-bit immediate load is data, not an instruction.
        index += if instruction.code == LOAD_IMM64 { 2 } else { 1 };
    }
    helpers
}

/// Every program in `object` with the helpers it calls once linked as aya
/// links it: BPF-to-BPF calls resolved (so helpers called from subprograms
/// count) and the probe-read helpers rewritten to their old forms where the
/// kernel lacks the new ones (`probe_read_kernel_supported` decides, as aya's
/// own probe does).
pub fn scan_object(
    object: &[u8],
    probe_read_kernel_supported: impl FnOnce() -> bool,
) -> Result<Vec<ObjectProgram>, CompatError> {
    let mut parsed = aya_obj::Object::parse(object).map_err(|error| CompatError::Object(error.to_string()))?;
    let text_sections = parsed.functions.keys().map(|(section, _)| *section).collect();
    parsed.relocate_calls(&text_sections).map_err(|error| CompatError::Object(error.to_string()))?;
    parsed.sanitize_functions(probe_read_kernel_supported);
    let mut programs: Vec<ObjectProgram> = parsed
        .programs
        .iter()
        .map(|(name, program)| ObjectProgram {
            name: name.clone(),
            kind: ProgramKind::of(&program.section),
            helpers: parsed
                .functions
                .get(&program.function_key())
                .map(|function| helper_calls(&function.instructions))
                .unwrap_or_default(),
        })
        .collect();
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(programs)
}

/// The programs of rtid's embedded eBPF object and the helpers each calls,
/// linked for a kernel with `bpf_probe_read_kernel`.
pub fn embedded_programs() -> Result<Vec<ObjectProgram>, CompatError> {
    scan_object(super::EBPF_OBJECT, || true)
}

/// The verifier's words for a helper the program type does not get:
/// `unknown func bpf_x#N` (no such helper for this type), `invalid func
/// unknown#N` (an id past the kernel's last helper), `program of this type
/// cannot use helper bpf_x#N`.
const MISSING_HELPER_MARKERS: [&str; 3] = ["unknown func ", "invalid func ", "cannot use helper "];

/// The helper a verifier log says is missing, if that is what it says.
pub fn missing_helper_in_log(log: &str) -> Option<Helper> {
    log.lines().find_map(|line| {
        MISSING_HELPER_MARKERS.iter().find_map(|marker| {
            let rest = &line[line.find(marker)? + marker.len()..];
            let (_, id) = rest.split_whitespace().next()?.rsplit_once('#')?;
            id.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok().map(Helper)
        })
    })
}

/// What a probe load found about one helper for one program type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Support {
    Available,
    Missing,
    /// The probe itself was refused without a verifier log (no privilege, say):
    /// the real load will tell.
    Undetermined,
}

/// A program type that a trivial program can be loaded as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ProbeTarget {
    program_type: bpf_prog_type,
    attach_type: Option<bpf_attach_type>,
}

impl ProbeTarget {
    const TRACEPOINT: ProbeTarget =
        ProbeTarget { program_type: bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT, attach_type: None };

    /// tp_btf and LSM programs need a BTF attach target (and LSM a trampoline)
    /// to load at all; their helpers are named by [`name_refusal`] instead.
    fn of(kind: ProgramKind) -> Option<ProbeTarget> {
        match kind {
            ProgramKind::TracePoint => Some(ProbeTarget::TRACEPOINT),
            ProgramKind::CgroupSockAddr(attach_type) => Some(ProbeTarget {
                program_type: bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                attach_type: Some(attach_type),
            }),
            _ => None,
        }
    }
}

/// Probes helpers with `r1 = ... = r5 = 0; call helper; r0 = 1; exit`, once per program type and helper.
#[derive(Default)]
struct Prober {
    cache: HashMap<(ProbeTarget, Helper), Support>,
}

impl Prober {
    fn probe(&mut self, target: ProbeTarget, helper: Helper) -> Support {
        *self.cache.entry((target, helper)).or_insert_with(|| probe_helper(target, helper))
    }
}

fn instruction(code: u32, dst: u8, imm: i32) -> bpf_insn {
    bpf_insn { code: code as u8, _bitfield_1: bpf_insn::new_bitfield_1(dst, 0), off: 0, imm }
}

fn probe_helper(target: ProbeTarget, helper: Helper) -> Support {
    let set = |register, value| instruction(BPF_ALU64 | BPF_MOV | BPF_K, register, value);
    // Arguments zeroed so that what the verifier judges is the call itself; an
    // argument-type complaint still means the helper exists.
    let program = [
        set(1, 0),
        set(2, 0),
        set(3, 0),
        set(4, 0),
        set(5, 0),
        instruction(BPF_JMP | BPF_CALL, 0, helper.0 as i32),
        set(0, 1),
        instruction(BPF_JMP | BPF_EXIT, 0, 0),
    ];
    let mut log = vec![0u8; 64 * 1024];
    match load_program(target, &program, &mut log) {
        Ok(_loaded) => Support::Available,
        Err(_) => {
            let log = log_text(&log);
            if missing_helper_in_log(&log).is_some() {
                Support::Missing
            } else if log.trim().is_empty() {
                Support::Undetermined
            } else {
                Support::Available
            }
        }
    }
}

fn log_text(log: &[u8]) -> String {
    let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
    String::from_utf8_lossy(&log[..end]).into_owned()
}

/// `bpf(BPF_PROG_LOAD)` of `instructions` as `target`, the verifier's log in `log`.
fn load_program(target: ProbeTarget, instructions: &[bpf_insn], log: &mut [u8]) -> io::Result<OwnedFd> {
    const LICENSE: &CStr = c"GPL";
    // SAFETY: bpf_attr is a C union of integer fields; all zeroes is the
    // kernel's "not set" for every one of them.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BPF_PROG_LOAD member of the zeroed union, integers only, so
    // every bit pattern (all zeroes included) is a valid value of it.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = target.program_type as u32;
    load.expected_attach_type = target.attach_type.map_or(0, |attach| attach as u32);
    load.insns = instructions.as_ptr().expose_provenance() as u64;
    load.insn_cnt = instructions.len() as u32;
    load.license = LICENSE.as_ptr().expose_provenance() as u64;
    load.log_level = 1;
    load.log_buf = log.as_mut_ptr().expose_provenance() as u64;
    load.log_size = log.len() as u32;
    // SAFETY: `attr` is a valid bpf_attr of the size passed, and the buffers
    // it points to (instructions, licence, log) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Features to treat as missing ([`SIMULATE_ENV`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Simulation {
    pub btf: bool,
    pub helpers: BTreeSet<Helper>,
    /// Syscall tracepoint names (`sys_enter_connect`).
    pub tracepoints: BTreeSet<String>,
    /// Kernel BTF type names (`btf_trace_sched_process_fork`).
    pub btf_types: BTreeSet<String>,
}

impl Simulation {
    pub fn from_env() -> Result<Simulation, CompatError> {
        match std::env::var(SIMULATE_ENV) {
            Ok(spec) => Simulation::parse(&spec),
            Err(_) => Ok(Simulation::default()),
        }
    }

    pub fn parse(spec: &str) -> Result<Simulation, CompatError> {
        let mut simulation = Simulation::default();
        for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            match item.split_once(':') {
                None if item == "btf" => simulation.btf = true,
                Some(("helper", name)) => {
                    let helper = Helper::from_name(name)
                        .ok_or_else(|| CompatError::BadSimulation { problem: format!("unknown helper {name:?}") })?;
                    simulation.helpers.insert(helper);
                }
                Some(("tracepoint", name)) => {
                    simulation.tracepoints.insert(name.trim_start_matches("syscalls/").to_string());
                }
                Some(("btf-type", name)) => {
                    simulation.btf_types.insert(name.to_string());
                }
                _ => return Err(CompatError::BadSimulation { problem: format!("unknown feature {item:?}") }),
            }
        }
        Ok(simulation)
    }
}

/// The kernel families BPF LSM can take over from the fallback programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    File,
    Exec,
    Net,
    Protect,
    /// Signals and ptrace aimed at the daemon.
    Daemon,
    /// Changes to rtid's files other than write opens.
    Paths,
    /// The capability ceiling and the user-namespace guard.
    Capability,
    /// AF_UNIX connects judged on the socket the kernel found.
    UnixPath,
    /// Killing children the full process table cannot tag: no BPF LSM hook
    /// does it, so its program is needed everywhere.
    Capacity,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::File,
        Family::Exec,
        Family::Net,
        Family::Protect,
        Family::Daemon,
        Family::Paths,
        Family::Capability,
        Family::UnixPath,
    ];

    fn served_by(self, lsm: &LsmAttachment) -> bool {
        match self {
            Family::File => lsm.file,
            Family::Exec => lsm.exec,
            Family::Net => lsm.net,
            Family::Protect => lsm.protect,
            Family::Daemon => lsm.daemon,
            Family::Paths => lsm.paths,
            Family::Capability => lsm.capability,
            Family::UnixPath => lsm.unix_path,
            Family::Capacity => false,
        }
    }
}

/// When the loader loads a program (mirrors `RtidKernel::load`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Always,
    /// A fallback, loaded where BPF LSM does not serve the family.
    UnlessLsm(Family),
    /// A BPF LSM hook: where it cannot load, its family falls back.
    LsmHook,
}

fn need(program: &ObjectProgram) -> Need {
    let name = program.name.as_str();
    if program.kind == ProgramKind::Lsm {
        Need::LsmHook
    } else if name == "sys_exit_open" {
        Need::UnlessLsm(Family::File)
    } else if super::UNIX_TRACEPOINTS.contains(&name)
        || super::CGROUP_SOCK_PROGRAMS.contains(&name)
        || name == "sys_exit_net"
    {
        Need::UnlessLsm(Family::Net)
    } else if name == "sys_enter_bpf" {
        Need::UnlessLsm(Family::Protect)
    } else if let Some((_, _, family)) =
        super::protections::FALLBACK_TRACEPOINTS.iter().find(|(program, ..)| *program == name)
    {
        Need::UnlessLsm(*family)
    } else {
        Need::Always
    }
}

/// The syscall tracepoints the loader attaches (mirrors `RtidKernel::load`):
/// the program, its tracepoints, and the family it stands in for.
fn syscall_attachments() -> Vec<(&'static str, &'static [&'static str], Family)> {
    let mut groups: Vec<(&'static str, &'static [&'static str], Family)> =
        vec![("sys_exit_open", &super::FILE_TRACEPOINTS, Family::File)];
    for name in &super::UNIX_TRACEPOINTS {
        groups.push((name, std::slice::from_ref(name), Family::Net));
    }
    groups.push(("sys_exit_net", &super::NET_EXIT_TRACEPOINTS, Family::Net));
    groups.push(("sys_enter_bpf", &["sys_enter_bpf"], Family::Protect));
    groups.extend(
        super::protections::FALLBACK_TRACEPOINTS
            .iter()
            .map(|(program, tracepoints, family)| (*program, *tracepoints, *family)),
    );
    groups
}

/// Whether `program` is a fallback of the integrity protections (see `protections`).
fn is_integrity_fallback(program: &str) -> bool {
    super::protections::FALLBACK_TRACEPOINTS.iter().any(|(name, ..)| *name == program)
}

/// The syscall a `sys_enter_*` or `sys_exit_*` tracepoint reports.
fn syscall_of(tracepoint: &str) -> &str {
    tracepoint.strip_prefix("sys_enter_").or_else(|| tracepoint.strip_prefix("sys_exit_")).unwrap_or(tracepoint)
}

/// What a program does with its tracepoints, for messages.
fn purpose(program: &str) -> &'static str {
    match program {
        "sys_exit_open" => "judge file opens",
        "sys_enter_connect" | "sys_enter_sendto" => "judge AF_UNIX connects and sends",
        "sys_exit_net" => "deliver the cgroup socket hooks' kill verdicts",
        "sys_enter_bpf" => "keep agents from the bpf() syscall",
        "sys_enter_kill" | "sys_enter_tgkill" => "keep agents from signalling the daemon",
        "sys_enter_ptrace" | "sys_enter_process_vm" => "keep agents from tracing the daemon",
        "sys_enter_privileged" => "hold the capability ceiling and the socket kinds",
        "sys_enter_path_arg0"
        | "sys_enter_path_arg1"
        | "sys_enter_path_arg2"
        | "sys_enter_path_arg3"
        | "sys_enter_fd_change" => "keep agents from changing rtid's files",
        "sys_exit_fork" => "kill children the full process table cannot tag",
        _ => "enforce policy",
    }
}

/// The fields of a syscall tracepoint record a program reads (see the
/// `read_at` calls in rtid-ebpf: file.rs, net.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    Nothing,
    /// `long ret` of a `sys_exit_*` record.
    Return,
    /// These syscall arguments (0-based) of a `sys_enter_*` record.
    Args(&'static [usize]),
    /// Every argument: for a program this table does not know.
    EveryArg,
}

fn reads(program: &str, tracepoint: &str) -> Reads {
    match program {
        // file.rs: SYS_EXIT_RET.
        "sys_exit_open" => Reads::Return,
        // net.rs: SYS_ENTER_ARG[1], [2] (uservaddr, addrlen) and [4], [5] (addr, addr_len).
        "sys_enter_connect" => Reads::Args(&[1, 2]),
        "sys_enter_sendto" => Reads::Args(&[4, 5]),
        "sys_exit_net" | "sys_enter_bpf" | "sys_exit_fork" => Reads::Nothing,
        // task.rs: the target (and signal) arguments.
        "sys_enter_kill" => Reads::Args(&[0, 1]),
        "sys_enter_tgkill" => Reads::Args(&[0, 2]),
        "sys_enter_ptrace" => Reads::Args(&[1]),
        "sys_enter_process_vm" => Reads::Args(&[0]),
        // capability.rs: flags or domain, and the socket type.
        "sys_enter_privileged" if tracepoint == "sys_enter_socket" => Reads::Args(&[0, 1, 2]),
        "sys_enter_privileged" => Reads::Args(&[0]),
        // change.rs: the path argument, or the descriptor.
        "sys_enter_path_arg0" | "sys_enter_fd_change" => Reads::Args(&[0]),
        "sys_enter_path_arg1" => Reads::Args(&[1]),
        "sys_enter_path_arg2" => Reads::Args(&[2]),
        "sys_enter_path_arg3" => Reads::Args(&[3]),
        _ if tracepoint.starts_with("sys_exit_") => Reads::Return,
        _ => Reads::EveryArg,
    }
}

/// Where the syscall tracepoint ABI puts things: after the 8-byte common
/// header and the syscall number, each argument (or the return value) in its
/// own 8-byte slot.
const SYSCALL_SLOTS_AT: u32 = 16;
const SYSCALL_SLOT: u32 = 8;

/// One `field:` line of a tracefs `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    pub declaration: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of a tracefs event `format` file, in order (common ones included).
pub fn parse_format(text: &str) -> Result<Vec<FormatField>, String> {
    let mut fields = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let malformed = || format!("line {}: malformed field {:?}", number + 1, line.trim());
        let mut parts = rest.split(';').map(str::trim);
        let declaration = parts.next().filter(|text| !text.is_empty()).ok_or_else(malformed)?;
        let mut offset = None;
        let mut size = None;
        for part in parts {
            match part.split_once(':') {
                Some(("offset", value)) => offset = value.parse().ok(),
                Some(("size", value)) => size = value.parse().ok(),
                _ => {}
            }
        }
        let name = declaration
            .split_whitespace()
            .last()
            .map(|word| word.trim_start_matches('*'))
            .map(|word| word.split('[').next().unwrap_or(word))
            .filter(|word| !word.is_empty())
            .ok_or_else(malformed)?;
        fields.push(FormatField {
            declaration: declaration.to_string(),
            name: name.to_string(),
            offset: offset.ok_or_else(malformed)?,
            size: size.ok_or_else(malformed)?,
        });
    }
    Ok(fields)
}

/// How a tracepoint's record differs from what a program reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutProblem {
    /// The field the program reads is not in the record.
    NoField {
        field: String,
    },
    NoArgument {
        index: usize,
    },
    Moved {
        field: String,
        expected: (u32, u32),
        found: (u32, u32),
    },
    Unparsable(String),
}

impl fmt::Display for LayoutProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutProblem::NoField { field } => write!(f, "the record has no field {field}, which rtid reads"),
            LayoutProblem::NoArgument { index } => {
                write!(f, "the record has no argument {index} (0-based), which rtid reads")
            }
            LayoutProblem::Moved { field, expected, found } => write!(
                f,
                "field {field} is at offset {}, size {}; rtid reads it at offset {}, size {}",
                found.0, found.1, expected.0, expected.1
            ),
            LayoutProblem::Unparsable(problem) => write!(f, "format file: {problem}"),
        }
    }
}

/// Checks that what `reads` says a program reads sits where it reads it.
pub fn check_layout(fields: &[FormatField], reads: Reads) -> Result<(), LayoutProblem> {
    let record: Vec<&FormatField> =
        fields.iter().filter(|field| !field.name.starts_with("common_") && field.name != "__syscall_nr").collect();
    let at = |field: &FormatField, slot: u32| {
        let expected = (SYSCALL_SLOTS_AT + SYSCALL_SLOT * slot, SYSCALL_SLOT);
        let found = (field.offset, field.size);
        if found == expected {
            Ok(())
        } else {
            Err(LayoutProblem::Moved { field: field.name.clone(), expected, found })
        }
    };
    match reads {
        Reads::Nothing => Ok(()),
        Reads::Return => match record.iter().find(|field| field.name == "ret") {
            Some(field) => at(field, 0),
            None => Err(LayoutProblem::NoField { field: "ret".into() }),
        },
        Reads::Args(indices) => indices.iter().try_for_each(|&index| match record.get(index) {
            Some(field) => at(field, index as u32),
            None => Err(LayoutProblem::NoArgument { index }),
        }),
        // Newer kernels append user-string copies (`__data_loc`) after the arguments.
        Reads::EveryArg => record
            .iter()
            .take_while(|field| !field.declaration.starts_with("__data_loc"))
            .enumerate()
            .try_for_each(|(index, field)| at(field, index as u32)),
    }
}

/// Where tracefs is mounted, among the places aya looks (`/sys/kernel/tracing`
/// first, then debugfs's `tracing` directory), from a mounts table.
pub fn find_tracefs(mounts: &str) -> Option<PathBuf> {
    let mut found = BTreeSet::new();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace().skip(1);
        match (fields.next(), fields.next()) {
            (Some(point @ ("/sys/kernel/tracing" | "/sys/kernel/debug/tracing")), Some("tracefs")) => {
                found.insert(point);
            }
            (Some("/sys/kernel/debug"), Some("debugfs")) => {
                found.insert("/sys/kernel/debug/tracing");
            }
            _ => {}
        }
    }
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|point| found.contains(point) && Path::new(point).join("events").is_dir())
        .map(PathBuf::from)
}

/// Legacy syscalls the generic table (include/uapi/asm-generic/unistd.h) has
/// no number for. arm64 and riscv64 use that table; their kernels still build
/// `__arm64_sys_open` and the like for 32-bit compat tasks, which pass no
/// syscall tracepoint, so the entry point in BTF does not mean a native task
/// can make the call.
const NOT_IN_GENERIC_TABLE: [&str; 2] = ["open", "creat"];

/// Whether the running kernel has `syscall` at all, from the syscall entry
/// points in its BTF (`__x64_sys_open`): arm64 has no open or creat, older
/// kernels no openat2. A tracepoint for a syscall that does not exist is not
/// needed: nothing can call it.
fn kernel_has_syscall(btf: &btf_rs::Btf, syscall: &str) -> bool {
    if cfg!(any(target_arch = "aarch64", target_arch = "riscv64")) && NOT_IN_GENERIC_TABLE.contains(&syscall) {
        return false;
    }
    let entry = if cfg!(target_arch = "x86_64") {
        "__x64_sys_"
    } else if cfg!(target_arch = "aarch64") {
        "__arm64_sys_"
    } else if cfg!(target_arch = "riscv64") {
        "__riscv_sys_"
    } else if cfg!(target_arch = "s390x") {
        "__s390x_sys_"
    } else {
        "sys_"
    };
    [format!("{entry}{syscall}"), format!("__se_sys_{syscall}"), format!("sys_{syscall}")]
        .iter()
        .any(|name| btf.resolve_ids_by_name(name).is_ok_and(|ids| !ids.is_empty()))
}

/// The BTF tracepoint arguments the programs read: (program, argument, struct
/// it points to). identity.rs reads the child of `sched_process_fork`
/// (argument 1) and the task of `sched_process_exit` (0); exec.rs the
/// `linux_binprm` of `sched_process_exec` (2).
const BTF_TRACEPOINT_ARGS: [(&str, usize, &str); 3] = [
    ("sched_process_fork", 1, "task_struct"),
    ("sched_process_exit", 0, "task_struct"),
    ("sched_process_exec", 2, "linux_binprm"),
];

/// Follows typedefs, qualifiers and type tags.
fn strip(btf: &btf_rs::Btf, mut resolved: btf_rs::Type) -> btf_rs::Result<btf_rs::Type> {
    use btf_rs::Type;
    for _ in 0..16 {
        resolved = match &resolved {
            Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                match resolved.as_btf_type() {
                    Some(link) => btf.resolve_chained_type(link)?,
                    None => return Ok(resolved),
                }
            }
            _ => return Ok(resolved),
        };
    }
    Ok(resolved)
}

/// Checks `btf_trace_<program>` against what the program reads: a pointer to
/// a function whose first parameter is the tracepoint's `void *` data, then
/// the tracepoint's arguments.
fn check_btf_tracepoint(
    btf: &btf_rs::Btf,
    program: &ObjectProgram,
    simulate: &Simulation,
    release: &str,
) -> Result<(), CompatError> {
    use btf_rs::Type;
    let type_name = format!("btf_trace_{}", program.name);
    let missing = || CompatError::MissingBtfType { release: release.into(), program: program.reference() };
    if simulate.btf_types.contains(&type_name) {
        return Err(missing());
    }
    let typedef = btf
        .resolve_types_by_name(&type_name)
        .ok()
        .and_then(|types| types.into_iter().find(|candidate| matches!(candidate, Type::Typedef(_))));
    let Some(typedef) = typedef else {
        return Err(missing());
    };
    let Some(&(_, argument, expected)) = BTF_TRACEPOINT_ARGS.iter().find(|(name, ..)| *name == program.name) else {
        return Ok(());
    };
    let wrong = |problem: String| CompatError::BtfTracepointArgument {
        release: release.into(),
        program: program.reference(),
        argument: argument as u32,
        expected,
        problem,
    };
    let unreadable = |error: btf_rs::Error| wrong(format!("cannot be read ({error})"));
    let pointer = strip(btf, typedef).map_err(unreadable)?;
    let Type::Ptr(pointer) = pointer else {
        return Err(wrong("is not a function pointer".into()));
    };
    let Type::FuncProto(prototype) = btf.resolve_chained_type(&pointer).map_err(unreadable)? else {
        return Err(wrong("is not a function pointer".into()));
    };
    // Parameter 0 is the tracepoint's private data.
    let Some(parameter) = prototype.parameters.get(argument + 1) else {
        return Err(wrong(format!("has {} arguments", prototype.parameters.len().saturating_sub(1))));
    };
    let Type::Ptr(pointee) =
        strip(btf, btf.resolve_chained_type(parameter).map_err(unreadable)?).map_err(unreadable)?
    else {
        return Err(wrong(format!("argument {argument} is not a pointer")));
    };
    let target = strip(btf, btf.resolve_chained_type(&pointee).map_err(unreadable)?).map_err(unreadable)?;
    let name = match &target {
        Type::Struct(aggregate) => btf.resolve_name(aggregate).unwrap_or_default(),
        Type::Fwd(declaration) => btf.resolve_name(declaration).unwrap_or_default(),
        other => return Err(wrong(format!("argument {argument} points to a {}", other.name()))),
    };
    if name == expected { Ok(()) } else { Err(wrong(format!("argument {argument} is struct {name} *"))) }
}

/// Where the kernel's BTF came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BtfSource {
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
}

/// A kind of action rtid judges, as `rtid status` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    File,
    Exec,
    Network,
    UnixSocket,
    /// Self-protection: agents' bpf() calls.
    BpfSyscall,
}

impl Action {
    pub fn describe(self) -> &'static str {
        match self {
            Action::File => "file",
            Action::Exec => "exec",
            Action::Network => "network",
            Action::UnixSocket => "unix sockets",
            Action::BpfSyscall => "bpf()",
        }
    }
}

/// An action served by a weaker backend than BPF LSM, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    pub action: Action,
    pub backend: Backend,
    pub reason: String,
}

/// A syscall tracepoint not attached, and why that is fine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedTracepoint {
    pub tracepoint: String,
    pub reason: String,
}

/// What `rtid status` says about the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReport {
    /// `uname -r`.
    pub release: String,
    pub btf: BtfSource,
    #[serde(default)]
    pub fallbacks: Vec<Fallback>,
    #[serde(default)]
    pub skipped_tracepoints: Vec<SkippedTracepoint>,
}

impl KernelReport {
    /// For programs adopted from pins: what the daemon that loaded them chose.
    pub fn adopted(backends: &BackendReport) -> KernelReport {
        KernelReport {
            release: kernel_release(),
            btf: btf_source(Path::new(RUNNING_KERNEL_BTF)).unwrap_or_default(),
            fallbacks: fallbacks(backends, |_| "adopted from pins: as the daemon that loaded them chose".into()),
            skipped_tracepoints: Vec::new(),
        }
    }
}

fn fallbacks(backends: &BackendReport, reason: impl Fn(Family) -> String) -> Vec<Fallback> {
    [
        (Action::File, backends.file, Family::File),
        (Action::Exec, backends.exec, Family::Exec),
        (Action::Network, backends.network, Family::Net),
        (Action::UnixSocket, backends.unix, Family::Net),
        (Action::BpfSyscall, backends.protect, Family::Protect),
    ]
    .into_iter()
    .filter(|(_, backend, _)| *backend != Backend::Lsm)
    .map(|(action, backend, family)| Fallback { action, backend, reason: reason(family) })
    .collect()
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: utsname is arrays of C chars, for which all zeroes is valid.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable utsname for the call.
    if unsafe { libc::uname(&mut name) } != 0 {
        return "(unknown)".into();
    }
    let bytes: Vec<u8> = name.release.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes).map_or_else(|_| "(unknown)".into(), |release| release.to_string_lossy().into())
}

/// The kernel's BTF for a handful of lookups: mapped rather than parsed
/// whole (milliseconds instead of a third of a second), where the kernel lets
/// its BTF file be mapped (6.16 and later).
fn open_btf(path: &Path) -> btf_rs::Result<btf_rs::Btf> {
    btf_rs::Btf::from_file_with_backend(path, btf_rs::Backend::Mmap).or_else(|_| btf_rs::Btf::from_file(path))
}

fn btf_source(path: &Path) -> Option<BtfSource> {
    std::fs::metadata(path).ok().map(|metadata| BtfSource { path: path.to_path_buf(), size: metadata.len() })
}

/// The outcome of the checks: what to refuse later, what falls back, what to report.
#[derive(Debug)]
pub struct Compat {
    release: String,
    btf: BtfSource,
    skipped: Vec<SkippedTracepoint>,
    /// Problems of fallback programs: refused unless BPF LSM serves their family.
    deferred: Vec<(Family, CompatError)>,
    /// LSM programs this kernel cannot run, and why.
    lsm_refused: BTreeMap<String, CompatError>,
    /// Why BPF LSM does not serve a family, as attaching it found.
    lsm_reasons: BTreeMap<Family, String>,
}

/// Checks the running kernel against `object`, with [`SIMULATE_ENV`] applied.
///
/// # Errors
/// The first feature that a program loaded on every kernel needs and this
/// kernel lacks. Missing features of fallback programs are kept for
/// [`Compat::require`], once it is known which ones BPF LSM replaces.
pub fn check(object: &[u8]) -> Result<Compat, CompatError> {
    check_with(object, &Simulation::from_env()?)
}

/// [`check`] with an explicit simulation.
pub fn check_with(object: &[u8], simulate: &Simulation) -> Result<Compat, CompatError> {
    let started = std::time::Instant::now();
    let release = kernel_release();
    let btf_path = Path::new(RUNNING_KERNEL_BTF);
    let source = btf_source(btf_path).filter(|_| !simulate.btf);
    let Some(source) = source else {
        return Err(CompatError::NoBtf { path: btf_path.to_path_buf() });
    };
    let btf = open_btf(btf_path)
        .map_err(|error| CompatError::UnreadableBtf { path: btf_path.to_path_buf(), problem: error.to_string() })?;
    let mut compat = Compat {
        release,
        btf: source,
        skipped: Vec::new(),
        deferred: Vec::new(),
        lsm_refused: BTreeMap::new(),
        lsm_reasons: BTreeMap::new(),
    };
    let mut prober = Prober::default();
    let programs =
        scan_object(object, || prober.probe(ProbeTarget::TRACEPOINT, Helper::PROBE_READ_KERNEL) != Support::Missing)?;
    for program in programs.iter().filter(|program| program.kind == ProgramKind::BtfTracePoint) {
        compat.place(need(program), program, check_btf_tracepoint(&btf, program, simulate, &compat.release))?;
    }
    for program in &programs {
        let target = ProbeTarget::of(program.kind);
        let missing = program.helpers.iter().copied().find(|&helper| {
            simulate.helpers.contains(&helper)
                || target.is_some_and(|target| prober.probe(target, helper) == Support::Missing)
        });
        let result = match missing {
            Some(helper) => Err(CompatError::MissingHelper {
                release: compat.release.clone(),
                helper,
                program: program.reference(),
            }),
            None => Ok(()),
        };
        compat.place(need(program), program, result)?;
    }
    compat.check_syscall_tracepoints(&btf, simulate);
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        probes = prober.cache.len(),
        "kernel features checked"
    );
    Ok(compat)
}

impl Compat {
    /// Refuses now, defers, or records an LSM hook as unusable, as `need` says.
    fn place(
        &mut self,
        need: Need,
        program: &ObjectProgram,
        result: Result<(), CompatError>,
    ) -> Result<(), CompatError> {
        let Err(error) = result else { return Ok(()) };
        match need {
            Need::Always => return Err(error),
            Need::UnlessLsm(family) => self.deferred.push((family, error)),
            Need::LsmHook => {
                self.lsm_refused.entry(program.name.clone()).or_insert(error);
            }
        }
        Ok(())
    }

    fn check_syscall_tracepoints(&mut self, btf: &btf_rs::Btf, simulate: &Simulation) {
        let tracefs = find_tracefs(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default());
        for (program, tracepoints, family) in syscall_attachments() {
            let reference = ProgramRef { kind: ProgramKind::TracePoint, name: program.into() };
            let Some(tracefs) = &tracefs else {
                self.deferred.push((family, CompatError::NoTracefs { program: reference }));
                continue;
            };
            for &tracepoint in tracepoints {
                let format = tracefs.join("events/syscalls").join(tracepoint).join("format");
                let text = if simulate.tracepoints.contains(tracepoint) {
                    None
                } else {
                    std::fs::read_to_string(&format).ok()
                };
                let Some(text) = text else {
                    if is_integrity_fallback(program) {
                        // The integrity fallbacks watch many calls, some
                        // compiled out on a given kernel (modules, kexec)
                        // yet still named in its BTF; the loader attaches
                        // to those this kernel traces.
                        continue;
                    }
                    match self.absent_tracepoint(btf, &reference, tracepoint) {
                        Ok(skipped) => self.skipped.push(skipped),
                        Err(error) => self.deferred.push((family, error)),
                    }
                    continue;
                };
                let checked = parse_format(&text)
                    .map_err(LayoutProblem::Unparsable)
                    .and_then(|fields| check_layout(&fields, reads(program, tracepoint)));
                if let Err(problem) = checked {
                    self.deferred
                        .push((family, CompatError::TracepointLayout { tracepoint: tracepoint.into(), problem }));
                }
            }
        }
    }

    /// A tracepoint this kernel does not list: fine where the syscall does not
    /// exist either (nothing can call it), missing otherwise.
    fn absent_tracepoint(
        &self,
        btf: &btf_rs::Btf,
        program: &ProgramRef,
        tracepoint: &str,
    ) -> Result<SkippedTracepoint, CompatError> {
        let syscall = syscall_of(tracepoint);
        if kernel_has_syscall(btf, syscall) {
            return Err(CompatError::MissingTracepoint {
                release: self.release.clone(),
                tracepoint: tracepoint.into(),
                program: program.clone(),
            });
        }
        Ok(SkippedTracepoint { tracepoint: tracepoint.into(), reason: format!("this kernel has no {syscall} syscall") })
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    /// Why the LSM program `program` cannot run here, if the checks found a reason.
    pub fn lsm_hook_refused(&self, program: &str) -> Option<&CompatError> {
        self.lsm_refused.get(program)
    }

    /// Records why BPF LSM does not serve `family` (the first reason holds).
    pub fn lsm_fell_back(&mut self, family: Family, reason: &str) {
        self.lsm_reasons.entry(family).or_insert_with(|| reason.to_string());
    }

    /// After BPF LSM is attached where it can be: refuses if a fallback
    /// program that is still needed lacks something.
    ///
    /// # Errors
    /// The first missing feature of a fallback program whose family BPF LSM does not serve.
    pub fn require(&self, lsm: &LsmAttachment) -> Result<(), CompatError> {
        match self.deferred.iter().find(|(family, _)| !family.served_by(lsm)) {
            Some((_, error)) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// For `rtid status`.
    pub fn report(&self, backends: &BackendReport) -> KernelReport {
        let reason = |family| {
            self.lsm_reasons.get(&family).cloned().unwrap_or_else(|| "BPF LSM not requested (lsm: off)".into())
        };
        KernelReport {
            release: self.release.clone(),
            btf: self.btf.clone(),
            fallbacks: fallbacks(backends, reason),
            skipped_tracepoints: self.skipped.clone(),
        }
    }
}

/// The kind of the program named `name` in rtid's eBPF object.
fn program_ref(name: &str) -> ProgramRef {
    let kind = aya_obj::Object::parse(super::EBPF_OBJECT)
        .ok()
        .and_then(|object| object.programs.get(name).map(|program| ProgramKind::of(&program.section)))
        .unwrap_or(ProgramKind::Other);
    ProgramRef { kind, name: name.into() }
}

/// The safety net behind the checks: a program the kernel refused because a
/// helper is missing becomes [`CompatError::MissingHelper`] instead of the
/// verifier's log.
pub fn name_refusal(error: LoadError) -> LoadError {
    if let LoadError::Program { program, source: ProgramError::LoadError { verifier_log, .. } } = &error
        && let Some(helper) = missing_helper_in_log(&verifier_log.to_string())
    {
        return LoadError::Compat(CompatError::MissingHelper {
            release: kernel_release(),
            helper,
            program: program_ref(program),
        });
    }
    error
}

/// Why `program` did not load, in one line: the missing helper where the
/// verifier names one, else the syscall's error (the verifier's log goes to
/// the debug log, never into the message).
pub fn describe_refusal(release: &str, program: ProgramRef, error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            if let Some(helper) = missing_helper_in_log(&log) {
                return CompatError::MissingHelper { release: release.into(), helper, program }.to_string();
            }
            if log.trim().is_empty() {
                format!("{program} does not load on this kernel: {io_error}")
            } else {
                tracing::debug!(%program, verifier_log = %log, "verifier refused a program");
                format!("{program} does not load on this kernel: {io_error} (the verifier's log is at debug level)")
            }
        }
        other => format!("{program}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/loader/testdata/tracefs-6.18-x86_64");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}.format")).expect("format fixture")
    }

    fn call(helper: u32) -> bpf_insn {
        instruction(BPF_JMP | BPF_CALL, 0, helper as i32)
    }

    fn with_src(mut instruction: bpf_insn, src: u8) -> bpf_insn {
        instruction.set_src_reg(src);
        instruction
    }

    #[test]
    fn the_instruction_scan_finds_helper_calls_only() {
        let program = [
            call(14),
            // A call of the BPF function 5 instructions on, and of a kernel function: not helpers.
            with_src(call(5), 1),
            with_src(call(9000), 2),
            // A 64-bit immediate load whose second slot, being data, happens to read as `call 77`.
            instruction(BPF_LD | BPF_DW | BPF_IMM, 1, 0),
            call(77),
            call(109),
            call(14),
            instruction(BPF_JMP | BPF_EXIT, 0, 0),
        ];
        assert_eq!(helper_calls(&program), BTreeSet::from([Helper(14), Helper(109)]));
    }

    #[test]
    fn rtids_object_is_scanned_with_the_helpers_of_its_subprograms() {
        let programs = embedded_programs().expect("the embedded object parses");
        let program = |name: &str| programs.iter().find(|program| program.name == name).expect(name);
        for (name, kind) in [
            ("sys_exit_open", ProgramKind::TracePoint),
            ("sched_process_fork", ProgramKind::BtfTracePoint),
            ("file_open", ProgramKind::Lsm),
        ] {
            assert_eq!(program(name).kind, kind, "{name}");
        }
        assert_eq!(program("connect4").kind, ProgramKind::CgroupSockAddr(bpf_attach_type::BPF_CGROUP_INET4_CONNECT));
        let send_signal = Helper::from_name("bpf_send_signal").expect("named");
        assert!(program("sys_exit_open").helpers.contains(&send_signal), "file.rs kills with bpf_send_signal");
        assert!(program("sched_process_exec").helpers.contains(&send_signal), "exec.rs kills with bpf_send_signal");
        // Every program reports through the ring buffer (emit, in events.rs).
        let reserve = Helper::from_name("ringbuf_reserve").expect("named");
        assert!(program("sys_exit_open").helpers.contains(&reserve));
        for program in &programs {
            println!("{}/{}: {:?}", program.kind.prefix(), program.name, program.helpers);
        }
    }

    #[test]
    fn helpers_are_named_and_parsed_from_names() {
        assert_eq!(Helper(109).to_string(), "bpf_send_signal (#109)");
        assert_eq!(Helper(4242).to_string(), "helper #4242");
        assert_eq!(Helper::from_name("bpf_send_signal"), Some(Helper(109)));
        assert_eq!(Helper::from_name("send_signal"), Some(Helper(109)));
        assert_eq!(Helper::from_name("#113"), Some(Helper(113)));
        assert_eq!(Helper::from_name("bpf_no_such_thing"), None);
    }

    #[test]
    fn verifier_logs_naming_a_missing_helper_are_recognised() {
        assert_eq!(
            missing_helper_in_log(
                "0: R1=ctx() R10=fp0\n0: (85) call bpf_d_path#147\nunknown func bpf_d_path#147\nprocessed 1 insns"
            ),
            Some(Helper(147))
        );
        assert_eq!(missing_helper_in_log("5: (85) call unknown#4000\ninvalid func unknown#4000\n"), Some(Helper(4000)));
        assert_eq!(missing_helper_in_log("program of this type cannot use helper bpf_probe_read#4\n"), Some(Helper(4)));
        // An argument complaint means the helper exists.
        assert_eq!(missing_helper_in_log("0: (85) call bpf_send_signal#109\nR1 type=scalar expected=ctx\n"), None);
        assert_eq!(missing_helper_in_log(""), None);
    }

    #[test]
    fn probes_tell_present_helpers_from_absent_ones_on_the_running_kernel() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading probe programs needs root");
            return;
        }
        let mut prober = Prober::default();
        let send_signal = Helper(bpf_func_id::BPF_FUNC_send_signal as u32);
        let d_path = Helper(bpf_func_id::BPF_FUNC_d_path as u32);
        let pid_tgid = Helper(bpf_func_id::BPF_FUNC_get_current_pid_tgid as u32);
        assert_eq!(prober.probe(ProbeTarget::TRACEPOINT, send_signal), Support::Available);
        assert_eq!(prober.probe(ProbeTarget::TRACEPOINT, pid_tgid), Support::Available);
        // bpf_d_path is for LSM and some fentry programs only.
        assert_eq!(prober.probe(ProbeTarget::TRACEPOINT, d_path), Support::Missing);
        // Past the last helper any kernel has.
        assert_eq!(prober.probe(ProbeTarget::TRACEPOINT, Helper(100_000)), Support::Missing);
        let connect4 =
            ProbeTarget::of(ProgramKind::CgroupSockAddr(bpf_attach_type::BPF_CGROUP_INET4_CONNECT)).expect("probed");
        assert_eq!(prober.probe(connect4, pid_tgid), Support::Available);
        assert_eq!(prober.probe(connect4, d_path), Support::Missing);
        assert_eq!(prober.cache.len(), 6, "one probe per (program type, helper)");

        // The kernel's own words for a missing helper are what the log parser reads.
        let mut log = vec![0u8; 64 * 1024];
        let program = [
            instruction(BPF_JMP | BPF_CALL, 0, d_path.0 as i32),
            instruction(BPF_ALU64 | BPF_MOV | BPF_K, 0, 1),
            instruction(BPF_JMP | BPF_EXIT, 0, 0),
        ];
        assert!(load_program(ProbeTarget::TRACEPOINT, &program, &mut log).is_err(), "refused");
        let log = log_text(&log);
        assert_eq!(missing_helper_in_log(&log), Some(d_path), "{log}");
    }

    #[test]
    fn a_verifier_refusal_for_a_missing_helper_is_named_and_others_pass_through() {
        let refusal = |errno: i32, log: &str| ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(log.into()),
        };
        let refused = |log: &str| LoadError::Program { program: "sys_exit_open", source: refusal(libc::EINVAL, log) };
        let missing = "func#0 @0\n0: R1=ctx() R10=fp0\n0: (85) call bpf_send_signal#109\n\
                       unknown func bpf_send_signal#109\nprocessed 1 insns (limit 1000000) max_states_per_insn 0\n";
        let invalid = "0: R1=ctx()\nR1 invalid mem access 'scalar'\nprocessed 2 insns\n";

        let named = name_refusal(refused(missing));
        assert_eq!(
            named.to_string(),
            format!(
                "kernel {} lacks helper bpf_send_signal (#109) for tracepoint/sys_exit_open programs",
                kernel_release()
            )
        );
        let other = name_refusal(refused(invalid));
        assert!(matches!(other, LoadError::Program { program: "sys_exit_open", .. }), "{other}");

        // The LSM fallback's reason: the helper, or one line without the log.
        let hook = ProgramRef { kind: ProgramKind::Lsm, name: "file_open".into() };
        assert_eq!(
            describe_refusal("6.1.0-1", hook.clone(), &refusal(libc::EINVAL, missing)),
            "kernel 6.1.0-1 lacks helper bpf_send_signal (#109) for lsm/file_open programs"
        );
        let line = describe_refusal("6.1.0-1", hook, &refusal(libc::EACCES, invalid));
        assert!(line.starts_with("lsm/file_open does not load on this kernel: "), "{line}");
        assert!(!line.contains("R1") && !line.contains("processed "), "no verifier log: {line}");
    }

    #[test]
    fn format_files_parse_into_fields() {
        let fields = parse_format(&fixture("sys_enter_connect")).expect("parses");
        let names: Vec<&str> = fields.iter().map(|field| field.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "__syscall_nr",
                "fd",
                "uservaddr",
                "addrlen"
            ]
        );
        let uservaddr = &fields[6];
        assert_eq!(uservaddr.declaration, "struct sockaddr * uservaddr");
        assert_eq!((uservaddr.offset, uservaddr.size), (24, 8));
        let exit = parse_format(&fixture("sys_exit_openat")).expect("parses");
        assert_eq!(exit.last().map(|field| (field.name.as_str(), field.offset, field.size)), Some(("ret", 16, 8)));
        assert!(parse_format("format:\n\tfield:int x;\toffset:zero;\tsize:4;\n").is_err());
        let arrays = parse_format("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n").expect("parses");
        assert_eq!(arrays[0].name, "comm");
    }

    #[test]
    fn this_hosts_syscall_records_are_laid_out_as_the_programs_read_them() {
        let connect = parse_format(&fixture("sys_enter_connect")).expect("parses");
        assert_eq!(check_layout(&connect, reads("sys_enter_connect", "sys_enter_connect")), Ok(()));
        let sendto = parse_format(&fixture("sys_enter_sendto")).expect("parses");
        assert_eq!(check_layout(&sendto, reads("sys_enter_sendto", "sys_enter_sendto")), Ok(()));
        assert_eq!(check_layout(&sendto, Reads::EveryArg), Ok(()));
        let exit = parse_format(&fixture("sys_exit_openat")).expect("parses");
        assert_eq!(check_layout(&exit, reads("sys_exit_open", "sys_exit_openat")), Ok(()));
        let bpf = parse_format(&fixture("sys_enter_bpf")).expect("parses");
        assert_eq!(check_layout(&bpf, reads("sys_enter_bpf", "sys_enter_bpf")), Ok(()));
    }

    #[test]
    fn a_moved_or_missing_field_is_named() {
        // sendto's addr_len moved to a 4-byte slot.
        let moved = fixture("sys_enter_sendto")
            .replace("int addr_len;\toffset:56;\tsize:8", "int addr_len;\toffset:56;\tsize:4");
        let fields = parse_format(&moved).expect("parses");
        let problem = check_layout(&fields, reads("sys_enter_sendto", "sys_enter_sendto")).expect_err("moved");
        assert_eq!(problem, LayoutProblem::Moved { field: "addr_len".into(), expected: (56, 8), found: (56, 4) });
        assert_eq!(problem.to_string(), "field addr_len is at offset 56, size 4; rtid reads it at offset 56, size 8");
        // connect with only two arguments: addrlen (argument 2) is gone.
        let short: String = fixture("sys_enter_connect")
            .lines()
            .filter(|line| !line.contains("addrlen;"))
            .collect::<Vec<_>>()
            .join("\n");
        let fields = parse_format(&short).expect("parses");
        assert_eq!(
            check_layout(&fields, reads("sys_enter_connect", "sys_enter_connect")),
            Err(LayoutProblem::NoArgument { index: 2 })
        );
        let no_ret = fixture("sys_exit_openat").replace("long ret;", "long result;");
        let fields = parse_format(&no_ret).expect("parses");
        assert_eq!(check_layout(&fields, Reads::Return), Err(LayoutProblem::NoField { field: "ret".into() }));
        let error = CompatError::TracepointLayout {
            tracepoint: "sys_exit_openat".into(),
            problem: LayoutProblem::NoField { field: "ret".into() },
        };
        assert_eq!(
            error.to_string(),
            "tracepoint syscalls/sys_exit_openat: the record has no field ret, which rtid reads"
        );
    }

    #[test]
    fn tracefs_is_found_from_the_mounts_table() {
        let mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw,relatime 0 0\n";
        let running = find_tracefs(&std::fs::read_to_string("/proc/self/mounts").expect("mounts"));
        if Path::new("/sys/kernel/tracing/events").is_dir() {
            assert_eq!(find_tracefs(mounts), Some(PathBuf::from("/sys/kernel/tracing")));
            assert!(running.is_some(), "tracefs is mounted on this host (cargo xtask setup mounts it)");
        }
        assert_eq!(find_tracefs("sysfs /sys sysfs rw 0 0\n"), None);
        assert_eq!(find_tracefs("none /tmp/tracing tracefs rw 0 0\n"), None, "aya looks only in the usual places");
    }

    #[test]
    fn simulations_parse_and_typos_are_refused() {
        let simulation =
            Simulation::parse("btf, helper:bpf_send_signal,tracepoint:syscalls/sys_enter_connect,btf-type:btf_trace_x")
                .expect("parses");
        assert!(simulation.btf);
        assert_eq!(simulation.helpers, BTreeSet::from([Helper(109)]));
        assert_eq!(simulation.tracepoints, BTreeSet::from(["sys_enter_connect".to_string()]));
        assert_eq!(simulation.btf_types, BTreeSet::from(["btf_trace_x".to_string()]));
        assert_eq!(Simulation::parse("").expect("empty"), Simulation::default());
        for typo in ["bft", "helper:bpf_no_such_helper", "tracepoints:sys_enter_connect"] {
            assert!(matches!(Simulation::parse(typo), Err(CompatError::BadSimulation { .. })), "{typo}");
        }
    }

    #[test]
    fn the_running_kernel_passes_and_each_simulated_absence_is_named() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: probing helpers needs root");
            return;
        }
        let object = super::super::EBPF_OBJECT;
        let compat = check_with(object, &Simulation::default()).expect("this host has what rtid needs");
        assert!(compat.deferred.is_empty(), "nothing missing: {:?}", compat.deferred);
        assert_eq!(compat.release, kernel_release());

        let simulated = |spec: &str| check_with(object, &Simulation::parse(spec).expect("simulation"));
        let error = simulated("btf").expect_err("no BTF");
        assert_eq!(
            error.to_string(),
            "this kernel has no BTF (/sys/kernel/btf/vmlinux missing; needs CONFIG_DEBUG_INFO_BTF=y)"
        );
        let error = simulated("btf-type:btf_trace_sched_process_fork").expect_err("no fork tracepoint");
        assert!(
            matches!(&error, CompatError::MissingBtfType { program, .. } if program.name == "sched_process_fork"),
            "{error}"
        );
        // sched_process_exec (tp_btf, always loaded) kills with bpf_send_signal: refused at once.
        let error = simulated("helper:bpf_send_signal").expect_err("no bpf_send_signal");
        assert!(
            error.to_string().contains("lacks helper bpf_send_signal (#109) for tp_btf/sched_process_exec programs"),
            "{error}"
        );
        // The AF_UNIX tracepoint is needed only without BPF LSM: kept for `require`.
        let compat = simulated("tracepoint:sys_enter_connect").expect("deferred");
        let without_lsm = LsmAttachment::default();
        let error = compat.require(&without_lsm).expect_err("needed without LSM");
        assert!(
            error.to_string().contains("no tracepoint syscalls/sys_enter_connect although it has the connect syscall")
        );
        let with_lsm = LsmAttachment { net: true, ..LsmAttachment::default() };
        assert_eq!(compat.require(&with_lsm), Ok(()), "BPF LSM socket hooks replace it");
    }

    #[test]
    fn btf_tracepoints_are_checked_against_the_arguments_read() {
        let btf = open_btf(Path::new(RUNNING_KERNEL_BTF)).expect("kernel BTF");
        let release = kernel_release();
        let program = |name: &str| ObjectProgram {
            name: name.into(),
            kind: ProgramKind::BtfTracePoint,
            helpers: BTreeSet::new(),
        };
        for (name, ..) in BTF_TRACEPOINT_ARGS {
            assert_eq!(check_btf_tracepoint(&btf, &program(name), &Simulation::default(), &release), Ok(()), "{name}");
        }
        let error = check_btf_tracepoint(&btf, &program("sched_no_such_event"), &Simulation::default(), &release)
            .expect_err("absent");
        assert!(
            error
                .to_string()
                .ends_with("has no btf_trace_sched_no_such_event, which tp_btf/sched_no_such_event attaches to")
        );
    }

    #[test]
    fn an_absent_tracepoint_is_skipped_only_where_its_syscall_is_absent_too() {
        let btf = open_btf(Path::new(RUNNING_KERNEL_BTF)).expect("kernel BTF");
        assert!(kernel_has_syscall(&btf, "connect"));
        assert!(kernel_has_syscall(&btf, "openat"));
        assert!(!kernel_has_syscall(&btf, "no_such_syscall_rtid"));

        let compat = Compat {
            release: "6.18.0-test".into(),
            btf: BtfSource::default(),
            skipped: Vec::new(),
            deferred: Vec::new(),
            lsm_refused: BTreeMap::new(),
            lsm_reasons: BTreeMap::new(),
        };
        let program = ProgramRef { kind: ProgramKind::TracePoint, name: "sys_exit_open".into() };
        // As sys_exit_open is on arm64, which has no open syscall.
        let skipped = compat.absent_tracepoint(&btf, &program, "sys_exit_no_such_syscall_rtid").expect("skipped");
        assert_eq!(skipped.reason, "this kernel has no no_such_syscall_rtid syscall");
        let missing = compat.absent_tracepoint(&btf, &program, "sys_exit_openat").expect_err("openat exists");
        assert_eq!(
            missing.to_string(),
            "kernel 6.18.0-test has no tracepoint syscalls/sys_exit_openat although it has the openat syscall; \
             tracepoint/sys_exit_open needs it to judge file opens without BPF LSM (CONFIG_FTRACE_SYSCALLS=y)"
        );
    }
}
