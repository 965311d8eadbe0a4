//! One readable line per request, in the spirit of libfuse's `-d` output.
use core::fmt;

use crate::abi;
use crate::flags::{InitFlags, SetattrValid};
use crate::request::{ops::init_flags, Operation, Request};

/// A byte string shown in double quotes: valid UTF-8 as text (with Rust's debug
/// escapes), other bytes as `\xNN`. Allocates nothing.
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                fmt::Display::fmt(&c.escape_debug(), f)?;
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

/// `LOOKUP unique=12 nodeid=1 uid=0 gid=0 pid=42 name="foo"`: opcode, header
/// fields, `resend` for a resent request, the operation's main arguments (names
/// escaped; data shown only by size), and a count of any extensions.
impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unique={} nodeid={} uid={} gid={} pid={}",
            self.opcode(),
            self.unique(),
            self.nodeid(),
            self.uid(),
            self.gid(),
            self.pid()
        )?;
        if self.is_resend() {
            f.write_str(" resend")?;
        }
        fmt_op(self.op(), f)?;
        let ext = self.extensions();
        if ext.has_security_context() {
            write!(f, " secctx={}", ext.security_contexts().len())?;
        }
        if let Some(groups) = ext.supp_groups() {
            f.write_str(" groups=[")?;
            for (i, g) in groups.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{}", g.get())?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

fn fmt_op(op: &Operation<'_>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match op {
        Operation::Lookup { name }
        | Operation::Unlink { name }
        | Operation::Rmdir { name }
        | Operation::Removexattr { name } => write!(f, " name={}", Escaped(name)),
        Operation::Forget { arg } => write!(f, " nlookup={}", arg.nlookup.get()),
        Operation::Getattr { arg } => write!(
            f,
            " getattr_flags={:#x} fh={}",
            arg.getattr_flags.get(),
            arg.fh.get()
        ),
        Operation::Setattr { arg } => {
            let valid = SetattrValid(arg.valid.get());
            write!(f, " valid={valid:?}")?;
            if valid.contains(SetattrValid::MODE) {
                write!(f, " mode={:#o}", arg.mode.get())?;
            }
            if valid.contains(SetattrValid::UID) {
                write!(f, " uid={}", arg.uid.get())?;
            }
            if valid.contains(SetattrValid::GID) {
                write!(f, " gid={}", arg.gid.get())?;
            }
            if valid.contains(SetattrValid::SIZE) {
                write!(f, " size={}", arg.size.get())?;
            }
            if valid.contains(SetattrValid::FH) {
                write!(f, " fh={}", arg.fh.get())?;
            }
            Ok(())
        }
        Operation::Readlink | Operation::Statfs | Operation::Destroy => Ok(()),
        Operation::Symlink { name, target } => {
            write!(f, " name={} target={}", Escaped(name), Escaped(target))
        }
        Operation::Mknod { arg, name } => write!(
            f,
            " name={} mode={:#o} rdev={:#x} umask={:#o}",
            Escaped(name),
            arg.mode.get(),
            arg.rdev.get(),
            arg.umask.get()
        ),
        Operation::Mkdir { arg, name } => write!(
            f,
            " name={} mode={:#o} umask={:#o}",
            Escaped(name),
            arg.mode.get(),
            arg.umask.get()
        ),
        Operation::Rename { arg, name, newname } => write!(
            f,
            " name={} newdir={} newname={}",
            Escaped(name),
            arg.newdir.get(),
            Escaped(newname)
        ),
        Operation::Rename2 { arg, name, newname } => write!(
            f,
            " name={} newdir={} newname={} flags={:#x}",
            Escaped(name),
            arg.newdir.get(),
            Escaped(newname),
            arg.flags.get()
        ),
        Operation::Link { arg, newname } => write!(
            f,
            " oldnodeid={} newname={}",
            arg.oldnodeid.get(),
            Escaped(newname)
        ),
        Operation::Open { arg } | Operation::Opendir { arg } => write!(
            f,
            " flags={:#o} open_flags={:#x}",
            arg.flags.get(),
            arg.open_flags.get()
        ),
        Operation::Read { arg } | Operation::Readdir { arg } | Operation::Readdirplus { arg } => {
            write!(
                f,
                " fh={} offset={} size={}",
                arg.fh.get(),
                arg.offset.get(),
                arg.size.get()
            )
        }
        Operation::Write { arg, .. } => write!(
            f,
            " fh={} offset={} size={} write_flags={:#x}",
            arg.fh.get(),
            arg.offset.get(),
            arg.size.get(),
            arg.write_flags.get()
        ),
        Operation::Release { arg } | Operation::Releasedir { arg } => write!(
            f,
            " fh={} flags={:#o} release_flags={:#x} lock_owner={:#x}",
            arg.fh.get(),
            arg.flags.get(),
            arg.release_flags.get(),
            arg.lock_owner.get()
        ),
        Operation::Fsync { arg } | Operation::Fsyncdir { arg } => write!(
            f,
            " fh={} fsync_flags={:#x}",
            arg.fh.get(),
            arg.fsync_flags.get()
        ),
        Operation::Setxattr { arg, name, .. } => write!(
            f,
            " name={} size={} flags={:#x} setxattr_flags={:#x}",
            Escaped(name),
            arg.size.get(),
            arg.flags.get(),
            arg.setxattr_flags.get()
        ),
        Operation::Getxattr { arg, name } => {
            write!(f, " name={} size={}", Escaped(name), arg.size.get())
        }
        Operation::Listxattr { arg } => write!(f, " size={}", arg.size.get()),
        Operation::Flush { arg } => write!(
            f,
            " fh={} lock_owner={:#x}",
            arg.fh.get(),
            arg.lock_owner.get()
        ),
        Operation::Init { arg } => {
            let flags: InitFlags = init_flags(arg);
            write!(
                f,
                " kernel={}.{} max_readahead={} flags={flags:?}",
                arg.major.get(),
                arg.minor.get(),
                arg.max_readahead.get()
            )
        }
        Operation::Getlk { arg } | Operation::Setlk { arg } | Operation::Setlkw { arg } => {
            write!(
                f,
                " fh={} owner={:#x} start={} end={} type={} pid={} lk_flags={:#x}",
                arg.fh.get(),
                arg.owner.get(),
                arg.lk.start.get(),
                arg.lk.end.get(),
                arg.lk.typ.get(),
                arg.lk.pid.get(),
                arg.lk_flags.get()
            )
        }
        Operation::Access { arg } => write!(f, " mask={:#o}", arg.mask.get()),
        Operation::Create { arg, name } => fmt_create(arg, name, f),
        Operation::Tmpfile { arg, name } => fmt_create(arg, name, f),
        Operation::Interrupt { arg } => write!(f, " interrupted={}", arg.unique.get()),
        Operation::Bmap { arg } => write!(
            f,
            " block={} blocksize={}",
            arg.block.get(),
            arg.blocksize.get()
        ),
        Operation::Ioctl { arg, .. } => write!(
            f,
            " fh={} cmd={:#x} flags={:#x} arg={:#x} in_size={} out_size={}",
            arg.fh.get(),
            arg.cmd.get(),
            arg.flags.get(),
            arg.arg.get(),
            arg.in_size.get(),
            arg.out_size.get()
        ),
        Operation::Poll { arg } => write!(
            f,
            " fh={} kh={} flags={:#x} events={:#x}",
            arg.fh.get(),
            arg.kh.get(),
            arg.flags.get(),
            arg.events.get()
        ),
        Operation::NotifyReply { arg, .. } => {
            write!(f, " offset={} size={}", arg.offset.get(), arg.size.get())
        }
        Operation::BatchForget { forgets } => write!(f, " count={}", forgets.len()),
        Operation::Fallocate { arg } => write!(
            f,
            " fh={} offset={} length={} mode={:#x}",
            arg.fh.get(),
            arg.offset.get(),
            arg.length.get(),
            arg.mode.get()
        ),
        Operation::Lseek { arg } => write!(
            f,
            " fh={} offset={} whence={}",
            arg.fh.get(),
            arg.offset.get(),
            arg.whence.get()
        ),
        Operation::CopyFileRange { arg } | Operation::CopyFileRange64 { arg } => write!(
            f,
            " fh_in={} off_in={} nodeid_out={} fh_out={} off_out={} len={} flags={:#x}",
            arg.fh_in.get(),
            arg.off_in.get(),
            arg.nodeid_out.get(),
            arg.fh_out.get(),
            arg.off_out.get(),
            arg.len.get(),
            arg.flags.get()
        ),
        Operation::Setupmapping { arg } => write!(
            f,
            " fh={} foffset={} len={} flags={:#x} moffset={}",
            arg.fh.get(),
            arg.foffset.get(),
            arg.len.get(),
            arg.flags.get(),
            arg.moffset.get()
        ),
        Operation::Removemapping { mappings } => write!(f, " count={}", mappings.len()),
        Operation::Syncfs { .. } => Ok(()),
        Operation::Statx { arg } => write!(
            f,
            " getattr_flags={:#x} fh={} sx_flags={:#x} sx_mask={:#x}",
            arg.getattr_flags.get(),
            arg.fh.get(),
            arg.sx_flags.get(),
            arg.sx_mask.get()
        ),
        Operation::CuseInit { arg } => write!(
            f,
            " kernel={}.{} flags={:#x}",
            arg.major.get(),
            arg.minor.get(),
            arg.flags.get()
        ),
        Operation::Unknown { body, .. } => write!(f, " body_len={}", body.len()),
    }
}

fn fmt_create(arg: &abi::fuse_create_in, name: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(
        f,
        " name={} flags={:#o} mode={:#o} umask={:#o} open_flags={:#x}",
        Escaped(name),
        arg.flags.get(),
        arg.mode.get(),
        arg.umask.get(),
        arg.open_flags.get()
    )
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn escapes_quotes_controls_and_invalid_utf8() {
        let s = format!("{}", Escaped(b"a\"b\\c\n\xff\xc3\xa9"));
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\xffé\"");
    }
}
