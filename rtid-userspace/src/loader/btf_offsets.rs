//! Kernel struct member offsets, read from the running kernel's BTF.
//!
//! The kernel programs walk `task_struct`, `file`, `dentry` and friends by hand.
//! Those layouts change between kernel versions and configs, so no offset is
//! compiled in: one rtid binary has to run on every kernel with BTF. The
//! offsets are looked up here at load time, from `/sys/kernel/btf/vmlinux`, and
//! handed to the programs as load-time constants ([`KernelOffsets`]).

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Member, Struct, Type};
use rtid_common::KernelOffsets;

/// Where the running kernel exposes its own BTF.
pub const RUNNING_KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why a kernel offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("reading kernel BTF from {}: {source}", path.display())]
    Read { path: PathBuf, source: btf_rs::Error },
    #[error("struct {structure} not found in kernel BTF")]
    MissingStruct { structure: String },
    #[error("member {member} of struct {structure} not found in kernel BTF")]
    MissingMember { structure: String, member: String },
    #[error("member {member} of struct {structure} is a bitfield or not byte-aligned")]
    NotByteAligned { structure: String, member: String },
    #[error("LSM hook {hook} has a layout rtid does not know: {problem}")]
    LsmHookLayout { hook: &'static str, problem: String },
    #[error("kernel BTF is malformed around member {member} of struct {structure}: {source}")]
    Malformed { structure: String, member: String, source: btf_rs::Error },
}

/// Offsets for the running kernel, from [`RUNNING_KERNEL_BTF`].
///
/// # Errors
/// When the BTF cannot be read, or a struct or member is missing from it.
pub fn running_kernel_offsets() -> Result<KernelOffsets, OffsetError> {
    kernel_offsets_from_btf(Path::new(RUNNING_KERNEL_BTF))
}

/// Offsets for the kernel whose (base, not split) BTF is at `vmlinux_btf`.
///
/// # Errors
/// When the file cannot be read as BTF, or a struct or member is missing from
/// it, is a bitfield or is not byte-aligned.
pub fn kernel_offsets_from_btf(vmlinux_btf: &Path) -> Result<KernelOffsets, OffsetError> {
    let btf =
        Btf::from_file(vmlinux_btf).map_err(|source| OffsetError::Read { path: vmlinux_btf.to_path_buf(), source })?;
    offsets(&btf)
}

/// Offsets from an already opened BTF (see [`running_kernel_btf`]).
///
/// # Errors
/// When a struct or member is missing, is a bitfield or is not byte-aligned.
pub fn offsets(btf: &Btf) -> Result<KernelOffsets, OffsetError> {
    let at = |structure: &str, member: &str| member_offset(btf, structure, member);
    Ok(KernelOffsets {
        task_pid: at("task_struct", "pid")?,
        task_tgid: at("task_struct", "tgid")?,
        task_real_parent: at("task_struct", "real_parent")?,
        task_group_leader: at("task_struct", "group_leader")?,
        task_start_boottime: task_start_boottime(btf)?,
        task_files: at("task_struct", "files")?,
        task_signal: at("task_struct", "signal")?,
        signal_live: at("signal_struct", "live")?,
        files_fdt: at("files_struct", "fdt")?,
        fdtable_fd: at("fdtable", "fd")?,
        fdtable_max_fds: at("fdtable", "max_fds")?,
        file_f_path: at("file", "f_path")?,
        file_f_mode: at("file", "f_mode")?,
        file_f_flags: at("file", "f_flags")?,
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
        mount_mnt_ns: at("mount", "mnt_ns")?,
        binprm_file: at("linux_binprm", "file")?,
        socket_type: at("socket", "type")?,
        msghdr_msg_name: at("msghdr", "msg_name")?,
        msghdr_msg_namelen: at("msghdr", "msg_namelen")?,
        unix_sock_path: at("unix_sock", "path")?,
        valid: 1,
    })
}

/// What an LSM program assumes about its hook: the leading arguments it reads,
/// as the struct each points to (`None` for a scalar).
pub struct LsmHookLayout {
    pub hook: &'static str,
    pub leading: &'static [Option<&'static str>],
}

pub const LSM_FILE_OPEN: LsmHookLayout = LsmHookLayout { hook: "file_open", leading: &[Some("file")] };
pub const LSM_BPRM_CHECK_SECURITY: LsmHookLayout =
    LsmHookLayout { hook: "bprm_check_security", leading: &[Some("linux_binprm")] };
pub const LSM_SOCKET_CONNECT: LsmHookLayout =
    LsmHookLayout { hook: "socket_connect", leading: &[Some("socket"), Some("sockaddr"), None] };
pub const LSM_SOCKET_SENDMSG: LsmHookLayout =
    LsmHookLayout { hook: "socket_sendmsg", leading: &[Some("socket"), Some("msghdr"), None] };
/// The programs read no argument of `bpf`, only the verdict after them.
pub const LSM_BPF: LsmHookLayout = LsmHookLayout { hook: "bpf", leading: &[] };
/// `capable(cred, ns, int cap, unsigned int opts)`: the cap and opts are read.
pub const LSM_CAPABLE: LsmHookLayout =
    LsmHookLayout { hook: "capable", leading: &[Some("cred"), Some("user_namespace"), None, None] };
/// `socket_create(int family, int type, int protocol, int kern)`: all scalars.
pub const LSM_SOCKET_CREATE: LsmHookLayout =
    LsmHookLayout { hook: "socket_create", leading: &[None, None, None, None] };
/// No argument of `userns_create` is read.
pub const LSM_USERNS_CREATE: LsmHookLayout = LsmHookLayout { hook: "userns_create", leading: &[Some("cred")] };
pub const LSM_TASK_KILL: LsmHookLayout =
    LsmHookLayout { hook: "task_kill", leading: &[Some("task_struct"), Some("kernel_siginfo"), None] };
pub const LSM_PTRACE_ACCESS_CHECK: LsmHookLayout =
    LsmHookLayout { hook: "ptrace_access_check", leading: &[Some("task_struct"), None] };
pub const LSM_PATH_UNLINK: LsmHookLayout =
    LsmHookLayout { hook: "path_unlink", leading: &[Some("path"), Some("dentry")] };
pub const LSM_PATH_RMDIR: LsmHookLayout =
    LsmHookLayout { hook: "path_rmdir", leading: &[Some("path"), Some("dentry")] };
pub const LSM_PATH_MKDIR: LsmHookLayout =
    LsmHookLayout { hook: "path_mkdir", leading: &[Some("path"), Some("dentry")] };
pub const LSM_PATH_MKNOD: LsmHookLayout =
    LsmHookLayout { hook: "path_mknod", leading: &[Some("path"), Some("dentry")] };
pub const LSM_PATH_SYMLINK: LsmHookLayout =
    LsmHookLayout { hook: "path_symlink", leading: &[Some("path"), Some("dentry")] };
pub const LSM_PATH_RENAME: LsmHookLayout =
    LsmHookLayout { hook: "path_rename", leading: &[Some("path"), Some("dentry"), Some("path"), Some("dentry")] };
pub const LSM_PATH_LINK: LsmHookLayout =
    LsmHookLayout { hook: "path_link", leading: &[Some("dentry"), Some("path"), Some("dentry")] };
pub const LSM_PATH_TRUNCATE: LsmHookLayout = LsmHookLayout { hook: "path_truncate", leading: &[Some("path")] };
pub const LSM_PATH_CHMOD: LsmHookLayout = LsmHookLayout { hook: "path_chmod", leading: &[Some("path")] };
pub const LSM_PATH_CHOWN: LsmHookLayout = LsmHookLayout { hook: "path_chown", leading: &[Some("path")] };
pub const LSM_UNIX_STREAM_CONNECT: LsmHookLayout =
    LsmHookLayout { hook: "unix_stream_connect", leading: &[Some("sock"), Some("sock"), Some("sock")] };

/// How many arguments a BPF LSM hook takes in the running kernel, from its
/// `bpf_lsm_<hook>` prototype in BTF: the previous LSM's verdict follows them.
/// `Ok(None)` where the kernel has no such function (built without BPF LSM);
/// an error where the leading arguments differ from what the program reads,
/// so no program ever misreads a pointer.
///
/// # Errors
/// When the prototype is unreadable or its leading arguments differ.
pub fn lsm_hook_argument_count(btf: &Btf, layout: &LsmHookLayout) -> Result<Option<u32>, OffsetError> {
    argument_count(btf, layout)
}

/// The running kernel's BTF, opened once for the offsets and the LSM hook
/// prototypes: mapped where the kernel allows it (6.16 and later, a few
/// milliseconds), else parsed whole (about a third of a second natively).
///
/// # Errors
/// When [`RUNNING_KERNEL_BTF`] cannot be read as BTF.
pub fn running_kernel_btf() -> Result<Btf, OffsetError> {
    Btf::from_file_with_backend(RUNNING_KERNEL_BTF, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(RUNNING_KERNEL_BTF))
        .map_err(|source| OffsetError::Read { path: PathBuf::from(RUNNING_KERNEL_BTF), source })
}

fn argument_count(btf: &Btf, layout: &LsmHookLayout) -> Result<Option<u32>, OffsetError> {
    let function = format!("bpf_lsm_{}", layout.hook);
    let malformed = |source| OffsetError::Malformed { structure: function.clone(), member: "prototype".into(), source };
    let found =
        btf.resolve_types_by_name(&function).map_err(malformed)?.into_iter().find_map(|candidate| match candidate {
            Type::Func(func) => Some(func),
            _ => None,
        });
    let Some(func) = found else {
        return Ok(None);
    };
    let Type::FuncProto(prototype) = btf.resolve_chained_type(&func).map_err(malformed)? else {
        return Err(OffsetError::LsmHookLayout { hook: layout.hook, problem: "its BTF entry has no prototype".into() });
    };
    if prototype.parameters.len() < layout.leading.len() {
        return Err(OffsetError::LsmHookLayout {
            hook: layout.hook,
            problem: format!(
                "it takes {} argument(s); rtid reads {}",
                prototype.parameters.len(),
                layout.leading.len()
            ),
        });
    }
    for (index, (parameter, expected)) in prototype.parameters.iter().zip(layout.leading).enumerate() {
        let pointee = pointee_struct(btf, parameter).map_err(malformed)?;
        if pointee.as_deref() != *expected {
            let describe = |name: Option<&str>| name.map_or("a scalar".to_owned(), |name| format!("struct {name} *"));
            return Err(OffsetError::LsmHookLayout {
                hook: layout.hook,
                problem: format!(
                    "argument {index} is {}; rtid reads {}",
                    describe(pointee.as_deref()),
                    describe(*expected)
                ),
            });
        }
    }
    Ok(Some(prototype.parameters.len() as u32))
}

/// The name of the struct a parameter points to, `None` for anything else.
fn pointee_struct(btf: &Btf, parameter: &btf_rs::Parameter) -> btf_rs::Result<Option<String>> {
    let Type::Ptr(pointer) = btf.resolve_chained_type(parameter)? else {
        return Ok(None);
    };
    let mut pointee = btf.resolve_chained_type(&pointer)?;
    loop {
        pointee = match pointee {
            Type::Struct(ref definition) => return Ok(Some(btf.resolve_name(definition)?)),
            Type::Const(_) | Type::Volatile(_) | Type::Typedef(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                match pointee.as_btf_type() {
                    Some(link) => btf.resolve_chained_type(link)?,
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
    }
}

/// `task_struct.start_boottime`, called `real_start_time` before Linux 5.5.
fn task_start_boottime(btf: &Btf) -> Result<u32, OffsetError> {
    match member_offset(btf, "task_struct", "start_boottime") {
        Err(missing @ OffsetError::MissingMember { .. }) => {
            member_offset(btf, "task_struct", "real_start_time").map_err(|_| missing)
        }
        found => found,
    }
}

/// Byte offset of `member` in `struct structure`, looking through anonymous
/// structs and unions (on 6.18 `file.f_path` sits in an anonymous union).
fn member_offset(btf: &Btf, structure: &str, member: &str) -> Result<u32, OffsetError> {
    let malformed = |source| OffsetError::Malformed { structure: structure.into(), member: member.into(), source };
    let definition = find_struct(btf, structure).map_err(malformed)?;
    let definition = definition.ok_or_else(|| OffsetError::MissingStruct { structure: structure.into() })?;
    let bits = member_bit_offset(btf, &definition, member).map_err(malformed)?;
    match bits {
        None => Err(OffsetError::MissingMember { structure: structure.into(), member: member.into() }),
        Some(MemberBits::Field(bits)) if bits % 8 == 0 => Ok(bits / 8),
        Some(_) => Err(OffsetError::NotByteAligned { structure: structure.into(), member: member.into() }),
    }
}

/// The first `struct name` that has members (a definition, not a stub).
fn find_struct(btf: &Btf, name: &str) -> btf_rs::Result<Option<Struct>> {
    let found = btf.resolve_types_by_name(name)?.into_iter().find_map(|candidate| match candidate {
        Type::Struct(definition) if !definition.members.is_empty() => Some(definition),
        _ => None,
    });
    Ok(found)
}

/// Where a member sits, in bits from the start of the outermost struct.
#[derive(Debug, PartialEq, Eq)]
enum MemberBits {
    Field(u32),
    Bitfield,
}

/// Finds `member` among the members of `definition`, descending into anonymous
/// members and adding their offsets.
fn member_bit_offset(btf: &Btf, definition: &Struct, member: &str) -> btf_rs::Result<Option<MemberBits>> {
    for candidate in &definition.members {
        let name = btf.resolve_name(candidate)?;
        if name == member {
            return Ok(Some(placement(candidate)));
        }
        if !name.is_empty() {
            continue;
        }
        let Some(nested) = anonymous_aggregate(btf, candidate)? else {
            continue;
        };
        if let Some(inner) = member_bit_offset(btf, &nested, member)? {
            return Ok(Some(match inner {
                MemberBits::Field(bits) => MemberBits::Field(candidate.bit_offset() + bits),
                MemberBits::Bitfield => MemberBits::Bitfield,
            }));
        }
    }
    Ok(None)
}

/// Bit offset of a member, unless it is a bitfield. In a struct with the kind
/// flag set (what pahole emits for any struct holding bitfields) the member
/// carries the bitfield size, 0 for an ordinary member. Without the flag the
/// size sits in the member's int type, which btf-rs does not expose: such a
/// bitfield is refused by [`member_offset`] only when not byte-aligned.
fn placement(member: &Member) -> MemberBits {
    match member.bitfield_size() {
        Some(size) if size != 0 => MemberBits::Bitfield,
        _ => MemberBits::Field(member.bit_offset()),
    }
}

/// The struct or union an anonymous member stands for, through any typedef or
/// qualifier; `None` for anything else (an unnamed bitfield padding, say).
fn anonymous_aggregate(btf: &Btf, member: &Member) -> btf_rs::Result<Option<Struct>> {
    let mut resolved = btf.resolve_chained_type(member)?;
    loop {
        resolved = match resolved {
            Type::Struct(aggregate) | Type::Union(aggregate) => return Ok(Some(aggregate)),
            Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                match resolved.as_btf_type() {
                    Some(link) => btf.resolve_chained_type(link)?,
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_btf() -> Btf {
        Btf::from_file(RUNNING_KERNEL_BTF).expect("kernel BTF at /sys/kernel/btf/vmlinux")
    }

    #[test]
    fn every_offset_of_the_running_kernel_resolves() {
        let offsets = running_kernel_offsets().expect("offsets from /sys/kernel/btf/vmlinux");
        println!("{offsets:#?}");
        assert_eq!(offsets.valid, 1);
        assert_eq!(offsets.path_mnt, 0, "struct path starts with mnt");
        assert_eq!(offsets.path_dentry, 8);
        assert_eq!(offsets.qstr_name, 8);
        assert_ne!(offsets.file_f_path, 0, "f_path is not the first member of struct file");
        assert_ne!(offsets.task_tgid, offsets.task_pid);
    }

    #[test]
    fn lsm_hook_layouts_of_the_running_kernel_are_understood() {
        // This host has BPF LSM compiled in, so its bpf_lsm_* prototypes are in BTF.
        let btf = kernel_btf();
        let count = |layout| argument_count(&btf, layout).expect("layout understood");
        assert_eq!(count(&LSM_FILE_OPEN), Some(1));
        assert_eq!(count(&LSM_BPRM_CHECK_SECURITY), Some(1));
        assert_eq!(count(&LSM_SOCKET_CONNECT), Some(3));
        assert_eq!(count(&LSM_SOCKET_SENDMSG), Some(3));
        // 6.9 and later pass `bool kernel` after cmd, attr and size.
        assert_eq!(count(&LSM_BPF), Some(4));
        let absent = LsmHookLayout { hook: "no_such_hook_rtid", leading: &[] };
        assert_eq!(count(&absent), None);
    }

    #[test]
    fn an_lsm_hook_whose_arguments_moved_is_refused_by_name() {
        let btf = kernel_btf();
        let moved = LsmHookLayout { hook: "file_open", leading: &[Some("inode")] };
        let error = argument_count(&btf, &moved).expect_err("file_open takes a struct file *");
        assert_eq!(
            error.to_string(),
            "LSM hook file_open has a layout rtid does not know: argument 0 is struct file *; rtid reads struct inode *"
        );
        let longer = LsmHookLayout { hook: "file_open", leading: &[Some("file"), None] };
        let error = argument_count(&btf, &longer).expect_err("file_open takes one argument");
        assert!(error.to_string().contains("it takes 1 argument(s); rtid reads 2"), "{error}");
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn members_inside_nested_anonymous_aggregates_resolve() {
        // struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name; }
        assert_eq!(member_offset(&kernel_btf(), "qstr", "len").expect("qstr.len"), 4);
    }

    #[test]
    fn a_missing_struct_or_member_is_named() {
        let btf = kernel_btf();
        let error = member_offset(&btf, "task_struct", "no_such_member_rtid").expect_err("missing member");
        assert!(matches!(&error, OffsetError::MissingMember { structure, member }
            if structure == "task_struct" && member == "no_such_member_rtid"));
        assert_eq!(error.to_string(), "member no_such_member_rtid of struct task_struct not found in kernel BTF");

        let error = member_offset(&btf, "no_such_struct_rtid", "pid").expect_err("missing struct");
        assert!(matches!(&error, OffsetError::MissingStruct { structure } if structure == "no_such_struct_rtid"));
        assert_eq!(error.to_string(), "struct no_such_struct_rtid not found in kernel BTF");
    }

    #[test]
    fn an_unreadable_btf_file_is_named() {
        let error = kernel_offsets_from_btf(Path::new("/nonexistent/rtid/vmlinux")).expect_err("no such file");
        assert!(matches!(&error, OffsetError::Read { path, .. } if path == Path::new("/nonexistent/rtid/vmlinux")));
        assert!(error.to_string().contains("/nonexistent/rtid/vmlinux"));
    }

    /// Raw BTF with `int` and two structs: `struct flagged { int a:3; int b:5; int c; }`
    /// (kind flag set) and `struct plain { int d; <int at bit 36> e; }` (kind flag clear).
    fn bitfield_btf() -> Vec<u8> {
        const STRINGS: &[u8] = b"\0int\0flagged\0a\0b\0c\0plain\0d\0e\0";
        const INT: u32 = 1;
        const STRUCT: u32 = 4;
        let name = |text: &str| {
            let needle = [b"\0", text.as_bytes(), b"\0"].concat();
            let at = STRINGS.windows(needle.len()).position(|window| window == needle).expect("string");
            u32::try_from(at + 1).expect("small offset")
        };
        let info = |kind: u32, kind_flag: u32, vlen: u32| (kind_flag << 31) | (kind << 24) | vlen;
        let records: [&[u32]; 8] = [
            // [1] int: size 4, signed, 32 bits.
            &[name("int"), info(INT, 0, 0), 4, (1 << 24) | 32],
            // [2] struct flagged: members carry (bitfield size << 24) | bit offset.
            &[name("flagged"), info(STRUCT, 1, 3), 8],
            &[name("a"), 1, 3 << 24],
            &[name("b"), 1, (5 << 24) | 3],
            &[name("c"), 1, 32],
            // [3] struct plain: members carry the bit offset only.
            &[name("plain"), info(STRUCT, 0, 2), 12],
            &[name("d"), 1, 0],
            &[name("e"), 1, 36],
        ];
        let types: Vec<u8> = records.concat().iter().flat_map(|word| word.to_le_bytes()).collect();
        let types_len = u32::try_from(types.len()).expect("small");
        let strings_len = u32::try_from(STRINGS.len()).expect("small");
        // magic, version 1, flags 0, then hdr_len, type_off, type_len, str_off, str_len.
        let mut blob = [0xeb9f_u16.to_le_bytes(), [1, 0]].concat();
        for word in [24, 0, types_len, types_len, strings_len] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        [blob, types, STRINGS.to_vec()].concat()
    }

    #[test]
    fn bitfields_and_unaligned_members_are_refused() {
        let btf = Btf::from_bytes(&bitfield_btf()).expect("synthetic BTF");
        assert_eq!(member_offset(&btf, "flagged", "c").expect("flagged.c"), 4);
        assert_eq!(member_offset(&btf, "plain", "d").expect("plain.d"), 0);
        for (structure, member) in [("flagged", "a"), ("flagged", "b"), ("plain", "e")] {
            let error = member_offset(&btf, structure, member).expect_err("not byte-addressable");
            assert!(
                matches!(&error, OffsetError::NotByteAligned { structure: s, member: m } if s == structure && m == member),
                "{structure}.{member}: {error}"
            );
        }
    }
}
