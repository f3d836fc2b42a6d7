//! Reading kernel structures at offsets taken from BTF at load time.
//!
//! Every read goes through `bpf_probe_read_kernel`, which never faults: a bad
//! pointer yields an error, and the hook then judges by what it could read.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::maps::offset;

pub type KernelPtr = *const u8;

/// Error from a kernel read; hooks count it and fall back to the default.
#[derive(Clone, Copy)]
pub struct ReadError;

/// Reads a `T` at `base + offset`.
#[inline(always)]
pub fn read_at<T>(base: KernelPtr, offset: usize) -> Result<T, ReadError> {
    if base.is_null() {
        return Err(ReadError);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and copies into a
    // local; it never dereferences `base` directly.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T) }.map_err(|_| ReadError)
}

#[inline(always)]
pub fn read_ptr(base: KernelPtr, offset: usize) -> Result<KernelPtr, ReadError> {
    let pointer: u64 = read_at(base, offset)?;
    if pointer == 0 { Err(ReadError) } else { Ok(pointer as KernelPtr) }
}

#[inline(always)]
pub fn current_task() -> KernelPtr {
    // SAFETY: the helper has no preconditions; it returns the running task.
    unsafe { bpf_get_current_task() as KernelPtr }
}

/// `task->pid` (thread id).
#[inline(always)]
pub fn task_pid(task: KernelPtr) -> Result<u32, ReadError> {
    read_at(task, offset!(task_pid))
}

/// `task->tgid` (process id).
#[inline(always)]
pub fn task_tgid(task: KernelPtr) -> Result<u32, ReadError> {
    read_at(task, offset!(task_tgid))
}

/// Start time of the task's process (its group leader) on the boot clock: with
/// the tgid it identifies a process across pid reuse, and userspace can derive
/// it from /proc/PID/stat.
#[inline(always)]
pub fn process_start_ns(task: KernelPtr) -> Result<u64, ReadError> {
    let leader = read_ptr(task, offset!(task_group_leader))?;
    read_at(leader, offset!(task_start_boottime))
}

/// True when the whole thread group has exited (`signal->live` reached 0,
/// which do_exit decrements before the exit tracepoint fires). Works on every
/// kernel, unlike the `group_dead` tracepoint argument added in 6.x.
#[inline(always)]
pub fn thread_group_dead(task: KernelPtr) -> Result<bool, ReadError> {
    let signal = read_ptr(task, offset!(task_signal))?;
    let live: i32 = read_at(signal, offset!(signal_live))?;
    Ok(live == 0)
}

/// The `struct file` behind descriptor `fd` of `task`.
#[inline(always)]
pub fn file_of_fd(task: KernelPtr, fd: u32) -> Result<KernelPtr, ReadError> {
    let files = read_ptr(task, offset!(task_files))?;
    let fdt = read_ptr(files, offset!(files_fdt))?;
    let max_fds: u32 = read_at(fdt, offset!(fdtable_max_fds))?;
    if fd >= max_fds {
        return Err(ReadError);
    }
    let fd_array = read_ptr(fdt, offset!(fdtable_fd))?;
    read_ptr(fd_array, fd as usize * 8)
}

/// `file->f_mode`.
#[inline(always)]
pub fn file_mode(file: KernelPtr) -> Result<u32, ReadError> {
    read_at(file, offset!(file_f_mode))
}

/// `file->f_flags`.
#[inline(always)]
pub fn file_flags(file: KernelPtr) -> Result<u32, ReadError> {
    read_at(file, offset!(file_f_flags))
}

/// `file->f_path` as (vfsmount, dentry).
#[inline(always)]
pub fn file_path(file: KernelPtr) -> Result<(KernelPtr, KernelPtr), ReadError> {
    let path = file.wrapping_add(offset!(file_f_path));
    let mnt = read_ptr(path, offset!(path_mnt))?;
    let dentry = read_ptr(path, offset!(path_dentry))?;
    Ok((mnt, dentry))
}

/// `bprm->file`: the binary being executed.
#[inline(always)]
pub fn binprm_file(bprm: KernelPtr) -> Result<KernelPtr, ReadError> {
    read_ptr(bprm, offset!(binprm_file))
}

/// Whether userspace filled in the offsets; without them no kernel walk is attempted.
#[inline(always)]
pub fn offsets_valid() -> bool {
    offset!(valid) != 0
}
