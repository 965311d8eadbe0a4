//! INIT negotiation: a pure function of what the kernel offers and what the
//! filesystem wants.
//!
//! # References
//! - Linux `fs/fuse/inode.c` (`fuse_send_init`, `process_init_reply`)
//! - libfuse `lib/fuse_lowlevel.c` (`do_init`) for the conventional defaults
use fuse_wire::{abi, reply};
use fuse_wire::{InitFlags, Negotiated};

/// The oldest protocol minor this library serves.
pub const MIN_MINOR: u32 = 12;

/// What the kernel offered in its INIT request, kept whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KernelOffer {
    /// Kernel's major version.
    pub major: u32,
    /// Kernel's minor version.
    pub minor: u32,
    /// Kernel's maximum readahead.
    pub max_readahead: u32,
    /// Offered flags (flags2 in the high half when INIT_EXT is offered).
    pub flags: u64,
}

impl KernelOffer {
    /// The offered flags as a typed value.
    pub fn init_flags(&self) -> InitFlags {
        InitFlags(self.flags)
    }
}

/// What the filesystem would like. Flags the kernel does not offer are dropped,
/// except those in [`InitWishes::required`]: without one of them INIT fails (and
/// [`Server::spawn`](crate::serve::Server::spawn) reports
/// [`ServeError::InitFlagsMissing`](crate::serve::ServeError::InitFlagsMissing)).
/// Sizes are clamped to what the kernel and the read buffers allow.
///
/// The default does not ask for `ATOMIC_O_TRUNC`: the kernel then truncates through
/// SETATTR, so a filesystem that ignores `O_TRUNC` in
/// [`Filesystem::open`](crate::Filesystem::open) is still correct. A filesystem that
/// applies `O_TRUNC` itself may add it (one request less per truncating open), at a
/// price: the kernel refuses to truncate a running program's executable (`ETXTBSY`)
/// only *after* OPEN returned, so with `ATOMIC_O_TRUNC` an
/// `open(O_RDONLY | O_TRUNC)` of it is refused after the filesystem emptied it (the
/// examples do not ask for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitWishes {
    /// Flags wanted.
    pub flags: InitFlags,
    /// Flags the filesystem cannot work without: INIT fails, naming them, if the
    /// kernel does not offer one. They are wanted as well (no need to repeat them in
    /// [`InitWishes::flags`]).
    pub required: InitFlags,
    /// What the kernel offered in this INIT (set by the session before
    /// [`Filesystem::init`](crate::Filesystem::init) is called; empty elsewhere).
    /// Read it to decide what to ask for; changing it changes nothing.
    pub offered: InitFlags,
    /// Largest WRITE to accept, in bytes (rounded to pages; max_pages is derived).
    pub max_write: u32,
    /// Largest readahead; `None` = the kernel's.
    pub max_readahead: Option<u32>,
    /// Maximum number of background requests.
    pub max_background: u16,
    /// Congestion threshold (default 3/4 of max_background).
    pub congestion_threshold: u16,
    /// Timestamp granularity in nanoseconds (1 = ns precision).
    pub time_gran: u32,
    /// Request timeout in seconds the kernel should enforce (7.43, needs the
    /// kernel's `REQUEST_TIMEOUT` offer); 0 = none.
    pub request_timeout: u16,
    /// Maximum stacking depth for passthrough (7.40); 0 = none.
    pub max_stack_depth: u32,
}

impl Default for InitWishes {
    fn default() -> Self {
        InitWishes {
            flags: InitFlags::ASYNC_READ
                | InitFlags::BIG_WRITES
                | InitFlags::AUTO_INVAL_DATA
                | InitFlags::ASYNC_DIO
                | InitFlags::PARALLEL_DIROPS
                | InitFlags::MAX_PAGES
                | InitFlags::INIT_EXT,
            required: InitFlags::EMPTY,
            offered: InitFlags::EMPTY,
            max_write: 1 << 20,
            max_readahead: None,
            max_background: 16,
            congestion_threshold: 12,
            time_gran: 1,
            request_timeout: 0,
            max_stack_depth: 0,
        }
    }
}

/// The agreed result, everything a restored process must know without a new INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct InitResult {
    /// Agreed minor (`min(kernel, ours)`).
    pub minor: u32,
    /// Agreed flags (offered and wanted), all 64 bits.
    pub flags: u64,
    /// Maximum WRITE size.
    pub max_write: u32,
    /// Maximum pages per request (0 without MAX_PAGES).
    pub max_pages: u16,
    /// Maximum readahead.
    pub max_readahead: u32,
    /// Maximum background requests.
    pub max_background: u16,
    /// Congestion threshold.
    pub congestion_threshold: u16,
    /// Timestamp granularity.
    pub time_gran: u32,
    /// Maximum stacking depth.
    pub max_stack_depth: u32,
    /// Request timeout in seconds (0 = none).
    pub request_timeout: u16,
}

impl InitResult {
    /// The wire-level view used to parse and encode on this connection.
    pub fn negotiated(&self) -> Negotiated {
        Negotiated::new(self.minor, InitFlags(self.flags))
    }

    /// The smallest read buffer the kernel accepts for this connection:
    /// header plus the largest of max_write and max_pages pages, plus room for
    /// the WRITE struct and a page of slack, never below `FUSE_MIN_READ_BUFFER`.
    pub fn read_buffer_size(&self, page_size: usize) -> usize {
        let pages = usize::from(self.max_pages).saturating_mul(page_size);
        let payload = (self.max_write as usize).max(pages);
        payload
            .saturating_add(page_size)
            .max(abi::FUSE_MIN_READ_BUFFER)
    }

    /// The INIT reply (the encoder sends as much of it as the kernel's minor reads).
    pub fn to_init_out(&self) -> reply::InitOut {
        reply::InitOut {
            major: abi::FUSE_KERNEL_VERSION,
            minor: self.minor,
            max_readahead: self.max_readahead,
            flags: InitFlags(self.flags),
            max_background: self.max_background,
            congestion_threshold: self.congestion_threshold,
            max_write: self.max_write,
            time_gran: self.time_gran,
            max_pages: self.max_pages,
            map_alignment: 0,
            max_stack_depth: self.max_stack_depth,
            request_timeout: self.request_timeout,
        }
    }
}

/// Why INIT cannot be agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The kernel's major is newer: answer with ours only and expect a new INIT.
    NewerMajor,
    /// The kernel's protocol is older than we serve.
    TooOld {
        /// Kernel's major.
        major: u32,
        /// Kernel's minor.
        minor: u32,
    },
    /// The kernel does not offer these flags of [`InitWishes::required`].
    Missing(InitFlags),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            InitError::NewerMajor => {
                write!(
                    f,
                    "kernel speaks a newer FUSE major; answering with major 7"
                )
            }
            InitError::TooOld { major, minor } => write!(
                f,
                "kernel FUSE protocol {major}.{minor} is older than 7.{MIN_MINOR}, the oldest this \
                 library serves; upgrade the kernel"
            ),
            InitError::Missing(flags) => write!(
                f,
                "the filesystem requires INIT flags the kernel does not offer: {flags:?}; \
                 use a kernel that has them, or make the filesystem work without them"
            ),
        }
    }
}

/// Agrees INIT. Pure: same offer and wishes, same result.
///
/// `page_size` bounds max_pages (the kernel caps it further by its
/// `max_pages_limit`, 256 by default).
pub fn negotiate(
    offer: &KernelOffer,
    wishes: &InitWishes,
    page_size: u32,
) -> Result<InitResult, InitError> {
    if offer.major > abi::FUSE_KERNEL_VERSION {
        return Err(InitError::NewerMajor);
    }
    if offer.major < abi::FUSE_KERNEL_VERSION || offer.minor < MIN_MINOR {
        return Err(InitError::TooOld {
            major: offer.major,
            minor: offer.minor,
        });
    }
    let minor = offer.minor.min(abi::FUSE_KERNEL_MINOR_VERSION);
    let mut offered = InitFlags(offer.flags);
    if !offered.contains(InitFlags::INIT_EXT) {
        // Without INIT_EXT the kernel did not send flags2: only the low half is real.
        offered = InitFlags(offered.0 & 0xffff_ffff);
    }
    let missing = wishes.required.difference(offered);
    if missing != InitFlags::EMPTY {
        return Err(InitError::Missing(missing));
    }
    let mut flags = (wishes.flags | wishes.required).intersection(offered);
    if wishes.request_timeout == 0 {
        flags = flags.difference(InitFlags::REQUEST_TIMEOUT);
    }
    let page = page_size.max(4096);
    let max_write = wishes.max_write.clamp(4096, 1 << 30);
    let (max_write, max_pages) = if flags.contains(InitFlags::MAX_PAGES) {
        let pages = max_write.div_ceil(page).clamp(1, u32::from(u16::MAX));
        (max_write, pages as u16)
    } else {
        // Without MAX_PAGES the kernel caps requests at 32 pages.
        (max_write.min(32 * page), 0)
    };
    let max_readahead = match wishes.max_readahead {
        Some(r) => r.min(offer.max_readahead),
        None => offer.max_readahead,
    };
    let congestion_threshold = wishes.congestion_threshold.min(wishes.max_background);
    Ok(InitResult {
        minor,
        flags: flags.0,
        max_write,
        max_pages,
        max_readahead,
        max_background: wishes.max_background,
        congestion_threshold,
        time_gran: wishes.time_gran.max(1),
        max_stack_depth: if flags.contains(InitFlags::PASSTHROUGH) {
            wishes.max_stack_depth
        } else {
            0
        },
        request_timeout: if flags.contains(InitFlags::REQUEST_TIMEOUT) {
            wishes.request_timeout
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(minor: u32, flags: InitFlags) -> KernelOffer {
        KernelOffer {
            major: 7,
            minor,
            max_readahead: 131072,
            flags: flags.0,
        }
    }

    #[test]
    fn keeps_only_offered_flags_and_clamps_sizes() {
        let o = offer(
            45,
            InitFlags::ASYNC_READ
                | InitFlags::MAX_PAGES
                | InitFlags::INIT_EXT
                | InitFlags::HAS_RESEND,
        );
        let r = negotiate(&o, &InitWishes::default(), 4096).unwrap();
        assert_eq!(r.minor, 45);
        assert_eq!(
            InitFlags(r.flags),
            InitFlags::ASYNC_READ | InitFlags::MAX_PAGES | InitFlags::INIT_EXT
        );
        assert_eq!(r.max_write, 1 << 20);
        assert_eq!(r.max_pages, 256);
        assert_eq!(r.max_readahead, 131072);
        assert!(r.read_buffer_size(4096) >= (1 << 20) + 4096);
    }

    #[test]
    fn without_init_ext_flags2_is_ignored() {
        let o = offer(35, InitFlags::ASYNC_READ | InitFlags::SECURITY_CTX);
        let mut w = InitWishes::default();
        w.flags |= InitFlags::SECURITY_CTX;
        let r = negotiate(&o, &w, 4096).unwrap();
        assert_eq!(InitFlags(r.flags), InitFlags::ASYNC_READ);
        assert_eq!(r.minor, 35);
        assert_eq!(r.max_pages, 0);
        assert_eq!(r.max_write, 32 * 4096);
    }

    #[test]
    fn default_leaves_o_trunc_to_the_kernel() {
        // Without ATOMIC_O_TRUNC the kernel truncates through SETATTR, so an `open`
        // that ignores O_TRUNC cannot leave old bytes behind.
        assert!(!InitWishes::default()
            .flags
            .contains(InitFlags::ATOMIC_O_TRUNC));
        let o = offer(45, InitFlags::ATOMIC_O_TRUNC | InitFlags::ASYNC_READ);
        let r = negotiate(&o, &InitWishes::default(), 4096).unwrap();
        assert!(!InitFlags(r.flags).contains(InitFlags::ATOMIC_O_TRUNC));
    }

    #[test]
    fn required_flags_missing_fail_naming_them() {
        let o = offer(45, InitFlags::ASYNC_READ | InitFlags::INIT_EXT);
        let mut w = InitWishes {
            required: InitFlags::ASYNC_READ | InitFlags::PASSTHROUGH | InitFlags::POSIX_ACL,
            ..InitWishes::default()
        };
        let err = negotiate(&o, &w, 4096).unwrap_err();
        assert_eq!(
            err,
            InitError::Missing(InitFlags::PASSTHROUGH | InitFlags::POSIX_ACL)
        );
        let text = err.to_string();
        assert!(
            text.contains("PASSTHROUGH") && text.contains("POSIX_ACL"),
            "{text}"
        );
        // Required flags that are offered are agreed even if not in `flags`.
        w.required = InitFlags::ASYNC_READ;
        w.flags = InitFlags::EMPTY;
        let r = negotiate(&o, &w, 4096).unwrap();
        assert_eq!(InitFlags(r.flags), InitFlags::ASYNC_READ);
        // A flags2 bit without INIT_EXT is not offered.
        let o = offer(45, InitFlags::ASYNC_READ | InitFlags::SECURITY_CTX);
        w.required = InitFlags::SECURITY_CTX;
        assert_eq!(
            negotiate(&o, &w, 4096),
            Err(InitError::Missing(InitFlags::SECURITY_CTX))
        );
    }

    #[test]
    fn refuses_old_and_newer_majors() {
        assert_eq!(
            negotiate(&offer(8, InitFlags::EMPTY), &InitWishes::default(), 4096),
            Err(InitError::TooOld { major: 7, minor: 8 })
        );
        let mut o = offer(0, InitFlags::EMPTY);
        o.major = 8;
        assert_eq!(
            negotiate(&o, &InitWishes::default(), 4096),
            Err(InitError::NewerMajor)
        );
    }

    #[test]
    fn request_timeout_only_when_offered_and_wanted() {
        let o = offer(45, InitFlags::INIT_EXT | InitFlags::REQUEST_TIMEOUT);
        let mut w = InitWishes::default();
        w.flags |= InitFlags::REQUEST_TIMEOUT;
        assert_eq!(negotiate(&o, &w, 4096).unwrap().request_timeout, 0);
        w.request_timeout = 30;
        let r = negotiate(&o, &w, 4096).unwrap();
        assert_eq!(r.request_timeout, 30);
        assert!(InitFlags(r.flags).contains(InitFlags::REQUEST_TIMEOUT));
    }
}
