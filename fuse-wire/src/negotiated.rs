//! What the kernel and the daemon agreed in INIT, as far as byte layouts depend on it.
use crate::abi;
use crate::flags::InitFlags;

/// The negotiated protocol: the minor version and the agreed INIT flags.
///
/// Struct sizes depend on it (compat sizes of entry/attr/init replies before 7.9 and
/// 7.23, `fuse_setxattr_in` with [`InitFlags::SETXATTR_EXT`], ...). Before INIT has been
/// answered, use [`Negotiated::BEFORE_INIT`]: only INIT (and CUSE_INIT) parse
/// independently of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// The agreed minor version (`min(kernel, daemon)`).
    pub minor: u32,
    /// The agreed flags (what the kernel offered and the daemon accepted).
    pub flags: InitFlags,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated::LATEST
    }
}

impl Negotiated {
    /// The newest protocol with no optional flag agreed.
    pub const LATEST: Negotiated = Negotiated {
        minor: abi::FUSE_KERNEL_MINOR_VERSION,
        flags: InitFlags::EMPTY,
    };

    /// The state before INIT: the newest minor, no flags.
    pub const BEFORE_INIT: Negotiated = Negotiated::LATEST;

    /// A negotiated protocol of `minor` with `flags`.
    pub const fn new(minor: u32, flags: InitFlags) -> Negotiated {
        Negotiated { minor, flags }
    }

    /// True if `flag` was agreed.
    pub const fn has(&self, flag: InitFlags) -> bool {
        self.flags.contains(flag)
    }

    /// Size of `fuse_entry_out` on this connection (120 before 7.9).
    pub const fn entry_out_size(&self) -> usize {
        if self.minor < 9 {
            abi::FUSE_COMPAT_ENTRY_OUT_SIZE
        } else {
            core::mem::size_of::<abi::fuse_entry_out>()
        }
    }

    /// Size of `fuse_attr_out` on this connection (96 before 7.9).
    pub const fn attr_out_size(&self) -> usize {
        if self.minor < 9 {
            abi::FUSE_COMPAT_ATTR_OUT_SIZE
        } else {
            core::mem::size_of::<abi::fuse_attr_out>()
        }
    }

    /// Size of `fuse_write_in` on this connection (24 before 7.9).
    pub const fn write_in_size(&self) -> usize {
        if self.minor < 9 {
            abi::FUSE_COMPAT_WRITE_IN_SIZE
        } else {
            core::mem::size_of::<abi::fuse_write_in>()
        }
    }

    /// Size of `fuse_read_in` on this connection (24 before 7.9).
    pub const fn read_in_size(&self) -> usize {
        if self.minor < 9 {
            abi::FUSE_COMPAT_READ_IN_SIZE
        } else {
            core::mem::size_of::<abi::fuse_read_in>()
        }
    }

    /// Size of `fuse_mknod_in` on this connection (8 before 7.12).
    pub const fn mknod_in_size(&self) -> usize {
        if self.minor < 12 {
            abi::FUSE_COMPAT_MKNOD_IN_SIZE
        } else {
            core::mem::size_of::<abi::fuse_mknod_in>()
        }
    }

    /// Size of `fuse_mkdir_in` and of the `fuse_create_in` prefix before 7.12 differ:
    /// this is the `fuse_create_in` size (8 before 7.12, 16 after).
    pub const fn create_in_size(&self) -> usize {
        if self.minor < 12 {
            abi::FUSE_COMPAT_CREATE_IN_SIZE
        } else {
            core::mem::size_of::<abi::fuse_create_in>()
        }
    }

    /// Size of `fuse_setxattr_in` on this connection (16 with `SETXATTR_EXT`, else 8).
    pub const fn setxattr_in_size(&self) -> usize {
        if self.has(InitFlags::SETXATTR_EXT) {
            core::mem::size_of::<abi::fuse_setxattr_in>()
        } else {
            abi::FUSE_COMPAT_SETXATTR_IN_SIZE
        }
    }

    /// Size of `fuse_statfs_out` on this connection (48 before 7.4).
    pub const fn statfs_out_size(&self) -> usize {
        if self.minor < 4 {
            abi::FUSE_COMPAT_STATFS_SIZE
        } else {
            core::mem::size_of::<abi::fuse_statfs_out>()
        }
    }

    /// Size of the `fuse_init_out` reply for a kernel of `kernel_minor`
    /// (8 before 7.5, 24 before 7.23, 64 after).
    pub const fn init_out_size(kernel_minor: u32) -> usize {
        if kernel_minor < 5 {
            abi::FUSE_COMPAT_INIT_OUT_SIZE
        } else if kernel_minor < 23 {
            abi::FUSE_COMPAT_22_INIT_OUT_SIZE
        } else {
            core::mem::size_of::<abi::fuse_init_out>()
        }
    }
}
