//! Reading `/proc/self/mountinfo`: which mount is at a path, its device and options.
//!
//! Used instead of `stat(2)` on a FUSE mountpoint, because stat of a FUSE root asks
//! the filesystem (GETATTR), which blocks until the daemon serves: fatal right after
//! mounting, before INIT was answered, and for a hung or dead mount.
//!
//! # References
//! - `proc_pid_mountinfo(5)`
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Path of the mount table of the calling process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// Major number of the mount's `st_dev`.
    pub major: u32,
    /// Minor number of the mount's `st_dev`.
    pub minor: u32,
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub mount_options: String,
    /// Filesystem type (`fuse`, `fuse.SUBTYPE`, `fusectl`, ...).
    pub fstype: String,
    /// Mount source (unescaped; the fsname for FUSE).
    pub source: String,
    /// Per-superblock options (`user_id=0,...` for FUSE).
    pub super_options: String,
}

impl MountEntry {
    /// The device number as the kernel encodes it internally (`MKDEV`: major << 20 |
    /// minor), which is how `fs/fuse/control.c` names a connection's directory.
    pub fn kernel_dev(&self) -> u64 {
        (u64::from(self.major) << 20) | u64::from(self.minor)
    }
}

/// Every mount of this process's namespace, in mount order.
pub(crate) fn read() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read(MOUNTINFO)?;
    Ok(text.split(|&b| b == b'\n').filter_map(parse_line).collect())
}

/// The topmost mount at `path` (the last entry with that mount point), if any.
/// `path` should be canonical.
pub(crate) fn find(path: &Path) -> io::Result<Option<MountEntry>> {
    Ok(read()?.into_iter().rev().find(|e| e.mount_point == path))
}

/// Parse one line; `None` for a line that does not have the documented shape.
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.split(' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let _root = fields.next()?;
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let mount_options = fields.next()?.to_owned();
    // Optional fields end with a lone "-".
    for f in fields.by_ref() {
        if f == "-" {
            break;
        }
    }
    let fstype = fields.next()?.to_owned();
    let source = unescape(fields.next()?).to_string_lossy().into_owned();
    let super_options = fields.next().unwrap_or("").to_owned();
    Some(MountEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point,
        mount_options,
        fstype,
        source,
        super_options,
    })
}

/// Undo the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fuse_line() {
        let line = b"612 30 0:55 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:300 - fuse.memfs my\\040src rw,user_id=0,group_id=0";
        let e = parse_line(line).unwrap();
        assert_eq!((e.major, e.minor), (0, 55));
        assert_eq!(e.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(e.fstype, "fuse.memfs");
        assert_eq!(e.source, "my src");
        assert_eq!(e.super_options, "rw,user_id=0,group_id=0");
        assert_eq!(e.kernel_dev(), 55);
    }

    #[test]
    fn garbage_is_skipped_not_a_panic() {
        assert_eq!(parse_line(b""), None);
        assert_eq!(parse_line(b"1 2 x / /"), None);
        assert_eq!(unescape("a\\0"), OsString::from("a\\0"));
        assert_eq!(unescape("\\777x"), OsString::from("\\777x"));
        assert_eq!(unescape("\\134"), OsString::from("\\"));
    }

    #[test]
    fn reads_this_process_table() {
        if Path::new(MOUNTINFO).exists() {
            assert!(find(Path::new("/")).unwrap().is_some());
        }
    }
}
