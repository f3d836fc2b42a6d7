//! Probing and attaching the BPF LSM programs. BPF LSM works only where the
//! kernel was built with it, lists `bpf` among its active LSMs, and permits
//! trampolines; each hook is tried on its own and falls back independently.

use aya::{Btf, Ebpf, programs::Lsm};
use rtid_common::{Backend, BackendConfig};

use super::BackendReport;

const FILE_HOOKS: [&str; 1] = ["file_open"];
const EXEC_HOOKS: [&str; 1] = ["bprm_check_security"];
const NET_HOOKS: [&str; 2] = ["socket_connect", "socket_sendmsg"];
const PROTECT_HOOKS: [&str; 1] = ["bpf"];

/// Which hook families LSM enforces, and why not where it does not.
#[derive(Clone, Debug, Default)]
pub struct LsmAttachment {
    pub file: bool,
    pub exec: bool,
    pub net: bool,
    /// `lsm/bpf` refuses the bpf() syscall to tagged processes.
    pub protect: bool,
    pub reason: Option<String>,
}

impl LsmAttachment {
    pub fn all(&self) -> bool {
        self.file && self.exec && self.net && self.protect
    }

    pub fn config(&self) -> BackendConfig {
        BackendConfig { lsm_file: self.file as u32, lsm_exec: self.exec as u32, lsm_net: self.net as u32 }
    }

    pub fn report(&self) -> BackendReport {
        BackendReport {
            file: if self.file { Backend::Lsm } else { Backend::Tracepoint },
            exec: if self.exec { Backend::Lsm } else { Backend::Tracepoint },
            network: if self.net { Backend::Lsm } else { Backend::CgroupSock },
        }
    }
}

/// Whether `bpf` is in the kernel's active LSM list, and the list itself.
fn bpf_lsm_active() -> Result<(), String> {
    let path = "/sys/kernel/security/lsm";
    match std::fs::read_to_string(path) {
        Ok(list) if list.trim().split(',').any(|name| name == "bpf") => Ok(()),
        Ok(list) => Err(format!(
            "BPF LSM is not among the active LSMs ({}); add `lsm={},bpf` to the kernel command line",
            list.trim(),
            list.trim()
        )),
        Err(error) => Err(format!("cannot read {path} ({error}); is securityfs mounted?")),
    }
}

pub fn attach(ebpf: &mut Ebpf, btf: &Btf, pins: &super::pins::Pinner) -> LsmAttachment {
    if let Err(reason) = bpf_lsm_active() {
        return LsmAttachment { reason: Some(reason), ..LsmAttachment::default() };
    }
    let mut reasons = Vec::new();
    let mut family = |hooks: &[&str]| -> bool {
        hooks.iter().all(|hook| match attach_one(ebpf, btf, hook, pins) {
            Ok(()) => true,
            Err(reason) => {
                reasons.push(reason);
                false
            }
        })
    };
    let file = family(&FILE_HOOKS);
    let exec = family(&EXEC_HOOKS);
    let net = family(&NET_HOOKS);
    let protect = family(&PROTECT_HOOKS);
    let reason = if reasons.is_empty() { None } else { Some(reasons.join("; ")) };
    LsmAttachment { file, exec, net, protect, reason }
}

fn attach_one(ebpf: &mut Ebpf, btf: &Btf, hook: &str, pins: &super::pins::Pinner) -> Result<(), String> {
    let program: &mut Lsm = ebpf
        .program_mut(hook)
        .ok_or_else(|| format!("lsm/{hook} missing from the eBPF object"))?
        .try_into()
        .map_err(|error| format!("lsm/{hook}: {error}"))?;
    program.load(hook, btf).map_err(|error| format!("lsm/{hook} does not load on this kernel: {error}"))?;
    let link = program.attach().map_err(|error| format!("lsm/{hook} does not attach: {error}"))?;
    if pins.enabled() {
        let link = program.take_link(link).map_err(|error| format!("lsm/{hook}: {error}"))?;
        pins.pin_link(hook, link.into()).map_err(|error| error.to_string())?;
    }
    Ok(())
}
