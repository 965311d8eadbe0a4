//! The answers to INIT and CUSE_INIT as plain values.
use zerocopy::byteorder::native_endian::{U16, U32};

use crate::abi;
use crate::flags::InitFlags;

/// The daemon's answer to INIT, as in `fuse_init_out` (7.0; fields after `flags` as
/// noted on each).
///
/// The encoder sends only as much of the struct as the *kernel's* minor knows
/// ([`Negotiated::init_out_size`](crate::Negotiated::init_out_size)): 8 bytes before
/// 7.5, 24 before 7.23, 64 after. Fields the kernel will not read are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InitOut {
    /// Protocol major version (7).
    pub major: u32,
    /// Protocol minor version the daemon speaks.
    pub minor: u32,
    /// Maximum readahead in bytes (7.6).
    pub max_readahead: u32,
    /// Agreed flags, both halves: the high half travels in `flags2` (7.36), which the
    /// kernel reads only when [`InitFlags::INIT_EXT`] is set in the low half; so
    /// without it, [`InitOut::to_abi`] writes `flags2` as 0 and
    /// [`InitOut::from_abi`] ignores it.
    pub flags: InitFlags,
    /// Maximum number of outstanding background requests (7.13).
    pub max_background: u16,
    /// Background requests at which the kernel reports congestion (7.13).
    pub congestion_threshold: u16,
    /// Maximum size of a WRITE payload (7.5).
    pub max_write: u32,
    /// Timestamp granularity in nanoseconds (7.23).
    pub time_gran: u32,
    /// Maximum pages per request, with [`InitFlags::MAX_PAGES`] (7.28).
    pub max_pages: u16,
    /// log2 of the DAX mapping alignment, with [`InitFlags::MAP_ALIGNMENT`] (7.31).
    pub map_alignment: u16,
    /// Maximum stacking depth of passthrough backing files (7.40).
    pub max_stack_depth: u32,
    /// Request timeout in seconds, with [`InitFlags::REQUEST_TIMEOUT`] (7.43).
    pub request_timeout: u16,
}

impl InitOut {
    /// The ABI struct (unused fields zero).
    pub const fn to_abi(&self) -> abi::fuse_init_out {
        abi::fuse_init_out {
            major: U32::new(self.major),
            minor: U32::new(self.minor),
            max_readahead: U32::new(self.max_readahead),
            flags: U32::new(self.flags.low()),
            max_background: U16::new(self.max_background),
            congestion_threshold: U16::new(self.congestion_threshold),
            max_write: U32::new(self.max_write),
            time_gran: U32::new(self.time_gran),
            max_pages: U16::new(self.max_pages),
            map_alignment: U16::new(self.map_alignment),
            flags2: U32::new(if self.flags.contains(InitFlags::INIT_EXT) {
                self.flags.high()
            } else {
                0
            }),
            max_stack_depth: U32::new(self.max_stack_depth),
            request_timeout: U16::new(self.request_timeout),
            unused: [U16::new(0); 11],
        }
    }

    /// The value of an ABI struct, as the kernel reads it: `flags2` only if `flags`
    /// has [`InitFlags::INIT_EXT`] (`process_init_reply` in `fs/fuse/inode.c`);
    /// the `unused` field is ignored.
    pub const fn from_abi(o: &abi::fuse_init_out) -> InitOut {
        let low = o.flags.get();
        let high = if low & InitFlags::INIT_EXT.low() != 0 {
            o.flags2.get()
        } else {
            0
        };
        InitOut {
            major: o.major.get(),
            minor: o.minor.get(),
            max_readahead: o.max_readahead.get(),
            flags: InitFlags::from_halves(low, high),
            max_background: o.max_background.get(),
            congestion_threshold: o.congestion_threshold.get(),
            max_write: o.max_write.get(),
            time_gran: o.time_gran.get(),
            max_pages: o.max_pages.get(),
            map_alignment: o.map_alignment.get(),
            max_stack_depth: o.max_stack_depth.get(),
            request_timeout: o.request_timeout.get(),
        }
    }
}

impl From<InitOut> for abi::fuse_init_out {
    fn from(o: InitOut) -> Self {
        o.to_abi()
    }
}

impl From<abi::fuse_init_out> for InitOut {
    fn from(o: abi::fuse_init_out) -> Self {
        InitOut::from_abi(&o)
    }
}

/// The daemon's answer to CUSE_INIT, as in `cuse_init_out` (7.12). The device info
/// strings (`DEVNAME=...`) follow it on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CuseInitOut {
    /// Protocol major version (7).
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// `CUSE_*` flags (`CUSE_UNRESTRICTED_IOCTL` = 1).
    pub flags: u32,
    /// Maximum read size.
    pub max_read: u32,
    /// Maximum write size.
    pub max_write: u32,
    /// Character device major number (0: allocate one).
    pub dev_major: u32,
    /// Character device minor number.
    pub dev_minor: u32,
}

impl CuseInitOut {
    /// The ABI struct (unused and spare fields zero).
    pub const fn to_abi(&self) -> abi::cuse_init_out {
        abi::cuse_init_out {
            major: U32::new(self.major),
            minor: U32::new(self.minor),
            unused: U32::new(0),
            flags: U32::new(self.flags),
            max_read: U32::new(self.max_read),
            max_write: U32::new(self.max_write),
            dev_major: U32::new(self.dev_major),
            dev_minor: U32::new(self.dev_minor),
            spare: [U32::new(0); 10],
        }
    }

    /// The value of an ABI struct (unused and spare fields are ignored).
    pub const fn from_abi(o: &abi::cuse_init_out) -> CuseInitOut {
        CuseInitOut {
            major: o.major.get(),
            minor: o.minor.get(),
            flags: o.flags.get(),
            max_read: o.max_read.get(),
            max_write: o.max_write.get(),
            dev_major: o.dev_major.get(),
            dev_minor: o.dev_minor.get(),
        }
    }
}

/// The largest device info area the kernel reads after `cuse_init_out`
/// (`CUSE_INIT_INFO_MAX`, one page on every architecture the kernel reserves).
pub const CUSE_INIT_INFO_MAX: usize = 4096;
