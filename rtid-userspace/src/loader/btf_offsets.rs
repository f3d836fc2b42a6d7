//! Kernel struct member offsets, read from the running kernel's BTF.
//!
//! The kernel programs walk `task_struct`, `file`, `dentry` and friends. Their
//! layouts differ between kernels and configs, so no offset is compiled in:
//! they are looked up here at load time and handed to the programs as
//! constants. One binary then runs on every kernel with BTF.

use std::path::Path;

use btf_rs::{Btf, Type};
use rtid_common::KernelOffsets;

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("reading BTF from {path}: {message}")]
    Read { path: String, message: String },
    #[error("struct {0} not found in kernel BTF")]
    MissingStruct(String),
    #[error("member {member} of struct {structure} not found in kernel BTF")]
    MissingMember { structure: String, member: String },
    #[error("member {member} of struct {structure} is a bitfield or not byte-aligned")]
    Unaligned { structure: String, member: String },
}

/// Offsets for the running kernel (/sys/kernel/btf/vmlinux).
pub fn running_kernel_offsets() -> Result<KernelOffsets, OffsetError> {
    kernel_offsets_from_btf(Path::new("/sys/kernel/btf/vmlinux"))
}

pub fn kernel_offsets_from_btf(vmlinux_btf: &Path) -> Result<KernelOffsets, OffsetError> {
    let btf = Btf::from_file(vmlinux_btf)
        .map_err(|error| OffsetError::Read { path: vmlinux_btf.display().to_string(), message: error.to_string() })?;
    let at = |structure: &str, member: &str| member_offset(&btf, structure, member);
    Ok(KernelOffsets {
        task_pid: at("task_struct", "pid")?,
        task_tgid: at("task_struct", "tgid")?,
        task_real_parent: at("task_struct", "real_parent")?,
        task_group_leader: at("task_struct", "group_leader")?,
        // Renamed in 5.5.
        task_start_boottime: at("task_struct", "start_boottime").or_else(|_| at("task_struct", "real_start_time"))?,
        task_files: at("task_struct", "files")?,
        task_signal: at("task_struct", "signal")?,
        signal_live: at("signal_struct", "live")?,
        files_fdt: at("files_struct", "fdt")?,
        fdtable_fd: at("fdtable", "fd")?,
        fdtable_max_fds: at("fdtable", "max_fds")?,
        file_f_path: at("file", "f_path")?,
        file_f_mode: at("file", "f_mode")?,
        path_mnt: at("path", "mnt")?,
        path_dentry: at("path", "dentry")?,
        dentry_d_parent: at("dentry", "d_parent")?,
        dentry_d_name: at("dentry", "d_name")?,
        qstr_len: at("qstr", "len")?,
        qstr_name: at("qstr", "name")?,
        vfsmount_mnt_root: at("vfsmount", "mnt_root")?,
        mount_mnt: at("mount", "mnt")?,
        mount_mnt_parent: at("mount", "mnt_parent")?,
        mount_mnt_mountpoint: at("mount", "mnt_mountpoint")?,
        binprm_file: at("linux_binprm", "file")?,
        socket_type: at("socket", "type")?,
        msghdr_msg_name: at("msghdr", "msg_name")?,
        msghdr_msg_namelen: at("msghdr", "msg_namelen")?,
        valid: 1,
    })
}

/// Byte offset of `member` in `struct structure`, looking inside anonymous
/// structs and unions (on 6.18 `file.f_path` sits in one).
fn member_offset(btf: &Btf, structure: &str, member: &str) -> Result<u32, OffsetError> {
    let types = btf.resolve_types_by_name(structure).map_err(|_| OffsetError::MissingStruct(structure.into()))?;
    let found = types.iter().find_map(|candidate| match candidate {
        Type::Struct(definition) if !definition.members.is_empty() => Some(definition.clone()),
        _ => None,
    });
    let definition = found.ok_or_else(|| OffsetError::MissingStruct(structure.into()))?;
    let bits = find_member_bits(btf, &definition, member, structure)?
        .ok_or_else(|| OffsetError::MissingMember { structure: structure.into(), member: member.into() })?;
    if bits % 8 != 0 {
        return Err(OffsetError::Unaligned { structure: structure.into(), member: member.into() });
    }
    Ok(bits / 8)
}

fn find_member_bits(
    btf: &Btf,
    definition: &btf_rs::Struct,
    member: &str,
    structure: &str,
) -> Result<Option<u32>, OffsetError> {
    for candidate in &definition.members {
        let name = btf.resolve_name(candidate).unwrap_or_default();
        if name == member {
            if candidate.bitfield_size().is_some_and(|size| size != 0) {
                return Err(OffsetError::Unaligned { structure: structure.into(), member: member.into() });
            }
            return Ok(Some(candidate.bit_offset()));
        }
        if name.is_empty() {
            let nested = match btf.resolve_chained_type(candidate) {
                Ok(Type::Struct(nested)) | Ok(Type::Union(nested)) => nested,
                _ => continue,
            };
            if let Some(inner) = find_member_bits(btf, &nested, member, structure)? {
                return Ok(Some(candidate.bit_offset() + inner));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_running_kernel_resolve() {
        let offsets = running_kernel_offsets().expect("offsets from /sys/kernel/btf/vmlinux");
        assert_eq!(offsets.valid, 1);
        assert_eq!(offsets.path_mnt, 0, "struct path starts with mnt");
        assert_eq!(offsets.path_dentry, 8);
        assert_eq!(offsets.qstr_name, 8);
        assert_ne!(offsets.file_f_path, 0);
        assert_ne!(offsets.task_tgid, 0);
        assert!(offsets.task_tgid > offsets.task_pid || offsets.task_tgid == offsets.task_pid + 4);
    }

    #[test]
    fn a_missing_member_is_named() {
        let btf = Btf::from_file("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let error = member_offset(&btf, "task_struct", "no_such_member").expect_err("missing");
        assert_eq!(error.to_string(), "member no_such_member of struct task_struct not found in kernel BTF");
        let error = member_offset(&btf, "no_such_struct_rtid", "x").expect_err("missing");
        assert!(error.to_string().contains("no_such_struct_rtid"));
    }
}
