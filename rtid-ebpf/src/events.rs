//! Writing events into the ring buffer, in place (an `Event` is larger than
//! the BPF stack). A full ring drops the event and counts it; enforcement
//! never waits for ring space.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    generated::{bpf_get_current_comm as bpf_get_current_comm_raw, bpf_probe_read_kernel},
};
use rtid_common::{
    Backend, DecisionSource, EVENT_PATH_BYTES, EVENT_WIRE_VERSION, Event, EventKind, NetObject, Verdict, counter,
};

/// `sizeof(sockaddr_un.sun_path)`.
pub const UNIX_PATH_BYTES: usize = 108;

use crate::{
    judge::{Decision, Enforcement},
    kernel::current_task,
    maps::offset,
    maps::{EVENTS, count},
    path::{PathScratch, ResolvedPath, opaque},
};

/// The fields of an event that vary by hook.
pub struct EventFacts {
    pub kind: EventKind,
    pub backend: Backend,
    pub identity: u32,
    pub generation: u32,
    pub access: u8,
    pub related_tgid: u32,
    /// `Event::detail`: capability number, file change, or target tgid.
    pub detail: u32,
}

/// A lifecycle event carries no decision.
pub const LIFECYCLE: (Decision, Enforcement) = (
    Decision { verdict: Verdict::Allow, source: DecisionSource::Lifecycle, rule_id: 0 },
    Enforcement { outcome: rtid_common::Outcome::Allowed, errno: 0, kill: false, flags: 0 },
);

/// The object of the action.
pub enum EventObject<'a> {
    None,
    Path(&'a mut PathScratch, ResolvedPath),
    Net(&'a NetObject),
    /// A unix socket path already copied into the scratch prefix key.
    UnixPath(&'a mut PathScratch, usize),
}

/// Reads `current->{first}->{second}` (a pointer, then `size` bytes) into `destination`.
///
/// # Safety
/// `destination` must be valid for `size` bytes.
#[inline(always)]
unsafe fn read_chain_into(destination: *mut u8, size: u32, first: usize, second: usize) {
    let mut pointer: u64 = 0;
    // SAFETY: the helper validates the kernel source address and writes
    // `size` bytes (zeros on failure) to destinations the caller vouches for.
    unsafe {
        bpf_probe_read_kernel(
            &mut pointer as *mut u64 as *mut _,
            8,
            (current_task() as *const u8).wrapping_add(first) as *const _,
        );
        bpf_probe_read_kernel(destination as *mut _, size, (pointer as *const u8).wrapping_add(second) as *const _);
    }
}

#[inline(always)]
pub fn emit(facts: &EventFacts, decision: &Decision, enforcement: &Enforcement, object: EventObject) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::RING_FULL);
        return;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `event` points at a reserved, exclusively owned ring slot of
    // size_of::<Event>(); every write below stays inside it.
    unsafe {
        (*event).version = EVENT_WIRE_VERSION;
        (*event).kind = facts.kind as u8;
        (*event).verdict = decision.verdict as u8;
        (*event).outcome = enforcement.outcome as u8;
        (*event).backend = facts.backend as u8;
        (*event).decision = decision.source as u8;
        (*event).access = facts.access;
        (*event).flags = enforcement.flags;
        (*event).errno = enforcement.errno;
        (*event).time_ns = bpf_ktime_get_boot_ns();
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        // Straight-line reads into the event (a failed read leaves zeros):
        // error branches here would be verified once per state reaching emit.
        read_chain_into(
            &mut (*event).parent_tgid as *mut u32 as *mut u8,
            4,
            offset!(task_real_parent),
            offset!(task_tgid),
        );
        (*event).uid = bpf_get_current_uid_gid() as u32;
        (*event).identity = facts.identity;
        (*event).rule_id = decision.rule_id;
        read_chain_into(
            &mut (*event).process_start_ns as *mut u64 as *mut u8,
            8,
            offset!(task_group_leader),
            offset!(task_start_boottime),
        );
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).related_tgid = facts.related_tgid;
        (*event).generation = facts.generation;
        (*event).detail = facts.detail;
        (*event)._reserved = 0;
        bpf_get_current_comm_raw((*event).comm.as_mut_ptr() as *mut _, 16);
        (*event).path_len = 0;
        (*event).net = NetObject::default();
        match object {
            EventObject::None => {}
            EventObject::Net(net) => (*event).net = *net,
            EventObject::Path(scratch, resolved) => {
                let len = if resolved.len > EVENT_PATH_BYTES { EVENT_PATH_BYTES } else { resolved.len };
                // An opaque value masked here: the verifier must see the size
                // bounded, and the compiler would drop a mask it can prove redundant.
                let size = (opaque(scratch, len.saturating_sub(1)) & (EVENT_PATH_BYTES - 1)) + 1;
                bpf_probe_read_kernel(
                    (*event).path.as_mut_ptr() as *mut _,
                    size as u32,
                    scratch.buf.as_ptr().add(resolved.start & 4095) as *const _,
                );
                (*event).path_len = size as u16;
                if resolved.len > EVENT_PATH_BYTES {
                    (*event).flags |= rtid_common::event_flags::PATH_TRUNCATED;
                }
                if resolved.unresolved {
                    (*event).flags |= rtid_common::event_flags::PATH_UNRESOLVED;
                }
            }
            EventObject::UnixPath(scratch, len) => {
                let len = opaque(scratch, len) & 0x7f;
                bpf_probe_read_kernel(
                    (*event).path.as_mut_ptr() as *mut _,
                    len as u32,
                    scratch.prefix_key.data.path.as_ptr() as *const _,
                );
                (*event).path_len = len as u16;
                (*event).flags |= rtid_common::event_flags::UNIX_SOCKET;
            }
        }
    }
    entry.submit(0);
}
