//! Identity across the process lifecycle: children inherit their parent's
//! identity at fork, before they first run; entries leave with the process.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_send_signal},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use rtid_common::{
    Backend, EventKind, ProcessIdentity, SIGKILL, UNTAGGABLE_SHARED_FILES, counter, label_source, protection,
};

use crate::{
    events::{EventFacts, EventObject, LIFECYCLE, emit},
    judge::{active_policy, identity_of},
    kernel::{
        KernelPtr, ReadError, current_task, offsets_valid, process_start_ns, read_ptr, task_pid, task_tgid,
        thread_group_dead,
    },
    maps::{BACKEND_CONFIG, CGROUP_IDENTITY, PROCESS_IDENTITY, RUNTIME_STATE, UNTAGGABLE, count, offset},
    protect::{protected_decision, protected_enforcement},
};

/// Cgroup levels searched for a bound ancestor.
const MAX_CGROUP_DEPTH: i32 = 16;

/// include/trace/events/sched.h:
/// `TP_PROTO(struct task_struct *parent, struct task_struct *child)`.
/// Fires in kernel_clone after copy_process and before wake_up_new_task, so the
/// child is tagged before it runs a single instruction.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sched_process_fork(&ctx);
    0
}

fn try_sched_process_fork(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let child: KernelPtr = ctx.arg(1);
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let inherited = match identity_of(parent_tgid) {
        Some(parent) => Some((parent.identity, label_source::INHERITED)),
        None => bound_cgroup_identity().map(|identity| (identity, label_source::CGROUP)),
    };
    let Some((identity, source)) = inherited else {
        return Ok(());
    };
    if !offsets_valid() {
        return Err(ReadError);
    }
    let child_pid = task_pid(child)?;
    let child_tgid = task_tgid(child)?;
    if child_pid != child_tgid {
        // A new thread: it acts under its process's entry.
        return Ok(());
    }
    if shares_descriptor_table(child)? {
        // Where opens are judged at syscall exit, a killed opener's descriptor
        // sits in the table: a process sharing it must never run. Killed in
        // its own context on its way back from fork (`sys_exit_fork`).
        if UNTAGGABLE.insert(&child_tgid, &(identity | UNTAGGABLE_SHARED_FILES), 0).is_err() {
            count(counter::HOOK_ERROR);
        }
    }
    let start = process_start_ns(child)?;
    let entry = ProcessIdentity { identity, source, start_boottime_ns: start };
    if PROCESS_IDENTITY.insert(&child_tgid, &entry, 0).is_err() {
        // Fail closed: the child must not run untagged. It is killed in its
        // own context on its way back from fork (`sys_exit_fork`), before its
        // first user-space instruction.
        count(counter::PROCESS_TABLE_FULL);
        if UNTAGGABLE.insert(&child_tgid, &identity, 0).is_err() {
            count(counter::HOOK_ERROR);
        }
        return Ok(());
    }
    let active = active_policy(identity);
    let facts = EventFacts {
        kind: EventKind::ProcessStart,
        backend: Backend::None,
        identity,
        generation: active.generation,
        access: 0,
        related_tgid: child_tgid,
        detail: 0,
    };
    emit(&facts, &LIFECYCLE.0, &LIFECYCLE.1, EventObject::None);
    Ok(())
}

/// A new process sharing the forking task's descriptor table (CLONE_FILES
/// without CLONE_THREAD), on a backend that judges opens after the fact.
#[inline(always)]
fn shares_descriptor_table(child: KernelPtr) -> Result<bool, ReadError> {
    if BACKEND_CONFIG.get(0).is_some_and(|config| config.lsm_file != 0) {
        // BPF LSM refuses opens before a descriptor exists.
        return Ok(false);
    }
    Ok(read_ptr(child, offset!(task_files))? == read_ptr(current_task(), offset!(task_files))?)
}

/// The identity bound to the caller's cgroup or its nearest bound ancestor.
/// Only searched when a binding exists, so untagged forks pay one array read.
#[inline(always)]
pub fn bound_cgroup_identity() -> Option<u32> {
    let state = RUNTIME_STATE.get(0)?;
    if state.cgroup_bindings == 0 {
        return None;
    }
    let mut found = None;
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: the helper has no preconditions; it returns 0 past the leaf.
        let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if cgroup == 0 {
            break;
        }
        // SAFETY: copied out at once.
        if let Some(identity) = unsafe { CGROUP_IDENTITY.get(&cgroup) } {
            // Deeper bindings win: keep looking down the hierarchy.
            found = Some(*identity);
        }
    }
    found
}

/// include/trace/events/sched.h: `TP_PROTO(struct task_struct *p)` (6.12 and
/// older) or `TP_PROTO(struct task_struct *p, bool group_dead)` (6.18). Only
/// the first argument is read; whether the whole group died comes from
/// `signal->live`, which works on both.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sched_process_exit(&ctx);
    0
}

fn try_sched_process_exit(ctx: &BtfTracePointContext) -> Result<(), ReadError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(process) = identity_of(tgid) else {
        // A child killed before it reached `sys_exit_fork` leaves no entry for
        // a later process with its pid to be killed by.
        let _ = UNTAGGABLE.remove(&tgid);
        return Ok(());
    };
    let task: KernelPtr = ctx.arg(0);
    if !thread_group_dead(task)? {
        return Ok(());
    }
    // Removed before the pid can be reused: a new process with this pid starts untagged.
    let _ = PROCESS_IDENTITY.remove(&tgid);
    let active = active_policy(process.identity);
    let facts = EventFacts {
        kind: EventKind::Exit,
        backend: Backend::None,
        identity: process.identity,
        generation: active.generation,
        access: 0,
        related_tgid: 0,
        detail: 0,
    };
    emit(&facts, &LIFECYCLE.0, &LIFECYCLE.1, EventObject::None);
    Ok(())
}

/// syscalls/sys_exit_{clone,clone3,fork,vfork}: `long ret`. A new process
/// passes here first, returning 0 from fork in its own context (ret_from_fork
/// takes the syscall exit path); a child the full process table could not
/// tag is killed here, before its first user-space instruction. Every fork on
/// the node pays one lookup in a map that is empty unless the table filled.
#[tracepoint(category = "syscalls", name = "sys_exit_clone")]
pub fn sys_exit_fork(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(marked) = (unsafe { UNTAGGABLE.get(&tgid) }).copied() else {
        return 0;
    };
    // SAFETY: signals the current task; no memory is involved.
    unsafe { bpf_send_signal(SIGKILL) };
    let _ = UNTAGGABLE.remove(&tgid);
    let identity = marked & !UNTAGGABLE_SHARED_FILES;
    let guard = if marked & UNTAGGABLE_SHARED_FILES != 0 {
        protection::SHARED_FILES
    } else {
        count(counter::UNTAGGABLE_KILLED);
        protection::CAPACITY
    };
    let active = active_policy(identity);
    let facts = EventFacts {
        kind: EventKind::ProcessStart,
        backend: Backend::Tracepoint,
        identity,
        generation: active.generation,
        access: 0,
        related_tgid: tgid,
        detail: 0,
    };
    emit(&facts, &protected_decision(guard), &protected_enforcement(false), EventObject::None);
    0
}
