//! Errors of mounting and of mount options.
use std::fmt;
use std::io;
use std::path::PathBuf;

/// A mount option that cannot be rendered.
///
/// Options travel as one comma-separated string (to `mount(2)` and to `fusermount3 -o`),
/// so a value containing `,` would inject further options, and a NUL would cut the
/// string short. Both are refused rather than escaped: neither the kernel nor
/// `fusermount3` has an escape syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionError {
    /// The value of `option` contains a comma.
    Comma {
        /// The option name (`fsname`, `subtype`, or the raw option text).
        option: String,
    },
    /// The value of `option` contains a NUL byte.
    Nul {
        /// The option name (`fsname`, `subtype`, or the raw option text).
        option: String,
    },
    /// The value of `option` is empty.
    Empty {
        /// The option name.
        option: String,
    },
    /// A raw option sets something this library computes (`fd`, `rootmode`, `user_id`,
    /// `group_id`) or has a typed setter for (`fsname`, `subtype`, ...).
    Reserved {
        /// The option name.
        option: String,
    },
    /// `allow_other` and `allow_root` were both requested; they exclude each other.
    AllowOtherAndAllowRoot,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::Comma { option } => write!(
                f,
                "mount option {option:?} contains ',': options are comma-separated and \
                 cannot be escaped; remove the comma from the value"
            ),
            OptionError::Nul { option } => write!(
                f,
                "mount option {option:?} contains a NUL byte; remove it from the value"
            ),
            OptionError::Empty { option } => {
                write!(
                    f,
                    "mount option {option:?} is empty; give it a value or leave it unset"
                )
            }
            OptionError::Reserved { option } => write!(
                f,
                "mount option {option:?} is set by the library (fd, rootmode, user_id, \
                 group_id are computed; use the typed MountOptions setter for the others)"
            ),
            OptionError::AllowOtherAndAllowRoot => {
                write!(
                    f,
                    "allow_other and allow_root exclude each other; choose one"
                )
            }
        }
    }
}

impl std::error::Error for OptionError {}

/// Why mounting (or unmounting, or adopting an inherited mount) failed.
///
/// The `Display` text says what to do next.
#[derive(Debug)]
#[non_exhaustive]
pub enum MountError {
    /// `/dev/fuse` does not exist: the `fuse` module is not loaded, or a container was
    /// started without the device.
    DeviceMissing(io::Error),
    /// The caller may not open `/dev/fuse` or may not mount.
    PermissionDenied {
        /// What was being attempted.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The mountpoint does not exist.
    MountpointMissing(PathBuf),
    /// The mountpoint is not a directory.
    NotADirectory(PathBuf),
    /// The mountpoint is a dead FUSE mount ("Transport endpoint is not connected").
    StaleMount(PathBuf),
    /// `mount(2)` or `fusermount3` reported `EBUSY`: the mountpoint is in use or the
    /// kernel refuses to mount there.
    Busy(PathBuf),
    /// `fusermount3` is not on `PATH`.
    FusermountNotFound,
    /// `fusermount3` ran and failed.
    FusermountFailed {
        /// Its exit code, if it exited (none if killed by a signal).
        status: Option<i32>,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A mount option cannot be rendered.
    InvalidOption(OptionError),
    /// `mount(2)` refused the options with `EINVAL`.
    OptionsRejected {
        /// The data string passed (kernel options).
        options: String,
        /// The `mount(2)` flags passed, by name.
        flags: String,
        /// Raw options the kernel's FUSE parser does not know (see
        /// [`MountOptions::likely_rejected`](super::MountOptions::likely_rejected)).
        suspects: Vec<String>,
    },
    /// The descriptor given to [`Mount::from_parts`](crate::dev::Mount::from_parts) is not
    /// a `/dev/fuse` descriptor.
    NotFuseDevice,
    /// Any other system error.
    Io {
        /// What was being attempted.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

impl MountError {
    /// An [`MountError::Io`] for `what`, or a more specific variant for errors that
    /// have one (`ENOENT`/`ENOTDIR`/`ENOTCONN`/`EBUSY` on the mountpoint, `EPERM`/`EACCES`).
    pub(crate) fn from_mount_errno(
        what: &'static str,
        err: io::Error,
        mountpoint: PathBuf,
    ) -> Self {
        match err.raw_os_error() {
            Some(libc_errno::ENOENT) => MountError::MountpointMissing(mountpoint),
            Some(libc_errno::ENOTDIR) => MountError::NotADirectory(mountpoint),
            Some(libc_errno::ENOTCONN) => MountError::StaleMount(mountpoint),
            Some(libc_errno::EBUSY) => MountError::Busy(mountpoint),
            Some(libc_errno::EPERM) | Some(libc_errno::EACCES) => {
                MountError::PermissionDenied { what, source: err }
            }
            _ => MountError::Io { what, source: err },
        }
    }
}

/// The errno values this module matches on, from nix (no libc dependency).
pub(crate) mod libc_errno {
    use nix::errno::Errno;
    pub const ENOENT: i32 = Errno::ENOENT as i32;
    pub const ENOTDIR: i32 = Errno::ENOTDIR as i32;
    pub const ENOTCONN: i32 = Errno::ENOTCONN as i32;
    pub const EBUSY: i32 = Errno::EBUSY as i32;
    pub const EPERM: i32 = Errno::EPERM as i32;
    pub const EACCES: i32 = Errno::EACCES as i32;
    pub const ENODEV: i32 = Errno::ENODEV as i32;
    pub const ENXIO: i32 = Errno::ENXIO as i32;
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::DeviceMissing(e) => write!(
                f,
                "cannot open /dev/fuse ({e}): load the fuse module (`modprobe fuse`), or \
                 start the container with `--device /dev/fuse`"
            ),
            MountError::PermissionDenied { what, source } => write!(
                f,
                "permission denied while trying to {what} ({source}): run as root (or with \
                 CAP_SYS_ADMIN), or install the setuid helper fusermount3 (Debian package \
                 `fuse3`) and mount a directory you own"
            ),
            MountError::MountpointMissing(p) => {
                write!(
                    f,
                    "mountpoint {} does not exist: create the directory first",
                    p.display()
                )
            }
            MountError::NotADirectory(p) => {
                write!(
                    f,
                    "mountpoint {} is not a directory: mount on a directory",
                    p.display()
                )
            }
            MountError::StaleMount(p) => write!(
                f,
                "mountpoint {} is a dead FUSE mount (transport endpoint is not connected): \
                 unmount it first with `fusermount3 -u -z {}` or `umount -l {}`",
                p.display(),
                p.display(),
                p.display()
            ),
            MountError::Busy(p) => write!(
                f,
                "mountpoint {} is busy (EBUSY): it is in use or already a mount; unmount \
                 what is there or choose another directory",
                p.display()
            ),
            MountError::FusermountNotFound => write!(
                f,
                "fusermount3 was not found on PATH: install it (Debian package `fuse3`) or \
                 mount as root"
            ),
            MountError::FusermountFailed { status, stderr } => {
                match status {
                    Some(code) => write!(f, "fusermount3 failed with exit code {code}")?,
                    None => write!(f, "fusermount3 failed (killed by a signal)")?,
                }
                let stderr = stderr.trim();
                if !stderr.is_empty() {
                    write!(f, ": {stderr}")?;
                }
                if stderr.contains("user_allow_other") {
                    write!(
                        f,
                        " (add `user_allow_other` to /etc/fuse.conf, or mount without allow_other)"
                    )?;
                } else if stderr.contains("failed to open /dev/fuse") {
                    write!(
                        f,
                        " (/dev/fuse must be readable and writable by the user: distributions \
                         give it mode 0666)"
                    )?;
                } else if stderr.contains("not owned by user") || stderr.contains("no write access")
                {
                    write!(f, " (mount on a directory you own and can write)")?;
                }
                Ok(())
            }
            MountError::InvalidOption(e) => write!(f, "invalid mount option: {e}"),
            MountError::OptionsRejected {
                options,
                flags,
                suspects,
            } => {
                write!(
                    f,
                    "mount(2) rejected the options (EINVAL): data \"{options}\", flags {flags}; "
                )?;
                if suspects.is_empty() {
                    write!(f, "none is unknown to the FUSE option parser")?;
                } else {
                    write!(
                        f,
                        "likely rejected (unknown to the kernel's FUSE parser): {}",
                        suspects.join(", ")
                    )?;
                }
                write!(f, " (the kernel log names the option it refused: `dmesg`)")
            }
            MountError::NotFuseDevice => write!(
                f,
                "the descriptor is not an open /dev/fuse: pass the descriptor the mount \
                 was made with (or a dup of it)"
            ),
            MountError::Io { what, source } => write!(f, "failed to {what}: {source}"),
        }
    }
}

impl std::error::Error for MountError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MountError::DeviceMissing(e) => Some(e),
            MountError::PermissionDenied { source, .. } | MountError::Io { source, .. } => {
                Some(source)
            }
            MountError::InvalidOption(e) => Some(e),
            _ => None,
        }
    }
}

impl From<OptionError> for MountError {
    fn from(e: OptionError) -> Self {
        MountError::InvalidOption(e)
    }
}
