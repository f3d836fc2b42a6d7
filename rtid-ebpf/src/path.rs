//! Resolving the path the kernel opened, from a (vfsmount, dentry) pair, by
//! walking dentries and mounts up to the root: the name the kernel resolved,
//! not the string the caller passed, so relative paths, `..`, symlinks and
//! /proc/self/root tricks cannot change the answer. (`bpf_d_path` would do
//! this but is only allowed in LSM and some fentry programs.)

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, maps::lpm_trie::Key};
use rtid_common::{PATH_KEY_BYTES, PathKey, RULESET_PREFIX_BITS};

use crate::{
    kernel::{KernelPtr, ReadError, read_at, read_ptr},
    maps::{PATH_SCRATCH, offset},
};

/// Half the scratch buffer. The path is built backwards ending at `HALF`, and
/// every write starts below `HALF` with at most `NAME_MAX` bytes, so masked
/// offsets always stay inside the buffer (the verifier needs that proof).
const HALF: usize = 4096;
const NAME_MAX: usize = 255;
/// Path components and mount crossings walked before giving up.
const MAX_WALK_STEPS: usize = 64;

pub struct PathScratch {
    pub buf: [u8; HALF * 2],
    pub prefix_key: Key<PathKey>,
    pub suffix_key: Key<PathKey>,
    /// Where the walk ended, stored and re-read (see `settle`).
    pub settled: [u32; 3],
    /// Slot for `opaque_u64`.
    pub opaque: u64,
}

/// Where the resolved path sits in `PathScratch::buf`.
#[derive(Clone, Copy)]
pub struct ResolvedPath {
    pub start: usize,
    pub len: usize,
    /// The walk did not reach a root: the path is deeper or longer than the
    /// walk, its dentry is disconnected (opened by file handle), or its tree's
    /// top is not a filesystem's root (a detached or bind-rooted tree). What
    /// was resolved is only a tail and must not be judged as the path.
    pub unresolved: bool,
    /// The file lives on a kernel-internal mount (memfd, pipe, socket): it has
    /// no name in any filesystem tree.
    pub anonymous: bool,
}

/// `MNT_NS_INTERNAL` (fs/mount.h): the namespace of kernel-internal mounts.
const MNT_NS_INTERNAL: u64 = -22i64 as u64;

#[inline(always)]
pub fn scratch() -> Option<&'static mut PathScratch> {
    let pointer = PATH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU map slot; a BPF program runs to completion on its CPU
    // without another rtid program reusing the slot meanwhile (tracing and
    // cgroup programs are not re-entered on one CPU: nested runs are refused
    // by the kernel's per-program recursion check).
    Some(unsafe { &mut *pointer })
}

/// Writes the path of (mnt, dentry) into `scratch.buf`, ending at `HALF`.
#[inline(always)]
pub fn resolve(scratch: &mut PathScratch, vfsmount: KernelPtr, dentry: KernelPtr) -> Result<ResolvedPath, ReadError> {
    let mount_mnt = offset!(mount_mnt);
    let mut dentry = dentry;
    let mut vfsmount = vfsmount;
    let mut mount = vfsmount.wrapping_sub(mount_mnt);
    let mut mnt_root = read_ptr(vfsmount, offset!(vfsmount_mnt_root))?;
    let mut position = HALF;
    let mut reached_root = false;
    let mut anonymous = false;

    for _ in 0..MAX_WALK_STEPS {
        // Through memory each step: otherwise every step doubles the states
        // the verifier tracks (a name step and a mount step bound `position`
        // differently) and the walk exceeds its budget.
        position = opaque(scratch, position);
        if position > HALF {
            break;
        }
        let parent = read_ptr(dentry, offset!(dentry_d_parent))?;
        if dentry == mnt_root || dentry == parent {
            if dentry != mnt_root {
                // A root dentry that is not its mount's root: a pseudo file of
                // a kernel-internal mount (no name anywhere), or a dentry
                // disconnected from its tree (a file handle): unresolved.
                anonymous = read_ptr(mount, offset!(mount_mnt_ns))? as u64 == MNT_NS_INTERNAL;
                reached_root = anonymous;
                break;
            }
            // At the root of this mount: continue from where it is mounted.
            let parent_mount = read_ptr(mount, offset!(mount_mnt_parent))?;
            if parent_mount == mount {
                // The top of the tree is a root only if it shows a whole
                // filesystem: a detached tree (open_tree) or a root pivoted
                // onto a bind mount of a subdirectory stops the walk inside one.
                reached_root = parent == dentry;
                anonymous = read_ptr(mount, offset!(mount_mnt_ns))? as u64 == MNT_NS_INTERNAL;
                break;
            }
            dentry = read_ptr(mount, offset!(mount_mnt_mountpoint))?;
            mount = parent_mount;
            vfsmount = mount.wrapping_add(mount_mnt);
            mnt_root = read_ptr(vfsmount, offset!(vfsmount_mnt_root))?;
            continue;
        }
        let name_field = dentry.wrapping_add(offset!(dentry_d_name));
        let name = read_ptr(name_field, offset!(qstr_name))?;
        let name_len = read_at::<u32>(name_field, offset!(qstr_len))? as usize;
        let name_len = if name_len > NAME_MAX { NAME_MAX } else { name_len };
        if name_len + 1 > position {
            break;
        }
        position -= name_len + 1;
        let name_start = (position + 1) & (HALF - 1);
        // SAFETY: destination is inside the scratch map value (name_start <
        // HALF, name_len <= NAME_MAX, buffer is 2 * HALF); the helper validates
        // the kernel source address.
        unsafe {
            bpf_probe_read_kernel(
                scratch.buf.as_mut_ptr().add(name_start) as *mut _,
                (name_len & NAME_MAX) as u32,
                name as *const _,
            );
        }
        scratch.buf[position & (HALF - 1)] = b'/';
        dentry = parent;
    }
    let mut position = if position > HALF { HALF } else { position };

    if position == HALF {
        position -= 1;
        scratch.buf[position] = b'/';
    }
    Ok(settle(scratch, position, !reached_root, anonymous))
}

/// `value`, passed through map memory so the compiler cannot reason about
/// it: a mask applied afterwards stays in the code for the verifier to see.
#[inline(always)]
pub fn opaque(scratch: &mut PathScratch, value: usize) -> usize {
    let slot = &mut scratch.settled[2] as *mut u32;
    // SAFETY: the slot is part of this CPU's scratch value, which only this program uses now.
    unsafe {
        core::ptr::write_volatile(slot, value as u32);
        core::ptr::read_volatile(slot) as usize
    }
}

/// `opaque` for 64-bit values.
#[inline(always)]
pub fn opaque_u64(scratch: &mut PathScratch, value: u64) -> u64 {
    let slot = &mut scratch.opaque as *mut u64;
    // SAFETY: as in `opaque`.
    unsafe {
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot)
    }
}

/// The walk can end in any of its iterations, each leaving the verifier a
/// differently bounded `position`; everything after the walk would then be
/// verified once per exit. Passing the result through map memory turns it
/// into one unknown value, re-bounded here, so the rest is verified once.
#[inline(always)]
fn settle(scratch: &mut PathScratch, position: usize, unresolved: bool, anonymous: bool) -> ResolvedPath {
    scratch.settled[0] = position as u32;
    scratch.settled[1] = unresolved as u32 | (anonymous as u32) << 1;
    // SAFETY: volatile reads of a field we own through the per-CPU slot.
    let (position, state) = unsafe {
        (core::ptr::read_volatile(&scratch.settled[0]) as usize, core::ptr::read_volatile(&scratch.settled[1]))
    };
    let start = if position >= HALF { HALF - 1 } else { position };
    ResolvedPath { start, len: HALF - start, unresolved: state & 1 != 0, anonymous: state & 2 != 0 }
}

/// Fills `scratch.prefix_key` (the path forward) and `scratch.suffix_key` (the
/// path reversed) for the rule tries.
#[inline(always)]
pub fn build_keys(scratch: &mut PathScratch, resolved: &ResolvedPath, ruleset: u32) {
    let copy_len = build_prefix_key(scratch, resolved, ruleset);

    scratch.suffix_key.data.ruleset = ruleset;
    // Always all PATH_KEY_BYTES bytes, with no early exit: one loop exit keeps
    // the verifier from re-checking everything after it once per path length.
    // Bytes past the path's start are never compared (prefix_len stops at copy_len).
    let mut index = 0;
    while index < PATH_KEY_BYTES {
        scratch.suffix_key.data.path[index] = scratch.buf[(HALF - 1 - index) & (HALF - 1)];
        index += 1;
    }
    scratch.suffix_key.prefix_len = RULESET_PREFIX_BITS + (copy_len as u32) * 8;
}

/// Fills `scratch.prefix_key` (the path forward, NUL-terminated where it
/// fits) for `ruleset`; returns how many path bytes it holds.
#[inline(always)]
pub fn build_prefix_key(scratch: &mut PathScratch, resolved: &ResolvedPath, ruleset: u32) -> usize {
    let len = resolved.len;
    let copy_len = if len > PATH_KEY_BYTES { PATH_KEY_BYTES } else { len };
    let start = resolved.start & (HALF - 1);

    scratch.prefix_key.data.ruleset = ruleset;
    // SAFETY: both ranges lie inside the scratch map value: `start < HALF`,
    // `copy_len <= PATH_KEY_BYTES`, and the key holds PATH_KEY_BYTES bytes.
    unsafe {
        bpf_probe_read_kernel(
            scratch.prefix_key.data.path.as_mut_ptr() as *mut _,
            (copy_len & 0xff) as u32,
            scratch.buf.as_ptr().add(start) as *const _,
        );
    }
    // A terminating NUL makes exact rules (stored with their NUL) match only
    // the whole path, while directory rules (stored without) match any path below.
    let mut key_bytes = copy_len;
    if copy_len < PATH_KEY_BYTES {
        scratch.prefix_key.data.path[copy_len] = 0;
        key_bytes += 1;
    }
    scratch.prefix_key.prefix_len = RULESET_PREFIX_BITS + (key_bytes as u32) * 8;
    copy_len
}
