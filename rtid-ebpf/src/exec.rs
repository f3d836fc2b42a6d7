//! Exec of a tagged process, judged on the binary the kernel is executing
//! (`bprm->file`, a resolved path). On kernels without BPF LSM the exec point
//! of no return has passed when this fires, but the new image has not run an
//! instruction: SIGKILL here is delivered before the return to user space.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use rtid_common::{Backend, EventKind, ProcessIdentity, SELECTOR_RULESET, SIGKILL, access, counter, label_source};

use crate::{
    events::{EventFacts, EventObject, emit},
    identity::bound_cgroup_identity,
    judge::{Enforcement, active_policy, decide_path_action, enforce_for, identity_of},
    kernel::{KernelPtr, ReadError, binprm_file, current_task, file_path, offsets_valid, process_start_ns},
    maps::{BACKEND_CONFIG, EXEC_SELECTORS, PROCESS_IDENTITY, RUNTIME_STATE, count},
    path::{build_keys, resolve, scratch},
};

/// include/trace/events/sched.h:
/// `TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    if try_sched_process_exec(&ctx).is_err() {
        count(counter::HOOK_ERROR);
    }
    0
}

fn try_sched_process_exec(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let bprm: KernelPtr = ctx.arg(2);
    let process = match identity_of(tgid) {
        Some(process) => process,
        None => match bound_cgroup_identity() {
            // Moved into a bound cgroup since it was forked: tag it now, before the new image runs.
            Some(identity) => tag_current(tgid, identity, label_source::CGROUP)?,
            None => match selected_identity(bprm)? {
                Some(identity) => tag_current(tgid, identity, label_source::SELECTOR)?,
                None => return Ok(()),
            },
        },
    };
    if BACKEND_CONFIG.get(0).is_some_and(|config| config.lsm_exec != 0) {
        // bprm_check_security judged this exec already, before the point of no return.
        return Ok(());
    }
    if !offsets_valid() {
        return Err(ReadError);
    }
    let enforcement = judge_exec(&process, bprm, Backend::Tracepoint)?;
    if enforcement.kill {
        // SAFETY: the helper signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    Ok(())
}

/// The identity an exec selector assigns to this binary, if any. Only
/// resolves the path when selectors exist, so untagged execs stay cheap.
fn selected_identity(bprm: KernelPtr) -> Result<Option<u32>, ReadError> {
    let selectors = RUNTIME_STATE.get(0).is_some_and(|state| state.exec_selectors != 0);
    if !selectors || !offsets_valid() {
        return Ok(None);
    }
    let (mnt, dentry) = file_path(binprm_file(bprm)?)?;
    let scratch = scratch().ok_or(ReadError)?;
    let resolved = resolve(scratch, mnt, dentry)?;
    build_keys(scratch, &resolved, SELECTOR_RULESET);
    Ok(EXEC_SELECTORS.get(&scratch.prefix_key).copied())
}

fn tag_current(tgid: u32, identity: u32, source: u32) -> Result<ProcessIdentity, ReadError> {
    let start = process_start_ns(current_task())?;
    let entry = ProcessIdentity { identity, source, start_boottime_ns: start };
    if PROCESS_IDENTITY.insert(&tgid, &entry, 0).is_err() {
        count(counter::PROCESS_TABLE_FULL);
    }
    Ok(entry)
}

/// Judges the exec of `bprm->file` by a tagged process and reports it (execs
/// of identified processes are always reported). Shared with LSM `bprm_check_security`.
#[inline(always)]
pub fn judge_exec(process: &ProcessIdentity, bprm: KernelPtr, backend: Backend) -> Result<Enforcement, ReadError> {
    count(counter::JUDGED);
    let (mnt, dentry) = file_path(binprm_file(bprm)?)?;
    let scratch = scratch().ok_or(ReadError)?;
    let resolved = resolve(scratch, mnt, dentry)?;

    let active = active_policy(process.identity);
    let decision = decide_path_action(process, &active, scratch, &resolved, access::EXEC, active.policy.default_exec);
    let enforcement = enforce_for(process.identity, &decision, &active, backend == Backend::Lsm);
    let facts = EventFacts {
        kind: EventKind::Exec,
        backend,
        identity: process.identity,
        generation: active.generation,
        access: access::EXEC,
        related_tgid: 0,
        detail: 0,
    };
    emit(&facts, &decision, &enforcement, EventObject::Path(scratch, resolved));
    Ok(enforcement)
}
