//! All IO of a FUSE session: opening `/dev/fuse`, mounting and unmounting, reading
//! requests and writing replies, the fuse control filesystem, and request buffers.
//!
//! This is the only module of the crate that talks to the kernel, and the only one
//! allowed `unsafe` code. Each `unsafe` block has a `// SAFETY:` comment: taking
//! ownership of a file descriptor received over `SCM_RIGHTS` (in `scm.rs`, which
//! `fusermount.rs` also uses: nix hands received descriptors out as raw integers), the
//! `FUSE_DEV_IOC_CLONE` ioctl (in `channel.rs`: nix's ioctl wrappers are `unsafe fn`),
//! and in `uring.rs` the io_uring ones: pushing SQEs that point at buffers the kernel
//! fills, and setting the SQE field the io-uring crate does not expose; in
//! `journal_map.rs`, addressing the crash-recovery journal's shared mapping.
//!
//! The pieces, a file per idea:
//! - [`MountOptions`]: what to mount, rendered to the kernel's and `fusermount3`'s
//!   option strings.
//! - [`mount()`] and [`Mount`]: mount with `mount(2)` when privileged, through the
//!   setuid helper `fusermount3` otherwise. Dropping a [`Mount`] never unmounts: a live
//!   mount can be handed to another process ([`Mount::into_parts`],
//!   [`Mount::from_parts`]).
//! - [`Channel`]: read requests and write replies on a `/dev/fuse` descriptor, with
//!   reads a [`Waker`] can interrupt at a request boundary, without signals.
//! - [`RequestBuffer`]: page-aligned read buffers sized from the negotiated protocol.
//! - [`uring`]: fuse-over-io_uring queues (one ring per CPU, registered entries).
//! - [`JournalMap`]: the crash-recovery journal's shared mapping (a memfd or a file).
//! - [`fusectl`]: the fuse control filesystem (connection ids, abort, waiting
//!   requests) and a [`fusectl::Watchdog`] that tears down a hung mount.
//!
//! # References
//! - `fuse(4)`, `mount(2)`, `umount(2)`, `fusermount3(1)` man pages
//! - Linux `fs/fuse/dev.c` (the device), `fs/fuse/inode.c` (mount options),
//!   `fs/fuse/control.c` (fusectl), Documentation/filesystems/fuse.rst

mod buffer;
#[allow(unsafe_code)]
mod channel;
mod error;
pub mod fusectl;
mod fusermount;
#[allow(unsafe_code)]
mod journal_map;
mod mount;
mod mountinfo;
mod options;
#[allow(unsafe_code)]
mod scm;
#[allow(unsafe_code)]
pub mod uring;
mod waker;

pub use buffer::{page_size, RequestBuffer, REQUEST_HEADER_ROOM};
pub use channel::{Channel, Received, WriteOutcome};
pub use error::{MountError, OptionError};
pub use fusermount::find_fusermount;
pub use journal_map::JournalMap;
pub use mount::{mount, Mount, MountMethod, MountParts};
pub use options::MountOptions;
pub use scm::{
    peer_credentials, recv_exact_with_fds, recv_with_fds, send_with_fds, PeerCredentials,
    MAX_FDS_PER_MESSAGE,
};
pub use waker::Waker;

/// Path of the FUSE character device.
pub const FUSE_DEVICE: &str = "/dev/fuse";
